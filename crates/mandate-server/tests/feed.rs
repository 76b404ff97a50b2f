//! The revocation feed: the log after N, and Server-Sent Events that resume
//! from `Last-Event-ID` without missing an entry.

#![allow(clippy::unwrap_used)]
mod common;

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use mandate_core::jose::Alg;
use serde_json::{Value, json};

/// Opens the SSE feed and forwards each event's (id, data) to a channel.
fn subscribe(b: &Broker, last_event_id: Option<u64>) -> mpsc::Receiver<(u64, Value)> {
    subscribe_as(b, &b.admin, last_event_id)
}

/// [`subscribe`] with `token` (the admin's or a feed credential).
fn subscribe_as(
    b: &Broker,
    token: &str,
    last_event_id: Option<u64>,
) -> mpsc::Receiver<(u64, Value)> {
    let mut req = Broker::agent()
        .get(format!("{}/v1/revocations/feed", b.url))
        .header("Authorization", &format!("Bearer {token}"));
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", &id.to_string());
    }
    let resp = req.call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let reader = BufReader::new(resp.into_body().into_reader());
        let (mut id, mut data) = (0u64, String::new());
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().unwrap();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim());
            } else if line.is_empty() && !data.is_empty() {
                if tx.send((id, serde_json::from_str(&data).unwrap())).is_err() {
                    return;
                }
                data.clear();
            }
        }
    });
    rx
}

fn next(rx: &mpsc::Receiver<(u64, Value)>) -> (u64, Value) {
    rx.recv_timeout(Duration::from_secs(5))
        .expect("no revocation event within 5 s")
}

#[test]
fn revocation_log_returns_everything_after_n() {
    let b = Broker::start("log");
    let grant = b.seed("acme");
    let mut runs = Vec::new();
    for _ in 0..3 {
        let (run, _, _) = b.start_run("acme", &grant, Alg::EdDSA);
        assert_eq!(
            b.admin_post("/v1/revocations", json!({"kind": "run", "id": run}))
                .0,
            200
        );
        runs.push(run);
    }
    let (s, v) = b.admin_get("/v1/revocations/log?after=0");
    assert_eq!(s, 200, "{v}");
    let items = v["revocations"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[2]["key"], format!("run:{}", runs[2]));
    assert_eq!(v["head"], items[2]["seq"]);
    let first = items[0]["seq"].as_u64().unwrap();
    let (_, v) = b.admin_get(&format!("/v1/revocations/log?after={first}"));
    assert_eq!(v["revocations"].as_array().unwrap().len(), 2);
}

#[test]
fn feed_streams_live_and_resumes_after_a_drop_without_missing_an_entry() {
    let b = Broker::start("feed");
    let grant = b.seed("acme");
    let rx = subscribe(&b, None);
    let (run_a, _, _) = b.start_run("acme", &grant, Alg::EdDSA);
    assert_eq!(
        b.admin_post("/v1/revocations", json!({"kind": "run", "id": run_a}))
            .0,
        200
    );
    let (id_a, ev) = next(&rx);
    assert_eq!(ev["key"], format!("run:{run_a}"));
    drop(rx); // the verifier goes away...
    let (run_b, _, _) = b.start_run("acme", &grant, Alg::EdDSA);
    let (run_c, _, _) = b.start_run("acme", &grant, Alg::EdDSA);
    assert_eq!(
        b.admin_post("/v1/revocations", json!({"kind": "run", "id": run_b}))
            .0,
        200
    );
    assert_eq!(
        b.admin_post(&format!("/v1/runs/{run_c}/end"), json!({})).0,
        200
    );
    // ...and comes back: it gets what it missed, in order, then live events.
    let rx = subscribe(&b, Some(id_a));
    let (id_b, ev) = next(&rx);
    assert_eq!(
        (id_b, ev["key"].clone()),
        (id_a + 1, json!(format!("run:{run_b}")))
    );
    let (id_c, ev) = next(&rx);
    assert_eq!(
        (id_c, ev["key"].clone()),
        (id_a + 2, json!(format!("run:{run_c}")))
    );
    assert_eq!(
        b.admin_post(
            "/v1/revocations",
            json!({"kind": "agent", "tenant": "acme", "id": "triage"})
        )
        .0,
        200
    );
    let (id_d, ev) = next(&rx);
    assert_eq!(
        (id_d, ev["key"].clone()),
        (id_c + 1, json!("agent:acme/triage"))
    );
}

