//! Human approval for risky actions (issue 5 §1): `authorization_pending`,
//! approvers (principal or group; never the admin, never the agent), the
//! retry of exactly that request, approval claims, single use, denial is
//! final, expiry, and the signed webhook.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use mandate_core::jose::Alg;
use mandate_core::keys::SigningKey;
use serde_json::{Value, json};

struct Env {
    b: Broker,
    grant: String,
    alice: String,
    bob: String,
    carol: String,
}

fn setup(tag: &str, tweak: impl FnOnce(&mut mandate_server::Config)) -> Env {
    let b = Broker::start_with(tag, tweak);
    let grant_crm = b.seed("acme");
    let _ = grant_crm;
    for (name, labels, actions) in [
        ("mail", json!(["external_send"]), json!(["send"])),
        ("pay", json!(["money"]), json!(["transfer"])),
    ] {
        let (s, v) = b.admin_post(
            "/v1/tenants/acme/tools",
            json!({"name": name, "audience": format!("https://{name}.acme.example"), "actions": actions, "labels": labels}),
        );
        assert_eq!(s, 201, "{v}");
    }
    for (id, groups) in [
        ("bob@example.com", json!(["finance"])),
        ("carol@example.com", json!([])),
    ] {
        let (s, v) = b.admin_post(
            "/v1/tenants/acme/principals",
            json!({"id": id, "groups": groups}),
        );
        assert_eq!(s, 201, "{v}");
    }
    let (s, v) = b.admin_post(
        "/v1/tenants/acme/agents",
        json!({"name": "assistant", "owner": "ops", "envelope": ["crm:read", "mail:send", "pay:transfer"]}),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = b.admin_post(
        "/v1/tenants/acme/grants",
        json!({"principal": "alice@example.com", "agent": "assistant", "capabilities": ["crm:read", "mail:send", "pay:transfer"], "task": "assist"}),
    );
    assert_eq!(s, 201, "{v}");
    let grant = v["id"].as_str().unwrap().to_owned();
    let (s, v) = b.admin_put_text(
        "/v1/tenants/acme/policies/approvals",
        include_str!("../../../examples/policies/approvals.cedar"),
    );
    assert_eq!(s, 200, "{v}");
    let token = |p: &str| {
        let (s, v) = b.admin_post(
            &format!("/v1/tenants/acme/principals/{p}/approver-tokens"),
            json!({}),
        );
        assert_eq!(s, 201, "{v}");
        v["token"].as_str().unwrap().to_owned()
    };
    let (alice, bob, carol) = (
        token("alice@example.com"),
        token("bob@example.com"),
        token("carol@example.com"),
    );
    Env {
        b,
        grant,
        alice,
        bob,
        carol,
    }
}

impl Env {
    fn run(&self) -> (String, String, SigningKey) {
        let key = SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng);
        let (s, v) = self.b.admin_post(
            "/v1/runs",
            json!({"tenant": "acme", "agent": "assistant", "principal": "alice@example.com", "grant": self.grant, "jwk": key.public().to_json()}),
        );
        assert_eq!(s, 201, "{v}");
        (
            v["run"].as_str().unwrap().into(),
            v["mandate"].as_str().unwrap().into(),
            key,
        )
    }

    fn ask(
        &self,
        m: &str,
        k: &SigningKey,
        tool: &str,
        scope: &str,
        details: Option<Value>,
        approval: Option<&str>,
    ) -> (u16, Value) {
        let mut body = form(m, tool, scope);
        if let Some(d) = details {
            body.push_str(&format!("&authorization_details={}", enc(&d.to_string())));
        }
        if let Some(a) = approval {
            body.push_str(&format!("&approval_id={}", enc(a)));
        }
        self.b.exchange_raw(&body, Some(&self.b.proof(k)))
    }

    fn as_(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.b.url);
        let auth = format!("Bearer {token}");
        let r = match (method, body) {
            ("GET", _) => Broker::agent()
                .get(&url)
                .header("Authorization", &auth)
                .call(),
            (_, Some(b)) => Broker::agent()
                .post(&url)
                .header("Authorization", &auth)
                .send_json(&b),
            (_, None) => Broker::agent()
                .post(&url)
                .header("Authorization", &auth)
                .send_empty(),
        };
        read(r.unwrap())
    }
}

