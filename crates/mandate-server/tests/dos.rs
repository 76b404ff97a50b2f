//! Availability and replay, attacked over real HTTP: policy text that would
//! overflow a stack, connections that hold descriptors, proofs replayed
//! across a restart or in bulk, and refusals that must leave a trace.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

/// Policy text with `n` levels of each nesting an attacker can reach for.
fn deep_policies(n: usize) -> Vec<(&'static str, String)> {
    let head = "permit (principal, action == Mandate::Action::\"exchange\", resource) when { ";
    vec![
        (
            "parentheses",
            format!("{head}{}true{} }};", "(".repeat(n), ")".repeat(n)),
        ),
        (
            "sets",
            format!("{head}{}1{}.contains(1) }};", "[".repeat(n), "]".repeat(n)),
        ),
        (
            "records",
            format!("{head}{}1{} has a }};", "{a: ".repeat(n), "}".repeat(n)),
        ),
        (
            "if",
            format!("{head}{}true }};", "if true then true else ".repeat(n)),
        ),
    ]
}

/// Policy text with `n` operators in a chain, without brackets.
fn long_chains(n: usize) -> Vec<(&'static str, String)> {
    let head = "permit (principal, action == Mandate::Action::\"exchange\", resource) when { ";
    vec![
        ("negations", format!("{head}{}true }};", "!".repeat(n))),
        (
            "or-chain",
            format!("{head}{}true }};", "true || ".repeat(n)),
        ),
        ("sums", format!("{head}{}1 == 1 }};", "1 + ".repeat(n))),
    ]
}

#[test]
fn deeply_nested_policies_are_refused_and_the_broker_stays_up() {
    let b = Broker::start("dos-policy");
    b.seed("acme");
    let over = mandate_core::policy_limits::MAX_OPERATORS + 1;
    let attempts = [200, 10_000]
        .into_iter()
        .flat_map(|n| deep_policies(n).into_iter().map(move |p| (n, p)))
        .chain(
            [over, 10_000]
                .into_iter()
                .flat_map(|n| long_chains(n).into_iter().map(move |p| (n, p))),
        );
    {
        for (n, (shape, src)) in attempts {
            let src: String = src.chars().take(60 * 1024).collect();
            let got = b.admin_put_text("/v1/tenants/acme/policies/deep", &src);
            assert_eq!(got.0, 400, "{shape} x{n}: {}", got.1);
            assert_eq!(got.1["error"], "invalid_request", "{shape}: {}", got.1);
            let d = got.1["error_description"].as_str().unwrap();
            assert!(
                ["nested more than 32", "operators", "`if` expressions"]
                    .iter()
                    .any(|w| d.contains(w)),
                "{shape} x{n}: {d}"
            );
            assert!(got.1["problems"][0]["column"].as_u64().unwrap() > 1);
        }
    }
    // Still serving: the baseline is still in force and a policy loads.
    assert_eq!(
        b.admin_put_text(
            "/v1/tenants/acme/policies/ok",
            "permit (principal, action == Mandate::Action::\"exchange\", resource) when { ((true)) };"
        )
        .0,
        200
    );
    assert_eq!(b.admin_get("/v1/tenants/acme/policies").0, 200);
}

#[test]
fn a_tenant_holds_a_bounded_number_of_policies() {
    let b = Broker::start("dos-policy-count");
    b.seed("acme");
    let one = "permit (principal, action == Mandate::Action::\"exchange\", resource) when { context.action == \"read\" };\n";
    let per_set = mandate_core::policy_limits::MAX_POLICIES;
    let sets = mandate_core::policy_limits::MAX_TENANT_POLICIES / per_set;
    for i in 0..sets {
        let got = b.admin_put_text(
            &format!("/v1/tenants/acme/policies/s{i}"),
            &one.repeat(per_set),
        );
        if i + 1 < sets {
            assert_eq!(got.0, 200, "{}", got.1);
        } else {
            // The baseline's policies are there too: this one is over.
            assert_refused(&got, 400, "invalid_request", "at most");
        }
    }
    // Replacing a set counts the new text, not the old one as well.
    assert_eq!(b.admin_put_text("/v1/tenants/acme/policies/s0", one).0, 200);
}

// ---------- connections (item 8) ----------

mod raw {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::{Duration, Instant};

    pub(super) fn addr(b: &super::Broker) -> SocketAddr {
        b.url.trim_start_matches("http://").parse().unwrap()
    }

