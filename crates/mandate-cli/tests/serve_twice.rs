//! Two `mandate serve` on one data directory: the second refuses to start
//! and says why, and the first keeps working (issue 16: afterwards every
//! write of the first failed with `UNIQUE constraint failed: audit.seq`).
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mandate");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_second_broker_on_the_same_data_directory_refuses_to_start() {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("mandate-cli-twice-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let serve = |port: u16| {
        let mut c = Command::new(BIN);
        c.env("MANDATE_CONFIG_DIR", dir.join("config"))
            .env("MANDATE_DATA_DIR", dir.join("data"))
            .env_remove("MANDATE_MASTER_KEY")
            .env_remove("MANDATE_ADMIN_TOKEN_FILE")
            .env("RUST_LOG", "warn")
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")]);
        c
    };
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut first = serve(port)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent.get(format!("{url}/healthz")).call().is_err() {
        assert!(Instant::now() < deadline, "the broker did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = serve(free_port()).output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{err}");
    assert!(
        err.contains(&format!("pid {}", first.id())) && err.contains("--data-dir"),
        "{err}"
    );
    // The first one still writes.
    let token = std::fs::read_to_string(dir.join("config/admin.token")).unwrap();
    let status = agent
        .post(format!("{url}/v1/tenants"))
        .header("Authorization", &format!("Bearer {}", token.trim()))
        .send_json(serde_json::json!({"name": "acme"}))
        .unwrap()
        .status();
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(status, 201);
    std::fs::remove_dir_all(&dir).unwrap();
}