fn pay(amount: i64) -> Option<Value> {
    Some(json!([{"type": "mandate", "amount": amount, "currency": "EUR", "target": "acct_42"}]))
}

fn claims(token: &str) -> Value {
    serde_json::from_slice(
        &mandate_core::jose::unb64("c", token.split('.').nth(1).unwrap()).unwrap(),
    )
    .unwrap()
}

#[test]
fn a_sequence_rule_waits_for_the_principal_and_the_retry_gets_a_named_credential() {
    let e = setup("apr-seq", |_| {});
    let (run, m, k) = e.run();
    // No personal data read yet: sending is fine.
    assert_eq!(e.ask(&m, &k, "mail", "send", None, None).0, 200);
    let (s, v) = e.ask(&m, &k, "crm", "read", None, None);
    assert_eq!(s, 200, "{v}");
    let crm_cred = v["access_token"].as_str().unwrap().to_owned();
    // After reading pii, sending waits for alice.
    let (s, v) = e.ask(&m, &k, "mail", "send", None, None);
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("authorization_pending")),
        "{v}"
    );
    let id = v["approval_id"].as_str().unwrap().to_owned();
    assert_eq!(v["interval"], 5);
    assert_eq!(v["approvers"], json!(["principal:alice@example.com"]));
    // Polling again: the same request, the same approval.
    let (_, v) = e.ask(&m, &k, "mail", "send", None, None);
    assert_eq!(v["approval_id"], id.as_str());

    // Who may not decide: bob (not an approver of it), the admin, the agent's own credential.
    let path = format!("/v1/approvals/{id}/approve");
    assert_refused(
        &e.as_(&e.bob, "POST", &path, None),
        403,
        "insufficient_scope",
        "not an approver",
    );
    assert_refused(
        &e.as_(&e.b.admin, "POST", &path, None),
        403,
        "insufficient_scope",
        "does not decide",
    );
    assert_refused(
        &e.as_(&crm_cred, "POST", &path, None),
        401,
        "invalid_token",
        "cannot approve",
    );
    assert_refused(&e.as_(&m, "POST", &path, None), 401, "invalid_token", "");
    assert_refused(
        &e.as_("mandate_approver_forged", "POST", &path, None),
        401,
        "invalid_token",
        "not valid",
    );
    // Alice sees it, with what exactly is asked, and approves.
    let (s, list) = e.as_(&e.alice, "GET", "/v1/approvals?status=pending", None);
    assert_eq!(s, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["tool"], "mail");
    assert_eq!(
        e.as_(&e.carol, "GET", "/v1/approvals?status=pending", None)
            .1,
        json!([])
    );
    let (s, v) = e.as_(
        &e.alice,
        "POST",
        &path,
        Some(json!({"comment": "ok, newsletter"})),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "approved");
    // Deciding twice is refused.
    assert_refused(
        &e.as_(&e.alice, "POST", &format!("/v1/approvals/{id}/deny"), None),
        409,
        "conflict",
        "approved",
    );

    // The retry of that request gets a credential naming the approval.
    let (s, v) = e.ask(&m, &k, "mail", "send", None, None);
    assert_eq!(s, 200, "{v}");
    let c = claims(v["access_token"].as_str().unwrap());
    assert_eq!(c["approval"]["id"], id.as_str());
    assert_eq!(c["approval"]["approver"], "principal:alice@example.com");
    assert!(c["approval"]["approved_at"].as_u64().unwrap() > 0);
    let ev = e.b.audit(&format!(
        "type=token.exchange&run={run}&decision=allow&tool=mail"
    ));
    let approved: Vec<&Value> = ev
        .iter()
        .filter(|e| !e["details"]["approval"].is_null())
        .collect();
    assert_eq!(approved.len(), 1, "{ev:?}");
    assert_eq!(
        approved[0]["details"]["approval"]["approved_by"],
        "principal:alice@example.com"
    );
    let decided = e.b.audit("type=approval.decide");
    assert_eq!(
        decided[0]["actor"], "principal:alice@example.com",
        "{decided:?}"
    );
    // Used once: the next identical request asks again.
    let (s, v) = e.ask(&m, &k, "mail", "send", None, None);
    assert_eq!(s, 400);
    assert_ne!(v["approval_id"], id.as_str());
    // Another run cannot present this approval.
    let (_, m2, k2) = e.run();
    assert_eq!(e.ask(&m2, &k2, "crm", "read", None, None).0, 200);
    assert_refused(
        &e.ask(&m2, &k2, "mail", "send", None, Some(&id)),
        400,
        "invalid_grant",
        "different request",
    );
}

