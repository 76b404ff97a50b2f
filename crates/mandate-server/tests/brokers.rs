//! Several brokers on one PostgreSQL store behave as one (issue 14): what
//! one commits binds the others at once (revocations refuse issuance in the
//! committing transaction, a proof is used once, attenuation uses are
//! spent once), reaches their memory by notification (registry, revocation
//! feed), and the trail they write together is one chain.
//!
//! `export MANDATE_TEST_PG=$(bash scripts/pg.sh 2>/dev/null)` first.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mandate_core::attenuation::{Narrowing, attenuate};
use mandate_core::jose::Alg;
use mandate_core::secret::Secret;
use serde_json::json;

/// A fresh database on the test server; its URL.
fn fresh_database() -> String {
    let dsn = std::env::var("MANDATE_TEST_PG").unwrap_or_else(|_| {
        panic!("set MANDATE_TEST_PG: export MANDATE_TEST_PG=$(bash scripts/pg.sh 2>/dev/null)")
    });
    let name = format!(
        "mbrokers_{}",
        &mandate_core::ids::random_id(&mut rand::rngs::OsRng, "")[..10].to_lowercase()
    );
    sql(&dsn, &format!("CREATE DATABASE {name}"));
    let (base, _) = dsn.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

/// Runs `q` at `url` on a thread of its own.
fn sql(url: &str, q: &str) {
    let (url, q) = (url.to_owned(), q.to_owned());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            c.batch_execute(&q).await.unwrap();
        });
    })
    .join()
    .unwrap();
}

fn on(url: &str) -> impl FnOnce(&mut mandate_server::Config) + '_ {
    move |c| c.store_url = Some(Secret::new(url.as_bytes().to_vec()))
}

/// Waits up to 5 s for `ok`; how long it took.
fn within(what: &str, mut ok: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{what}: not within 5 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    t0.elapsed()
}

/// Waits until `b` has read every registry change `a` made.
fn synced(a: &Broker, b: &Broker) {
    let g = a.state.reg().store_generation;
    within("the other broker reads the registry", || {
        b.state.reg().store_generation >= g
    });
}

/// A fresh DPoP nonce of broker `x`.
fn nonce_of(x: &Broker, body: &str) -> String {
    let key = mandate_core::keys::SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng);
    let (_, _, nonce) = x.exchange_with_nonce(body, &x.proof(&key));
    nonce.expect("a DPoP-Nonce header")
}

const CRM: &str = "https://crm.acme.example";

#[test]
fn a_revocation_at_one_broker_refuses_at_every_other_at_once() {
    let url = fresh_database();
    let a = Broker::start_with("brk-a", on(&url));
    let b = a.peer("brk-b");
    let c = a.peer("brk-c");
    let grant = a.seed("acme");
    // Registered at A, known at B and C by notification.
    for x in [&b, &c] {
        synced(&a, x);
        assert!(x.state.reg().find_tool("acme", "crm").is_some());
    }
    let (run, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
    for x in [&a, &b, &c] {
        let (s, v) = x.exchange(&mandate, &key, CRM, "read");
        assert_eq!(s, 200, "{v}");
    }
    // Revoked at A: B and C refuse the very next exchange, before their
    // memory has heard (the check is in the committing transaction).
    let (s, v) = a.admin_post(
        "/v1/revocations",
        json!({"kind": "run", "id": run, "reason": "test"}),
    );
    assert_eq!(s, 200, "{v}");
    for x in [&b, &c] {
        let (s, v) = x.exchange(&mandate, &key, CRM, "read");
        assert_eq!(s, 400, "{v}");
        assert!(
            v["error_description"].as_str().unwrap().contains("revoked"),
            "{v}"
        );
    }
    // And their memory has it soon after (what tools' introspection and the
    // MCP gateway read).
    for x in [&b, &c] {
        within("B and C hear the revocation", || {
            x.state.reg().revoked.contains(&format!("run:{run}"))
        });
    }
    // The trail the three wrote is one chain, whoever verifies it.
    for x in [&a, &b, &c] {
        let (s, v) = x.admin_get("/v1/audit/verify");
        assert_eq!((s, &v["ok"]), (200, &json!(true)), "{v}");
    }
    let events = c.audit("type=token.exchange");
    assert!(events.len() >= 5, "{events:?}");
}

#[test]
fn a_revocation_committed_between_memory_and_commit_is_caught_in_the_commit() {
    let url = fresh_database();
    let a = Broker::start_with("brk-race-a", on(&url));
    let b = a.peer("brk-race-b");
    let grant = a.seed("acme");
    synced(&a, &b);
    let (run, mandate, key) = a.start_run("acme", &grant, Alg::EdDSA);
    // The revocation is in the store but B's memory has not heard of it (as
    // when its notification is still on the way): written behind B's back,
    // while B's reading of the store is held.
    let held = b.state.following.lock().unwrap();
    sql(
        &url,
        &format!(
            "INSERT INTO revocations (key, reason, time_ms, until, tenant) VALUES ('run:{run}', 'race', 0, 0, 'acme')"
        ),
    );
    assert!(!b.state.reg().revoked.contains(&format!("run:{run}")));
    let (s, v) = b.exchange(&mandate, &key, CRM, "read");
    drop(held);
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error_description"].as_str().unwrap().contains("revoked"),
        "{v}"
    );
    let withheld = b.audit("type=token.withheld");
    assert!(
        withheld
            .iter()
            .any(|e| e["reason"].as_str().unwrap_or("").contains("in flight")),
        "{withheld:?}"
    );
}

