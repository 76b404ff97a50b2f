//! The `proxy` provider end to end over real HTTP: a real broker, a real
//! upstream server (axum, echoing what it received), and `ureq` as client.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::IntoResponse;
use common::*;
use mandate_core::jose::Alg;
use serde_json::{Value, json};

const REAL_KEY: &str = "re_live_7f3c9a_the_real_upstream_key";

/// An upstream that echoes the request it received as JSON.
fn upstream(rt_handle: &tokio::runtime::Runtime) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
        if uri.path() == "/slow" {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        if uri.path() == "/emails/big" {
            // 3 MiB in 48 chunks, streamed.
            let chunks = (0..48).map(|i| {
                Ok::<_, std::io::Error>(Bytes::from(vec![b'a' + (i % 26) as u8; 64 * 1024]))
            });
            return axum::response::Response::builder()
                .header("x-upstream", "yes")
                .body(axum::body::Body::from_stream(futures_util::stream::iter(
                    chunks,
                )))
                .unwrap();
        }
        let hs: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("?"))))
            .collect();
        let status = if method == Method::POST {
            axum::http::StatusCode::CREATED
        } else {
            axum::http::StatusCode::OK
        };
        (
            status,
            [
                ("x-upstream", "yes"),
                ("connection", "x-hop"),
                ("x-hop", "1"),
            ],
            axum::Json(json!({
                "method": method.as_str(), "path": uri.path(), "query": uri.query(),
                "headers": hs, "body_len": body.len(),
            })),
        )
            .into_response()
    }
    let app = axum::Router::new().fallback(echo);
    rt_handle.spawn(async move {
        let l = tokio::net::TcpListener::from_std(l).unwrap();
        axum::serve(l, app).await.unwrap();
    });
    addr
}

struct Fixture {
    b: Broker,
    grant: String,
    _rt: tokio::runtime::Runtime,
    up: SocketAddr,
}

fn proxy_tool(name: &str, upstream: &str, timeout_ms: u64) -> Value {
    json!({
        "name": name, "provider": "proxy", "actions": ["send", "read", "delete"],
        "labels": ["external_send"],
        "proxy": {
            "upstream": upstream,
            "routes": [
                {"method": "POST", "path": "/emails", "action": "send"},
                {"method": "GET", "path": "/emails/*", "action": "read"},
                {"method": "GET", "path": "/slow", "action": "read"},
                {"method": "DELETE", "path": "/emails/*", "action": "delete"}
            ],
            "inject": {"header": "Authorization", "format": "Bearer {secret}"},
            "timeout_ms": timeout_ms
        },
        "env": [
            {"name": "RESEND_API_KEY", "value": "{credential}"},
            {"name": "RESEND_BASE_URL", "value": "{proxy_url}"}
        ]
    })
}

fn fixture(tag: &str, tweak: impl FnOnce(&mut mandate_server::Config)) -> Fixture {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let up = upstream(&rt);
    let b = Broker::start_with(tag, tweak);
    let grant = b.seed("acme");
    let (s, v) = b.admin_post(
        "/v1/tenants/acme/agents",
        json!({"name": "mailer", "owner": "team-growth", "envelope": ["email:*", "dead:*", "slowpoke:*"]}),
    );
    assert_eq!(s, 201, "{v}");
    for (name, upstream, timeout) in [
        ("email", format!("http://{up}"), 5000),
        ("dead", "http://127.0.0.1:1".to_owned(), 5000),
        ("slowpoke", format!("http://{up}"), 300),
    ] {
        let (s, v) = b.admin_post(
            "/v1/tenants/acme/tools",
            proxy_tool(name, &upstream, timeout),
        );
        assert_eq!(s, 201, "{v}");
        let (s, v) = b.admin_put_text(
            &format!("/v1/tenants/acme/tools/{name}/secret"),
            &format!("{REAL_KEY}\n"),
        );
        assert_eq!(s, 200, "{v}");
    }
    Fixture {
        b,
        grant,
        _rt: rt,
        up,
    }
}

