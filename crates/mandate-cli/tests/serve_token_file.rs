//! `mandate serve --token-file X` writes the bootstrap admin credential to X
//! (and the global flag is honoured wherever it is placed), not to the
//! default path in the config directory.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mandate");

fn tempdir(tag: &str) -> PathBuf {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!("mandate-cli-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `mandate <before> serve <after>` on `dir`; waits for the broker;
/// returns the admin credential found in `token_file` (and checks the
/// broker accepts it) after stopping the broker.
fn serve_writes_to(dir: &Path, before: &[&str], after: &[&str], token_file: &Path) -> String {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(BIN)
        .env("MANDATE_CONFIG_DIR", dir.join("config"))
        .env("MANDATE_DATA_DIR", dir.join("data"))
        .env_remove("MANDATE_MASTER_KEY")
        .env_remove("MANDATE_ADMIN_TOKEN_FILE")
        .env("RUST_LOG", "warn")
        .args(before)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(after)
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
    let token = std::fs::read_to_string(token_file)
        .unwrap()
        .trim()
        .to_owned();
    let status = agent
        .get(format!("{url}/v1/tenants"))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap()
        .status();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(status, 200);
    token
}

#[test]
fn serve_honours_the_global_token_file() {
    let dir = tempdir("serve-token-file");
    let file = dir.join("elsewhere").join("admin.token");
    let token = serve_writes_to(&dir, &["--token-file", file.to_str().unwrap()], &[], &file);
    assert!(token.starts_with("mandate_admin_"));
    assert!(!dir.join("config").join("admin.token").exists());

    // Placed after the subcommand, on a fresh broker.
    let dir = tempdir("serve-token-file-after");
    let file = dir.join("admin.credential");
    serve_writes_to(&dir, &[], &["--token-file", file.to_str().unwrap()], &file);
    assert!(!dir.join("config").join("admin.token").exists());
}