#[test]
fn a_proof_used_at_one_broker_is_refused_at_another() {
    let url = fresh_database();
    let a = Broker::start_with("brk-replay-a", on(&url));
    let b = a.peer("brk-replay-b");
    let grant = a.seed("acme");
    synced(&a, &b);
    let (_, mandate, key) = a.start_run("acme", &grant, Alg::EdDSA);
    let body = form(&mandate, CRM, "read");
    // B started after A: a proof dated before B started needs B's nonce
    // (B cannot know what was used before it). With B's nonce in it, B's
    // memory would take the proof; used at A first, the store refuses it.
    let (s, v, nonce) = b.exchange_with_nonce(&body, &b.proof(&key));
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("use_dpop_nonce")),
        "{v}"
    );
    let proof = proof_with(
        &key,
        json!({"jti": jti(), "htm": "POST", "htu": a.named_token_url(), "iat": now(), "nonce": nonce.unwrap()}),
    );
    let (s, v) = a.exchange_raw(&body, Some(&proof));
    assert_eq!(s, 200, "{v}");
    let (s, v) = b.exchange_raw(&body, Some(&proof));
    assert_refused(&(s, v), 400, "invalid_dpop_proof", "already used");
    let denied = b.audit("type=token.exchange&decision=deny");
    assert!(
        denied
            .iter()
            .any(|e| e["reason"].as_str().unwrap_or("").contains("replayed")),
        "{denied:?}"
    );
    // A proof whose first use was refused is spent all the same: replayed
    // at B with another request, it is refused there.
    let proof = proof_with(
        &key,
        json!({"jti": jti(), "htm": "POST", "htu": a.named_token_url(), "iat": now(), "nonce": nonce_of(&b, &body)}),
    );
    let (s, v) = a.exchange_raw(&form(&mandate, CRM, "write"), Some(&proof));
    assert_eq!(s, 400, "refused at A: {v}");
    let (s, v) = b.exchange_raw(&body, Some(&proof));
    assert_refused(&(s, v), 400, "invalid_dpop_proof", "already used");
    // A fresh proof is fine at B.
    assert_eq!(b.exchange(&mandate, &key, CRM, "read").0, 200);
}