impl Fixture {
    /// A run of `mailer` (no principal) and a proxy credential for `tool`.
    fn credential(&self, tool: &str, scope: &str) -> (String, String) {
        let key = mandate_core::keys::SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng);
        let (s, v) = self.b.admin_post(
            "/v1/runs",
            json!({"tenant": "acme", "agent": "mailer", "jwk": key.public().to_json()}),
        );
        assert_eq!(s, 201, "{v}");
        let run = v["run"].as_str().unwrap().to_owned();
        let mandate = v["mandate"].as_str().unwrap();
        let (s, v) = self.b.exchange(mandate, &key, tool, scope);
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["token_type"], "Bearer", "{v}");
        assert_eq!(v["proxy_url"], format!("{}/proxy/{tool}", self.b.url));
        (run, v["access_token"].as_str().unwrap().to_owned())
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> (u16, Value, HeaderMap) {
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.b.url));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let agent = Broker::agent();
        let r = match body {
            Some(b) => agent.run(req.body(b.to_vec()).unwrap()),
            None => agent.run(req.body(()).unwrap()),
        }
        .unwrap();
        let mut hm = HeaderMap::new();
        for (k, v) in r.headers() {
            hm.append(k.clone(), v.clone());
        }
        let (s, v) = read(r);
        (s, v, hm)
    }
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[test]
fn a_mapped_call_is_forwarded_with_the_real_key_and_audited() {
    let f = fixture("proxy-ok", |_| {});
    let (run, token) = f.credential("email", "send read");
    let body = br#"{"from":"a@x.dev","to":["b@y.dev"],"subject":"hi"}"#;
    let (s, v, h) = f.call(
        "POST",
        "/proxy/email/emails?dry=1",
        &[
            ("Authorization", &bearer(&token)),
            ("Content-Type", "application/json"),
            ("Connection", "x-secret-hop"),
            ("x-secret-hop", "must not pass"),
        ],
        Some(body),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/emails");
    assert_eq!(v["query"], "dry=1");
    assert_eq!(v["body_len"], body.len());
    assert_eq!(v["headers"]["authorization"], format!("Bearer {REAL_KEY}"));
    assert_eq!(v["headers"]["host"], f.up.to_string());
    assert!(v["headers"].get("x-secret-hop").is_none(), "{v}");
    assert!(
        !v.to_string().contains(&token),
        "our credential went upstream"
    );
    // The upstream's own headers come back; its hop-by-hop ones do not.
    assert_eq!(h.get("x-upstream").unwrap(), "yes");
    assert!(h.get("x-hop").is_none());

    // Both events, with who did it; never the key or a body.
    std::thread::sleep(Duration::from_millis(200));
    let evs = f.b.audit(&format!("run={run}"));
    let call = evs
        .iter()
        .find(|e| e["event_type"] == "proxy.call")
        .unwrap();
    assert_eq!(call["decision"], "allow");
    assert_eq!(call["agent"], "mailer");
    assert_eq!(call["tool"], "email");
    assert_eq!(call["actions"], json!(["send"]));
    assert_eq!(call["details"]["method"], "POST");
    assert_eq!(call["details"]["path"], "/emails");
    let result = evs
        .iter()
        .find(|e| e["event_type"] == "proxy.result")
        .unwrap();
    assert_eq!(result["details"]["status"], 201);
    assert_eq!(result["details"]["request_bytes"], body.len());
    assert!(result["details"]["response_bytes"].as_u64().unwrap() > 0);
    assert!(result["details"]["latency_ms"].as_f64().is_some());
    let all = f.b.audit("limit=1000");
    let text = serde_json::to_string(&all).unwrap();
    assert!(!text.contains(REAL_KEY), "the key is in the audit trail");
    assert!(!text.contains("hi\""), "a body is in the audit trail");
}

#[test]
fn the_secret_is_never_returned_and_is_sealed_at_rest() {
    let f = fixture("proxy-secret", |_| {});
    let (s, v) = f.b.admin_get("/v1/tenants/acme/tools");
    assert_eq!(s, 200);
    assert!(!v.to_string().contains(REAL_KEY));
    let email = v
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "email")
        .unwrap();
    assert_eq!(email["secret_set"], true);
    assert_eq!(email["audience"], format!("{}/proxy/email", f.b.url));
    let db = std::fs::read(f.b.dir.join("data/mandate.db")).unwrap();
    let wal = std::fs::read(f.b.dir.join("data/mandate.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(
            !bytes
                .windows(REAL_KEY.len())
                .any(|w| w == REAL_KEY.as_bytes()),
            "the key is in the database in clear"
        );
    }
    // Bad secrets and wrong tools are refused.
    assert_refused(
        &f.b.admin_put_text("/v1/tenants/acme/tools/crm/secret", "x"),
        400,
        "invalid_request",
        "holds no upstream secret",
    );
    assert_refused(
        &f.b.admin_put_text("/v1/tenants/acme/tools/nope/secret", "x"),
        404,
        "not_found",
        "tool `nope`",
    );
    assert_refused(
        &f.b.admin_put_text("/v1/tenants/acme/tools/email/secret", "a\u{7}b"),
        400,
        "invalid_request",
        "control characters",
    );
    assert_refused(
        &f.b.admin_put_text("/v1/tenants/acme/tools/email/secret", ""),
        400,
        "invalid_request",
        "1 to",
    );
}