#[test]
fn group_approvals_bind_the_details_and_denials_are_final() {
    let e = setup("apr-group", |_| {});
    let (_, m, k) = e.run();
    assert_eq!(e.ask(&m, &k, "pay", "transfer", pay(9_000), None).0, 200);
    let (s, v) = e.ask(&m, &k, "pay", "transfer", pay(25_000), None);
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["approvers"], json!(["group:finance"]));
    let id = v["approval_id"].as_str().unwrap().to_owned();
    // Alice is the principal but not in finance; bob is.
    assert_refused(
        &e.as_(
            &e.alice,
            "POST",
            &format!("/v1/approvals/{id}/approve"),
            None,
        ),
        403,
        "insufficient_scope",
        "",
    );
    let (s, shown) = e.as_(&e.bob, "GET", &format!("/v1/approvals/{id}"), None);
    assert_eq!(s, 200);
    assert_eq!(shown["details"]["amount"], 25_000);
    assert_eq!(
        e.as_(&e.bob, "POST", &format!("/v1/approvals/{id}/approve"), None)
            .0,
        200
    );
    // A changed detail is another request: not covered, even when named.
    assert_refused(
        &e.ask(&m, &k, "pay", "transfer", pay(25_001), Some(&id)),
        400,
        "invalid_grant",
        "different request",
    );
    let (s, v) = e.ask(&m, &k, "pay", "transfer", pay(25_000), Some(&id));
    assert_eq!(s, 200, "{v}");
    let c = claims(v["access_token"].as_str().unwrap());
    // RFC 9396 §2: an array of objects, here the one the agent declared.
    assert_eq!(c["authorization_details"].as_array().map(Vec::len), Some(1));
    assert_eq!(c["authorization_details"][0]["type"], "mandate");
    assert_eq!(c["authorization_details"][0]["amount"], 25_000);
    assert_eq!(c["approval"]["approver"], "principal:bob@example.com");

    // A denial is final for that request.
    let (_, v) = e.ask(&m, &k, "pay", "transfer", pay(30_000), None);
    let id = v["approval_id"].as_str().unwrap().to_owned();
    let (s, _) = e.as_(
        &e.bob,
        "POST",
        &format!("/v1/approvals/{id}/deny"),
        Some(json!({"comment": "not this month"})),
    );
    assert_eq!(s, 200);
    for _ in 0..2 {
        assert_refused(
            &e.ask(&m, &k, "pay", "transfer", pay(30_000), None),
            403,
            "access_denied",
            "not this month",
        );
    }
    // Bad details are refused with a reason.
    assert_refused(
        &e.ask(&m, &k, "pay", "transfer", Some(json!({"amount": 1})), None),
        400,
        "invalid_request",
        "array",
    );
    assert_refused(
        &e.ask(
            &m,
            &k,
            "pay",
            "transfer",
            Some(json!([{"type": "mandate", "amount": -5}])),
            None,
        ),
        400,
        "invalid_request",
        "from 0 to",
    );
    assert_refused(
        &e.ask(
            &m,
            &k,
            "pay",
            "transfer",
            Some(json!([{"type": "x"}])),
            None,
        ),
        400,
        "invalid_request",
        "type",
    );
    assert_refused(
        &e.ask(
            &m,
            &k,
            "pay",
            "transfer",
            Some(json!([{"type": "mandate", "iban": "x"}])),
            None,
        ),
        400,
        "invalid_request",
        "unknown",
    );
}

#[test]
fn approvals_expire() {
    let e = setup("apr-exp", |c| c.approval_ttl = 1);
    let (_, m, k) = e.run();
    let (_, v) = e.ask(&m, &k, "pay", "transfer", pay(20_000), None);
    let id = v["approval_id"].as_str().unwrap().to_owned();
    e.b.advance(2);
    assert_refused(
        &e.as_(&e.bob, "POST", &format!("/v1/approvals/{id}/approve"), None),
        409,
        "conflict",
        "expired",
    );
    assert_refused(
        &e.ask(&m, &k, "pay", "transfer", pay(20_000), Some(&id)),
        400,
        "expired_token",
        "expired",
    );
    // Without the id, it simply asks again.
    let (_, v) = e.ask(&m, &k, "pay", "transfer", pay(20_000), None);
    assert_ne!(v["approval_id"], id.as_str());
    let (_, shown) = e.as_(&e.b.admin, "GET", &format!("/v1/approvals/{id}"), None);
    assert_eq!(shown["status"], "expired");
}

