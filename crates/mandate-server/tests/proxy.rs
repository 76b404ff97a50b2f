//! The `proxy` provider end to end over real HTTP: a real broker, a real
//! upstream server (axum, echoing what it received), and `ureq` as client.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::IntoResponse;
use common::*;
use mandate_core::jose::Alg;
use serde_json::{Value, json};

const REAL_KEY: &str = "re_live_7f3c9a_the_real_upstream_key";

/// What the upstream received, one entry per request (what it really saw,
/// whatever the proxy sends back to the agent).
type Seen = Arc<Mutex<Vec<Value>>>;

/// An upstream that echoes the request it received as JSON, and logs it.
/// `/echo/...` also echoes the key it got: in response headers, and (for
/// `/echo/big`) many times in a streamed 3 MiB body, at offsets that do not
/// line up with chunk boundaries.
fn upstream(rt_handle: &tokio::runtime::Runtime) -> (SocketAddr, Seen) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let log = Arc::clone(&log);
            async move { echo(log, method, uri, headers, body).await }
        },
    );
    rt_handle.spawn(async move {
        let l = tokio::net::TcpListener::from_std(l).unwrap();
        axum::serve(l, app).await.unwrap();
    });
    (addr, seen)
}

async fn echo(
    log: Seen,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let hs: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("?"))))
        .collect();
    let got = json!({
        "method": method.as_str(), "path": uri.path(), "query": uri.query(),
        "headers": hs, "body_len": body.len(),
    });
    log.lock().unwrap().push(got.clone());
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    match uri.path() {
        "/slow" => tokio::time::sleep(Duration::from_secs(3)).await,
        "/emails/big" => {
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
        "/echo/big" => {
            // The header value and the raw key, again and again, every
            // 4093 bytes of filler; sent in chunks of 10007 bytes, so many
            // occurrences straddle a chunk boundary.
            let mut all = Vec::new();
            while all.len() < 3 * 1024 * 1024 {
                all.extend(std::iter::repeat_n(b'.', 4093));
                all.extend(auth.as_bytes());
                all.extend(b" key=");
                all.extend(REAL_KEY.as_bytes());
            }
            let chunks: Vec<Result<Bytes, std::io::Error>> = all
                .chunks(10007)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            return axum::response::Response::builder()
                .header("content-length", all.len())
                .body(axum::body::Body::from_stream(futures_util::stream::iter(
                    chunks,
                )))
                .unwrap();
        }
        "/echo/gzip" => {
            return axum::response::Response::builder()
                .header("content-encoding", "gzip")
                .body(axum::body::Body::from(vec![0x1f, 0x8b, 8, 0]))
                .unwrap();
        }
        _ => {}
    }
    let status = if method == Method::POST {
        axum::http::StatusCode::CREATED
    } else {
        axum::http::StatusCode::OK
    };
    let mut r = (
        status,
        [
            ("x-upstream", "yes"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
        ],
        axum::Json(got),
    )
        .into_response();
    if uri.path().starts_with("/echo/") {
        let h = r.headers_mut();
        h.insert("x-echo-auth", auth.parse().unwrap());
        h.insert("x-echo-key", REAL_KEY.parse().unwrap());
    }
    r
}

struct Fixture {
    b: Broker,
    grant: String,
    _rt: tokio::runtime::Runtime,
    up: SocketAddr,
    seen: Seen,
}

fn proxy_tool(name: &str, upstream: &str, timeout_ms: u64) -> Value {
    json!({
        "name": name, "provider": "proxy", "actions": ["send", "read", "delete"],
        "labels": ["external_send"],
        "proxy": {
            "upstream": upstream,
            "routes": [
                {"method": "POST", "path": "/emails", "action": "send"},
                {"method": "GET", "path": "/emails/admin", "action": "delete"},
                {"method": "GET", "path": "/emails/*", "action": "read"},
                {"method": "GET", "path": "/slow", "action": "read"},
                {"method": "DELETE", "path": "/emails/*", "action": "delete"},
                {"method": "GET", "path": "/files/**", "action": "read"},
                {"method": "GET", "path": "/repos/**", "action": "read"},
                {"method": "GET", "path": "/echo/**", "action": "read"}
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

/// A payments API: JSON and form bodies carry the amount; refunds name none.
fn pay_tool(upstream: &str) -> Value {
    json!({
        "name": "pay", "provider": "proxy", "actions": ["pay", "read"],
        "labels": ["money"],
        "proxy": {
            "upstream": upstream,
            "routes": [
                {"method": "POST", "path": "/payments", "action": "pay", "amount": {"json": "/amount"}},
                {"method": "POST", "path": "/charges", "action": "pay", "amount": {"form": "amount"}},
                {"method": "POST", "path": "/refunds", "action": "pay"},
                {"method": "GET", "path": "/payments/*", "action": "read"}
            ],
            "inject": {"header": "Authorization", "format": "Bearer {secret}"}
        }
    })
}

fn fixture(tag: &str, tweak: impl FnOnce(&mut mandate_server::Config)) -> Fixture {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (up, seen) = upstream(&rt);
    let b = Broker::start_with(tag, tweak);
    let grant = b.seed("acme");
    let (s, v) = b.admin_post(
        "/v1/tenants/acme/agents",
        json!({"name": "mailer", "owner": "team-growth", "envelope": ["email:*", "dead:*", "slowpoke:*", "pay:*"]}),
    );
    assert_eq!(s, 201, "{v}");
    for (name, tool) in [
        ("email", proxy_tool("email", &format!("http://{up}"), 5000)),
        ("dead", proxy_tool("dead", "http://127.0.0.1:1", 5000)),
        (
            "slowpoke",
            proxy_tool("slowpoke", &format!("http://{up}"), 300),
        ),
        ("pay", pay_tool(&format!("http://{up}"))),
    ] {
        let (s, v) = b.admin_post("/v1/tenants/acme/tools", tool);
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
        seen,
    }
}

impl Fixture {
    /// A run of `mailer` (no principal) and a proxy credential for `tool`.
    fn credential(&self, tool: &str, scope: &str) -> (String, String) {
        self.credential_for(tool, scope, None)
    }

    /// The same, declaring RFC 9396 `authorization_details` (type mandate).
    fn credential_for(&self, tool: &str, scope: &str, details: Option<Value>) -> (String, String) {
        let key = mandate_core::keys::SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng);
        let (s, v) = self.b.admin_post(
            "/v1/runs",
            json!({"tenant": "acme", "agent": "mailer", "jwk": key.public().to_json()}),
        );
        assert_eq!(s, 201, "{v}");
        let run = v["run"].as_str().unwrap().to_owned();
        let mandate = v["mandate"].as_str().unwrap();
        let mut body = form(mandate, tool, scope);
        if let Some(d) = details {
            body.push_str(&format!("&authorization_details={}", enc(&d.to_string())));
        }
        let (s, v) = self.b.exchange_form(&body, &key);
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["token_type"], "Bearer", "{v}");
        assert_eq!(v["proxy_url"], format!("{}/proxy/{tool}", self.b.url));
        (run, v["access_token"].as_str().unwrap().to_owned())
    }

    /// The last request the upstream received.
    fn last_seen(&self) -> Value {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// The audit events `query` selects, once there are `n` of them (the
    /// outcome of a call is written when its response body is done).
    fn audit_until(&self, query: &str, n: usize) -> Vec<Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let evs = self.b.audit(query);
            if evs.len() >= n || std::time::Instant::now() > deadline {
                assert_eq!(evs.len(), n, "{evs:?}");
                return evs;
            }
            std::thread::yield_now();
        }
    }

    /// How many requests for `path` the upstream received.
    fn seen_count(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r["path"] == path)
            .count()
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

/// Request headers of a test case.
type Headers = Vec<(&'static str, String)>;

/// A request body of a test case, if any.
type Body = Option<&'static [u8]>;
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
    // The upstream got the real key; the agent never sees it (scrubbed).
    assert_eq!(
        f.last_seen()["headers"]["authorization"],
        format!("Bearer {REAL_KEY}")
    );
    assert!(!v.to_string().contains(REAL_KEY), "{v}");
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
        seen: f.seen,
    };
    let (_, token) = f.credential("email", "read");
    let (s, v, _) = f.call(
        "GET",
        "/proxy/email/emails/42",
        &[("Authorization", &bearer(&token))],
        None,
    );
    assert_eq!(s, 200, "{v}");
    // The upstream got the real key; the agent never sees it (scrubbed).
    assert_eq!(
        f.last_seen()["headers"]["authorization"],
        format!("Bearer {REAL_KEY}")
    );
    assert!(!v.to_string().contains(REAL_KEY), "{v}");
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
    // Refusals before a valid credential named a run (no credential,
    // garbage) go through the per-client throttle: one event per window.
    assert!(denials.len() >= 10, "{}", denials.len());
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
    let old = mandate_core::credential::sign(&f.b.state.keyset().keys.jwt_eddsa, &claims).unwrap();
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
    // The outcome event is written when the body ends: wait for it (a
    // loaded machine takes more than a moment).
    let mut results = Vec::new();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        results = f.b.audit(&format!("run={run}&type=proxy.result"));
        if results
            .iter()
            .any(|e| e["details"]["response_bytes"] == got.len())
        {
            break;
        }
    }
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
    // The upstream got the real key; the agent never sees it (scrubbed).
    assert_eq!(
        f.last_seen()["headers"]["authorization"],
        format!("Bearer {REAL_KEY}")
    );
    assert!(!v.to_string().contains(REAL_KEY), "{v}");
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

/// A narrowed path prefix covers whole segments: `/repos/alice` reaches
/// `/repos/alice` and what is under it, never `/repos/alice-private`.
#[test]
fn path_prefixes_match_whole_segments() {
    let f = fixture("proxy-segments", |_| {});
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
            resource_prefix: Some("/repos/alice".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let (s, v) = f.b.exchange(&narrowed, &key, "email", "read");
    assert_eq!(s, 200, "{v}");
    let auth = bearer(v["access_token"].as_str().unwrap());
    let a = [("Authorization", auth.as_str())];
    for ok in ["/repos/alice", "/repos/alice/", "/repos/alice/issues/1"] {
        let (s, v, _) = f.call("GET", &format!("/proxy/email{ok}"), &a, None);
        assert_eq!(s, 200, "{ok}: {v}");
    }
    for outside in [
        "/repos/alice-private",
        "/repos/alice-private/secrets",
        "/repos/alicex",
        "/repos",
    ] {
        check(
            f.call("GET", &format!("/proxy/email{outside}"), &a, None),
            403,
            "insufficient_scope",
            "outside `/repos/alice`",
        );
    }
    assert_eq!(f.seen_count("/repos/alice-private"), 0);
    let denied = f.b.audit("type=proxy.call&decision=deny");
    assert_eq!(
        denied
            .iter()
            .filter(|e| e["reason"] == "outside path prefix /repos/alice")
            .count(),
        4,
        "{denied:?}"
    );
}

/// Every request part that can make an upstream do something other than
/// the route it matched is refused (400), says why, is audited, and never
/// reaches the upstream.
#[test]
fn request_parts_the_route_table_never_judged_are_refused() {
    let f = fixture("proxy-smuggle", |_| {});
    let (_, token) = f.credential("email", "read send");
    let auth = bearer(&token);
    let a = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, String)> {
        let mut v = vec![("Authorization", auth.clone())];
        v.extend(extra.iter().map(|(k, x)| (*k, (*x).to_owned())));
        v
    };
    let call = |method: &str, path: &str, h: Vec<(&'static str, String)>, body: Option<&[u8]>| {
        let refs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        f.call(method, path, &refs, body)
    };
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    let json_ct = ("Content-Type", "application/json");
    let cases: Vec<(&str, &str, Headers, Body, &str)> = vec![
        // Method overrides in headers, query, form and JSON bodies.
        (
            "GET",
            "/proxy/email/emails/1",
            a(&[("X-HTTP-Method-Override", "DELETE")]),
            None,
            "`x-http-method-override` header",
        ),
        (
            "GET",
            "/proxy/email/emails/1",
            a(&[("X-HTTP-Method", "DELETE")]),
            None,
            "`x-http-method` header",
        ),
        (
            "GET",
            "/proxy/email/emails/1",
            a(&[("X-Method-Override", "DELETE")]),
            None,
            "`x-method-override` header",
        ),
        (
            "GET",
            "/proxy/email/emails/1",
            a(&[("X-Original-URL", "/admin")]),
            None,
            "`x-original-url` header",
        ),
        (
            "GET",
            "/proxy/email/emails/1?_method=DELETE",
            a(&[]),
            None,
            "sets `_method`",
        ),
        (
            "GET",
            "/proxy/email/emails/1?a=1;_method=DELETE",
            a(&[]),
            None,
            "sets `_method`",
        ),
        (
            "POST",
            "/proxy/email/emails",
            a(&[form]),
            Some(b"to=a&_method=DELETE"),
            "body sets `_method`",
        ),
        (
            "POST",
            "/proxy/email/emails",
            a(&[]),
            Some(b"_method=DELETE"),
            "body sets `_method`",
        ),
        (
            "POST",
            "/proxy/email/emails",
            a(&[json_ct]),
            Some(br#"{"to":"a","_method":"DELETE"}"#),
            "body sets `_method`",
        ),
        // Path parameters and encodings the route table would misread.
        ("GET", "/proxy/email/files/..;/admin", a(&[]), None, "`;`"),
        (
            "GET",
            "/proxy/email/files/x;jsessionid=1",
            a(&[]),
            None,
            "`;`",
        ),
        (
            "GET",
            "/proxy/email/files/%2e%2e/admin",
            a(&[]),
            None,
            "encoded `/`",
        ),
        (
            "GET",
            "/proxy/email/files/%c0%ae%c0%ae/admin",
            a(&[]),
            None,
            "overlong UTF-8",
        ),
        (
            "GET",
            "/proxy/email/files/%ef%bc%8e%ef%bc%8e/admin",
            a(&[]),
            None,
            "full-width dot",
        ),
        (
            "GET",
            "/proxy/email/files/%5cadmin",
            a(&[]),
            None,
            "encoded `/`",
        ),
        (
            "GET",
            "/proxy/email/files/%3b/admin",
            a(&[]),
            None,
            "encoded `/`",
        ),
        (
            "GET",
            "/proxy/email/emails/%61dmin",
            a(&[]),
            None,
            "encoded letter",
        ),
        (
            "GET",
            "/proxy/email/files/a%0d%0aX-Injected:%20yes",
            a(&[]),
            None,
            "control character",
        ),
        (
            "GET",
            "/proxy/email/emails/1?q=a%0d%0aX-Injected:%20yes",
            a(&[]),
            None,
            "control character",
        ),
        // Letter case: `/emails/ADMIN` is `GET /emails/admin` to a case-blind upstream.
        (
            "GET",
            "/proxy/email/emails/ADMIN",
            a(&[]),
            None,
            "letter case",
        ),
    ];
    let before = f.seen.lock().unwrap().len();
    for (method, path, headers, body, needle) in cases {
        let got = call(method, path, headers, body);
        assert_eq!(got.0, 400, "{method} {path}: {}", got.1);
        assert_eq!(got.1["error"], "invalid_request", "{path}");
        let d = got.1["error_description"].as_str().unwrap_or("");
        assert!(d.contains(needle), "{path}: `{d}` lacks `{needle}`");
    }
    assert_eq!(
        f.seen.lock().unwrap().len(),
        before,
        "a refused request reached the upstream"
    );
    let denied = f.b.audit("type=proxy.call&decision=deny&limit=100");
    let shaped = denied
        .iter()
        .filter(|e| {
            e["reason"]
                .as_str()
                .unwrap_or("")
                .starts_with("request shape: ")
        })
        .count();
    assert_eq!(shaped, 20, "{denied:?}");
    // The same requests without the smuggled part go through.
    assert_eq!(
        call("GET", "/proxy/email/emails/1?dry=1", a(&[]), None).0,
        200
    );
    assert_eq!(call("GET", "/proxy/email/files/a%20b", a(&[]), None).0, 200);
    assert_eq!(
        call(
            "POST",
            "/proxy/email/emails",
            a(&[form]),
            Some(b"to=a&method=card")
        )
        .0,
        201
    );
}

/// Raw non-ASCII bytes in the request target (a full-width dot sent as
/// UTF-8) are refused by the HTTP layer before any handler: the upstream
/// never sees them.
#[test]
fn raw_non_ascii_request_targets_never_reach_the_upstream() {
    use std::io::{Read, Write};
    let f = fixture("proxy-raw", |_| {});
    let (_, token) = f.credential("email", "read");
    let addr = f.b.url.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    let mut req = b"GET /proxy/email/files/".to_vec();
    req.extend("\u{ff0e}\u{ff0e}".as_bytes());
    req.extend(b"/admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer ");
    req.extend(token.as_bytes());
    req.extend(b"\r\n\r\n");
    c.write_all(&req).unwrap();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(f.seen.lock().unwrap().len(), 0);
}

fn pay_details(amount: u64) -> Option<Value> {
    Some(json!([{"type": "mandate", "amount": amount, "currency": "EUR"}]))
}

/// The attack: a credential declared for 50.00 sent 25,000.00 three times,
/// with no approval. Now the amount in the body is checked against the
/// declared one, and the credential is good for one call.
#[test]
fn a_declared_amount_bounds_the_forwarded_call_which_happens_once() {
    let f = fixture("proxy-amount", |_| {});
    let (s, v) = f.b.admin_put_text(
        "/v1/tenants/acme/policies/approvals",
        include_str!("../../../examples/policies/approvals.cedar"),
    );
    assert_eq!(s, 200, "{v}");
    let (run, token) = f.credential_for("pay", "pay", pay_details(5000));
    let auth = bearer(&token);
    let h = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let big = br#"{"amount": 2500000, "currency": "EUR", "to": "mallory"}"#;
    for _ in 0..3 {
        check(
            f.call("POST", "/proxy/pay/payments", &h, Some(big)),
            403,
            "insufficient_scope",
            "moves 2500000, more than the 5000",
        );
    }
    assert_eq!(
        f.seen_count("/payments"),
        0,
        "an over-amount call went upstream"
    );
    let ok = br#"{"amount": 5000, "currency": "EUR", "to": "bob"}"#;
    let (s, v, _) = f.call("POST", "/proxy/pay/payments", &h, Some(ok));
    assert_eq!(s, 201, "{v}");
    assert_eq!(f.seen_count("/payments"), 1);
    // Single use: the same credential, even for a smaller amount, is spent.
    check(
        f.call("POST", "/proxy/pay/payments", &h, Some(br#"{"amount": 1}"#)),
        403,
        "insufficient_scope",
        "good for one call",
    );
    assert_eq!(f.seen_count("/payments"), 1);
    let evs = f.b.audit(&format!("run={run}&type=proxy.call"));
    let reasons: Vec<&str> = evs.iter().filter_map(|e| e["reason"].as_str()).collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| **r == "amount 2500000 over the declared 5000")
            .count(),
        3,
        "{reasons:?}"
    );
    assert!(reasons.contains(&"single-use amount credential used again"));
    let allowed: Vec<&Value> = evs.iter().filter(|e| e["decision"] == "allow").collect();
    assert_eq!(allowed.len(), 1);
    assert_eq!(allowed[0]["details"]["amount_sent"], 5000);
    assert_eq!(allowed[0]["details"]["amount_declared"], 5000);
}

/// Every way the amount cannot be checked is refused (403), says why and is audited.
#[test]
fn amounts_that_cannot_be_checked_are_refused() {
    let f = fixture("proxy-amount-refusals", |_| {});
    let json_h = |auth: &str| -> Vec<(&'static str, String)> {
        vec![
            ("Authorization", auth.to_owned()),
            ("Content-Type", "application/json".into()),
        ]
    };
    let form_h = |auth: &str| -> Vec<(&'static str, String)> {
        vec![
            ("Authorization", auth.to_owned()),
            ("Content-Type", "application/x-www-form-urlencoded".into()),
        ]
    };
    let call = |path: &str, h: Vec<(&'static str, String)>, body: &[u8]| {
        let refs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        f.call("POST", path, &refs, Some(body))
    };
    let (_, t) = f.credential_for("pay", "pay", pay_details(5000));
    let auth = bearer(&t);
    let cases: Vec<(&str, Headers, &[u8], &str)> = vec![
        (
            "/proxy/pay/payments",
            json_h(&auth),
            br#"{"to": "bob"}"#,
            "no amount at `/amount`",
        ),
        (
            "/proxy/pay/payments",
            json_h(&auth),
            br#"{"amount": "25.00"}"#,
            "not a non-negative integer",
        ),
        (
            "/proxy/pay/payments",
            json_h(&auth),
            br#"{"amount": 10.5}"#,
            "not a non-negative integer",
        ),
        (
            "/proxy/pay/payments",
            json_h(&auth),
            br#"{"amount": 1, "amount": 2500000}"#,
            "appears twice",
        ),
        (
            "/proxy/pay/payments",
            json_h(&auth),
            br#"{"amount": 1, "Amount": 2500000}"#,
            "appears twice",
        ),
        (
            "/proxy/pay/payments",
            form_h(&auth),
            b"amount=1",
            "Content-Type: application/json",
        ),
        (
            "/proxy/pay/payments?amount=2500000",
            json_h(&auth),
            br#"{"amount": 1}"#,
            "query string also names `amount`",
        ),
        (
            "/proxy/pay/charges",
            form_h(&auth),
            b"amount=1&amount=2500000",
            "more than once",
        ),
        (
            "/proxy/pay/charges",
            form_h(&auth),
            b"amount=1&Amount=2500000",
            "more than once",
        ),
        (
            "/proxy/pay/charges",
            form_h(&auth),
            b"currency=eur",
            "no amount at `amount`",
        ),
        (
            "/proxy/pay/charges",
            json_h(&auth),
            br#"{"amount": 1}"#,
            "x-www-form-urlencoded",
        ),
        // A credential with an amount on a route that cannot locate one.
        (
            "/proxy/pay/refunds",
            json_h(&auth),
            br#"{"amount": 1}"#,
            "does not say where a request carries its amount",
        ),
    ];
    for (path, h, body, needle) in cases {
        check(call(path, h, body), 403, "insufficient_scope", needle);
    }
    // A money-moving route needs a declared amount.
    let (_, plain) = f.credential_for("pay", "pay", None);
    check(
        call(
            "/proxy/pay/payments",
            json_h(&bearer(&plain)),
            br#"{"amount": 2500000}"#,
        ),
        403,
        "insufficient_scope",
        "moves money: ask for a credential declaring the amount",
    );
    assert_eq!(
        f.seen_count("/payments") + f.seen_count("/charges") + f.seen_count("/refunds"),
        0
    );
    // None of the refusals spent the credential; a form call within it passes.
    let (s, v, _) = call(
        "/proxy/pay/charges",
        form_h(&auth),
        b"amount=4999&currency=eur",
    );
    assert_eq!(s, 201, "{v}");
    // A route without an amount still works with a credential without one.
    let (s, v, _) = call(
        "/proxy/pay/refunds",
        json_h(&bearer(&plain)),
        br#"{"id": "p1"}"#,
    );
    assert_eq!(s, 201, "{v}");
    let denied = f.b.audit("type=proxy.call&decision=deny&limit=100");
    assert_eq!(denied.len(), 13, "{denied:?}");
    assert!(denied.iter().all(|e| e["reason"].as_str().is_some()));
    assert!(
        denied
            .iter()
            .any(|e| e["reason"] == "declared amount on a route that names none")
    );
    assert!(
        denied
            .iter()
            .any(|e| e["reason"] == "money-moving route without a declared amount")
    );
}

/// A spent single-use credential stays spent when the broker restarts: the
/// spend is in the audit trail before the upstream saw the call.
#[test]
fn a_spent_amount_credential_stays_spent_across_a_restart() {
    let f = fixture("proxy-amount-restart", |_| {});
    let (_, token) = f.credential_for("pay", "pay", pay_details(700));
    let auth = bearer(&token);
    let h = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    let (s, v, _) = f.call("POST", "/proxy/pay/charges", &h, Some(b"amount=700"));
    assert_eq!(s, 201, "{v}");
    // The old broker finishes writing the call's outcome before it stops.
    f.audit_until("type=proxy.result", 1);
    let f = Fixture {
        b: f.b.restart(),
        grant: f.grant,
        _rt: f._rt,
        up: f.up,
        seen: f.seen,
    };
    check(
        f.call("POST", "/proxy/pay/charges", &h, Some(b"amount=700")),
        403,
        "insufficient_scope",
        "good for one call",
    );
    assert_eq!(f.seen_count("/charges"), 1);
}

#[test]
fn amount_locations_are_checked_at_registration() {
    let b = Broker::start("proxy-amount-reg");
    b.seed("acme");
    for (amount, needle) in [
        (json!({"json": "amount"}), "not a JSON pointer"),
        (json!({"json": "/a/~2"}), "not a JSON pointer"),
        (json!({"json": "/a//b"}), "not a JSON pointer"),
        (json!({"form": ""}), "1 to 128"),
        (json!({"header": "x-amount"}), "expected `json` or `form`"),
        (json!("/amount"), "expected `json` or `form`"),
    ] {
        let mut t = pay_tool("http://127.0.0.1:9");
        t["proxy"]["routes"][0]["amount"] = amount.clone();
        let got = b.admin_post("/v1/tenants/acme/tools", t);
        assert_eq!(got.0, 400, "{amount}: {}", got.1);
        let d = got.1["error_description"].as_str().unwrap_or("");
        assert!(d.contains(needle), "{amount}: `{d}` lacks `{needle}`");
    }
    let (s, v) = b.admin_post("/v1/tenants/acme/tools", pay_tool("http://127.0.0.1:9"));
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        v["proxy"]["routes"][0]["amount"],
        json!({"json": "/amount"})
    );
}

/// An upstream that echoes the request's headers hands the injected key
/// back: in response headers and in a big streamed body where occurrences
/// straddle chunk boundaries. The agent gets markers instead; the result
/// event says `secret_reflected`.
#[test]
fn an_echoed_key_is_scrubbed_from_headers_and_bodies() {
    let f = fixture("proxy-scrub", |_| {});
    let (run, token) = f.credential("email", "read");
    let auth = bearer(&token);
    let a = [("Authorization", auth.as_str())];
    let (s, v, h) = f.call("GET", "/proxy/email/echo/headers", &a, None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        f.last_seen()["headers"]["authorization"],
        format!("Bearer {REAL_KEY}")
    );
    assert_eq!(f.last_seen()["headers"]["accept-encoding"], "identity");
    let text = v.to_string();
    assert!(!text.contains(REAL_KEY), "{text}");
    let marker = "[REDACTED]";
    assert!(
        v["headers"]["authorization"]
            .as_str()
            .unwrap()
            .starts_with(marker),
        "{v}"
    );
    for name in ["x-echo-auth", "x-echo-key"] {
        let got = h.get(name).unwrap().to_str().unwrap();
        assert!(
            !got.contains(REAL_KEY) && got.starts_with(marker),
            "{name}: {got}"
        );
        assert_eq!(
            got.len(),
            if name == "x-echo-key" {
                REAL_KEY.len()
            } else {
                REAL_KEY.len() + 7
            }
        );
    }

    let req = ureq::http::Request::builder()
        .method("GET")
        .uri(format!("{}/proxy/email/echo/big", f.b.url))
        .header("Authorization", auth.as_str());
    let mut r = Broker::agent().run(req.body(()).unwrap()).unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let declared: usize = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let got = r
        .body_mut()
        .with_config()
        .limit(16 * 1024 * 1024)
        .read_to_vec()
        .unwrap();
    assert_eq!(got.len(), declared, "the length changed");
    assert!(got.len() > 3 * 1024 * 1024);
    let key = REAL_KEY.as_bytes();
    assert!(
        !got.windows(key.len()).any(|w| w == key),
        "the key came back"
    );
    let markers = got
        .windows(marker.len())
        .filter(|w| *w == marker.as_bytes())
        .count();
    let rounds = got.len() / (4093 + 2 * key.len() + 7 + 5);
    assert!(
        markers >= 2 * rounds,
        "{markers} markers for {rounds} rounds"
    );

    // `proxy.result` is written when the body is done.
    let results = f.audit_until(&format!("run={run}&type=proxy.result"), 2);
    assert!(
        results
            .iter()
            .all(|e| e["details"]["secret_reflected"] == true)
    );
    assert!(results.iter().all(|e| {
        e["reason"]
            .as_str()
            .unwrap_or("")
            .contains("sent the injected key back")
    }));
    // A clean answer is not flagged.
    let (s, _, _) = f.call("GET", "/proxy/email/emails/big", &a, None);
    assert_eq!(s, 200);
    let results = f.audit_until(&format!("run={run}&type=proxy.result"), 3);
    assert_eq!(
        results
            .iter()
            .filter(|e| e["details"].get("secret_reflected").is_none())
            .count(),
        1
    );
}

/// A compressed answer cannot be checked for the key: refused (502), audited.
#[test]
fn compressed_upstream_answers_are_refused() {
    let f = fixture("proxy-gzip", |_| {});
    let (_, token) = f.credential("email", "read");
    check(
        f.call(
            "GET",
            "/proxy/email/echo/gzip",
            &[("Authorization", &bearer(&token))],
            None,
        ),
        502,
        "upstream_unreachable",
        "`gzip`-encoded body",
    );
    let errors = f.b.audit("type=proxy.result&decision=error");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0]["reason"].as_str().unwrap().contains("gzip"));
}

/// A proxy tool's stored key goes only where it was set for: replacing the
/// tool may change its routes and actions, never its upstream or how the
/// key is injected while a secret is stored (an admin could otherwise send
/// a key nobody may read to a host of their own).
#[test]
fn a_replaced_proxy_tool_never_sends_its_key_elsewhere() {
    let f = fixture("proxy-replace", |_| {});
    let tools = f.b.admin_get("/v1/tenants/acme/tools").1;
    let mut email = tools
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "email")
        .unwrap()
        .clone();
    assert_eq!(email["secret_set"], true);
    for k in ["tenant", "created_ms", "secret_set", "audience"] {
        email.as_object_mut().unwrap().remove(k);
    }
    // Its routes may change (the same body, put back whole).
    let (s, v) = f.b.admin_put("/v1/tenants/acme/tools/email", email.clone());
    assert_eq!(s, 200, "{v}");
    for (path, value) in [
        ("/proxy/upstream", json!("http://127.0.0.1:9/steal")),
        ("/proxy/inject/header", json!("X-Leak")),
        ("/proxy/inject/format", json!("{secret}")),
    ] {
        let mut moved = email.clone();
        *moved.pointer_mut(path).unwrap() = value;
        assert_refused(
            &f.b.admin_put("/v1/tenants/acme/tools/email", moved),
            409,
            "conflict",
            "while it holds a secret",
        );
    }
    let (_, token) = f.credential("email", "read");
    let (s, v, _) = f.call(
        "GET",
        "/proxy/email/emails/42",
        &[("Authorization", &bearer(&token))],
        None,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        f.last_seen()["headers"]["authorization"],
        format!("Bearer {REAL_KEY}")
    );
}
