//! `Live` against a real broker: JWKS from the metadata, revocations from the
//! feed, a feed connection dropped (through a TCP relay we cut) while a run
//! is revoked, and the kill switch.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mandate_core::client::{dpop_proof, exchange_form};
use mandate_core::jose::{Alg, b64};
use mandate_core::keys::SigningKey;
use mandate_verify::live::{Live, LiveConfig};
use mandate_verify::{Request, VerifyError};
use rand::rngs::OsRng;
use serde_json::{Value, json};

const AUD: &str = "https://crm.acme.example";
const URI: &str = "https://crm.acme.example/contacts";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jti() -> String {
    b64(&rand::random::<[u8; 12]>())
}

/// A proof for `GET URI` with `cred`.
fn call_proof(key: &SigningKey, cred: &str) -> String {
    dpop_proof(key, "GET", URI, now(), &jti(), None, Some(cred))
}

struct Env {
    url: String,
    admin: String,
    http: ureq::Agent,
    /// The test's own runtime (verifiers, relays).
    rt: tokio::runtime::Runtime,
    /// The broker's runtime: dropped to stop it.
    srv: Option<Srv>,
    dir: std::path::PathBuf,
    addr: SocketAddr,
}

/// A broker in its own runtime.
struct Srv {
    rt: tokio::runtime::Runtime,
    state: std::sync::Arc<mandate_server::AppState>,
}

impl Srv {
    /// Stops it as `mandate serve` does: queued writes commit and the
    /// database is closed before the files are touched.
    fn stop(self) {
        self.state.shutdown();
        self.rt.shutdown_timeout(Duration::from_secs(2));
    }
}

/// Boots a broker on `dir` listening on `addr` in its own runtime.
fn serve(dir: &std::path::Path, addr: SocketAddr, rotate: bool) -> Srv {
    let mut cfg = mandate_server::Config::new(addr, dir.join("data"), &dir.join("config"));
    cfg.rotate_keys = rotate;
    let l = std::net::TcpListener::bind(addr).unwrap();
    l.set_nonblocking(true).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let state = mandate_server::boot::boot(cfg).unwrap();
    let serving = std::sync::Arc::clone(&state);
    rt.spawn(async move {
        let l = tokio::net::TcpListener::from_std(l).unwrap();
        mandate_server::serve_on(l, serving, std::future::pending()).await;
    });
    Srv { rt, state }
}

impl Env {
    fn start() -> Env {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!("mandate-live-{}-{n}", std::process::id()));
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let srv = serve(&dir, addr, false);
        let admin_file = dir.join("config").join("admin.token");
        let e = Env {
            url: format!("http://{addr}"),
            admin: std::fs::read_to_string(admin_file)
                .unwrap()
                .trim()
                .to_owned(),
            http: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into(),
            rt: tokio::runtime::Runtime::new().unwrap(),
            srv: Some(srv),
            dir,
            addr,
        };
        e.post("/v1/tenants", json!({"name": "acme"}));
        e.post(
            "/v1/tenants/acme/agents",
            json!({"name": "bot", "owner": "ops", "envelope": ["crm:read"]}),
        );
        e.post(
            "/v1/tenants/acme/tools",
            json!({"name": "crm", "audience": AUD, "actions": ["read"]}),
        );
        let r = e
            .http
            .put(format!("{}/v1/tenants/acme/policies/p", e.url))
            .header("Authorization", &format!("Bearer {}", e.admin))
            .send("permit (principal, action, resource);")
            .unwrap();
        assert!(r.status().is_success());
        e
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let mut r = self
            .http
            .post(format!("{}{path}", self.url))
            .header("Authorization", &format!("Bearer {}", self.admin))
            .send_json(&body)
            .unwrap();
        assert!(r.status().is_success(), "{path}");
        r.body_mut().read_json().unwrap()
    }

    /// A run and a credential for crm:read: (run id, credential, run key).
    fn credential(&self) -> (String, String, SigningKey) {
        let key = SigningKey::generate(Alg::EdDSA, &mut OsRng);
        let run = self.post(
            "/v1/runs",
            json!({"tenant": "acme", "agent": "bot", "jwk": key.public().to_json()}),
        );
        let token_url = format!("{}/oauth/token", self.url);
        let form = exchange_form(run["mandate"].as_str().unwrap(), "crm", "read");
        // As an RFC 9449 client: asked for a nonce (after a restart), retry with it.
        let mut nonce: Option<String> = None;
        let tok = loop {
            let dpop = dpop_proof(
                &key,
                "POST",
                &token_url,
                now(),
                &jti(),
                nonce.as_deref(),
                None,
            );
            let mut r = self
                .http
                .post(&token_url)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .header("DPoP", &dpop)
                .send(&form)
                .unwrap();
            let given = r
                .headers()
                .get("dpop-nonce")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let tok: Value = r.body_mut().read_json().unwrap();
            if tok["error"] == "use_dpop_nonce" && nonce.is_none() {
                nonce = given;
                continue;
            }
            break tok;
        };
        (
            run["run"].as_str().unwrap().to_owned(),
            tok["access_token"].as_str().unwrap().to_owned(),
            key,
        )
    }
}