#[test]
fn a_restarted_broker_still_injects_the_key() {
    let f = fixture("proxy-restart", |_| {});
    let dir = f.b.dir.clone();
    let up = f.up;
    drop(f.b);
    let b = Broker::start_again(&dir);
    let f = Fixture {
        b,
        grant: f.grant,
        _rt: f._rt,
        up,
    };
    let (_, token) = f.credential("email", "read");
    let (s, v, _) = f.call(
        "GET",
        "/proxy/email/emails/42",
        &[("Authorization", &bearer(&token))],
        None,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["headers"]["authorization"], format!("Bearer {REAL_KEY}"));
}

#[test]
fn refusals_say_why_and_are_audited() {
    let f = fixture("proxy-refuse", |c| c.proxy_max_body = 1024);
    let (run, token) = f.credential("email", "send read");
    let (_, dead_token) = f.credential("dead", "read");
    let auth = bearer(&token);
    let a = [("Authorization", auth.as_str())];
    let check = |got: (u16, Value, HeaderMap), status: u16, code: &str, needle: &str| {
        assert_refused(&(got.0, got.1), status, code, needle);
    };
    // No credential, garbage, a tool credential for another tool.
    check(
        f.call("GET", "/proxy/email/emails/1", &[], None),
        401,
        "invalid_token",
        "send the proxy credential",
    );
    check(
        f.call(
            "GET",
            "/proxy/email/emails/1",
            &[("Authorization", "Bearer garbage")],
            None,
        ),
        401,
        "invalid_token",
        "not valid",
    );
    check(
        f.call(
            "GET",
            "/proxy/email/emails/1",
            &[("Authorization", &bearer(&dead_token))],
            None,
        ),
        401,
        "invalid_token",
        "not for tool `email`",
    );
    // Unknown tool; unmapped method or path; an action the credential lacks.
    check(
        f.call("GET", "/proxy/nope/x", &a, None),
        404,
        "not_found",
        "no proxy tool `nope`",
    );
    check(
        f.call("PUT", "/proxy/email/emails/1", &a, None),
        403,
        "insufficient_scope",
        "not mapped",
    );
    check(
        f.call("GET", "/proxy/email/domains", &a, None),
        403,
        "insufficient_scope",
        "not mapped",
    );
    check(
        f.call("DELETE", "/proxy/email/emails/1", &a, None),
        403,
        "insufficient_scope",
        "action `delete`, which this credential does not carry",
    );
    // Paths that could mean something else upstream.
    check(
        f.call("GET", "/proxy/email/emails/%2e%2e/admin", &a, None),
        400,
        "invalid_request",
        "encoded",
    );
    check(
        f.call("GET", "/proxy/email/emails%2F1", &a, None),
        400,
        "invalid_request",
        "encoded",
    );
    // Smuggling our credential upstream, or overriding the injected key.
    check(
        f.call(
            "GET",
            "/proxy/email/emails/1",
            &[("Authorization", &auth), ("X-Forward-Me", &token)],
            None,
        ),
        400,
        "invalid_request",
        "appears in the `x-forward-me` header",
    );
    check(
        f.call("GET", &format!("/proxy/email/emails/1?k={token}"), &a, None),
        400,
        "invalid_request",
        "query string",
    );
    check(
        f.call(
            "GET",
            "/proxy/email/emails/1",
            &[
                ("Authorization", "Bearer sk_attacker_own_key"),
                ("Proxy-Authorization", &auth),
            ],
            None,
        ),
        400,
        "invalid_request",
        "two different credentials",
    );
    check(
        f.call(
            "GET",
            "/proxy/email/emails/1",
            &[("Authorization", &auth), ("Authorization", &auth)],
            None,
        ),
        400,
        "invalid_request",
        "once",
    );
    // Over the body limit (declared length).
    let big = vec![b'x'; 4096];
    check(
        f.call("POST", "/proxy/email/emails", &a, Some(&big)),
        413,
        "invalid_request",
        "larger than 1024",
    );
    // A key-bound tool credential is not a proxy credential.
    let (_, mandate, key) = f.b.start_run("acme", &f.grant, Alg::EdDSA);
    let (s, v) = f.b.exchange(&mandate, &key, "crm", "read");
    assert_eq!(s, 200, "{v}");
    let jwt = v["access_token"].as_str().unwrap();
    check(
        f.call(
            "GET",
            "/proxy/email/emails/1",
            &[("Authorization", &bearer(jwt))],
            None,
        ),
        401,
        "invalid_token",
        "not for tool `email`",
    );

    // Still fine for a mapped call; then policy changes and the next call is judged anew.
    assert_eq!(f.call("GET", "/proxy/email/emails/1", &a, None).0, 200);
    let (s, v) = f.b.admin_put_text(
        "/v1/tenants/acme/policies/no-reading-mail",
        "@id(\"no-read\")\nforbid (principal, action, resource == Mandate::Tool::\"email\") when { context.action == \"read\" };",
    );
    assert_eq!(s, 200, "{v}");
    check(
        f.call("GET", "/proxy/email/emails/1", &a, None),
        403,
        "access_denied",
        "no-read",
    );

    // Revoking the run refuses the same credential at once.
    assert_eq!(
        f.call("POST", "/proxy/email/emails", &a, Some(b"{}")).0,
        201
    );
    let (s, v) = f.b.admin_post(
        "/v1/revocations",
        json!({"kind": "run", "id": run, "reason": "test"}),
    );
    assert_eq!(s, 200, "{v}");
    check(
        f.call("POST", "/proxy/email/emails", &a, Some(b"{}")),
        401,
        "invalid_token",
        "revoked",
    );

    let denials: Vec<Value> =
        f.b.audit("type=proxy.call&decision=deny&limit=100")
            .into_iter()
            .collect();
    assert!(denials.len() >= 14, "{}", denials.len());
    assert!(
        denials
            .iter()
            .any(|e| e["reason"].as_str().unwrap_or("").contains("revoked: run:"))
    );
}