    /// A TCP connection to the broker from the loopback address `from`.
    pub(super) fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let s = rt.block_on(async {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
            sock.connect(to).await.unwrap()
        });
        let s = s.into_std().unwrap();
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// Sends `GET path` (keep-alive) and reads the answer: (status, body).
    pub(super) fn get(s: &mut TcpStream, path: &str) -> (u16, String) {
        write!(s, "GET {path} HTTP/1.1\r\nHost: broker\r\n\r\n").unwrap();
        read_response(s)
    }

    pub(super) fn read_response(s: &mut TcpStream) -> (u16, String) {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut byte).unwrap(), 1, "closed before a response");
            buf.push(byte[0]);
        }
        let head = String::from_utf8(buf).unwrap();
        let status = head[9..12].parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
        (status, String::from_utf8(body).unwrap())
    }

    /// A 503 the broker sent at once, if it did (`None` when admitted).
    pub(super) fn read_response_or_timeout(s: &mut TcpStream) -> Option<(u16, String)> {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut first = [0u8; 1];
        let got = s.peek(&mut first);
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        match got {
            Ok(1) => Some(read_response(s)),
            _ => None,
        }
    }

    /// Blocks until the broker closes `s`; how long that took.
    pub(super) fn time_to_close(s: &mut TcpStream) -> Duration {
        let t = Instant::now();
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return t.elapsed(),
                Ok(_) => {}
            }
        }
    }
}

fn fast_timeouts(c: &mut mandate_server::Config) {
    c.connections.header_read_timeout = std::time::Duration::from_millis(300);
    c.connections.idle_timeout = std::time::Duration::from_millis(1000);
}

#[test]
fn a_request_head_trickled_byte_by_byte_is_cut_off() {
    use std::io::Write;
    let b = Broker::start_with("dos-trickle", fast_timeouts);
    let mut s = raw::connect_from("127.0.0.1", raw::addr(&b));
    s.write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap();
    // One byte every 100 ms: each gap is well under the timeout, but the
    // head never completes. The broker must hang up after 300 ms.
    let started = std::time::Instant::now();
    let mut cut = None;
    for i in 0..40 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if s.write_all(&[b"st: x\r\nX-Slow: "[i % 15]]).is_err() {
            cut = Some(started.elapsed());
            break;
        }
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        let closed = matches!(std::io::Read::read(&mut s, &mut buf), Ok(0));
        s.set_nonblocking(false).unwrap();
        if closed {
            cut = Some(started.elapsed());
            break;
        }
    }
    let cut = cut.expect("the broker kept a trickling connection for 4 s");
    assert!(
        cut >= std::time::Duration::from_millis(250) && cut < std::time::Duration::from_secs(2),
        "cut after {cut:?}"
    );
    // A connection that sends nothing at all is closed after the same time.
    let mut silent = raw::connect_from("127.0.0.1", raw::addr(&b));
    let t = raw::time_to_close(&mut silent);
    assert!(t < std::time::Duration::from_secs(2), "{t:?}");
    // And a normal client is served meanwhile.
    let mut ok = raw::connect_from("127.0.0.1", raw::addr(&b));
    assert_eq!(raw::get(&mut ok, "/healthz"), (200, "ok".into()));
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let b = Broker::start_with("dos-idle", fast_timeouts);
    let mut s = raw::connect_from("127.0.0.1", raw::addr(&b));
    // Several requests on one connection, 300 ms apart (the idle timeout
    // is 1 s): each resets the idle clock, so the connection is reused.
    for _ in 0..3 {
        assert_eq!(raw::get(&mut s, "/healthz"), (200, "ok".into()));
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    // Then nothing: the broker closes it about 700 ms later.
    let idle = raw::time_to_close(&mut s);
    assert!(
        idle < std::time::Duration::from_millis(3000),
        "idle connection kept {idle:?}"
    );
}

