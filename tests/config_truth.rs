//! Configuration that tells the truth, against the real binary: `-t` fails
//! on what a start would fail on (each file's directory), prints the
//! warnings a start would log, names the dotted key of a type error and the
//! line of a syntax error; `examples/conf.yaml` runs as is; the Debian
//! package holds what it should and its binary passes `-t` on its config.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{free_port, http_get, unique_temp_dir, Lbd, LbdConf, Origin};

const LBD: &str = env!("CARGO_BIN_EXE_lbd");

/// `lbd -c <yaml in a temp dir> -t`.
fn lbd_t(yaml: &str) -> Output {
    let dir = unique_temp_dir("truth");
    let conf = dir.join("conf.yaml");
    fs::write(&conf, yaml).expect("write config");
    let out = run_t(LBD, &conf);
    let _ = fs::remove_dir_all(&dir);
    out
}

fn run_t(lbd: impl AsRef<std::ffi::OsStr>, conf: &Path) -> Output {
    Command::new(lbd)
        .arg("-c")
        .arg(conf)
        .arg("-t")
        .output()
        .expect("run lbd -t")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `-t` exits 1 with a message naming `key` and `path`.
fn assert_t_fails(yaml: &str, key: &str, path: &str) {
    let out = lbd_t(yaml);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{key}: {err}");
    assert!(
        err.contains(&format!("config key `{key}`")) && err.contains(path),
        "{key}: the message should name the key and {path}: {err}"
    );
}

#[test]
fn t_fails_on_each_missing_directory_naming_key_and_path() {
    let conf = LbdConf::front(&[8081]);
    let missing = "/nonexistent-lbd-truth";
    for (key, yaml) in [
        ("error_log", format!("error_log: {missing}/error.log")),
        ("pid_file", format!("pid_file: {missing}/lbd.pid")),
        (
            "access_log.path",
            format!("access_log:\n  path: {missing}/access.log"),
        ),
        (
            "histogram_file",
            format!("histogram_file: {missing}/h.hgrm"),
        ),
        ("upgrade_sock", format!("upgrade_sock: {missing}/u.sock")),
    ] {
        let yaml = conf.clone().top(&yaml).yaml();
        assert_t_fails(&yaml, key, &format!("directory {missing} does not exist"));
    }
    // A directory where a file should be.
    let dir = unique_temp_dir("truth-isdir");
    let yaml = conf
        .clone()
        .top(&format!("error_log: {}", dir.display()))
        .yaml();
    assert_t_fails(
        &yaml,
        "error_log",
        &format!("{} is a directory", dir.display()),
    );
    let _ = fs::remove_dir_all(&dir);
}

/// Writability is the running user's: as root, run `-t` as `nobody` on a
/// directory only root may write.
#[test]
fn t_fails_on_a_directory_the_user_cannot_write() {
    use std::os::unix::process::CommandExt;
    if !nix::unistd::getuid().is_root() {
        eprintln!("SKIPPED: needs root to run lbd -t as another user");
        return;
    }
    let dir = unique_temp_dir("truth-unwritable");
    let root_only = dir.join("root-only");
    fs::create_dir(&root_only).expect("mkdir");
    let conf = dir.join("conf.yaml");
    let yaml = LbdConf::front(&[8081])
        .top(&format!("pid_file: {}/lbd.pid", root_only.display()))
        .yaml();
    fs::write(&conf, yaml).expect("write config");
    let out = Command::new(LBD)
        .arg("-c")
        .arg(&conf)
        .arg("-t")
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run lbd -t as nobody");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "config key `pid_file`: directory {} is not writable (uid 65534)",
            root_only.display()
        )),
        "{err}"
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_start_names_the_key_and_path_too() {
    let missing = "/nonexistent-lbd-truth/error.log";
    let (status, err) = LbdConf::front(&[8081])
        .top(&format!("error_log: {missing}"))
        .expect_failure();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("config key `error_log`") && err.contains(missing),
        "{err}"
    );
}