#[test]
fn upstream_down_or_slow_is_a_clear_gateway_error_and_audited() {
    let f = fixture("proxy-gateway", |_| {});
    let (_, dead) = f.credential("dead", "read");
    let got = f.call(
        "GET",
        "/proxy/dead/emails/1",
        &[("Authorization", &bearer(&dead))],
        None,
    );
    assert_refused(
        &(got.0, got.1),
        502,
        "upstream_unreachable",
        "cannot connect",
    );
    let (_, slow) = f.credential("slowpoke", "read");
    let t = std::time::Instant::now();
    let got = f.call(
        "GET",
        "/proxy/slowpoke/slow",
        &[("Authorization", &bearer(&slow))],
        None,
    );
    assert_refused(&(got.0, got.1), 504, "upstream_timeout", "within 300 ms");
    assert!(t.elapsed() < Duration::from_secs(2));
    let errors = f.b.audit("type=proxy.result&decision=error&limit=10");
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors.iter().any(|e| e["details"]["status"] == 502));
    assert!(errors.iter().any(|e| e["details"]["status"] == 504));
}

#[test]
fn expired_proxy_credentials_are_refused() {
    let f = fixture("proxy-expired", |_| {});
    let (_, token) = f.credential("email", "read");
    let payload = token.split('.').nth(1).unwrap();
    let mut claims: mandate_core::credential::AccessClaims =
        serde_json::from_slice(&mandate_core::jose::unb64("claims", payload).unwrap()).unwrap();
    claims.iat -= 3600;
    claims.exp = claims.iat + 60;
    let old = mandate_core::credential::sign(&f.b.state.keys.jwt_eddsa, &claims).unwrap();
    let got = f.call(
        "GET",
        "/proxy/email/emails/1",
        &[("Authorization", &bearer(&old))],
        None,
    );
    assert_refused(&(got.0, got.1), 401, "invalid_token", "expired");
}

