//! The CLI as people use it (issue 16): pipes, flags, files, errors.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;

use common::{Serve, mandate, stderr, tempdir};

/// `mandate audit | head -1` and friends end quietly when the reader goes
/// away: no panic, no exit 101, nothing on standard error.
#[test]
fn every_verb_ends_quietly_on_a_closed_pipe() {
    let s = Serve::start(&tempdir("pipe"));
    for args in [
        &["audit"][..],
        &["--json", "audit"],
        &["tenant", "list"],
        &["--help"],
        &["audit", "verify"],
    ] {
        let mut child = mandate(&s.dir)
            .arg("--url")
            .arg(&s.url)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader is gone before the first byte is written.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "{args:?}");
    }
    s.stop();
}