fn check(
    live: &Live,
    rt: &tokio::runtime::Runtime,
    cred: &str,
    key: &SigningKey,
) -> Result<(), VerifyError> {
    let proof = call_proof(key, cred);
    let req = Request {
        credential: cred,
        proof: Some(&proof),
        method: "GET",
        uri: URI,
    };
    rt.block_on(live.verify(&req, now())).map(|_| ())
}

fn wait_refused(
    live: &Live,
    rt: &tokio::runtime::Runtime,
    cred: &str,
    key: &SigningKey,
    limit: Duration,
) -> VerifyError {
    let t = Instant::now();
    loop {
        if let Err(e) = check(live, rt, cred, key) {
            return e;
        }
        assert!(t.elapsed() < limit, "still accepted after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP relay to the broker that the test can cut (dropping every
/// connection and refusing new ones) and restore.
fn relay(rt: &tokio::runtime::Runtime, to: &str) -> (String, Arc<AtomicBool>) {
    let up = Arc::new(AtomicBool::new(true));
    let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let target = to.trim_start_matches("http://").to_owned();
    let (u, c) = (Arc::clone(&up), Arc::clone(&conns));
    rt.spawn(async move {
        let l = tokio::net::TcpListener::from_std(l).unwrap();
        loop {
            let (mut inbound, _) = l.accept().await.unwrap();
            if !u.load(Ordering::SeqCst) {
                continue; // dropped: refused
            }
            let target = target.clone();
            c.lock().unwrap().push(tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            }));
        }
    });
    let (u, c) = (Arc::clone(&up), conns);
    let switch = Arc::new(AtomicBool::new(true));
    let s = Arc::clone(&switch);
    rt.spawn(async move {
        loop {
            let want = s.load(Ordering::SeqCst);
            if !want && u.load(Ordering::SeqCst) {
                u.store(false, Ordering::SeqCst);
                for h in c.lock().unwrap().drain(..) {
                    h.abort();
                }
            } else if want {
                u.store(true, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    (format!("http://{addr}"), switch)
}

fn feed_token(e: &Env) -> String {
    e.post("/v1/feed-tokens", json!({}))["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn revocations_reach_the_verifier_over_the_feed() {
    let e = Env::start();
    let live =
        e.rt.block_on(Live::start(LiveConfig::new(&e.url, AUD, &feed_token(&e))))
            .unwrap();
    let (run, cred, key) = e.credential();
    check(&live, &e.rt, &cred, &key).unwrap();
    let t = Instant::now();
    e.post("/v1/revocations", json!({"kind": "run", "id": run}));
    let why = wait_refused(&live, &e.rt, &cred, &key, Duration::from_secs(2));
    assert_eq!(why, VerifyError::Revoked("run".into()));
    eprintln!("refused {:?} after the revoke call", t.elapsed());
    assert!(live.is_streaming());

    // The kill switch reaches it too.
    let (_, cred2, key2) = e.credential();
    check(&live, &e.rt, &cred2, &key2).unwrap();
    e.post("/v1/revocations", json!({"kind": "everything"}));
    let why = wait_refused(&live, &e.rt, &cred2, &key2, Duration::from_secs(2));
    assert_eq!(why, VerifyError::Revoked("everything".into()));
    assert_eq!(live.ignored_events(), 0);
}

#[test]
fn a_dropped_feed_misses_nothing() {
    let e = Env::start();
    let (via, switch) = relay(&e.rt, &e.url);
    // The verifier reaches the broker only through the relay; the broker's
    // issuer is still its own address (from the metadata).
    let live =
        e.rt.block_on(Live::start(LiveConfig::new(&via, AUD, &feed_token(&e))))
            .unwrap();
    let (run, cred, key) = e.credential();
    check(&live, &e.rt, &cred, &key).unwrap();
    let t = Instant::now();
    while !live.is_streaming() {
        assert!(t.elapsed() < Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(10));
    }
    // Cut the connection; revoke while the verifier cannot hear; restore.
    switch.store(false, Ordering::SeqCst);
    let t = Instant::now();
    while live.is_streaming() {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "the stream did not notice the cut"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    e.post("/v1/revocations", json!({"kind": "run", "id": run}));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        check(&live, &e.rt, &cred, &key).is_ok(),
        "it cannot know yet"
    );
    switch.store(true, Ordering::SeqCst);
    let why = wait_refused(&live, &e.rt, &cred, &key, Duration::from_secs(10));
    assert_eq!(why, VerifyError::Revoked("run".into()));
}

#[test]
fn a_bad_feed_credential_or_broker_is_a_clear_error() {
    let e = Env::start();
    let err =
        e.rt.block_on(Live::start(LiveConfig::new(
            &e.url,
            AUD,
            "mandate_feed_forged",
        )))
        .unwrap_err();
    assert!(err.0.contains("401"), "{err}");
    let err =
        e.rt.block_on(Live::start(LiveConfig::new("http://127.0.0.1:1", AUD, "x")))
            .unwrap_err();
    assert!(err.0.contains("127.0.0.1:1"), "{err}");
}

#[test]
fn the_middleware_puts_the_identity_in_the_request_or_refuses() {
    use axum::{Extension, Json, Router, middleware, routing::get};
    use mandate_verify::Identity;
    use mandate_verify::middleware::{MandateAuth, require_mandate};
    let e = Env::start();
    let live =
        e.rt.block_on(Live::start(LiveConfig::new(&e.url, AUD, &feed_token(&e))))
            .unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let tool = format!("http://{}", l.local_addr().unwrap());
    let app = Router::new()
        .route(
            "/contacts",
            get(|Extension(who): Extension<Identity>| async move {
                Json(json!({"agent": who.agent, "run": who.run, "scopes": who.scopes}))
            }),
        )
        .layer(middleware::from_fn_with_state(
            MandateAuth::new(live, "https://crm.acme.example"),
            require_mandate,
        ));
    e.rt.spawn(async move {
        let l = tokio::net::TcpListener::from_std(l).unwrap();
        axum::serve(l, app).await.unwrap();
    });
    let (run, cred, key) = e.credential();
    let call = |with_auth: bool| {
        let mut r = e.http.get(format!("{tool}/contacts"));
        if with_auth {
            let proof = call_proof(&key, &cred);
            r = r
                .header("Authorization", &format!("DPoP {cred}"))
                .header("DPoP", &proof);
        }
        let mut resp = r.call().unwrap();
        let status = resp.status().as_u16();
        let www = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned());
        let body: Value = resp.body_mut().read_json().unwrap();
        (status, body, www)
    };
    let (s, v, _) = call(true);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["agent"], "bot");
    assert_eq!(v["run"], run);
    assert_eq!(v["scopes"], json!(["read"]));
    let (s, v, www) = call(false);
    assert_eq!(s, 401, "{v}");
    assert!(www.unwrap().starts_with("DPoP "));
    e.post("/v1/revocations", json!({"kind": "run", "id": run}));
    let t = Instant::now();
    loop {
        let (s, v, _) = call(true);
        if s == 401 {
            assert!(
                v["error_description"].as_str().unwrap().contains("revoked"),
                "{v}"
            );
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The offline `Verifier` alone: JWKS and revocations fetched by the caller.
#[test]
fn the_offline_verifier_with_a_jwks_and_log_fetched_by_hand() {
    use mandate_verify::Verifier;
    let e = Env::start();
    let (run, cred, key) = e.credential();
    let get = |url: &str, auth: bool| -> Value {
        let mut r = e.http.get(url);
        if auth {
            r = r.header("Authorization", &format!("Bearer {}", e.admin));
        }
        r.call().unwrap().body_mut().read_json().unwrap()
    };
    let meta = get(
        &format!("{}/.well-known/oauth-authorization-server", e.url),
        false,
    );
    let mut v = Verifier::new(meta["issuer"].as_str().unwrap(), AUD);
    assert_eq!(
        v.set_jwks(&get(meta["jwks_uri"].as_str().unwrap(), false)),
        2
    );
    let p = call_proof(&key, &cred);
    let req = Request {
        credential: &cred,
        proof: Some(&p),
        method: "GET",
        uri: URI,
    };
    let id = v.verify(&req, now()).unwrap();
    assert_eq!(
        (id.tenant.as_str(), id.agent.as_str(), id.run.as_str()),
        ("acme", "bot", run.as_str())
    );
    e.post("/v1/revocations", json!({"kind": "run", "id": run}));
    for r in get(&format!("{}/v1/revocations/log?after=0", e.url), true)["revocations"]
        .as_array()
        .unwrap()
    {
        v.revoke(r["key"].as_str().unwrap());
    }
    let p = call_proof(&key, &cred);
    let req = Request {
        credential: &cred,
        proof: Some(&p),
        method: "GET",
        uri: URI,
    };
    assert_eq!(
        v.verify(&req, now()),
        Err(VerifyError::Revoked("run".into()))
    );
}

impl Env {
    /// Stops the broker and starts it again on the same address and data.
    fn restart(&mut self, rotate: bool) {
        if let Some(srv) = self.srv.take() {
            srv.stop();
        }
        self.srv = Some(serve(&self.dir, self.addr, rotate));
    }
}

#[test]
fn rotated_keys_are_fetched_on_an_unknown_kid_and_old_credentials_still_verify() {
    let mut e = Env::start();
    let live =
        e.rt.block_on(Live::start(LiveConfig::new(&e.url, AUD, &feed_token(&e))))
            .unwrap();
    let (_, old_cred, old_key) = e.credential();
    check(&live, &e.rt, &old_cred, &old_key).unwrap();
    e.restart(true);
    let (run, new_cred, new_key) = e.credential();
    let kid = |t: &str| -> String {
        let h: Value = serde_json::from_slice(
            &mandate_core::jose::unb64("header", t.split('.').next().unwrap()).unwrap(),
        )
        .unwrap();
        h["kid"].as_str().unwrap().to_owned()
    };
    assert_ne!(kid(&old_cred), kid(&new_cred), "the broker did not rotate");
    // The new kid is unknown to the verifier: it fetches the JWKS again.
    check(&live, &e.rt, &new_cred, &new_key).unwrap();
    check(&live, &e.rt, &old_cred, &old_key).unwrap();
    // And the feed follows the restarted broker.
    e.post("/v1/revocations", json!({"kind": "run", "id": run}));
    let why = wait_refused(&live, &e.rt, &new_cred, &new_key, Duration::from_secs(10));
    assert_eq!(why, VerifyError::Revoked("run".into()));
    let trail: Value = e
        .http
        .get(format!("{}/v1/audit?type=keys.rotate", e.url))
        .header("Authorization", &format!("Bearer {}", e.admin))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    assert_eq!(trail.as_array().unwrap().len(), 1);
}

impl Env {
    /// Stops the broker.
    fn stop(&mut self) {
        if let Some(srv) = self.srv.take() {
            srv.stop();
        }
    }

    /// Copies the stopped broker's database and audit checkpoint to `to`.
    fn backup(&self, to: &std::path::Path) {
        copy_dir(&self.dir.join("data"), &to.join("data"));
        let cp = self.dir.join("config").join("audit.checkpoint");
        if cp.exists() {
            std::fs::copy(&cp, to.join("audit.checkpoint")).unwrap();
        }
    }

    /// Puts a backup back in place of the stopped broker's data, then runs
    /// the restored broker where the verifier cannot reach it (another
    /// address) to revoke `what` there, and starts it again at its address.
    fn restore_and_revoke(&mut self, from: &std::path::Path, what: &[Value]) {
        std::fs::remove_dir_all(self.dir.join("data")).unwrap();
        copy_dir(&from.join("data"), &self.dir.join("data"));
        let cp = self.dir.join("config").join("audit.checkpoint");
        let _ = std::fs::remove_file(&cp);
        if from.join("audit.checkpoint").exists() {
            std::fs::copy(from.join("audit.checkpoint"), &cp).unwrap();
        }
        let elsewhere = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let srv = serve(&self.dir, elsewhere, false);
        for body in what {
            let r = self
                .http
                .post(format!("http://{elsewhere}/v1/revocations"))
                .header("Authorization", &format!("Bearer {}", self.admin))
                .send_json(body)
                .unwrap();
            assert!(r.status().is_success());
        }
        srv.stop();
        self.srv = Some(serve(&self.dir, self.addr, false));
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap();
        if f.file_type().unwrap().is_dir() {
            copy_dir(&f.path(), &to.join(f.file_name()));
        } else {
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
    }
}

fn wait_position(live: &Live, n: u64) {
    let t = Instant::now();
    while live.position() != n {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "position {} not {n}",
            live.position()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The broker is restored from a backup while a verifier follows it: its
/// log goes back from 6 to 3 and new revocations take 4, 5, 6, 7 again
/// (the head passes the verifier's position), then once more 4 (the head
/// is below it). The verifier sees every new revocation.
#[test]
fn a_broker_restored_from_a_backup_is_read_again_from_the_start() {
    let mut e = Env::start();
    let live =
        e.rt.block_on(Live::start(LiveConfig::new(&e.url, AUD, &feed_token(&e))))
            .unwrap();
    let creds: Vec<_> = (0..5).map(|_| e.credential()).collect();
    let ghost = |i: u32| json!({"kind": "credential", "id": format!("ghost{i}")});
    for i in 1..=3 {
        e.post("/v1/revocations", ghost(i));
    }
    wait_position(&live, 3);
    e.stop();
    let backup = e.dir.join("backup");
    e.backup(&backup);
    e.restart(false);
    for i in 4..=6 {
        e.post("/v1/revocations", ghost(i));
    }
    wait_position(&live, 6);
    e.stop();
    let runs: Vec<Value> = creds[..4]
        .iter()
        .map(|(run, _, _)| json!({"kind": "run", "id": run}))
        .collect();
    e.restore_and_revoke(&backup, &runs);
    for (_, cred, key) in &creds[..4] {
        let why = wait_refused(&live, &e.rt, cred, key, Duration::from_secs(15));
        assert_eq!(why, VerifyError::Revoked("run".into()));
    }
    wait_position(&live, 7);
    // Once more: now the restored log (head 4) ends before the position (7).
    e.stop();
    let (run, cred, key) = &creds[4];
    check(&live, &e.rt, cred, key).unwrap();
    e.restore_and_revoke(&backup, &[json!({"kind": "run", "id": run})]);
    let why = wait_refused(&live, &e.rt, cred, key, Duration::from_secs(15));
    assert_eq!(why, VerifyError::Revoked("run".into()));
    wait_position(&live, 4);
}

/// Past `max_staleness` without news from the broker, the verifier refuses
/// every credential and says why; it heals when the broker is back.
#[test]
fn stale_revocations_fail_closed_and_heal() {
    let mut e = Env::start();
    let mut cfg = LiveConfig::new(&e.url, AUD, &feed_token(&e));
    cfg.max_staleness = Duration::from_secs(2);
    let live = e.rt.block_on(Live::start(cfg)).unwrap();
    let (_, cred, key) = e.credential();
    check(&live, &e.rt, &cred, &key).unwrap();
    e.stop();
    let why = wait_refused(&live, &e.rt, &cred, &key, Duration::from_secs(10));
    let VerifyError::Stale(msg) = &why else {
        panic!("{why}")
    };
    assert!(
        msg.contains("last error") && !msg.contains("last error: none"),
        "{msg}"
    );
    assert!(live.last_synced().elapsed() >= Duration::from_secs(2));
    e.srv = Some(serve(&e.dir, e.addr, false));
    let t = Instant::now();
    while check(&live, &e.rt, &cred, &key).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "still stale");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A broker (or something posing as one) cannot make the verifier read
/// without bound, and a plain-http broker elsewhere is refused.
#[test]
fn oversized_answers_and_plain_http_elsewhere_are_refused() {
    use axum::{Json, Router, routing::get};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let (u1, u2) = (url.clone(), url.clone());
    let app = Router::new()
        .route(
            "/big/.well-known/oauth-authorization-server",
            get(|| async { "x".repeat(2 << 20) }),
        )
        .route(
            "/many/.well-known/oauth-authorization-server",
            get(move || async move {
                Json(json!({"issuer": u1, "jwks_uri": format!("{u2}/many/jwks")}))
            }),
        )
        .route(
            "/many/jwks",
            get(|| async {
                let key = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&[7u8; 32])});
                Json(json!({"keys": vec![key; 65]}))
            }),
        );
    rt.spawn(async move {
        let l = tokio::net::TcpListener::from_std(l).unwrap();
        axum::serve(l, app).await.unwrap();
    });
    let start = |broker: &str| {
        rt.block_on(Live::start(LiveConfig::new(broker, AUD, "x")))
            .unwrap_err()
            .0
    };
    let err = start(&format!("{url}/big"));
    assert!(err.contains("larger than 1048576 bytes"), "{err}");
    let err = start(&format!("{url}/many"));
    assert!(err.contains("65 keys"), "{err}");
    let err = start("http://192.0.2.1:8407");
    assert!(err.contains("https"), "{err}");
}