#[test]
fn connections_beyond_the_limits_are_refused_and_slots_come_back() {
    let b = Broker::start_with("dos-conns", |c| {
        c.connections.max_connections = 8;
        c.connections.max_connections_per_client = 4;
    });
    let to = raw::addr(&b);
    // One client holds its four connections (each one request in, kept alive).
    let mut held: Vec<_> = (0..4)
        .map(|_| {
            let mut s = raw::connect_from("127.0.0.1", to);
            assert_eq!(raw::get(&mut s, "/healthz").0, 200);
            s
        })
        .collect();
    // Its fifth is answered 503 at once (before it sends anything), with
    // why, and closed.
    let mut fifth = raw::connect_from("127.0.0.1", to);
    let (status, body) = raw::read_response(&mut fifth);
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("your address holds this broker's limit of 4"),
        "{body}"
    );
    // Another client is served from the free slots.
    let mut other: Vec<_> = (0..4)
        .map(|_| {
            let mut s = raw::connect_from("127.0.0.2", to);
            assert_eq!(raw::get(&mut s, "/healthz").0, 200);
            s
        })
        .collect();
    // Now the broker is full: a third client is refused too.
    let mut third = raw::connect_from("127.0.0.3", to);
    let (status, body) = raw::read_response(&mut third);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("limit of 8 open connections"), "{body}");
    // When the first client lets go, its slots come back.
    held.clear();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let mut s = raw::connect_from("127.0.0.3", to);
        if raw::read_response_or_timeout(&mut s).is_none() && raw::get(&mut s, "/healthz").0 == 200
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slots never came back"
        );
    }
    other.clear();
    // Both refusals are audited, by address, with why.
    let ev = b.audit("type=connection.refuse");
    assert!(
        ev.iter().any(|e| e["client_addr"] == "127.0.0.1"
            && e["reason"].as_str().unwrap().contains("your address")),
        "{ev:?}"
    );
    assert!(ev.iter().any(|e| e["client_addr"] == "127.0.0.3"), "{ev:?}");
}

// ---------- replay across restarts (item 10) ----------

fn send_signed(b: &Broker, headers: &[(String, String)], body: &str) -> (u16, serde_json::Value) {
    let mut req = Broker::agent().post(b.token_url());
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    read(req.send(body).unwrap())
}

fn signed_exchange(b: &Broker, key: &SigningKey, body: &str) -> Vec<(String, String)> {
    signed_headers(
        key,
        "POST",
        &b.token_url(),
        vec![(
            "content-type".into(),
            "application/x-www-form-urlencoded".into(),
        )],
        body.as_bytes(),
        &[
            "@method",
            "@target-uri",
            "content-type",
            "content-digest",
            "signature-key",
        ],
        now(),
        &jti(),
    )
}

use mandate_core::jose::Alg;
use mandate_core::keys::SigningKey;
use serde_json::json;

#[test]
fn a_proof_used_before_a_restart_is_refused_after_it() {
    let b = Broker::start("dos-restart-replay");
    let grant = b.seed("acme");
    let (_, m, k) = b.start_run("acme", &grant, Alg::EdDSA);
    let body = form(&m, "crm", "read");
    // An attacker captures a DPoP proof and a signed request in use.
    let proof = b.proof(&k);
    assert_eq!(b.exchange_raw(&body, Some(&proof)).0, 200);
    let signed = signed_exchange(&b, &k, &body);
    assert_eq!(send_signed(&b, &signed, &body).0, 200);
    // The broker restarts (its replay cache is gone) and they are replayed.
    let b = b.restart();
    let (s, v, nonce) = b.exchange_with_nonce(&body, &proof);
    assert_refused(&(s, v), 400, "use_dpop_nonce", "the broker restarted");
    assert_refused(
        &send_signed(&b, &signed, &body),
        400,
        "invalid_signature",
        "the broker restarted",
    );
    // The refusals are in the trail, with why (before the key is proven a
    // refusal is anyone's: audited through the per-client throttle, so the
    // second one in the same window only counts).
    let denied = b.audit("type=token.exchange&decision=deny");
    assert!(
        denied
            .iter()
            .any(|e| e["reason"].as_str().unwrap_or("").contains("restarted")),
        "{denied:?}"
    );
    // The honest client follows RFC 9449 §8: a fresh proof with the nonce works.
    let nonce = nonce.expect("a DPoP-Nonce with the refusal");
    let fresh = proof_with(
        &k,
        json!({"jti": jti(), "htm": "POST", "htu": b.token_url(), "iat": now(), "nonce": nonce}),
    );
    let (s, v) = b.exchange_raw(&body, Some(&fresh));
    assert_eq!(s, 200, "{v}");
    // And the nonced proof is not good twice either.
    assert_refused(
        &b.exchange_raw(&body, Some(&fresh)),
        400,
        "invalid_dpop_proof",
        "already used",
    );
}