#[test]
fn t_prints_the_warnings_and_exits_0() {
    let yaml = LbdConf::front(&[8443])
        .top("user: nobody\nwork_stealing: true")
        .group_extra("tls:\n  sni: example.com\n  verify: false")
        .yaml();
    let out = lbd_t(&yaml);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("test is successful"));
    for w in [
        "lbd: warning: config key `user` is a Pingora key lbd does not implement; ignored",
        "lbd: warning: config key `work_stealing` is a Pingora key",
        "lbd: warning: upstreams.web.tls.verify is false",
    ] {
        assert!(err.contains(w), "missing {w:?} in:\n{err}");
    }
}

#[test]
fn type_errors_name_the_dotted_key() {
    let conf = LbdConf::front(&[8081, 8082]);
    for (yaml, key, value) in [
        (
            conf.clone().top("limits: {header_timeout_ms: ten}").yaml(),
            "limits.header_timeout_ms",
            "ten",
        ),
        (
            conf.yaml().replace("threads: 1", "threads: -1"),
            "threads",
            "-1",
        ),
        (
            LbdConf::front(&[])
                .weighted(&[(8081, 1), (8082, 2)])
                .yaml()
                .replace("weight: 2", "weight: ten"),
            "upstreams.web.backends[1].weight",
            "ten",
        ),
    ] {
        let out = lbd_t(&yaml);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!(
                "config key `{key}`: invalid value `{value}` at line "
            )),
            "{key}: {err}"
        );
    }
}

#[test]
fn a_syntax_error_points_at_its_line() {
    // Line 3 is indented one space too far; read as it parses, the file
    // would first show a type error on line 2.
    let yaml = format!(
        "limits:\n  header_timeout_ms: 10\n   keepalive_timeout_ms: 5\n{}",
        LbdConf::front(&[8081]).yaml().replace("version: 1\n", "")
    );
    let out = lbd_t(&yaml);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(": line 3 column 24: YAML syntax error"),
        "{err}"
    );
    assert!(err.contains("3 |    keepalive_timeout_ms: 5"), "{err}");
}

/// The README's configuration reference, copied verbatim, is what `-t`
/// checks: with its directories it passes, without them `-t` says which.
#[test]
fn the_readme_reference_config_tells_the_truth() {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md");
    let reference = readme
        .split_once("## Configuration reference")
        .and_then(|(_, rest)| rest.split_once("```yaml\n"))
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(yaml, _)| yaml.to_string())
        .expect("the reference's yaml block");
    if !Path::new("/var/log/lbd").is_dir() {
        let out = lbd_t(&reference);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(
                "config key `error_log`: directory /var/log/lbd does not exist \
                 (for /var/log/lbd/error.log)"
            ),
            "{}",
            stderr(&out)
        );
    }
    let dir = unique_temp_dir("truth-readme");
    for sub in ["run", "log"] {
        fs::create_dir(dir.join(sub)).expect("mkdir");
    }
    let moved = reference
        .replace("/run/lbd/", &format!("{}/run/", dir.display()))
        .replace("/var/log/lbd/", &format!("{}/log/", dir.display()));
    let out = lbd_t(&moved);
    assert!(out.status.success(), "{}", stderr(&out));
    let _ = fs::remove_dir_all(&dir);
}

fn example() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/conf.yaml");
    fs::read_to_string(path).expect("read examples/conf.yaml")
}

#[test]
fn the_example_passes_t_as_is() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/conf.yaml");
    let out = run_t(LBD, &path);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stderr.is_empty(), "no warnings: {}", stderr(&out));
}