#[test]
fn proxy_tool_registrations_are_checked() {
    let b = Broker::start("proxy-reg");
    b.seed("acme");
    let mut bad = proxy_tool("t1", "http://127.0.0.1:9", 1000);
    bad["proxy"]["routes"][0]["action"] = json!("fly");
    assert_refused(
        &b.admin_post("/v1/tenants/acme/tools", bad),
        400,
        "invalid_request",
        "`fly`",
    );
    let mut bad = proxy_tool("t2", "http://127.0.0.1:9", 1000);
    bad["proxy"]["inject"]["format"] = json!("Bearer");
    assert_refused(
        &b.admin_post("/v1/tenants/acme/tools", bad),
        400,
        "invalid_request",
        "{secret}",
    );
    let mut bad = proxy_tool("t3", "http://127.0.0.1:9", 1000);
    bad["audience"] = json!("https://x.example");
    assert_refused(
        &b.admin_post("/v1/tenants/acme/tools", bad),
        400,
        "invalid_request",
        "set by the broker",
    );
    let mut bad = proxy_tool("t4", "http://127.0.0.1:9", 1000);
    bad.as_object_mut().unwrap().remove("proxy");
    assert_refused(
        &b.admin_post("/v1/tenants/acme/tools", bad),
        400,
        "invalid_request",
        "needs `proxy`",
    );
    let mut bad = proxy_tool("t5", "http://127.0.0.1:9", 1000);
    bad["env"][0]["value"] = json!("{secret}");
    assert_refused(
        &b.admin_post("/v1/tenants/acme/tools", bad),
        400,
        "invalid_request",
        "placeholder",
    );
    let mut bad = proxy_tool("t6", "http://127.0.0.1:9", 1000);
    bad["provider"] = json!("vault");
    assert_refused(
        &b.admin_post("/v1/tenants/acme/tools", bad),
        400,
        "invalid_request",
        "not supported",
    );
}