/// What the webhook receiver got: (headers, body) per call.
type Received = Arc<Mutex<Vec<(Vec<(String, String)>, Vec<u8>)>>>;

/// A webhook receiver that records what it gets.
fn receiver(rt: &tokio::runtime::Runtime) -> (String, Received) {
    let got: Received = Arc::default();
    let g = Arc::clone(&got);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let url = format!("http://{}/hooks/mandate", l.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/hooks/mandate",
        axum::routing::post(move |h: axum::http::HeaderMap, body: axum::body::Bytes| {
            let g = Arc::clone(&g);
            async move {
                let hs = h
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                    .collect();
                g.lock().unwrap().push((hs, body.to_vec()));
                "ok"
            }
        }),
    );
    rt.spawn(async move {
        axum::serve(tokio::net::TcpListener::from_std(l).unwrap(), app)
            .await
            .unwrap();
    });
    (url, got)
}

#[test]
fn the_webhook_is_signed_and_a_wrong_signature_is_refused() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (url, got) = receiver(&rt);
    let hook = url.clone();
    let e = setup("apr-hook", move |c| c.webhook_url = Some(hook));
    let (_, m, k) = e.run();
    let (_, v) = e.ask(&m, &k, "pay", "transfer", pay(20_000), None);
    let id = v["approval_id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while got.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (headers, body) = got.lock().unwrap()[0].clone();
    let jwks = e.b.admin_get("/jwks.json").1;
    let v = mandate_verify::webhook::verify_webhook(&url, &headers, &body, &jwks, now()).unwrap();
    assert_eq!(v["type"], "approval.requested");
    assert_eq!(v["data"]["id"], id.as_str());
    assert_eq!(v["data"]["details"]["amount"], 20_000);
    // A changed body, a changed URL, a forged signature, another key: refused.
    let mut evil = body.clone();
    let n = evil.len() - 3;
    evil[n] ^= 1;
    assert!(mandate_verify::webhook::verify_webhook(&url, &headers, &evil, &jwks, now()).is_err());
    assert!(
        mandate_verify::webhook::verify_webhook(
            "http://elsewhere/hook",
            &headers,
            &body,
            &jwks,
            now()
        )
        .is_err()
    );
    let forged: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            if k == "signature" {
                (k.clone(), "mandate=:AAAA:".into())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    assert!(mandate_verify::webhook::verify_webhook(&url, &forged, &body, &jwks, now()).is_err());
    let other_jwks =
        json!({"keys": [SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng).public_jwk()]});
    assert!(
        mandate_verify::webhook::verify_webhook(&url, &headers, &body, &other_jwks, now()).is_err()
    );
    drop(rt);
}

