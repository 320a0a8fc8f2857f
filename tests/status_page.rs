//! The status page (`GET /` and `GET /stats` on the admin address) in a real
//! browser: headless Chromium driven through chromedriver's W3C WebDriver
//! HTTP API, spoken directly (JSON over a std `TcpStream`). Checks the DOM
//! while traffic flows: every backend with its state and last check, request
//! counts rising, latency percentiles, workers and routes, a killed origin
//! shown down and, back, in slow start, a drain clicked in the page reaching
//! the API, the admin token asked for, sent and never stored; and that names
//! and route paths from the configuration render as text, never as markup.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them); without them the tests fail, saying so. With
//! `LBD_SCREENSHOT=path` set, the page under load is saved there as PNG
//! (how `docs/status-page.png` is refreshed).

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{free_port, http_get, LbdConf, Load, Origin};

mod webdriver {
    //! Just enough of W3C WebDriver: a session with headless Chromium,
    //! navigate, execute a script, find and click an element, screenshot.

    use std::io::{BufReader, Write};
    use std::net::TcpStream;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use serde_json::{json, Value};

    use super::support::{free_port, read_response, unique_temp_dir};

    const CHROMIUM: &str = "/usr/bin/chromium";
    const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
    /// The key W3C WebDriver names element references with.
    const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

    /// A chromedriver process and one browser session on it.
    pub struct Browser {
        driver: Child,
        port: u16,
        session: String,
        _profile: PathBuf,
    }

    impl Browser {
        /// Starts chromedriver and a headless Chromium with a fresh profile.
        pub fn start() -> Browser {
            for bin in [CHROMIUM, CHROMEDRIVER] {
                assert!(
                    Path::new(bin).exists(),
                    "{bin} is missing: the status page tests need a real browser; \
                     run `apt-get install chromium chromium-driver`"
                );
            }
            let port = free_port();
            let driver = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver");
            let mut b = Browser {
                driver,
                port,
                session: String::new(),
                _profile: unique_temp_dir("chromium-profile"),
            };
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                match b.try_call("GET", "/status", None) {
                    Ok(v) if v["value"]["ready"] == true => break,
                    _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                    other => panic!("chromedriver did not become ready: {other:?}"),
                }
            }
            let profile = b._profile.display().to_string();
            let caps = json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        "--window-size=1700,1000",
                        format!("--user-data-dir={profile}"),
                    ],
                },
            }}});
            let v = b.call("POST", "/session", Some(caps));
            b.session = v["value"]["sessionId"]
                .as_str()
                .unwrap_or_else(|| panic!("no session id: {v}"))
                .to_owned();
            b
        }

        /// One WebDriver command; the answer's JSON, or an error string.
        fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
            let body = body.map(|b| b.to_string()).unwrap_or_default();
            let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(60)))
                .map_err(|e| e.to_string())?;
            write!(
                s,
                "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .map_err(|e| e.to_string())?;
            let resp = read_response(&mut BufReader::new(s), false).map_err(|e| e.to_string())?;
            let v: Value = serde_json::from_slice(&resp.body).map_err(|e| e.to_string())?;
            if resp.status != 200 {
                return Err(format!("{method} {path}: {} {v}", resp.status));
            }
            Ok(v)
        }

        fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
            self.try_call(method, path, body)
                .unwrap_or_else(|e| panic!("webdriver: {e}"))
        }

        fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
            let p = format!("/session/{}{path}", self.session);
            self.call(method, &p, body)["value"].clone()
        }

        /// Navigates to `url`.
        pub fn goto(&self, url: &str) {
            self.session_call("POST", "/url", Some(json!({ "url": url })));
        }

        /// Runs `script` (a function body) in the page; its return value.
        pub fn execute(&self, script: &str) -> Value {
            self.session_call(
                "POST",
                "/execute/sync",
                Some(json!({"script": script, "args": []})),
            )
        }

        /// Clicks the first element matching a CSS selector (a real click
        /// through the browser's input pipeline).
        pub fn click(&self, css: &str) {
            let id = self.find(css);
            self.session_call("POST", &format!("/element/{id}/click"), Some(json!({})));
        }

        /// The WebDriver reference of the first element matching `css`.
        fn find(&self, css: &str) -> String {
            let e = self.session_call(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            );
            e[ELEMENT]
                .as_str()
                .unwrap_or_else(|| panic!("no element {css}: {e}"))
                .to_owned()
        }

        /// Types `text` into the first element matching a CSS selector.
        pub fn type_into(&self, css: &str, text: &str) {
            let id = self.find(css);
            self.session_call(
                "POST",
                &format!("/element/{id}/value"),
                Some(json!({ "text": text })),
            );
        }

        /// A PNG of the viewport.
        pub fn screenshot(&self) -> Vec<u8> {
            let v = self.session_call("GET", "/screenshot", None);
            base64_decode(v.as_str().expect("screenshot is a base64 string"))
        }
    }

    impl Drop for Browser {
        fn drop(&mut self) {
            if !self.session.is_empty() {
                let _ = self.try_call("DELETE", &format!("/session/{}", self.session), None);
            }
            let _ = self.driver.kill();
            let _ = self.driver.wait();
        }
    }

    /// Standard base64 (with padding) to bytes.
    fn base64_decode(s: &str) -> Vec<u8> {
        let val = |c: u8| -> u32 {
            match c {
                b'A'..=b'Z' => (c - b'A') as u32,
                b'a'..=b'z' => (c - b'a' + 26) as u32,
                b'0'..=b'9' => (c - b'0' + 52) as u32,
                b'+' => 62,
                b'/' => 63,
                _ => panic!("not base64: {c}"),
            }
        };
        let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=' && c != b'\n').collect();
        let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
        for chunk in bytes.chunks(4) {
            let mut n = 0u32;
            for (i, &c) in chunk.iter().enumerate() {
                n |= val(c) << (18 - 6 * i);
            }
            out.push((n >> 16) as u8);
            if chunk.len() > 2 {
                out.push((n >> 8) as u8);
            }
            if chunk.len() > 3 {
                out.push(n as u8);
            }
        }
        out
    }
}

