//! Two `mandate serve` on one data directory: the second refuses to start
//! and says why, and the first keeps working (issue 16: afterwards every
//! write of the first failed with `UNIQUE constraint failed: audit.seq`).
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;

use common::{agent, free_port, serve_cmd, stderr, tempdir, wait_healthy};

#[test]
fn a_second_broker_on_the_same_data_directory_refuses_to_start() {
    let dir = tempdir("twice");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut first = serve_cmd(&dir, &[], port)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_healthy(&url);
    let second = serve_cmd(&dir, &[], free_port()).output().unwrap();
    let err = stderr(&second);
    assert!(!second.status.success(), "{err}");
    assert!(
        err.contains(&format!("pid {}", first.id())) && err.contains("--data-dir"),
        "{err}"
    );
    // The first one still writes.
    let token = std::fs::read_to_string(dir.join("config/admin.token")).unwrap();
    let status = agent()
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