/// The store finds a replay by the proof's `(until, key)`, where `until`
/// is the proof's date plus the window: after a restart with another
/// window, a proof used before gets another `until`. Every proof dated up
/// to the latest recorded use then needs this process's nonce.
#[test]
fn a_proof_used_before_the_window_changed_is_refused_after_it() {
    let b = Broker::start_with("dos-window-replay", |c| c.dpop_max_skew = 300);
    let grant = b.seed("acme");
    let (_, m, k) = b.start_run("acme", &grant, Alg::EdDSA);
    let body = form(&m, "crm", "read");
    // A client whose clock runs 200 s ahead: inside the generous skew.
    let ahead = proof_with(
        &k,
        json!({"jti": jti(), "htm": "POST", "htu": b.token_url(), "iat": now() + 200}),
    );
    assert_eq!(b.exchange_raw(&body, Some(&ahead)).0, 200);
    // The operator tightens the skew; when the captured proof's date has
    // come, it is replayed.
    // (Restarted twice: the second start sees the window unchanged, and
    // must still remember the proofs recorded under the old one.)
    let b = b.restart_with(|c| c.dpop_max_skew = 5).restart();
    b.advance(200);
    let (s, v, nonce) = b.exchange_with_nonce(&body, &ahead);
    assert_refused(&(s, v), 400, "use_dpop_nonce", "the broker restarted");
    // An honest client goes on with the nonce.
    let fresh = proof_with(
        &k,
        json!({"jti": jti(), "htm": "POST", "htu": b.token_url(), "iat": now() + 200,
               "nonce": nonce.expect("a DPoP-Nonce with the refusal")}),
    );
    let (s, v) = b.exchange_raw(&body, Some(&fresh));
    assert_eq!(s, 200, "{v}");
    // After another restart (the window unchanged) it is still refused.
    let b = b.restart();
    let (s, v, _) = b.exchange_with_nonce(&body, &ahead);
    assert_eq!(s, 400, "{v}");
}

fn health_of(b: &Broker) -> String {
    let r = Broker::agent().get(format!("{}/healthz", b.url)).call();
    r.unwrap().into_body().read_to_string().unwrap()
}

/// A system clock set back (by hand, or NTP stepping it) while the broker
/// runs: what the replay records forgot as expired would be fresh again.
/// The broker's time holds instead, and `/healthz` says so.
#[test]
fn a_clock_set_back_makes_no_used_proof_fresh_again() {
    let b = Broker::start("dos-clock-back");
    let grant = b.seed("acme");
    let (_, m, k) = b.start_run("acme", &grant, Alg::EdDSA);
    let body = form(&m, "crm", "read");
    let dated = |k: &SigningKey| {
        proof_with(
            k,
            json!({"jti": jti(), "htm": "POST", "htu": b.token_url(), "iat": mandate_core::clock::Clock::now_secs(b.clock.as_ref())}),
        )
    };
    let captured = dated(&k);
    assert_eq!(b.exchange_raw(&body, Some(&captured)).0, 200);
    // Past the window (60 s + 5 s of skew), another use clears it from the
    // replay cache and the store.
    b.advance(70);
    let (s, v) = b.exchange_raw(&body, Some(&dated(&k)));
    assert_eq!(s, 200, "{v}");
    // The clock is set back to when the captured proof was fresh.
    b.clock.go_back_secs(70);
    let (s, v) = b.exchange_raw(&body, Some(&captured));
    assert_refused(&(s, v), 400, "invalid_dpop_proof", "70s old");
    let health = health_of(&b);
    assert!(health.contains("s behind the broker's time"), "{health}");
    // When the clock has caught up, the broker's time moves again.
    b.advance(71);
    let health = health_of(&b);
    assert_eq!(health, "ok");
    let (s, v) = b.exchange_raw(&body, Some(&dated(&k)));
    assert_eq!(s, 200, "{v}");
}