#[test]
fn approvals_refuse_other_tenants_oversized_and_malformed_input() {
    let e = setup("apr-bad", |_| {});
    // An approver of another tenant, even one in a group of the same name.
    assert_eq!(
        e.b.admin_post("/v1/tenants", json!({"name": "beta"})).0,
        201
    );
    let (s, _) = e.b.admin_post(
        "/v1/tenants/beta/principals",
        json!({"id": "mallory@example.com", "groups": ["finance"]}),
    );
    assert_eq!(s, 201);
    let (s, v) = e.b.admin_post(
        "/v1/tenants/beta/principals/mallory@example.com/approver-tokens",
        json!({}),
    );
    assert_eq!(s, 201, "{v}");
    let mallory = v["token"].as_str().unwrap().to_owned();
    let (_, m, k) = e.run();
    let (_, v) = e.ask(&m, &k, "pay", "transfer", pay(20_000), None);
    let id = v["approval_id"].as_str().unwrap().to_owned();
    assert_eq!(e.as_(&mallory, "GET", "/v1/approvals", None).1, json!([]));
    assert_refused(
        &e.as_(&mallory, "GET", &format!("/v1/approvals/{id}"), None),
        403,
        "insufficient_scope",
        "not an approver",
    );
    assert_refused(
        &e.as_(
            &mallory,
            "POST",
            &format!("/v1/approvals/{id}/approve"),
            None,
        ),
        403,
        "insufficient_scope",
        "",
    );
    // Oversized or malformed decisions.
    let long = "x".repeat(2000);
    assert_refused(
        &e.as_(
            &e.bob,
            "POST",
            &format!("/v1/approvals/{id}/approve"),
            Some(json!({"comment": long})),
        ),
        400,
        "invalid_request",
        "",
    );
    assert_refused(
        &e.as_(
            &e.bob,
            "POST",
            &format!("/v1/approvals/{id}/approve"),
            Some(json!({"note": "x"})),
        ),
        400,
        "invalid_request",
        "unknown field",
    );
    assert_refused(
        &e.as_(&e.bob, "GET", "/v1/approvals?status=maybe", None),
        400,
        "invalid_request",
        "status",
    );
    assert_refused(
        &e.as_(&e.bob, "GET", "/v1/approvals/apr_nope", None),
        404,
        "not_found",
        "",
    );
    // Oversized declared details.
    let big = json!([{"type": "mandate", "description": "y".repeat(5000)}]);
    assert_refused(
        &e.ask(&m, &k, "pay", "transfer", Some(big), None),
        400,
        "invalid_request",
        "4096",
    );
    // An approval id that does not exist.
    assert_refused(
        &e.ask(&m, &k, "pay", "transfer", pay(20_000), Some("apr_nope")),
        400,
        "invalid_grant",
        "no approval",
    );
    // An approver credential for a principal that does not exist.
    assert_eq!(
        e.b.admin_post(
            "/v1/tenants/acme/principals/ghost@example.com/approver-tokens",
            json!({})
        )
        .0,
        404
    );
    // Still decidable by the right approver afterwards.
    assert_eq!(
        e.as_(&e.bob, "POST", &format!("/v1/approvals/{id}/approve"), None)
            .0,
        200
    );
}

#[test]
fn undelivered_webhooks_wait_in_the_outbox_across_a_restart() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (url, got) = receiver(&rt);
    // The receiver is down (nothing listens on port 1) when the request is made.
    let e = setup("apr-outbox", |c| {
        c.webhook_url = Some("http://127.0.0.1:1/hook".into())
    });
    let (_, m, k) = e.run();
    let (_, v) = e.ask(&m, &k, "pay", "transfer", pay(20_000), None);
    let id = v["approval_id"].as_str().unwrap().to_owned();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(got.lock().unwrap().is_empty());
    // After a restart pointing at a receiver that is up, it is delivered.
    let hook = url.clone();
    let b = e.b.restart_with(move |c| c.webhook_url = Some(hook));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while got.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (headers, body) = got.lock().unwrap()[0].clone();
    let jwks = b.admin_get("/jwks.json").1;
    let v = mandate_verify::webhook::verify_webhook(&url, &headers, &body, &jwks, now()).unwrap();
    assert_eq!(v["data"]["id"], id.as_str());
    // Delivered once: it left the outbox.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(got.lock().unwrap().len(), 1);
    drop(rt);
}

/// Approver credentials expire (default 30 days; `ttl_secs` at most a year).
#[test]
fn an_approver_credential_expires() {
    let b = Broker::start("apv-expiry");
    b.seed("acme");
    let path = "/v1/tenants/acme/principals/alice@example.com/approver-tokens";
    for bad in [json!({"ttl_secs": 0}), json!({"ttl_secs": 366 * 86_400})] {
        assert_refused(&b.admin_post(path, bad), 400, "invalid_request", "ttl_secs");
    }
    let (s, v) = b.admin_post(path, json!({}));
    assert_eq!(s, 201, "{v}");
    let month = v["expires_at"].as_u64().unwrap() - now();
    assert!((30 * 86_400 - 5..=30 * 86_400).contains(&month), "{v}");
    let (s, v) = b.admin_post(path, json!({"ttl_secs": 1}));
    assert_eq!(s, 201, "{v}");
    let t = v["token"].as_str().unwrap().to_owned();
    let list = || {
        read(
            Broker::agent()
                .get(format!("{}/v1/approvals", b.url))
                .header("Authorization", &format!("Bearer {t}"))
                .call()
                .unwrap(),
        )
    };
    assert_eq!(list().0, 200);
    b.advance(2);
    assert_refused(&list(), 401, "invalid_token", "expired");
}