/// The example as is, but on free ports and with its /tmp files in a test
/// directory: another lbd (a user running the example, another test) may
/// hold its fixed ports or its pid file.
#[test]
fn the_example_starts_and_balances() {
    let a = Origin::start("a");
    let b = Origin::start("b");
    let dir = unique_temp_dir("truth-example");
    let (port, admin) = (free_port(), free_port());
    let yaml = example()
        .replace("127.0.0.1:6188", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:6190", &format!("127.0.0.1:{admin}"))
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{}", a.port))
        .replace("127.0.0.1:8082", &format!("127.0.0.1:{}", b.port))
        .replace("/tmp/", &format!("{}/", dir.display()));
    assert!(
        !yaml.contains(":6188") && !yaml.contains(" /tmp/lbd.pid"),
        "{yaml}"
    );
    let lbd = Lbd::start(&yaml, port, 2);
    let mut client = lbd.client();
    for _ in 0..30 {
        assert_eq!(client.get("/truth").status, 200);
    }
    // Weights 1:2, whichever worker took the connection (health checks
    // ask for `/`).
    let mine = |o: &Origin| {
        o.heads()
            .iter()
            .filter(|h| h.starts_with("GET /truth "))
            .count()
    };
    assert_eq!((mine(&a), mine(&b)), (10, 20));
    assert_eq!(http_get(admin, "/health"), (200, "ok\n".to_string()));
    assert!(dir.join("lbd.pid").exists(), "pid_file under the test dir");
    let _ = fs::remove_dir_all(&dir);
}

/// The newest Debian package: `LBD_DEB` (set by `.ci/run`, which then
/// requires it), else `target/debian/lbd_*.deb`.
fn find_deb() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LBD_DEB") {
        return Some(PathBuf::from(p));
    }
    // CARGO_BIN_EXE_lbd is <target>/<profile>/lbd.
    let target = Path::new(LBD).parent()?.parent()?;
    fs::read_dir(target.join("debian"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("lbd_") && n.ends_with(".deb"))
        })
        .max_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .expect("run dpkg-deb");
    assert!(out.status.success(), "dpkg-deb {args:?}: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_debian_package_holds_what_it_should() {
    let deb = find_deb();
    let have_dpkg = Command::new("dpkg-deb").arg("--version").output().is_ok();
    let (Some(deb), true) = (deb, have_dpkg) else {
        assert!(
            std::env::var_os("LBD_DEB").is_none(),
            "LBD_DEB is set but the package or dpkg-deb is missing"
        );
        eprintln!(
            "SKIPPED: no target/debian/lbd_*.deb or no dpkg-deb; build the package with \
             scripts/package.sh (.ci/run does, and sets LBD_DEB)"
        );
        return;
    };
    assert!(deb.exists(), "{} does not exist", deb.display());
    let listing = dpkg_deb(&["-c"], &deb);
    for path in [
        "./usr/bin/lbd",
        "./etc/lbd/conf.yaml",
        "./etc/logrotate.d/lbd",
        "/systemd/system/lbd.service",
        "./usr/lib/tmpfiles.d/lbd.conf",
        "./usr/share/man/man1/lbd.1.gz",
        "./usr/share/bash-completion/completions/lbd",
        "./usr/share/zsh/vendor-completions/_lbd",
        "./usr/share/fish/vendor_completions.d/lbd.fish",
        "./usr/share/doc/lbd/README.md",
        "./usr/share/doc/lbd/examples/conf.yaml",
    ] {
        assert!(listing.contains(path), "{path} missing from:\n{listing}");
    }
    let control = dpkg_deb(&["-f"], &deb);
    assert!(
        control.contains("Depends:") && control.contains("adduser"),
        "{control}"
    );

    let root = unique_temp_dir("truth-deb");
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .output()
        .expect("dpkg-deb -x");
    assert!(out.status.success(), "{}", stderr(&out));
    let ctrl = root.join("DEBIAN");
    let out = Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(&ctrl)
        .output()
        .expect("dpkg-deb -e");
    assert!(out.status.success(), "{}", stderr(&out));
    let conffiles = fs::read_to_string(ctrl.join("conffiles")).expect("conffiles");
    assert!(
        conffiles.lines().any(|l| l == "/etc/lbd/conf.yaml"),
        "{conffiles}"
    );
    let postinst = fs::read_to_string(ctrl.join("postinst")).expect("postinst");
    assert!(
        postinst.contains("adduser --system") && postinst.contains("/var/log/lbd"),
        "{postinst}"
    );
    let unit = ["usr/lib/systemd/system", "lib/systemd/system"]
        .iter()
        .find_map(|d| fs::read_to_string(root.join(d).join("lbd.service")).ok())
        .expect("lbd.service in the package");
    for line in [
        "Type=notify",
        "NotifyAccess=all",
        "ExecStart=/usr/bin/lbd -c /etc/lbd/conf.yaml",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "{line} missing from the unit"
        );
    }
    // The packaged binary passes -t on the shipped config as is.
    let out = run_t(root.join("usr/bin/lbd"), &root.join("etc/lbd/conf.yaml"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("test is successful"));
    let _ = fs::remove_dir_all(&root);
}