/// The same across a restart: the restarted broker's clock is behind the
/// time up to which the store cleared uses, so a proof dated before that
/// needs its nonce (which a captured proof cannot have); an honest client
/// goes on with the nonce, on the clock as it is.
#[test]
fn a_clock_set_back_across_a_restart_makes_no_used_proof_fresh_again() {
    let b = Broker::start("dos-clock-back-restart");
    let grant = b.seed("acme");
    let (_, m, k) = b.start_run("acme", &grant, Alg::EdDSA);
    let body = form(&m, "crm", "read");
    let at = |b: &Broker| mandate_core::clock::Clock::now_secs(b.clock.as_ref());
    let captured = proof_with(
        &k,
        json!({"jti": jti(), "htm": "POST", "htu": b.token_url(), "iat": at(&b)}),
    );
    assert_eq!(b.exchange_raw(&body, Some(&captured)).0, 200);
    b.advance(70);
    let later = proof_with(
        &k,
        json!({"jti": jti(), "htm": "POST", "htu": b.token_url(), "iat": at(&b)}),
    );
    assert_eq!(b.exchange_raw(&body, Some(&later)).0, 200);
    // Set back 100 s, restarted, and 30 s later the captured proof's date
    // has come again (dated after the restart, it needs no nonce).
    b.clock.go_back_secs(100);
    let b = b.restart();
    b.advance(30);
    let (s, v, nonce) = b.exchange_with_nonce(&body, &captured);
    assert_refused(&(s, v), 400, "use_dpop_nonce", "the broker restarted");
    let honest = proof_with(
        &k,
        json!({"jti": jti(), "htm": "POST", "htu": b.token_url(), "iat": at(&b),
               "nonce": nonce.expect("a DPoP-Nonce with the refusal")}),
    );
    let (s, v) = b.exchange_raw(&body, Some(&honest));
    assert_eq!(s, 200, "{v}");
    assert_eq!(health_of(&b), "ok", "a restart does not hold the time");
}

/// A proof window of more than a day (a `Config` built without the CLI,
/// which checks it too) is refused at start, with the bound: its seconds
/// are added to proof dates, and the store keeps uses that long.
#[test]
fn a_proof_window_over_a_day_is_refused_at_start() {
    for (age, skew) in [(86_401, 5), (60, u64::MAX)] {
        let dir = tempdir("dos-window-bound");
        let mut cfg = mandate_server::Config::new(
            "127.0.0.1:0".parse().unwrap(),
            dir.join("data"),
            &dir.join("config"),
        );
        (cfg.dpop_max_age, cfg.dpop_max_skew) = (age, skew);
        let why = mandate_server::boot::boot(cfg).unwrap_err().to_string();
        assert!(why.contains("at most a day (86400 s)"), "{why}");
        assert!(
            !dir.join("data").exists(),
            "refused before anything is made"
        );
    }
}

#[test]
fn a_first_start_needs_no_nonce() {
    // Nothing can have been used before a broker's first start.
    let b = Broker::start("dos-first-start");
    let grant = b.seed("acme");
    let (_, m, k) = b.start_run("acme", &grant, Alg::EdDSA);
    let body = form(&m, "crm", "read");
    let (s, v) = b.exchange_raw(&body, Some(&b.proof(&k)));
    assert_eq!(s, 200, "{v}");
}

// ---------- nonces at delegation (item 20) ----------

fn delegate_raw(
    b: &Broker,
    mandate: &str,
    proof: &str,
) -> (u16, serde_json::Value, Option<String>) {
    let child = SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng);
    let r = Broker::agent()
        .post(format!("{}/v1/runs/delegate", b.url))
        .header("DPoP", proof)
        .send_json(json!({"mandate": mandate, "agent": "triage", "jwk": child.public().to_json()}))
        .unwrap();
    let nonce = r
        .headers()
        .get("dpop-nonce")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (s, v) = read(r);
    (s, v, nonce)
}

fn delegation_proof(b: &Broker, key: &SigningKey, nonce: Option<&str>) -> String {
    let url = format!("{}/v1/runs/delegate", b.url);
    mandate_core::client::dpop_proof(key, "POST", &url, now(), &jti(), nonce, None)
}