use webdriver::Browser;

/// The backend rows as the page shows them, and how many polls it drew.
const READ_ROWS: &str = r#"
return {
  polls: Number(document.body.dataset.polls || 0),
  rows: Array.from(document.querySelectorAll("tr.backend")).map(tr => ({
    group: tr.dataset.group,
    address: tr.dataset.address,
    health: tr.querySelector("td.health").textContent,
    state: tr.querySelector("td.state").textContent,
    requests: Number(tr.querySelector("td.requests").textContent),
    last_check: tr.querySelector("td.last_check").textContent,
  })),
};"#;

/// The page's other tables: latency lines, workers, routes.
const READ_PAGE: &str = r##"
const cells = tr => Array.from(tr.querySelectorAll("td")).map(td => td.textContent);
return {
  polls: Number(document.body.dataset.polls || 0),
  latency: document.getElementById("latency").textContent,
  group_latency: Array.from(document.querySelectorAll("section.group p.latency")).map(p => p.textContent),
  workers: Array.from(document.querySelectorAll("#workers tbody tr")).map(cells),
  routes: Array.from(document.querySelectorAll("#routes tbody tr")).map(cells),
  meta: document.getElementById("meta").textContent,
};"##;

/// Polls `f` until it returns `Some`, or panics with `what` after `limit`.
fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The row of `address` in a [`READ_ROWS`] answer.
fn row<'v>(v: &'v Value, address: &str) -> &'v Value {
    v["rows"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["address"] == address))
        .unwrap_or_else(|| panic!("no row for {address}: {v}"))
}