/// A fleet whose brokers run different proof windows (as during a rolling
/// change of `--dpop-max-age`): a proof used at the broker with the short
/// window, once that window has passed there, is still refused by the
/// broker with the long one, which judges it fresh.
#[test]
fn a_proof_used_at_a_broker_with_a_short_window_is_refused_at_one_with_a_long_one() {
    let url = fresh_database();
    let a = Broker::start_with("brk-window-a", |c| {
        on(&url)(c);
        c.dpop_max_age = 10;
    });
    let b = a.peer_with("brk-window-b", |c| c.dpop_max_age = 60);
    let grant = a.seed("acme");
    synced(&a, &b);
    let (_, mandate, key) = a.start_run("acme", &grant, Alg::EdDSA);
    let body = form(&mandate, CRM, "read");
    let at = |x: &Broker| mandate_core::clock::Clock::now_secs(x.clock.as_ref());
    let dated = |x: &Broker, nonce: &str| {
        proof_with(
            &key,
            json!({"jti": jti(), "htm": "POST", "htu": a.named_token_url(), "iat": at(x), "nonce": nonce}),
        )
    };
    let captured = dated(&a, &nonce_of(&b, &body));
    let (s, v) = a.exchange_raw(&body, Some(&captured));
    assert_eq!(s, 200, "{v}");
    // 20 s later: stale at A (10 s + 5 s), which clears what expired for
    // it at its next use; fresh at B (60 s + 5 s).
    a.advance(20);
    let (s, v) = a.exchange_raw(&body, Some(&dated(&a, &nonce_of(&a, &body))));
    assert_eq!(s, 200, "{v}");
    let (s, v) = a.exchange_raw(&body, Some(&captured));
    assert_refused(&(s, v), 400, "invalid_dpop_proof", "old");
    let (s, v) = b.exchange_raw(&body, Some(&captured));
    assert_refused(&(s, v), 400, "invalid_dpop_proof", "already used");
}

/// Brokers whose clocks are apart (B 30 s behind A): a proof used at A,
/// stale there once A's window has passed, is still fresh by B's clock;
/// A's next use must not have cleared it. (Both clocks behind the
/// database's, which caps how far any broker clears.)
#[test]
fn a_proof_used_at_one_broker_is_refused_at_another_whose_clock_is_behind() {
    let url = fresh_database();
    let first = Broker::start_with("brk-skew", on(&url));
    let clock = |behind: u64| {
        let c = Arc::new(mandate_core::clock::ShiftedClock::new());
        c.go_back_secs(behind);
        c
    };
    let a = first.peer_on_clock("brk-skew-a", clock(60));
    let b = first.peer_on_clock("brk-skew-b", clock(90));
    let grant = first.seed("acme");
    synced(&first, &b);
    let (_, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
    let body = form(&mandate, CRM, "read");
    let at = |x: &Broker| mandate_core::clock::Clock::now_secs(x.clock.as_ref());
    // Later than B started (it needs no nonce of B's there), dated by B's
    // clock: 30 s old at A, before A started (it carries A's nonce).
    let dated = |iat: u64| {
        proof_with(
            &key,
            json!({"jti": jti(), "htm": "POST", "htu": a.named_token_url(), "iat": iat,
                   "nonce": nonce_of(&a, &body)}),
        )
    };
    a.advance(10);
    b.advance(10);
    let captured = dated(at(&b));
    let (s, v) = a.exchange_raw(&body, Some(&captured));
    assert_eq!(s, 200, "{v}");
    // 40 s later: 70 s old at A (stale, and cleared at A's next use
    // without the store's margin), 40 s old at B (fresh).
    a.advance(40);
    b.advance(40);
    let fresh = dated(at(&a));
    let (s, v) = a.exchange_raw(&body, Some(&fresh));
    assert_eq!(s, 200, "{v}");
    let (s, v) = b.exchange_raw(&body, Some(&captured));
    assert_refused(&(s, v), 400, "invalid_dpop_proof", "already used");
}

#[test]
fn an_attenuation_use_limit_is_spent_exactly_its_limit_across_brokers() {
    let url = fresh_database();
    let a = std::sync::Arc::new(Broker::start_with("brk-uses-a", on(&url)));
    let b = std::sync::Arc::new(a.peer("brk-uses-b"));
    let grant = a.seed("acme");
    synced(&a, &b);
    let (_, m0, k0) = a.start_run("acme", &grant, Alg::EdDSA);
    let limited = attenuate(
        &m0,
        &k0,
        &Narrowing {
            max_uses: Some(3),
            ..Default::default()
        },
    )
    .unwrap();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let x = std::sync::Arc::clone(if i % 2 == 0 { &a } else { &b });
            let (m, k) = (limited.clone(), k0.clone());
            std::thread::spawn(move || x.exchange(&m, &k, CRM, "read").0)
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 400),
        "{statuses:?}"
    );
}

