//! Pingora's load balancer quick start, as a bench contender for lbd.
//!
//!     pingora-lb LISTEN BACKEND [BACKEND...]
//!     pingora-lb 127.0.0.1:16192 127.0.0.1:18081 127.0.0.1:18082
//!
//! Configured like the other contenders in bench/bench.py: one worker thread
//! (`threads: 1`), Pingora's upstream keep-alive pool (128 idle connections,
//! its default), round robin over the backends, plain HTTP to the backends,
//! no health checks, no per-request logging (RUST_LOG defaults to `warn`).
//! The request goes upstream unchanged: the Host header stays as the client
//! sent it.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

pub struct Lb(Arc<LoadBalancer<RoundRobin>>);

#[async_trait]
impl ProxyHttp for Lb {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        // The key only matters for hashing selectors; round robin ignores it.
        let upstream = self
            .0
            .select(b"", 256)
            .ok_or_else(|| Error::explain(HTTPStatus(502), "no backend"))?;
        // tls = false: plain HTTP; no SNI.
        Ok(Box::new(HttpPeer::new(upstream, false, String::new())))
    }
}

fn usage() -> ! {
    eprintln!("usage: pingora-lb LISTEN_ADDR BACKEND_ADDR [BACKEND_ADDR...]");
    eprintln!("  e.g. pingora-lb 127.0.0.1:16192 127.0.0.1:18081 127.0.0.1:18082");
    std::process::exit(2);
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();

    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 || args.iter().any(|a| a.starts_with('-')) {
        usage();
    }
    let (listen, backends) = (&args[0], &args[1..]);

    // What a conf.yaml would say. pid_file / upgrade_sock are only used when
    // daemonizing / upgrading; keep them per listen port anyway so two
    // instances never share a path.
    let tag = listen.replace([':', '.', '[', ']'], "_");
    let conf = ServerConf::from_yaml(&format!(
        "---\n\
         version: 1\n\
         threads: 1\n\
         upstream_keepalive_pool_size: 128\n\
         pid_file: /tmp/pingora-lb-{tag}.pid\n\
         upgrade_sock: /tmp/pingora-lb-{tag}.sock\n"
    ))
    .expect("server conf");

    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let upstreams = LoadBalancer::try_from_iter(backends.iter().map(String::as_str))
        .unwrap_or_else(|e| {
            eprintln!("pingora-lb: bad backend address: {e}");
            std::process::exit(2);
        });

    let mut lb = http_proxy_service(&server.configuration, Lb(Arc::new(upstreams)));
    lb.add_tcp(listen);
    server.add_service(lb);
    eprintln!(
        "pingora-lb listening on {listen}, round robin over {}",
        backends.join(", ")
    );
    server.run_forever();
}
