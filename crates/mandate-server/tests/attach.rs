//! `POST /v1/runs/attach` (issue 10, H5): a run tied to a connection held by
//! its wrapper ends when the connection closes and is not re-attached
//! within the grace period; only the run's own mandate with a proof by the
//! run key can attach.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::time::{Duration, Instant};

use common::*;
use mandate_core::attenuation::{Narrowing, attenuate};
use mandate_core::jose::Alg;
use mandate_core::keys::SigningKey;
use serde_json::{Value, json};

/// An open attachment: dropping it closes the connection.
struct Attached {
    _reader: BufReader<Box<dyn Read + Send>>,
}

fn attach_url(b: &Broker) -> String {
    format!("{}/v1/runs/attach", b.url)
}

/// Attaches with `mandate`, proved by `signer`; the stream once its
/// `attached` event came, or the refusal.
fn attach(b: &Broker, mandate: &str, signer: &SigningKey) -> Result<Attached, (u16, Value)> {
    let url = attach_url(b);
    let proof = mandate_core::client::dpop_proof(signer, "POST", &url, now(), &jti(), None, None);
    let r = Broker::agent()
        .post(&url)
        .header("DPoP", &proof)
        .send_json(json!({"mandate": mandate}))
        .unwrap();
    if r.status() != 200 {
        return Err(read(r));
    }
    assert_eq!(
        r.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    let reader: Box<dyn Read + Send> = Box::new(r.into_body().into_reader());
    let mut reader = BufReader::new(reader);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "event: attached");
    Ok(Attached { _reader: reader })
}

fn grace(secs: u64) -> impl FnOnce(&mut mandate_server::Config) {
    move |c| c.attach_grace = Duration::from_secs(secs)
}

/// Waits until the run's mandate is refused at `/oauth/token`; returns how long it took.
fn until_refused(b: &Broker, mandate: &str, key: &SigningKey, within: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let (s, v) = b.exchange(mandate, key, "crm", "read");
        if s != 200 {
            assert_eq!(v["error"], "invalid_grant", "{v}");
            return t.elapsed();
        }
        assert!(t.elapsed() < within, "the run was not ended in {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_closed_attachment_ends_the_run_after_the_grace() {
    let b = Broker::start_with("attach-drop", grace(2));
    let grant = b.seed("acme");
    let (run, m0, k0) = b.start_run("acme", &grant, Alg::EdDSA);
    let a = attach(&b, &m0, &k0).unwrap();
    assert_eq!(b.state.attachments.open(&run), 1);
    let (s, v) = b.exchange(&m0, &k0, "crm", "read");
    assert_eq!(s, 200, "{v}");
    let cred = v["access_token"].as_str().unwrap().to_owned();
    // The wrapper is killed: its socket closes.
    drop(a);
    let took = until_refused(&b, &m0, &k0, Duration::from_secs(2 + 5));
    assert!(
        took >= Duration::from_millis(1500),
        "ended before the grace: {took:?}"
    );
    assert_eq!(introspect(&b, &cred)["active"], false);
    let ended: Vec<Value> = b
        .audit(&format!("run={run}"))
        .into_iter()
        .filter(|e| e["event_type"] == "run.end")
        .collect();
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0]["reason"], "exec wrapper detached");
    assert_eq!(ended[0]["actor"], "broker");
    let (_, runs) = b.admin_get("/v1/runs?tenant=acme");
    let r = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == run.as_str());
    assert!(!r.unwrap()["ended_ms"].is_null());
    // An ended run cannot attach again.
    let refused = attach(&b, &m0, &k0).err().unwrap();
    assert_refused(&refused, 400, "invalid_grant", "has ended");
}