#[test]
fn the_page_shows_backends_live_and_drains_through_the_api() {
    let a = Origin::start("a");
    let b = Origin::start("b");
    let admin_port = free_port();
    let lbd = LbdConf::front(&[a.port, b.port])
        .threads(2)
        .admin(admin_port)
        .health_check(&[("interval_ms", "200"), ("fall", "2")])
        .group_extra("slow_start_ms: 30000")
        .routes("- { host: shop.example, path_prefix: /cart, upstream: web }\n- { upstream: web }")
        .start();
    let load = Load::start(lbd.port, 4);
    let browser = Browser::start();
    browser.goto(&format!("http://127.0.0.1:{admin_port}/"));
    let (addr_a, addr_b) = (
        format!("127.0.0.1:{}", a.port),
        format!("127.0.0.1:{}", b.port),
    );

    // Both backends, with health and state, once a rate can be shown.
    let first = wait_for(Duration::from_secs(10), "two rows drawn", || {
        let v = browser.execute(READ_ROWS);
        (v["polls"].as_u64() >= Some(2) && v["rows"].as_array().map(Vec::len) == Some(2))
            .then_some(v)
    });
    for addr in [&addr_a, &addr_b] {
        let r = row(&first, addr);
        assert_eq!(r["group"], "web", "{first}");
        assert_eq!(r["health"], "up", "{first}");
        assert_eq!(r["state"], "active", "{first}");
    }

    // Counts rise from one poll to a later one.
    let polls = first["polls"].as_u64().unwrap_or(0);
    let later = wait_for(Duration::from_secs(5), "a later poll", || {
        let v = browser.execute(READ_ROWS);
        (v["polls"].as_u64() > Some(polls)).then_some(v)
    });
    for addr in [&addr_a, &addr_b] {
        let (before, after) = (
            row(&first, addr)["requests"].as_u64(),
            row(&later, addr)["requests"].as_u64(),
        );
        assert!(after > before, "{addr}: {before:?} -> {after:?}");
        let checked = row(&later, addr)["last_check"].as_str().unwrap_or("");
        assert!(
            checked.starts_with("passed ") && checked.ends_with(" s ago"),
            "{later}"
        );
    }

    // Latency percentiles of the last interval, per process and group;
    // every worker with its share; each route with its host, path and
    // rising counts; the process facts.
    let page = wait_for(Duration::from_secs(5), "latency figures", || {
        let v = browser.execute(READ_PAGE);
        v["latency"]
            .as_str()
            .is_some_and(|l| l.contains("in the last"))
            .then_some(v)
    });
    let lat = page["latency"].as_str().unwrap_or("");
    for p in ["p50 ", "p90 ", "p99 ", "p99.9 "] {
        assert!(lat.contains(p), "{page}");
    }
    assert!(lat.contains("µs") || lat.contains("ms"), "{page}");
    assert!(
        page["group_latency"][0]
            .as_str()
            .is_some_and(|l| l.contains("p99 ") && l.contains("requests in the last")),
        "{page}"
    );
    assert_eq!(page["workers"].as_array().map(Vec::len), Some(2), "{page}");
    let routes = page["routes"].as_array().cloned().unwrap_or_default();
    assert_eq!(routes.len(), 2, "{page}");
    let cells = |r: &Value, from: usize, to: usize| -> Vec<Value> {
        r.as_array()
            .map(|c| c[from..to].to_vec())
            .unwrap_or_default()
    };
    assert_eq!(
        cells(&routes[0], 1, 5),
        [
            json!("routes[0]"),
            json!("shop.example"),
            json!("/cart"),
            json!("web")
        ],
        "{page}"
    );
    assert_eq!(
        cells(&routes[1], 2, 4),
        [json!("any"), json!("any")],
        "{page}"
    );
    let served = |v: &Value| {
        v["routes"][1][5]
            .as_str()
            .and_then(|n| n.parse::<u64>().ok())
    };
    let before = served(&page);
    wait_for(Duration::from_secs(5), "route counts rising", || {
        (served(&browser.execute(READ_PAGE)) > before).then_some(())
    });
    let meta = page["meta"].as_str().unwrap_or("");
    assert!(
        meta.contains("2 workers") && meta.contains("config "),
        "{page}"
    );
    assert!(meta.contains("no upgrade since"), "{page}");

    if let Ok(path) = std::env::var("LBD_SCREENSHOT") {
        // Rates over full intervals, and some sparkline history.
        std::thread::sleep(Duration::from_secs(8));
        std::fs::write(&path, browser.screenshot()).expect("write the screenshot");
        eprintln!("screenshot of the page under load written to {path}");
    }

    // A killed origin shows down within two checks plus one refresh.
    a.kill();
    let killed = Instant::now();
    wait_for(
        Duration::from_millis(2 * 200 + 1000 + 1500),
        "a shown down",
        || {
            let v = browser.execute(READ_ROWS);
            (row(&v, &addr_a)["health"] == "down").then_some(())
        },
    );
    eprintln!("killed origin shown down after {:?}", killed.elapsed());
    let v = browser.execute(READ_ROWS);
    assert!(
        row(&v, &addr_a)["last_check"]
            .as_str()
            .is_some_and(|c| c.starts_with("failed ")),
        "{v}"
    );

    // Drain clicked in the page: the page and the API agree.
    browser.click(&format!(
        "tr.backend[data-address=\"{addr_b}\"] button.drain"
    ));
    wait_for(Duration::from_secs(5), "b shown draining", || {
        let v = browser.execute(READ_ROWS);
        (row(&v, &addr_b)["state"] == "draining").then_some(())
    });
    let (status, list) = http_get(admin_port, "/upstreams");
    assert_eq!(status, 200);
    let list: Value = serde_json::from_str(&list).expect("GET /upstreams is JSON");
    let api_b = list["upstreams"][0]["backends"]
        .as_array()
        .and_then(|bs| bs.iter().find(|x| x["address"] == addr_b.as_str()))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(api_b["state"], "draining", "{list}");
    let msg = browser.execute("return document.getElementById('msg').textContent;");
    assert!(
        msg.as_str().is_some_and(|m| m.contains("draining")),
        "{msg}"
    );

    // Enable again from the page.
    browser.click(&format!(
        "tr.backend[data-address=\"{addr_b}\"] button.enable"
    ));
    wait_for(Duration::from_secs(5), "b shown active", || {
        let v = browser.execute(READ_ROWS);
        (row(&v, &addr_b)["state"] == "active").then_some(())
    });

    // a comes back: up again, ramping its weight (slow start), in words.
    let _a = Origin::start_at("a2", addr_a.parse().expect("address"));
    let ramp = wait_for(Duration::from_secs(5), "a shown in slow start", || {
        let v = browser.execute(READ_ROWS);
        let h = row(&v, &addr_a)["health"].as_str().unwrap_or("").to_owned();
        h.starts_with("up, slow start (").then_some(h)
    });
    assert!(ramp.ends_with(" s left)"), "{ramp}");
    drop(load.finish());
}