#[test]
fn the_feed_at_any_broker_carries_every_brokers_revocations_in_one_sequence() {
    let url = fresh_database();
    let a = Broker::start_with("brk-feed-a", on(&url));
    let b = a.peer("brk-feed-b");
    let grant = a.seed("acme");
    let (r1, ..) = a.start_run("acme", &grant, Alg::EdDSA);
    let (r2, ..) = a.start_run("acme", &grant, Alg::EdDSA);
    for (x, run) in [(&a, &r1), (&b, &r2)] {
        let (s, v) = x.admin_post(
            "/v1/revocations",
            json!({"kind": "run", "id": run, "reason": "test"}),
        );
        assert_eq!(s, 200, "{v}");
    }
    for x in [&a, &b] {
        within("both revocations in the log", || {
            let (s, v) = x.admin_get("/v1/revocations/log?after=0");
            s == 200 && v["revocations"].as_array().unwrap().len() == 2
        });
        let (_, v) = x.admin_get("/v1/revocations/log?after=0");
        let keys: Vec<&str> = v["revocations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["key"].as_str().unwrap())
            .collect();
        assert_eq!(keys, [format!("run:{r1}"), format!("run:{r2}")]);
        assert_eq!(v["head"], v["revocations"][1]["seq"], "{v}");
    }
    // A reader that saw A's head may resume at B at once.
    let (_, v) = a.admin_get("/v1/revocations/log?after=0");
    let head = v["head"].as_u64().unwrap();
    let (s, v) = b.admin_get(&format!("/v1/revocations/log?after={head}"));
    assert_eq!(s, 200, "{v}");
}

#[test]
fn a_policy_change_at_one_broker_decides_at_the_other() {
    let url = fresh_database();
    let a = Broker::start_with("brk-policy-a", on(&url));
    let b = a.peer("brk-policy-b");
    let grant = a.seed("acme");
    let (_, mandate, key) = a.start_run("acme", &grant, Alg::EdDSA);
    synced(&a, &b);
    assert_eq!(b.exchange(&mandate, &key, CRM, "read").0, 200);
    let (s, v) = a.admin_put_text(
        "/v1/tenants/acme/policies/no-reads",
        r#"@id("no-reads") forbid (principal, action == Mandate::Action::"exchange", resource) when { context.action == "read" };"#,
    );
    assert_eq!(s, 200, "{v}");
    let took = within("B applies A's policy", || {
        b.exchange(&mandate, &key, CRM, "read").0 == 403
    });
    assert!(took < Duration::from_secs(3), "{took:?}");
}

/// A TCP relay in front of the database that can be cut (every connection
/// closed, new ones closed at once) and restored.
struct Relay {
    addr: std::net::SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    fn to(target: std::net::SocketAddr) -> Relay {
        use std::sync::atomic::Ordering;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, o) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in l.incoming().flatten() {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(server) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                let mut g = o.lock().unwrap();
                g.push(client.try_clone().unwrap());
                g.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay { addr, cut, open }
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// `url` with its host and port replaced by the relay's.
    fn url(&self, url: &str) -> String {
        let at = url.rfind('@').unwrap();
        let slash = at + url[at..].find('/').unwrap();
        format!("{}{}{}", &url[..=at], self.addr, &url[slash..])
    }
}

/// A peer of `a` that reaches the database through a relay that can be cut.
fn behind_relay(a: &Broker, url: &str, tag: &str) -> (Relay, Broker) {
    let at = url.rfind('@').unwrap();
    let rest = &url[at + 1..];
    let relay = Relay::to(rest[..rest.find('/').unwrap()].parse().unwrap());
    let via = relay.url(url);
    let b = a.peer_on(tag, Secret::new(via.as_bytes().to_vec()));
    (relay, b)
}

#[test]
fn a_broker_cut_from_the_database_fails_closed_and_recovers_by_itself() {
    let url = fresh_database();
    let a = Broker::start_with("brk-cut-a", on(&url));
    let grant = a.seed("acme");
    let (run, mandate, key) = a.start_run("acme", &grant, Alg::EdDSA);
    // B reaches the database through a relay that will be cut.
    let (relay, b) = behind_relay(&a, &url, "brk-cut-b");
    synced(&a, &b);
    let (s, v) = b.exchange(&mandate, &key, CRM, "read");
    assert_eq!(s, 200, "{v}");
    let issued = v["access_token"].as_str().unwrap().to_owned();
    relay.cut();
    // Nothing is issued without the database: 503, said so, retry later.
    let (s, v) = b.exchange(&mandate, &key, CRM, "read");
    assert_eq!(
        (s, v["error"].as_str()),
        (503, Some("temporarily_unavailable")),
        "{v}"
    );
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("database"),
        "{v}"
    );
    // What tools verify with is still served: the keys, and introspection of
    // what was issued before.
    let (s, _) = read(
        Broker::agent()
            .get(format!("{}/jwks.json", b.url))
            .call()
            .unwrap(),
    );
    assert_eq!(s, 200);
    assert_eq!(introspect(&b, &issued)["active"], true);
    // Meanwhile A revokes the run.
    let (s, v) = a.admin_post(
        "/v1/revocations",
        json!({"kind": "run", "id": run, "reason": "while B was cut off"}),
    );
    assert_eq!(s, 200, "{v}");
    relay.restore();
    // B recovers by itself: it hears what it missed, and refuses the run.
    within("B hears the revocation it missed", || {
        b.state.reg().revoked.contains(&format!("run:{run}"))
    });
    assert_eq!(introspect(&b, &issued)["active"], false);
    let (s, v) = b.exchange(&mandate, &key, CRM, "read");
    assert_eq!(s, 400, "{v}");
    let (_, m2, k2) = b.start_run("acme", &grant, Alg::EdDSA);
    assert_eq!(b.exchange(&m2, &k2, CRM, "read").0, 200);
    let (s, v) = b.admin_get("/v1/audit/verify");
    assert_eq!((s, &v["ok"]), (200, &json!(true)), "{v}");
}

#[test]
fn a_runs_history_at_one_broker_counts_at_the_other() {
    let url = fresh_database();
    let a = Broker::start_with("brk-hist-a", on(&url));
    let b = a.peer("brk-hist-b");
    let grant = a.seed("acme");
    let (s, v) = a.admin_put_text(
        "/v1/tenants/acme/policies/budget",
        r#"@id("two-per-tool") forbid (principal, action == Mandate::Action::"exchange", resource) when { context.history.tool_exchanges >= 2 };"#,
    );
    assert_eq!(s, 200, "{v}");
    let (run, mandate, key) = a.start_run("acme", &grant, Alg::EdDSA);
    for _ in 0..2 {
        assert_eq!(a.exchange(&mandate, &key, CRM, "read").0, 200);
    }
    // Once B has read A's events, the run's two credentials count there too.
    let head = a.audit("limit=1")[0]["seq"].as_u64().unwrap();
    within("B reads A's events", || {
        b.state
            .followed_audit
            .load(std::sync::atomic::Ordering::Acquire)
            >= head
    });
    synced(&a, &b);
    let (s, v) = b.exchange(&mandate, &key, CRM, "read");
    assert_eq!(s, 403, "{v}");
    // B's own refusal does not count as a third credential at A.
    let (s, _) = a.exchange(&mandate, &key, CRM, "read");
    assert_eq!(s, 403);
    for x in [&a, &b] {
        let h = x.state.history.lock().unwrap();
        let facts = h.facts(&run, 0, ("acme", "triage", "crm"), now());
        assert_eq!(facts.tool_exchanges, 2, "counted once at each broker");
    }
}

#[test]
fn a_key_rotation_at_one_broker_is_picked_up_by_the_others() {
    let url = fresh_database();
    let a = Broker::start_with("brk-keys-a", on(&url));
    let b = a.peer("brk-keys-b");
    let grant = a.seed("acme");
    let before = b.state.keyset().current_kids();
    assert_eq!(before, a.state.keyset().current_kids(), "one set of keys");
    // A restarts with `--rotate-keys`: B signs with the new keys soon after.
    let a = a.restart_with(|c| {
        c.store_url = Some(Secret::new(url.as_bytes().to_vec()));
        c.rotate_keys = true;
    });
    let after = a.state.keyset().current_kids();
    assert!(after.iter().zip(&before).all(|(x, y)| x != y), "rotated");
    within("B signs with the rotated keys", || {
        b.state.keyset().current_kids() == after
    });
    synced(&a, &b);
    let (_, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
    let (s, v) = b.exchange(&mandate, &key, CRM, "read");
    assert_eq!(s, 200, "{v}");
    let token = v["access_token"].as_str().unwrap();
    let header: serde_json::Value = serde_json::from_slice(
        &mandate_core::jose::unb64("header", token.split('.').next().unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], after[1].as_str(), "signed with the new key");
    // Both brokers publish both keys (the old one until what it signed expires).
    for x in [&a, &b] {
        let (_, jwks) = read(
            Broker::agent()
                .get(format!("{}/jwks.json", x.url))
                .call()
                .unwrap(),
        );
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|k| k["kid"].as_str())
            .collect();
        assert!(
            kids.contains(&after[1].as_str()) && kids.contains(&before[1].as_str()),
            "{kids:?}"
        );
    }
}

#[test]
fn an_approval_approved_at_one_broker_is_used_once_at_another() {
    let url = fresh_database();
    let a = Broker::start_with("brk-apr-a", on(&url));
    let b = a.peer("brk-apr-b");
    let c = a.peer("brk-apr-c");
    let grant = a.seed("acme");
    let (s, v) = a.admin_put_text(
        "/v1/tenants/acme/policies/reads-wait",
        r#"@id("reads-wait") @approval("principal") forbid (principal, action == Mandate::Action::"exchange", resource) when { context.action == "read" } unless { context.approved };"#,
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = a.admin_post(
        "/v1/tenants/acme/principals/alice@example.com/approver-tokens",
        json!({}),
    );
    assert_eq!(s, 201, "{v}");
    let alice = v["token"].as_str().unwrap().to_owned();
    let (_, mandate, key) = a.start_run("acme", &grant, Alg::EdDSA);
    for x in [&b, &c] {
        synced(&a, x);
    }
    // Asked at C, approved at A, used at B, and then no more (at C).
    let (s, v) = c.exchange(&mandate, &key, CRM, "read");
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("authorization_pending")),
        "{v}"
    );
    let id = v["approval_id"].as_str().unwrap().to_owned();
    let (s, v) = read(
        Broker::agent()
            .post(format!("{}/v1/approvals/{id}/approve", a.url))
            .header("Authorization", &format!("Bearer {alice}"))
            .send_empty()
            .unwrap(),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = b.exchange(&mandate, &key, CRM, "read");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["approval_id"].as_str().unwrap_or(&id), id, "{v}");
    let (s, v) = c.exchange(&mandate, &key, CRM, "read");
    assert_ne!(s, 200, "the approval was spent at B: {v}");
    assert_ne!(v["approval_id"].as_str(), Some(id.as_str()), "{v}");
}