#[test]
fn feed_refuses_strangers_and_bad_resume_points() {
    let b = Broker::start("feed-auth");
    let r = Broker::agent()
        .get(format!("{}/v1/revocations/feed", b.url))
        .call()
        .unwrap();
    assert_refused(&read(r), 401, "invalid_token", "admin credential");
    let r = Broker::agent()
        .get(format!("{}/v1/revocations/feed", b.url))
        .header("Authorization", &format!("Bearer {}", b.admin))
        .header("Last-Event-ID", "yesterday")
        .call()
        .unwrap();
    assert_refused(&read(r), 400, "invalid_request", "Last-Event-ID");
}

#[test]
fn a_feed_credential_reads_the_feed_and_nothing_else() {
    let b = Broker::start("feed-token");
    b.seed("acme");
    let (s, v) = b.admin_post("/v1/feed-tokens", serde_json::json!({}));
    assert_eq!(s, 201, "{v}");
    let t = v["token"].as_str().unwrap().to_owned();
    assert!(t.starts_with("mandate_feed_"));
    let get = |path: &str, token: Option<&str>| {
        let mut r = Broker::agent().get(format!("{}{path}", b.url));
        if let Some(t) = token {
            r = r.header("Authorization", &format!("Bearer {t}"));
        }
        read(r.call().unwrap())
    };
    let (s, v) = get("/v1/revocations/log?after=0", Some(&t));
    assert_eq!(s, 200, "{v}");
    assert_refused(
        &get("/v1/tenants", Some(&t)),
        403,
        "insufficient_scope",
        "not an admin credential",
    );
    assert_refused(
        &get("/v1/revocations/log", Some("mandate_feed_forged")),
        401,
        "invalid_token",
        "not valid",
    );
    assert_refused(
        &get("/v1/revocations/log", None),
        401,
        "invalid_token",
        "feed credential",
    );
    // Still valid after a restart.
    let dir = b.dir.clone();
    drop(b);
    let b = Broker::start_again(&dir);
    let r = read(
        Broker::agent()
            .get(format!("{}/v1/revocations/log?after=0", b.url))
            .header("Authorization", &format!("Bearer {t}"))
            .call()
            .unwrap(),
    );
    assert_eq!(r.0, 200, "{}", r.1);
}