#[test]
fn large_bodies_stream_both_ways() {
    let f = fixture("proxy-stream", |_| {});
    let (run, token) = f.credential("email", "send read");
    let auth = bearer(&token);
    let a = [("Authorization", auth.as_str())];
    let body = vec![b'z'; 2 * 1024 * 1024];
    let (s, v, _) = f.call("POST", "/proxy/email/emails", &a, Some(&body));
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["body_len"], body.len());
    let req = ureq::http::Request::builder()
        .method("GET")
        .uri(format!("{}/proxy/email/emails/big", f.b.url))
        .header("Authorization", auth.as_str());
    let mut r = Broker::agent().run(req.body(()).unwrap()).unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers().get("x-upstream").unwrap(), "yes");
    let got = r
        .body_mut()
        .with_config()
        .limit(16 * 1024 * 1024)
        .read_to_vec()
        .unwrap();
    assert_eq!(got.len(), 48 * 64 * 1024);
    assert_eq!(&got[64 * 1024..64 * 1024 + 3], b"bbb");
    std::thread::sleep(Duration::from_millis(300));
    let results = f.b.audit(&format!("run={run}&type=proxy.result"));
    assert!(
        results
            .iter()
            .any(|e| e["details"]["request_bytes"] == body.len())
    );
    assert!(
        results
            .iter()
            .any(|e| e["details"]["response_bytes"] == got.len())
    );
}

/// A client that signs (RFC 9421) gets a key-bound proxy credential and must
/// sign every call with the same key, covering the credential's header and
/// the body; the signature never reaches the upstream.
#[test]
fn signed_clients_get_bound_proxy_credentials_and_sign_every_call() {
    let f = fixture("proxy-sig", |_| {});
    let key = mandate_core::keys::SigningKey::generate(Alg::ES256, &mut rand::rngs::OsRng);
    let (s, v) = f.b.admin_post(
        "/v1/runs",
        json!({"tenant": "acme", "agent": "mailer", "jwk": key.public().to_json()}),
    );
    assert_eq!(s, 201, "{v}");
    let mandate = v["mandate"].as_str().unwrap();
    let body = form(mandate, "email", "send read");
    let ct = (
        "content-type".to_owned(),
        "application/x-www-form-urlencoded".to_owned(),
    );
    let h = signed_headers(
        &key,
        "POST",
        &f.b.token_url(),
        vec![ct],
        body.as_bytes(),
        &["@method", "@target-uri", "content-digest", "signature-key"],
        now(),
        &jti(),
    );
    let mut req = Broker::agent().post(f.b.token_url());
    for (k, v) in &h {
        req = req.header(k.as_str(), v.as_str());
    }
    let (s, v) = read(req.send(&body).unwrap());
    assert_eq!(s, 200, "{v}");
    let cred = v["access_token"].as_str().unwrap().to_owned();
    let url = format!("{}/proxy/email/emails", f.b.url);
    let auth = bearer(&cred);

    // Unsigned: refused, it is bound.
    check(
        f.call(
            "POST",
            "/proxy/email/emails",
            &[("Authorization", &auth)],
            Some(b"{}"),
        ),
        401,
        "invalid_token",
        "bound to a key",
    );
    let covered = [
        "@method",
        "@target-uri",
        "authorization",
        "content-digest",
        "signature-key",
    ];
    let sign = |body: &[u8], comps: &[&str]| {
        signed_headers(
            &key,
            "POST",
            &url,
            vec![("authorization".into(), auth.clone())],
            body,
            comps,
            now(),
            &jti(),
        )
    };
    let as_refs = |h: &Vec<(String, String)>| -> Vec<(String, String)> { h.clone() };
    let call = |h: &Vec<(String, String)>, body: &[u8]| {
        let refs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        f.call("POST", "/proxy/email/emails", &refs, Some(body))
    };
    // Signed properly: forwarded with the real key, without our signature headers.
    let h = sign(b"{\"to\":\"a@b\"}", &covered);
    let (s, v, _) = call(&as_refs(&h), b"{\"to\":\"a@b\"}");
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["headers"]["authorization"], format!("Bearer {REAL_KEY}"));
    assert!(v["headers"].get("signature").is_none() && v["headers"].get("signature-key").is_none());
    assert_eq!(v["body_len"], 12);
    // Replayed: refused.
    check(
        call(&h, b"{\"to\":\"a@b\"}"),
        400,
        "invalid_signature",
        "already used",
    );
    // Not covering the credential's header: refused.
    let h = sign(
        b"{}",
        &["@method", "@target-uri", "content-digest", "signature-key"],
    );
    check(
        call(&h, b"{}"),
        400,
        "invalid_signature",
        "must cover `authorization`",
    );
    // Body swapped after signing: refused before anything is forwarded.
    let h = sign(b"{\"to\":\"a@b\"}", &covered);
    check(
        call(&h, b"{\"to\":\"evil@x\"}"),
        400,
        "invalid_signature",
        "does not match",
    );
    let denied = f.b.audit("type=proxy.call&decision=deny");
    assert!(
        denied
            .iter()
            .any(|e| e["reason"].as_str().unwrap_or("").starts_with("signature:"))
    );
}