/// The `jti` of a compact JWS credential.
fn jti_of(token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&mandate_core::jose::unb64("payload", payload).unwrap()).unwrap();
    claims["jti"].as_str().unwrap().to_owned()
}

#[test]
fn under_load_a_cut_from_the_database_loses_no_answered_credential() {
    let url = fresh_database();
    let a = Broker::start_with("brk-load-a", on(&url));
    let grant = a.seed("acme");
    let (run, mandate, key) = a.start_run("acme", &grant, Alg::EdDSA);
    let (relay, b) = behind_relay(&a, &url, "brk-load-b");
    synced(&a, &b);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (answered, statuses) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let (mut jtis, mut statuses) = (Vec::new(), Vec::new());
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let (s, v) = b.exchange(&mandate, &key, CRM, "read");
                        if s == 200 {
                            jtis.push(jti_of(v["access_token"].as_str().unwrap()));
                        }
                        statuses.push(s);
                    }
                    (jtis, statuses)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(700));
        relay.cut();
        std::thread::sleep(Duration::from_millis(700));
        relay.restore();
        // Recovered by itself: exchanges succeed again.
        within("B issues again", || {
            b.exchange(&mandate, &key, CRM, "read").0 == 200
        });
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = (Vec::new(), Vec::new());
        for w in workers {
            let (j, s) = w.join().unwrap();
            all.0.extend(j);
            all.1.extend(s);
        }
        all
    });
    assert!(statuses.contains(&503), "the cut was felt: {statuses:?}");
    assert!(
        statuses.iter().all(|s| [200, 503].contains(s)),
        "only issued or unavailable: {:?}",
        statuses
            .iter()
            .filter(|s| ![200, 503].contains(*s))
            .collect::<Vec<_>>()
    );
    // Every credential B answered is in the trail (read at A).
    let events = a.audit(&format!(
        "run={run}&type=token.exchange&decision=allow&limit=100000"
    ));
    let audited: std::collections::HashSet<&str> = events
        .iter()
        .filter_map(|e| e["credential_id"].as_str())
        .collect();
    let missing: Vec<_> = answered
        .iter()
        .filter(|j| !audited.contains(j.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} answered without an event",
        missing.len()
    );
    assert!(
        answered.len() > 10,
        "the load got going: {}",
        answered.len()
    );
    let (s, v) = a.admin_get("/v1/audit/verify");
    assert_eq!((s, &v["ok"]), (200, &json!(true)), "{v}");
}