/// A feed credential limited to a tenant reads that tenant's revocations
/// (and the kill switch), the others' only as placeholders, no reasons;
/// it expires; an open feed ends when it is revoked (issue 10, review).
#[test]
fn a_tenant_feed_credential_sees_its_tenant_only_and_ends_when_revoked() {
    let b = Broker::start("feed-scoped");
    b.seed("acme");
    b.seed("beta");
    assert_refused(
        &b.admin_post("/v1/feed-tokens", json!({"tenant": "ghost"})),
        404,
        "not_found",
        "ghost",
    );
    for bad in [json!({"ttl_secs": 0}), json!({"ttl_secs": 400 * 86_400})] {
        assert_refused(
            &b.admin_post("/v1/feed-tokens", bad),
            400,
            "invalid_request",
            "ttl_secs",
        );
    }
    let (s, v) = b.admin_post("/v1/feed-tokens", json!({"tenant": "acme"}));
    assert_eq!(s, 201, "{v}");
    let (id, t) = (
        v["id"].as_str().unwrap().to_owned(),
        v["token"].as_str().unwrap().to_owned(),
    );
    assert_eq!(v["tenant"], "acme");
    let revoke = |kind: &str, tenant: Option<&str>, id: &str, reason: &str| {
        let (s, v) = b.admin_post(
            "/v1/revocations",
            json!({"kind": kind, "tenant": tenant, "id": id, "reason": reason}),
        );
        assert_eq!(s, 200, "{v}");
        v["seq"].as_u64().unwrap()
    };
    let rx = subscribe_as(&b, &t, None);
    let theirs = revoke("agent", Some("beta"), "triage", "beta-secret-reason");
    let mine = revoke("agent", Some("acme"), "triage", "acme-secret-reason");
    // A credential of the other tenant revoked by its id alone.
    let (_, v) = b.admin_post(
        "/v1/tenants/beta/principals/alice@example.com/approver-tokens",
        json!({}),
    );
    let apv = v["id"].as_str().unwrap().to_owned();
    let theirs_too = revoke("credential", None, &apv, "beta-secret-reason");
    let log = read(
        Broker::agent()
            .get(format!("{}/v1/revocations/log?after=0", b.url))
            .header("Authorization", &format!("Bearer {t}"))
            .call()
            .unwrap(),
    );
    assert_eq!(log.0, 200, "{}", log.1);
    let text = log.1.to_string();
    assert!(!text.contains("beta") && !text.contains("secret"), "{text}");
    let items = log.1["revocations"].as_array().unwrap();
    assert_eq!(items[0], json!({"seq": theirs, "redacted": true}));
    assert_eq!(items[1]["key"], "agent:acme/triage");
    assert!(items[1].get("reason").is_none(), "{text}");
    assert_eq!(items[2], json!({"seq": theirs_too, "redacted": true}));
    assert!(!text.contains(&apv), "{text}");
    // The feed: the same, with contiguous sequence numbers.
    assert_eq!(
        next(&rx),
        (theirs, json!({"seq": theirs, "redacted": true}))
    );
    let (seq, v) = next(&rx);
    assert_eq!((seq, v["key"].as_str()), (mine, Some("agent:acme/triage")));
    // Revoking the credential ends the open feed, and it reads nothing more.
    revoke("credential", None, &id, "rotated");
    let ended = (0..20).any(|_| {
        matches!(
            rx.recv_timeout(Duration::from_secs(1)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        )
    });
    assert!(ended, "the feed of a revoked credential did not end");
    assert_refused(
        &read(
            Broker::agent()
                .get(format!("{}/v1/revocations/log", b.url))
                .header("Authorization", &format!("Bearer {t}"))
                .call()
                .unwrap(),
        ),
        401,
        "invalid_token",
        "revoked",
    );
    // Expiry.
    let (_, v) = b.admin_post("/v1/feed-tokens", json!({"ttl_secs": 1}));
    let short = v["token"].as_str().unwrap().to_owned();
    b.advance(2);
    assert_refused(
        &read(
            Broker::agent()
                .get(format!("{}/v1/revocations/log", b.url))
                .header("Authorization", &format!("Bearer {short}"))
                .call()
                .unwrap(),
        ),
        401,
        "invalid_token",
        "expired",
    );
}

/// A verifier whose position is past the head (the broker was restored from
/// a backup) is told so, with the head, instead of being answered with
/// silence: it reads the log again from the start.
#[test]
fn a_resume_point_past_the_head_is_refused_with_the_head() {
    let b = Broker::start("feed-ahead");
    b.seed("acme");
    for id in ["a", "b"] {
        let (s, v) = b.admin_post("/v1/revocations", json!({"kind": "credential", "id": id}));
        assert_eq!(s, 200, "{v}");
    }
    let (s, v) = b.admin_get("/v1/revocations/log?after=2");
    assert_eq!((s, v["head"].as_u64()), (200, Some(2)), "{v}");
    let (s, v) = b.admin_get("/v1/revocations/log?after=6");
    assert_eq!(s, 409, "{v}");
    assert_eq!(
        (v["error"].as_str(), v["head"].as_u64()),
        (Some("position_ahead"), Some(2))
    );
    for (header, query) in [(Some("6"), ""), (None, "?after=6")] {
        let mut r = Broker::agent()
            .get(format!("{}/v1/revocations/feed{query}", b.url))
            .header("Authorization", &format!("Bearer {}", b.admin));
        if let Some(h) = header {
            r = r.header("Last-Event-ID", h);
        }
        let (s, v) = read(r.call().unwrap());
        assert_eq!(s, 409, "{v}");
        assert_eq!(v["head"].as_u64(), Some(2), "{v}");
    }
}

/// A lost admin credential: `mandate serve --new-admin-token` (who holds
/// the master key) revokes every admin credential and writes a new one;
/// feed credentials are not admin credentials and keep working; both
/// changes are in the trail, which still verifies.
#[test]
fn a_new_admin_credential_revokes_the_old_ones() {
    let b = Broker::start("new-admin");
    b.seed("acme");
    let (_, v) = b.admin_post("/v1/feed-tokens", json!({}));
    let feed = v["token"].as_str().unwrap().to_owned();
    let old = b.admin.clone();
    let b = b.restart_with(|c| c.new_admin_token = true);
    assert_ne!(b.admin, old);
    let url = b.url.clone();
    let get = |token: &str, path: &str| {
        read(
            Broker::agent()
                .get(format!("{url}{path}"))
                .header("Authorization", &format!("Bearer {token}"))
                .call()
                .unwrap(),
        )
    };
    assert_refused(&get(&old, "/v1/tenants"), 401, "invalid_token", "not valid");
    assert_eq!(get(&b.admin, "/v1/tenants").0, 200);
    assert_eq!(get(&feed, "/v1/revocations/log?after=0").0, 200);
    let revoked = b.audit("type=admin_token.revoke");
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0]["details"]["id"], "bootstrap");
    let created = b.audit("type=admin_token.create");
    assert_eq!(created.len(), 2, "{created:?}");
    assert_eq!(
        revoked[0]["details"]["replaced_by"],
        created[1]["details"]["id"]
    );
    // A plain restart keeps the new one.
    let now = b.admin.clone();
    let b = b.restart();
    assert_eq!(b.admin, now);
    assert_eq!(get(&now, "/v1/tenants").0, 200);
    assert_eq!(b.admin_get("/v1/audit/verify").1["ok"], true);
}