/// A holder narrowed its mandate to a path prefix: the proxy keeps the
/// credential inside it.
#[test]
fn attenuated_path_prefixes_hold_at_the_proxy() {
    let f = fixture("proxy-prefix", |_| {});
    let key = mandate_core::keys::SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng);
    let (s, v) = f.b.admin_post(
        "/v1/runs",
        json!({"tenant": "acme", "agent": "mailer", "jwk": key.public().to_json()}),
    );
    assert_eq!(s, 201, "{v}");
    let narrowed = mandate_core::attenuation::attenuate(
        v["mandate"].as_str().unwrap(),
        &key,
        &mandate_core::attenuation::Narrowing {
            resource_prefix: Some("/emails/7".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let (s, v) = f.b.exchange(&narrowed, &key, "email", "read");
    assert_eq!(s, 200, "{v}");
    let auth = bearer(v["access_token"].as_str().unwrap());
    let (s, v, _) = f.call(
        "GET",
        "/proxy/email/emails/7",
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(s, 200, "{v}");
    check(
        f.call(
            "GET",
            "/proxy/email/emails/8",
            &[("Authorization", &auth)],
            None,
        ),
        403,
        "insufficient_scope",
        "outside `/emails/7`",
    );
}

fn check(got: (u16, Value, HeaderMap), status: u16, code: &str, needle: &str) {
    assert_refused(&(got.0, got.1), status, code, needle);
}

/// Proxied calls count toward the run's request rate: a burst raises an
/// alert and (when configured) suspends the run, whose calls then wait.
#[test]
fn a_burst_of_proxied_calls_suspends_the_run() {
    let f = fixture("proxy-burst", |c| {
        c.anomaly_rate_1m = 4;
        c.suspend_on_anomaly = true;
    });
    let (run, cred) = f.credential("email", "read");
    let auth = bearer(&cred);
    // The exchange was request 1; calls 2-4 pass, the 5th trips the alert.
    for _ in 0..3 {
        let (s, v, _) = f.call(
            "GET",
            "/proxy/email/emails/1",
            &[("Authorization", &auth)],
            None,
        );
        assert_eq!(s, 200, "{v}");
    }
    let _ = f.call(
        "GET",
        "/proxy/email/emails/1",
        &[("Authorization", &auth)],
        None,
    );
    let alerts = f.b.audit("type=alert.rate_spike");
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    check(
        f.call(
            "GET",
            "/proxy/email/emails/1",
            &[("Authorization", &auth)],
            None,
        ),
        503,
        "temporarily_unavailable",
        "suspended",
    );
    let (s, _) = f.b.admin_post(&format!("/v1/runs/{run}/resume"), json!({}));
    assert_eq!(s, 200);
    let (s, v, _) = f.call(
        "GET",
        "/proxy/email/emails/1",
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(s, 200, "{v}");
}