#[test]
fn an_admin_credential_replaced_at_one_broker_stops_working_at_the_others() {
    let url = fresh_database();
    let a = Broker::start_with("brk-admin-a", on(&url));
    let b = a.peer("brk-admin-b");
    a.seed("acme");
    let leaked = a.admin.clone();
    assert_eq!(b.admin_get("/v1/tenants").0, 200);
    // `--new-admin-token` at A (for a leaked credential): refused at B too.
    let a = a.restart_with(|c| {
        c.store_url = Some(Secret::new(url.as_bytes().to_vec()));
        c.new_admin_token = true;
    });
    assert_ne!(a.admin, leaked);
    within("B refuses the replaced credential", || {
        b.admin_get("/v1/tenants").0 == 401
    });
    let (s, _) = read(
        Broker::agent()
            .get(format!("{}/v1/tenants", b.url))
            .header("Authorization", &format!("Bearer {}", a.admin))
            .call()
            .unwrap(),
    );
    assert_eq!(s, 200, "the new one works at B");
}

#[test]
fn a_join_token_revoked_elsewhere_starts_no_run_here() {
    let url = fresh_database();
    let a = Broker::start_with("brk-join-a", on(&url));
    let b = a.peer("brk-join-b");
    let grant = a.seed("acme");
    let (s, v) = a.admin_post(
        "/v1/tenants/acme/agents/triage/join-tokens",
        json!({"principal": "alice@example.com", "grant": grant}),
    );
    assert_eq!(s, 201, "{v}");
    let (token, id) = (
        v["token"].as_str().unwrap().to_owned(),
        v["id"].as_str().unwrap().to_owned(),
    );
    synced(&a, &b);
    // Revoked in the store; B's memory has not heard (its reading held).
    let held = b.state.following.lock().unwrap();
    sql(
        &url,
        &format!(
            "INSERT INTO revocations (key, reason, time_ms, until, tenant) VALUES ('cred:{id}', 'leaked', 0, 0, 'acme')"
        ),
    );
    let key = mandate_core::keys::SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng);
    let (s, v) = read(
        Broker::agent()
            .post(format!("{}/v1/runs", b.url))
            .header("Authorization", &format!("Bearer {token}"))
            .send_json(
                json!({"tenant": "acme", "agent": "triage", "principal": "alice@example.com",
                              "grant": grant, "jwk": key.public().to_json()}),
            )
            .unwrap(),
    );
    drop(held);
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error_description"].as_str().unwrap().contains("revoked"),
        "{v}"
    );
    let runs = b.admin_get("/v1/runs?tenant=acme").1;
    assert_eq!(runs.as_array().unwrap().len(), 0, "no run started: {runs}");
}

