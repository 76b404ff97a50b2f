//! What the CLI's tests share: a real `mandate serve` on a fresh port and
//! directory, and the `mandate` binary run against it.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_mandate");

pub struct Serve {
    pub child: Child,
    pub url: String,
    pub dir: PathBuf,
}

pub fn tempdir(tag: &str) -> PathBuf {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!("mandate-cli-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn mandate(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env("MANDATE_CONFIG_DIR", dir.join("config"))
        .env_remove("MANDATE_MASTER_KEY")
        .env_remove("MANDATE_ADMIN_TOKEN_FILE")
        .env_remove("MANDATE_URL")
        .env("RUST_LOG", "warn");
    c
}

/// Waits until a broker answers `/healthz` at `url` (at most a minute).
pub fn wait_healthy(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent().get(format!("{url}/healthz")).call().is_err() {
        assert!(Instant::now() < deadline, "the broker did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `mandate <before> serve --listen 127.0.0.1:<port>` on `dir`'s config
/// and data directories.
pub fn serve_cmd(dir: &Path, before: &[&str], port: u16) -> Command {
    let mut c = mandate(dir);
    c.env("MANDATE_DATA_DIR", dir.join("data"))
        .args(before)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")]);
    c
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

impl Serve {
    /// `mandate serve` on `dir` and a fresh port, once it answers (on
    /// another port if another test took that one first).
    pub fn start(dir: &Path) -> Self {
        for _ in 0..5 {
            if let Some(s) = Self::try_start(dir) {
                return s;
            }
        }
        panic!("the broker did not come up on five ports");
    }

    pub fn try_start(dir: &Path) -> Option<Self> {
        let port = free_port();
        let mut child = mandate(dir)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        // Up, and ours: its admin credential is written and it still runs
        // (a broker that lost the port race exits).
        loop {
            if child.try_wait().unwrap().is_some() {
                return None;
            }
            let up = agent().get(format!("{url}/jwks.json")).call().is_ok()
                && dir.join("config/admin.token").exists();
            if up {
                std::thread::sleep(Duration::from_millis(100));
                if child.try_wait().unwrap().is_some() {
                    return None;
                }
                return Some(Serve {
                    child,
                    url,
                    dir: dir.to_owned(),
                });
            }
            assert!(Instant::now() < deadline, "the broker did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, as systemd does: queued writes commit and a last checkpoint is written.
    pub fn stop(mut self) {
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        assert!(self.child.wait().unwrap().success());
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        mandate(&self.dir)
            .arg("--url")
            .arg(&self.url)
            .args(args)
            .output()
            .unwrap()
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