#[test]
fn names_from_the_config_render_as_text() {
    let a = Origin::start("a");
    let admin_port = free_port();
    let evil = r#"<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'q"#;
    // A second group, named with markup (YAML single-quoted: `''` is `'`).
    // A route whose path prefix is markup (route paths reject spaces, so
    // the tag uses `/` between its attributes, which HTML allows).
    let evil_path = "/<img/src=x/onerror=window.pwned=3>";
    let lbd = LbdConf::front(&[a.port])
        .admin(admin_port)
        .routes(&format!(
            "- {{ path_prefix: '{evil_path}', upstream: web }}\n- {{ upstream: web }}"
        ))
        .upstream(
            &format!("'{}'", evil.replace('\'', "''")),
            &format!("backends:\n  - 127.0.0.1:{}", a.port),
        )
        .start();
    let _ = lbd.port;
    let (status, stats) = http_get(admin_port, "/stats");
    assert_eq!(status, 200);
    assert!(!stats.contains('<'), "`<` is escaped in /stats: {stats}");
    assert!(stats.contains("\\u003cscript\\u003e"), "{stats}");
    let v: Value = serde_json::from_str(&stats).expect("/stats is JSON");
    assert!(
        v["upstreams"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g["name"] == evil)),
        "{v}"
    );

    let browser = Browser::start();
    browser.goto(&format!("http://127.0.0.1:{admin_port}/"));
    let shown = wait_for(Duration::from_secs(10), "the group drawn", || {
        let v = browser.execute(
            "return Array.from(document.querySelectorAll('section.group h2')).map(h => h.textContent);",
        );
        (v.as_array().map(Vec::len) == Some(2)).then_some(v)
    });
    assert!(
        shown
            .as_array()
            .is_some_and(|h| h.iter().any(|h| h == &json!(format!("upstream {evil}")))),
        "the name is shown literally: {shown}"
    );
    let paths = wait_for(Duration::from_secs(5), "the routes drawn", || {
        let v = browser.execute(
            "return Array.from(document.querySelectorAll('#routes tbody tr td:nth-child(4)')).map(td => td.textContent);",
        );
        (v.as_array().map(Vec::len) == Some(2)).then_some(v)
    });
    assert_eq!(paths[0], json!(evil_path), "the path is shown literally");
    std::thread::sleep(Duration::from_millis(300));
    let dom = browser.execute(
        "return {pwned: window.pwned === undefined ? null : window.pwned, \
         scripts: document.scripts.length, imgs: document.images.length};",
    );
    assert_eq!(
        dom,
        json!({"pwned": null, "scripts": 1, "imgs": 0}),
        "no markup injected"
    );
}