#[test]
fn an_approver_credential_revoked_elsewhere_decides_nothing_here() {
    let url = fresh_database();
    let a = Broker::start_with("brk-apv-a", on(&url));
    let b = a.peer("brk-apv-b");
    let grant = a.seed("acme");
    let (s, v) = a.admin_put_text(
        "/v1/tenants/acme/policies/reads-wait",
        r#"@id("reads-wait") @approval("principal") forbid (principal, action == Mandate::Action::"exchange", resource) when { context.action == "read" } unless { context.approved };"#,
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = a.admin_post(
        "/v1/tenants/acme/principals/alice@example.com/approver-tokens",
        json!({}),
    );
    assert_eq!(s, 201, "{v}");
    let (alice, cred) = (
        v["token"].as_str().unwrap().to_owned(),
        v["id"].as_str().unwrap().to_owned(),
    );
    let (_, mandate, key) = a.start_run("acme", &grant, Alg::EdDSA);
    synced(&a, &b);
    let (s, v) = a.exchange(&mandate, &key, CRM, "read");
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("authorization_pending")),
        "{v}"
    );
    let id = v["approval_id"].as_str().unwrap().to_owned();
    // The approver credential is revoked in the store; B has not heard.
    let held = b.state.following.lock().unwrap();
    sql(
        &url,
        &format!(
            "INSERT INTO revocations (key, reason, time_ms, until, tenant) VALUES ('cred:{cred}', 'leaked', 0, 0, 'acme')"
        ),
    );
    let (s, v) = read(
        Broker::agent()
            .post(format!("{}/v1/approvals/{id}/approve", b.url))
            .header("Authorization", &format!("Bearer {alice}"))
            .send_empty()
            .unwrap(),
    );
    drop(held);
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error_description"].as_str().unwrap().contains("revoked"),
        "{v}"
    );
    // Still pending: the exchange keeps waiting.
    let (s, v) = a.exchange(&mandate, &key, CRM, "read");
    assert_eq!(
        (s, v["approval_id"].as_str()),
        (400, Some(id.as_str())),
        "{v}"
    );
}