/// A wrapper that is stopped (SIGSTOP) keeps its connection open but does
/// not attach again when the lease is over: the run ends all the same.
#[test]
fn a_wrapper_that_does_not_renew_its_lease_loses_the_run() {
    let b = Broker::start_with("attach-lease", |c| {
        c.attach_grace = Duration::from_secs(1);
        c.attach_lease = Duration::from_secs(2);
    });
    let grant = b.seed("acme");
    let (_run, m0, k0) = b.start_run("acme", &grant, Alg::EdDSA);
    let held = attach(&b, &m0, &k0).unwrap();
    let took = until_refused(&b, &m0, &k0, Duration::from_secs(2 + 1 + 5));
    assert!(
        took >= Duration::from_millis(2500),
        "ended too early: {took:?}"
    );
    drop(held);
}

/// A wrapper that attaches again at each lease's end keeps its run.
#[test]
fn renewing_the_lease_keeps_the_run() {
    let b = Broker::start_with("attach-renew", |c| {
        c.attach_grace = Duration::from_secs(1);
        c.attach_lease = Duration::from_secs(1);
    });
    let grant = b.seed("acme");
    let (_run, m0, k0) = b.start_run("acme", &grant, Alg::EdDSA);
    for _ in 0..4 {
        let mut a = attach(&b, &m0, &k0).unwrap();
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if a._reader.read_line(&mut line).unwrap() == 0 {
                break;
            }
            text.push_str(&line);
            if line.trim() == "event: renew" {
                break;
            }
        }
        assert!(text.contains("event: renew"), "{text}");
    }
    let (s, v) = b.exchange(&m0, &k0, "crm", "read");
    assert_eq!(s, 200, "{v}");
}

#[test]
fn re_attaching_within_the_grace_keeps_the_run() {
    let b = Broker::start_with("attach-again", grace(3));
    let grant = b.seed("acme");
    let (run, m0, k0) = b.start_run("acme", &grant, Alg::EdDSA);
    let first = attach(&b, &m0, &k0).unwrap();
    drop(first);
    std::thread::sleep(Duration::from_millis(500));
    let second = attach(&b, &m0, &k0).unwrap();
    // Past the first connection's grace: the run is still live.
    std::thread::sleep(Duration::from_secs(5));
    let (s, v) = b.exchange(&m0, &k0, "crm", "read");
    assert_eq!(s, 200, "{v}");
    assert_eq!(b.state.attachments.open(&run), 1);
    drop(second);
    until_refused(&b, &m0, &k0, Duration::from_secs(3 + 5));
}

#[test]
fn only_the_runs_own_mandate_with_its_key_attaches() {
    let b = Broker::start_with("attach-who", grace(1));
    let grant = b.seed("acme");
    let (run, m0, k0) = b.start_run("acme", &grant, Alg::EdDSA);
    // A proof by another key.
    let other = SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng);
    let refused = attach(&b, &m0, &other).err().unwrap();
    assert_eq!(refused.1["error"], "invalid_dpop_proof", "{}", refused.1);
    // No proof at all.
    let r = Broker::agent()
        .post(attach_url(&b))
        .send_json(json!({"mandate": m0}))
        .unwrap();
    assert_refused(&read(r), 400, "invalid_dpop_proof", "run's key");
    // An attenuated mandate, proved by its holder's key.
    let k1 = SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng);
    let m1 = attenuate(
        &m0,
        &k0,
        &Narrowing {
            next_holder: Some(k1.kid()),
            ..Default::default()
        },
    )
    .unwrap();
    let refused = attach(&b, &m1, &k1).err().unwrap();
    assert_refused(&refused, 400, "invalid_request", "attenuated");
    assert_eq!(b.state.attachments.open(&run), 0);
    // A proof for another endpoint.
    let proof =
        mandate_core::client::dpop_proof(&k0, "POST", &b.token_url(), now(), &jti(), None, None);
    let r = Broker::agent()
        .post(attach_url(&b))
        .header("DPoP", &proof)
        .send_json(json!({"mandate": m0}))
        .unwrap();
    assert_eq!(read(r).1["error"], "invalid_dpop_proof");
    // None of these refusals tied or ended the run.
    std::thread::sleep(Duration::from_millis(1500));
    let (s, v) = b.exchange(&m0, &k0, "crm", "read");
    assert_eq!(s, 200, "{v}");
}