#[test]
fn delegation_honours_required_nonces() {
    let b = Broker::start_with("dos-deleg-nonce", |c| c.dpop_nonce = true);
    let grant = b.seed("acme");
    let (_, m, k) = b.start_run("acme", &grant, Alg::EdDSA);
    let (s, v, nonce) = delegate_raw(&b, &m, &delegation_proof(&b, &k, None));
    assert_refused(&(s, v), 400, "use_dpop_nonce", "DPoP-Nonce");
    let nonce = nonce.expect("a DPoP-Nonce header with the refusal");
    let (s, v, next) = delegate_raw(&b, &m, &delegation_proof(&b, &k, Some(&nonce)));
    assert_eq!(s, 201, "{v}");
    assert!(next.is_some(), "every answer carries the next nonce");
    // A nonce that is not the broker's is refused too.
    let (s, v, _) = delegate_raw(
        &b,
        &m,
        &delegation_proof(&b, &k, Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")),
    );
    assert_refused(&(s, v), 400, "use_dpop_nonce", "stale or not ours");
    // The refusals are audited (before the key is proven: throttled, by address).
    let ev = b.audit("type=run.delegate&decision=deny");
    assert!(
        ev.iter().any(|e| e["reason"]
            .as_str()
            .unwrap_or("")
            .contains("use_dpop_nonce")),
        "{ev:?}"
    );
    assert_eq!(b.audit("type=run.delegate&decision=allow").len(), 1);
}

// ---------- replay quota per key (item 22) ----------

#[test]
fn one_key_over_its_proof_quota_is_refused_and_others_are_not() {
    let b = Broker::start_with("dos-quota", |c| c.dpop_replay_per_key = 5);
    let grant = b.seed("acme");
    let (_, greedy_m, greedy_k) = b.start_run("acme", &grant, Alg::EdDSA);
    let (_, honest_m, honest_k) = b.start_run("acme", &grant, Alg::ES256);
    let greedy_body = form(&greedy_m, "crm", "read");
    for _ in 0..5 {
        assert_eq!(
            b.exchange_raw(&greedy_body, Some(&b.proof(&greedy_k))).0,
            200
        );
    }
    // A sixth fresh proof from the same key within the window: refused, with why.
    let got = b.exchange_raw(&greedy_body, Some(&b.proof(&greedy_k)));
    assert_refused(
        &got,
        429,
        "slow_down",
        "this key already has 5 live DPoP proofs",
    );
    // Another run's key is not affected.
    let honest_body = form(&honest_m, "crm", "read");
    for _ in 0..3 {
        let (s, v) = b.exchange_raw(&honest_body, Some(&b.proof(&honest_k)));
        assert_eq!(s, 200, "{v}");
    }
    let ev = b.audit("type=token.exchange&decision=deny");
    assert!(
        ev.iter().any(|e| e["reason"]
            .as_str()
            .unwrap_or("")
            .contains("live DPoP proofs")),
        "{ev:?}"
    );
}

#[test]
fn an_invalid_proof_uses_no_quota() {
    let b = Broker::start_with("dos-quota-order", |c| c.dpop_replay_per_key = 2);
    let grant = b.seed("acme");
    let (_, m, k) = b.start_run("acme", &grant, Alg::EdDSA);
    let body = form(&m, "crm", "read");
    // Proofs by the right key that fail another check (htu, age) are
    // refused before they reach the replay cache...
    for claims in [
        json!({"jti": jti(), "htm": "POST", "htu": "http://elsewhere.example/oauth/token", "iat": now()}),
        json!({"jti": jti(), "htm": "POST", "htu": b.token_url(), "iat": now() - 3600}),
        json!({"jti": jti(), "htm": "GET", "htu": b.token_url(), "iat": now()}),
    ] {
        let got = b.exchange_raw(&body, Some(&proof_with(&k, claims)));
        assert_eq!(got.1["error"], "invalid_dpop_proof", "{}", got.1);
    }
    // ...and so is a proof by another key for this mandate.
    let other = SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng);
    assert_eq!(
        b.exchange_raw(&body, Some(&b.proof(&other))).1["error"],
        "invalid_dpop_proof"
    );
    // So the quota of 2 is intact.
    for _ in 0..2 {
        let (s, v) = b.exchange_raw(&body, Some(&b.proof(&k)));
        assert_eq!(s, 200, "{v}");
    }
}

// ---------- refusals are audited (item 16) ----------

fn fast_refusal_audit(c: &mut mandate_server::Config) {
    c.refusal_audit_window = std::time::Duration::from_millis(300);
}