#[test]
fn a_run_revoked_elsewhere_delegates_nothing_here() {
    let url = fresh_database();
    let a = Broker::start_with("brk-deleg-a", on(&url));
    let b = a.peer("brk-deleg-b");
    let grant = a.seed("acme");
    let (s, v) = a.admin_post(
        "/v1/tenants/acme/agents",
        json!({"name": "researcher", "owner": "team-ops", "envelope": ["crm:*"]}),
    );
    assert_eq!(s, 201, "{v}");
    let (run, mandate, key) = a.start_run("acme", &grant, Alg::EdDSA);
    synced(&a, &b);
    let child = mandate_core::keys::SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng);
    let delegate = |x: &Broker, nonce: Option<&str>| {
        let proof = mandate_core::client::dpop_proof(
            &key,
            "POST",
            &format!("{}/v1/runs/delegate", x.issuer),
            now(),
            &jti(),
            nonce,
            None,
        );
        read(
            Broker::agent()
                .post(format!("{}/v1/runs/delegate", x.url))
                .header("DPoP", &proof)
                .send_json(json!({"mandate": mandate, "agent": "researcher", "jwk": child.public().to_json()}))
                .unwrap(),
        )
    };
    let (s, v) = delegate(&a, None);
    assert_eq!(s, 201, "{v}");
    // (B started after A: it asks for its nonce, RFC 9449 §8.)
    let nonce = nonce_of(&b, &form(&mandate, CRM, "read"));
    // The parent run is revoked in the store; B has not heard.
    let held = b.state.following.lock().unwrap();
    sql(
        &url,
        &format!(
            "INSERT INTO revocations (key, reason, time_ms, until, tenant) VALUES ('run:{run}', 'test', 0, 0, 'acme')"
        ),
    );
    let (s, v) = delegate(&b, Some(&nonce));
    drop(held);
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error_description"].as_str().unwrap().contains("revoked"),
        "{v}"
    );
}
