//! `mandate serve --token-file X` writes the bootstrap admin credential to X
//! (and the global flag is honoured wherever it is placed), not to the
//! default path in the config directory.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Stdio;

use common::{agent, free_port, serve_cmd, tempdir, wait_healthy};

/// Starts `mandate <before> serve <after>` on `dir`; waits for the broker;
/// returns the admin credential found in `token_file` (and checks the
/// broker accepts it) after stopping the broker.
fn serve_writes_to(dir: &Path, before: &[&str], after: &[&str], token_file: &Path) -> String {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut child = serve_cmd(dir, before, port)
        .args(after)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_healthy(&url);
    let token = std::fs::read_to_string(token_file)
        .unwrap()
        .trim()
        .to_owned();
    let status = agent()
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