#[test]
fn with_a_token_the_page_asks_for_it_and_sends_it() {
    let a = Origin::start("a");
    let dir = support::unique_temp_dir("status-token");
    let tf = dir.join("token");
    std::fs::write(&tf, "s3cret\n").expect("write the token file");
    let admin_port = free_port();
    let _lbd = LbdConf::front(&[a.port])
        .top(&format!(
            "admin:\n  address: 127.0.0.1:{admin_port}\n  token_file: {}\n",
            tf.display()
        ))
        .start();
    let addr = format!("127.0.0.1:{}", a.port);
    let browser = Browser::start();
    browser.goto(&format!("http://127.0.0.1:{admin_port}/"));
    wait_for(Duration::from_secs(10), "the row drawn", || {
        let v = browser.execute(READ_ROWS);
        (v["rows"].as_array().map(Vec::len) == Some(1)).then_some(())
    });
    let drain = format!("tr.backend[data-address=\"{addr}\"] button.drain");
    let msg = "return document.getElementById('msg').textContent;";
    // Without the token: refused, and the page says what to do.
    browser.click(&drain);
    wait_for(Duration::from_secs(5), "the token asked for", || {
        let m = browser.execute(msg);
        m.as_str()
            .is_some_and(|m| m.contains("token"))
            .then_some(())
    });
    assert!(http_get(admin_port, "/upstreams")
        .1
        .contains("\"state\":\"active\""));
    // With it: drained.
    browser.type_into("#token", "s3cret");
    browser.click(&drain);
    wait_for(Duration::from_secs(5), "drained with the token", || {
        let v = browser.execute(READ_ROWS);
        (row(&v, &addr)["state"] == "draining").then_some(())
    });
    assert!(http_get(admin_port, "/upstreams")
        .1
        .contains("\"state\":\"draining\""));
    // Kept in the page's memory only.
    let stored = browser.execute("return sessionStorage.length + localStorage.length;");
    assert_eq!(stored, json!(0));
}
