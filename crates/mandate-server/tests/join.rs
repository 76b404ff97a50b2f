//! One-time join tokens: what `mandate exec` starts a run with on an agent
//! host instead of the admin credential.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use mandate_core::jose::Alg;
use mandate_core::keys::SigningKey;
use serde_json::{Value, json};

fn start_with(b: &Broker, token: &str, body: Value) -> (u16, Value) {
    read(
        Broker::agent()
            .post(format!("{}/v1/runs", b.url))
            .header("Authorization", &format!("Bearer {token}"))
            .send_json(&body)
            .unwrap(),
    )
}

fn run_body(grant: &str) -> Value {
    let key = SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng);
    json!({"tenant": "acme", "agent": "triage", "principal": "alice@example.com", "grant": grant,
           "jwk": key.public().to_json()})
}

fn join_token(b: &Broker, body: Value) -> String {
    let (s, v) = b.admin_post("/v1/tenants/acme/agents/triage/join-tokens", body);
    assert_eq!(s, 201, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

#[test]
fn a_join_token_starts_exactly_one_run_of_its_agent() {
    let b = Broker::start("join-once");
    let grant = b.seed("acme");
    let t = join_token(
        &b,
        json!({"principal": "alice@example.com", "grant": grant}),
    );
    assert!(t.starts_with("mandate_join_"));
    let (s, v) = start_with(&b, &t, run_body(&grant));
    assert_eq!(s, 201, "{v}");
    let run = v["run"].as_str().unwrap();
    assert_refused(
        &start_with(&b, &t, run_body(&grant)),
        401,
        "invalid_token",
        "already used",
    );
    // The trail names the token, never the secret.
    let evs = b.audit(&format!("run={run}"));
    assert!(evs.iter().any(|e| e["event_type"] == "join_token.use"));
    let text = serde_json::to_string(&b.audit("limit=1000")).unwrap();
    // `mandate_join_<hex id>_<base64url secret>`: the secret may itself
    // hold `_`, so it is what follows the id's `_`, not the last one's.
    let secret = t
        .strip_prefix("mandate_join_")
        .and_then(|r| r.split_once('_'))
        .unwrap()
        .1;
    assert_eq!(secret.len(), 43, "{t}");
    assert!(!text.contains(secret));
    // The token is stored as a hash only.
    let db = std::fs::read(b.dir.join("data/mandate.db")).unwrap();
    let wal = std::fs::read(b.dir.join("data/mandate.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(!bytes.windows(t.len()).any(|w| w == t.as_bytes()));
    }
}

#[test]
fn join_tokens_are_refused_outside_their_scope() {
    let b = Broker::start("join-refuse");
    let grant = b.seed("acme");
    let t = join_token(
        &b,
        json!({"principal": "alice@example.com", "grant": grant}),
    );
    // Another agent, or no principal, is not what the token was made for.
    let mut other = run_body(&grant);
    other["agent"] = json!("someone-else");
    assert_refused(
        &start_with(&b, &t, other),
        403,
        "insufficient_scope",
        "agent `triage`",
    );
    let mut alone = run_body(&grant);
    alone.as_object_mut().unwrap().remove("principal");
    alone.as_object_mut().unwrap().remove("grant");
    assert_refused(
        &start_with(&b, &t, alone),
        403,
        "insufficient_scope",
        "for `alice@example.com`",
    );
    // Not an admin credential.
    let r = read(
        Broker::agent()
            .get(format!("{}/v1/tenants", b.url))
            .header("Authorization", &format!("Bearer {t}"))
            .call()
            .unwrap(),
    );
    assert_refused(&r, 403, "insufficient_scope", "not an admin credential");
    // Forged: a real id with another secret; garbage; expired.
    let (id, _) = t
        .strip_prefix("mandate_join_")
        .and_then(|r| r.split_once('_'))
        .unwrap();
    let forged = format!("mandate_join_{id}_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    assert_refused(
        &start_with(&b, &forged, run_body(&grant)),
        401,
        "invalid_token",
        "not valid",
    );
    assert_refused(
        &start_with(&b, "mandate_join_zz", run_body(&grant)),
        401,
        "invalid_token",
        "not valid",
    );
    let short = join_token(
        &b,
        json!({"ttl_secs": 1, "principal": "alice@example.com", "grant": grant}),
    );
    b.advance(2);
    assert_refused(
        &start_with(&b, &short, run_body(&grant)),
        401,
        "invalid_token",
        "expired",
    );
    // Still good for its own use.
    assert_eq!(start_with(&b, &t, run_body(&grant)).0, 201);
    // Bad requests for a join token.
    assert_refused(
        &b.admin_post(
            "/v1/tenants/acme/agents/triage/join-tokens",
            json!({"ttl_secs": 0}),
        ),
        400,
        "invalid_request",
        "ttl_secs",
    );
    assert_refused(
        &b.admin_post(
            "/v1/tenants/acme/agents/triage/join-tokens",
            json!({"principal": "alice@example.com"}),
        ),
        400,
        "invalid_request",
        "both",
    );
    assert_refused(
        &b.admin_post("/v1/tenants/acme/agents/ghost/join-tokens", json!({})),
        404,
        "not_found",
        "agent `ghost`",
    );
    // A token that could never start a run is refused when asked for.
    assert_refused(
        &b.admin_post(
            "/v1/tenants/acme/agents/triage/join-tokens",
            json!({"principal": "alice@example.com", "grant": "grt_nope"}),
        ),
        404,
        "not_found",
        "grant `grt_nope`",
    );
    assert_refused(
        &b.admin_post(
            "/v1/tenants/acme/agents/triage/join-tokens",
            json!({"principal": "bob@example.com", "grant": grant}),
        ),
        400,
        "invalid_request",
        "not bob@example.com's",
    );
    b.admin_post("/v1/revocations", json!({"kind": "grant", "id": grant}));
    assert_refused(
        &b.admin_post(
            "/v1/tenants/acme/agents/triage/join-tokens",
            json!({"principal": "alice@example.com", "grant": grant}),
        ),
        400,
        "invalid_request",
        "expired or was revoked",
    );
}