/// Waits (bounded) until the trail holds an event `query` finds.
fn eventually(
    b: &Broker,
    query: &str,
    what: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let ev = b.audit(query);
        if what(&ev) {
            return ev;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never: {query}: {ev:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn bad_admin_credentials_are_audited_once_per_address_with_a_count() {
    let b = Broker::start_with("dos-admin-audit", fast_refusal_audit);
    let get = |auth: Option<&str>| {
        let mut r = Broker::agent().get(format!("{}/v1/tenants", b.url));
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        read(r.call().unwrap())
    };
    let got = get(None);
    assert_refused(&got, 401, "invalid_token", "needs an admin credential");
    // The first refusal is in the trail at once.
    let ev = b.audit("type=admin.auth");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["decision"], "deny");
    assert_eq!(ev[0]["client_addr"], "127.0.0.1");
    assert_eq!(ev[0]["details"]["count"], 1);
    assert_eq!(ev[0]["details"]["path"], "/v1/tenants");
    assert!(
        ev[0]["reason"]
            .as_str()
            .unwrap()
            .contains("needs an admin credential")
    );
    // A burst of guesses writes one more event, counting them.
    for i in 0..60 {
        let got = get(Some(&format!("Bearer mandate_admin_guess{i}")));
        assert_refused(&got, 401, "invalid_token", "not valid for this broker");
    }
    let ev = eventually(&b, "type=admin.auth", |ev| {
        ev.iter()
            .map(|e| e["details"]["count"].as_u64().unwrap())
            .sum::<u64>()
            == 61
    });
    assert!(ev.len() <= 3, "{} events for 61 refusals", ev.len());
    assert!(ev.iter().any(|e| {
        e["reason"]
            .as_str()
            .unwrap()
            .contains("not valid for this broker")
    }));
}

#[test]
fn refused_run_starts_are_audited() {
    let b = Broker::start_with("dos-start-audit", fast_refusal_audit);
    let grant = b.seed("acme");
    let key = SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng);
    // Authenticated (the admin), refused: a full event with tenant and why.
    let got = b.admin_post(
        "/v1/runs",
        json!({"tenant": "acme", "agent": "nobody", "principal": "alice@example.com",
               "grant": grant, "jwk": key.public().to_json()}),
    );
    assert_refused(&got, 404, "not_found", "agent `nobody` not found");
    let ev = b.audit("type=run.start&decision=deny");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["tenant"], "acme");
    assert_eq!(ev[0]["agent"], "nobody");
    assert_eq!(ev[0]["actor"], "admin");
    assert!(ev[0]["reason"].as_str().unwrap().contains("not found"));
    // Not authenticated (a join token that is not one): through the throttle.
    let got = read(
        Broker::agent()
            .post(format!("{}/v1/runs", b.url))
            .header(
                "Authorization",
                "Bearer mandate_join_0123456789abcdef_forged",
            )
            .send_json(json!({"tenant": "acme", "agent": "triage", "jwk": key.public().to_json()}))
            .unwrap(),
    );
    assert_refused(&got, 401, "invalid_token", "join token is not valid");
    let ev = b.audit("type=run.start&decision=deny");
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert!(
        ev.iter().any(|e| e["details"]["count"] == 1
            && e["reason"]
                .as_str()
                .unwrap()
                .contains("join token is not valid")),
        "{ev:?}"
    );
}

#[test]
fn refused_delegations_are_audited() {
    let b = Broker::start_with("dos-deleg-audit", fast_refusal_audit);
    let grant = b.seed("acme");
    let (run, m, k) = b.start_run("acme", &grant, Alg::EdDSA);
    // The parent's key is proven, the request refused: the parent's event.
    let child = SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng);
    let got = read(
        Broker::agent()
            .post(format!("{}/v1/runs/delegate", b.url))
            .header("DPoP", &delegation_proof(&b, &k, None))
            .send_json(json!({"mandate": m, "agent": "nobody", "jwk": child.public().to_json()}))
            .unwrap(),
    );
    assert_refused(&got, 404, "not_found", "agent `nobody` not found");
    let ev = b.audit("type=run.delegate&decision=deny");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["run"], run.as_str());
    assert_eq!(ev[0]["tenant"], "acme");
    assert!(ev[0]["reason"].as_str().unwrap().contains("not found"));
    // A proof by someone else's key: not attributed to the run, throttled.
    let thief = SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng);
    let (s, v, _) = delegate_raw(&b, &m, &delegation_proof(&b, &thief, None));
    assert_refused(&(s, v), 400, "invalid_dpop_proof", "cnf.jkt");
    let ev = b.audit("type=run.delegate&decision=deny");
    assert_eq!(ev.len(), 2, "{ev:?}");
    let anon = ev
        .iter()
        .find(|e| e["run"].is_null())
        .expect("an unattributed event");
    assert!(
        anon["reason"].as_str().unwrap().contains("cnf.jkt"),
        "{anon}"
    );
    assert_eq!(anon["client_addr"], "127.0.0.1");
}
