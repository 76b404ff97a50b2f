//! A real broker on a loopback port, and a client that speaks to it as an agent would.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use mandate_core::clock::ShiftedClock;
use mandate_core::jose::{Alg, b64};
use mandate_core::keys::SigningKey;
use rand::rngs::OsRng;
use serde_json::{Value, json};

pub struct Broker {
    pub url: String,
    /// The URL it names itself by (its own, unless it is one of several
    /// brokers behind one name: [`Broker::peer`]).
    pub issuer: String,
    pub admin: String,
    pub dir: PathBuf,
    pub state: Arc<mandate_server::AppState>,
    /// The broker's clock: [`Broker::advance`] jumps it forward (expiry
    /// without sleeping); it carries over a restart.
    pub clock: Arc<ShiftedClock>,
    _rt: tokio::runtime::Runtime,
}

pub fn tempdir(tag: &str) -> PathBuf {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!("mandate-test-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Broker {
    pub fn start(tag: &str) -> Self {
        Self::start_with(tag, |_| {})
    }

    pub fn start_with(tag: &str, tweak: impl FnOnce(&mut mandate_server::Config)) -> Self {
        Self::start_in(tempdir(tag), tweak)
    }

    /// A broker on the data of an earlier one (a restart).
    pub fn start_again(dir: &std::path::Path) -> Self {
        Self::start_in(dir.to_owned(), |_| {})
    }

    pub fn start_in(dir: PathBuf, tweak: impl FnOnce(&mut mandate_server::Config)) -> Self {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Self::start_on(std_listener, dir, Arc::new(ShiftedClock::new()), tweak)
    }

    /// A broker on the data of an earlier one, on its clock.
    pub fn start_again_on(dir: &std::path::Path, clock: Arc<ShiftedClock>) -> Self {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Self::start_on(std_listener, dir.to_owned(), clock, |_| {})
    }

    /// Moves the broker's clock `secs` forward.
    pub fn advance(&self, secs: u64) {
        self.clock.advance_secs(secs);
    }

    /// Stops the broker as `mandate serve` does on SIGTERM (queued writes
    /// commit, then a last audit checkpoint is written); returns its directory.
    #[allow(dead_code)]
    pub fn stop(self) -> PathBuf {
        self.state.shutdown();
        let dir = self.dir.clone();
        drop(self);
        dir
    }

    /// Stops this broker and starts it again on the same address and data
    /// (mandates name the broker's address, so they stay valid).
    #[allow(dead_code)]
    pub fn restart(self) -> Self {
        self.restart_with(|_| {})
    }

    /// [`Broker::restart`] with a changed configuration.
    #[allow(dead_code)]
    pub fn restart_with(self, tweak: impl FnOnce(&mut mandate_server::Config)) -> Self {
        let addr: SocketAddr = self.url.trim_start_matches("http://").parse().unwrap();
        let dir = self.dir.clone();
        let clock = Arc::clone(&self.clock);
        drop(self);
        let l = (0..50)
            .find_map(|_| {
                std::net::TcpListener::bind(addr)
                    .map_err(|_| std::thread::sleep(std::time::Duration::from_millis(100)))
                    .ok()
            })
            .expect("the old address is free again");
        Self::start_on(l, dir, clock, tweak)
    }

    fn start_on(
        std_listener: std::net::TcpListener,
        dir: PathBuf,
        clock: Arc<ShiftedClock>,
        tweak: impl FnOnce(&mut mandate_server::Config),
    ) -> Self {
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let mut cfg = mandate_server::Config::new(addr, dir.join("data"), &dir.join("config"));
        cfg.clock = Arc::clone(&clock) as Arc<dyn mandate_core::clock::Clock>;
        tweak(&mut cfg);
        let admin_file = cfg.admin_token_file.clone();
        let issuer = cfg.issuer.clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // A broker dropped just before (a restart) may still be letting go
        // of the database's lock: its last tasks end on their own threads.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let state = loop {
            match mandate_server::boot::boot(cfg.clone()) {
                Err(e)
                    if e.to_string().contains("is using the database")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                r => break r.unwrap(),
            }
        };
        let bg = Arc::clone(&state);
        rt.spawn(async move {
            mandate_server::start_background(&bg);
            let l = tokio::net::TcpListener::from_std(std_listener).unwrap();
            // The broker's own accept loop, with its connection bounds.
            mandate_server::serve_on(l, bg, std::future::pending()).await;
        });
        let admin = std::fs::read_to_string(admin_file)
            .unwrap()
            .trim()
            .to_owned();
        Broker {
            url: format!("http://{addr}"),
            issuer,
            admin,
            dir,
            state,
            clock,
            _rt: rt,
        }
    }

    pub fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into()
    }

    pub fn admin_post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = Self::agent()
            .post(format!("{}{path}", self.url))
            .header("Authorization", &format!("Bearer {}", self.admin))
            .send_json(&body)
            .unwrap();
        read(r)
    }

    pub fn admin_put(&self, path: &str, body: Value) -> (u16, Value) {
        read(
            Self::agent()
                .put(format!("{}{path}", self.url))
                .header("Authorization", &format!("Bearer {}", self.admin))
                .send_json(body)
                .unwrap(),
        )
    }

    pub fn admin_put_text(&self, path: &str, text: &str) -> (u16, Value) {
        let r = Self::agent()
            .put(format!("{}{path}", self.url))
            .header("Authorization", &format!("Bearer {}", self.admin))
            .send(text)
            .unwrap();
        read(r)
    }

    pub fn admin_get(&self, path: &str) -> (u16, Value) {
        let r = Self::agent()
            .get(format!("{}{path}", self.url))
            .header("Authorization", &format!("Bearer {}", self.admin))
            .call()
            .unwrap();
        read(r)
    }

    /// Tenant `acme` with principal alice, agent `triage` (envelope crm:*, github:read),
    /// tools crm (read, write; pii) and github (read, push), a grant of crm:read and
    /// github:read, and the baseline policies. Returns the grant id.
    pub fn seed(&self, tenant: &str) -> String {
        assert_eq!(
            self.admin_post("/v1/tenants", json!({"name": tenant})).0,
            201
        );
        assert_eq!(
            self.admin_post(
                &format!("/v1/tenants/{tenant}/principals"),
                json!({"id": "alice@example.com"})
            )
            .0,
            201
        );
        let (s, v) = self.admin_post(
            &format!("/v1/tenants/{tenant}/agents"),
            json!({"name": "triage", "owner": "team-ops", "envelope": ["crm:*", "github:read"]}),
        );
        assert_eq!(s, 201, "{v}");
        let (s, v) = self.admin_post(
            &format!("/v1/tenants/{tenant}/tools"),
            json!({"name": "crm", "audience": format!("https://crm.{tenant}.example"), "actions": ["read", "write"], "labels": ["pii"]}),
        );
        assert_eq!(s, 201, "{v}");
        let (s, v) = self.admin_post(
            &format!("/v1/tenants/{tenant}/tools"),
            json!({"name": "github", "audience": format!("https://github.{tenant}.example"), "actions": ["read", "push"], "alg": "ES256"}),
        );
        assert_eq!(s, 201, "{v}");
        let (s, v) = self.admin_post(
            &format!("/v1/tenants/{tenant}/grants"),
            json!({"principal": "alice@example.com", "agent": "triage", "capabilities": ["crm:read", "github:*"], "task": "triage tickets"}),
        );
        assert_eq!(s, 201, "{v}");
        let grant = v["id"].as_str().unwrap().to_owned();
        let (s, v) = self.admin_put_text(
            &format!("/v1/tenants/{tenant}/policies/baseline"),
            include_str!("../../../../examples/policies/baseline.cedar"),
        );
        assert_eq!(s, 200, "{v}");
        grant
    }

    /// Starts a run for `triage` on alice's behalf; returns (run id, mandate, run key).
    pub fn start_run(&self, tenant: &str, grant: &str, alg: Alg) -> (String, String, SigningKey) {
        let key = SigningKey::generate(alg, &mut OsRng);
        let (s, v) = self.admin_post(
            "/v1/runs",
            json!({"tenant": tenant, "agent": "triage", "principal": "alice@example.com", "grant": grant,
                   "jwk": key.public().to_json()}),
        );
        assert_eq!(s, 201, "{v}");
        (
            v["run"].as_str().unwrap().to_owned(),
            v["mandate"].as_str().unwrap().to_owned(),
            key,
        )
    }

    pub fn token_url(&self) -> String {
        format!("{}/oauth/token", self.url)
    }

    pub fn proof(&self, key: &SigningKey) -> String {
        proof_with(
            key,
            json!({"jti": jti(), "htm": "POST", "htu": self.named_token_url(), "iat": now()}),
        )
    }

    /// The token endpoint as proofs name it (the issuer's).
    pub fn named_token_url(&self) -> String {
        format!("{}/oauth/token", self.issuer)
    }

    /// Another broker on this one's PostgreSQL store, as an operator runs
    /// several behind one name: the same issuer, master key and admin
    /// credential and clock, its own port and directories.
    pub fn peer(&self, tag: &str) -> Self {
        let store = self
            .state
            .config
            .store_url
            .clone()
            .expect("a broker on PostgreSQL");
        self.peer_on(tag, store)
    }

    /// [`Broker::peer`] reaching the database at `store` (another route to
    /// the same database, e.g. through a relay).
    pub fn peer_on(&self, tag: &str, store: mandate_core::secret::Secret) -> Self {
        self.peer_configured(tag, store, Arc::clone(&self.clock), |_| {})
    }

    /// [`Broker::peer`] with more configuration (`tweak`).
    pub fn peer_with(&self, tag: &str, tweak: impl FnOnce(&mut mandate_server::Config)) -> Self {
        let store = self.state.config.store_url.clone();
        let clock = Arc::clone(&self.clock);
        self.peer_configured(tag, store.expect("a broker on PostgreSQL"), clock, tweak)
    }

    /// [`Broker::peer`] on a clock of its own (brokers whose clocks differ).
    pub fn peer_on_clock(&self, tag: &str, clock: Arc<ShiftedClock>) -> Self {
        let store = self.state.config.store_url.clone();
        self.peer_configured(tag, store.expect("a broker on PostgreSQL"), clock, |_| {})
    }

    fn peer_configured(
        &self,
        tag: &str,
        store: mandate_core::secret::Secret,
        clock: Arc<ShiftedClock>,
        tweak: impl FnOnce(&mut mandate_server::Config),
    ) -> Self {
        let (issuer, config) = (self.issuer.clone(), self.dir.join("config"));
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut b = Self::start_on(l, tempdir(tag), clock, move |c| {
            c.store_url = Some(store);
            c.issuer = issuer;
            c.master_key = mandate_server::config::MasterKeySource::File(config.join("master.key"));
            c.admin_token_file = config.join("admin.token");
            tweak(c);
        });
        b.admin = self.admin.clone();
        b
    }

    /// A token exchange with a raw form body and optional DPoP header.
    pub fn exchange_raw(&self, body: &str, dpop: Option<&str>) -> (u16, Value) {
        let mut req = Self::agent()
            .post(self.token_url())
            .header("Content-Type", "application/x-www-form-urlencoded");
        if let Some(p) = dpop {
            req = req.header("DPoP", p);
        }
        read(req.send(body).unwrap())
    }

    /// A token exchange as an RFC 9449 client makes it: asked for a nonce
    /// (`use_dpop_nonce`, e.g. just after a restart), it retries once with
    /// a fresh proof carrying the `DPoP-Nonce` it was given.
    pub fn exchange(
        &self,
        mandate: &str,
        key: &SigningKey,
        audience: &str,
        scope: &str,
    ) -> (u16, Value) {
        self.exchange_form(&form(mandate, audience, scope), key)
    }

    /// [`Broker::exchange`] with any form body.
    pub fn exchange_form(&self, body: &str, key: &SigningKey) -> (u16, Value) {
        let (status, v, nonce) = self.exchange_with_nonce(body, &self.proof(key));
        match nonce {
            Some(n) if v["error"] == "use_dpop_nonce" => {
                let proof = proof_with(
                    key,
                    json!({"jti": jti(), "htm": "POST", "htu": self.named_token_url(), "iat": now(), "nonce": n}),
                );
                self.exchange_raw(body, Some(&proof))
            }
            _ => (status, v),
        }
    }

    /// A token exchange; also returns the `DPoP-Nonce` answered.
    pub fn exchange_with_nonce(&self, body: &str, dpop: &str) -> (u16, Value, Option<String>) {
        let r = Self::agent()
            .post(self.token_url())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("DPoP", dpop)
            .send(body)
            .unwrap();
        let nonce = r
            .headers()
            .get("dpop-nonce")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (s, v) = read(r);
        (s, v, nonce)
    }

    pub fn audit(&self, query: &str) -> Vec<Value> {
        let (s, v) = self.admin_get(&format!("/v1/audit?{query}"));
        assert_eq!(s, 200);
        v.as_array().unwrap().clone()
    }
}

pub fn form(mandate: &str, audience: &str, scope: &str) -> String {
    format!(
        "grant_type={}&subject_token={}&subject_token_type={}&audience={}&scope={}",
        enc("urn:ietf:params:oauth:grant-type:token-exchange"),
        enc(mandate),
        enc("urn:mandate:params:oauth:token-type:mandate"),
        enc(audience),
        enc(scope)
    )
}

pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub fn proof_with(key: &SigningKey, claims: Value) -> String {
    key.sign_jws(
        &json!({"typ": "dpop+jwt", "jwk": key.public().to_json()}),
        &claims,
    )
}

pub fn jti() -> String {
    let mut b = [0u8; 16];
    rand::RngCore::fill_bytes(&mut OsRng, &mut b);
    b64(&b)
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn read(mut r: ureq::http::Response<ureq::Body>) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Asserts an RFC-shaped error with `code` whose description contains `needle`.
pub fn assert_refused(got: &(u16, Value), status: u16, code: &str, needle: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"], code, "{}", got.1);
    let d = got.1["error_description"].as_str().unwrap_or("");
    assert!(d.contains(needle), "description `{d}` lacks `{needle}`");
}

/// RFC 9421 headers for a request signed by `key`: `Content-Digest` (if a
/// body), `Signature-Key` (hwk), `Signature-Input`, `Signature`, covering
/// `components` (which should include `signature-key`).
#[allow(dead_code, clippy::too_many_arguments)]
pub fn signed_headers(
    key: &SigningKey,
    method: &str,
    url: &str,
    mut headers: Vec<(String, String)>,
    body: &[u8],
    components: &[&str],
    created: u64,
    nonce: &str,
) -> Vec<(String, String)> {
    use mandate_core::httpsig;
    if !body.is_empty() {
        headers.push(("content-digest".into(), httpsig::content_digest(body)));
    }
    headers.push((
        "signature-key".into(),
        httpsig::signature_key_field("sig1", &key.public()),
    ));
    let msg = httpsig::Message::request(method, url, headers.clone());
    let (input, sig) = httpsig::sign(
        &msg,
        key,
        &httpsig::SignParams {
            label: "sig1",
            components,
            created,
            expires: Some(created + 30),
            nonce: Some(nonce),
            keyid: Some(&key.kid()),
            include_alg: true,
            tag: None,
        },
    )
    .unwrap();
    headers.push(("signature-input".into(), input));
    headers.push(("signature".into(), sig));
    headers
}

/// RFC 7662 introspection with the admin credential.
#[allow(dead_code)]
pub fn introspect(b: &Broker, token: &str) -> Value {
    read(
        Broker::agent()
            .post(format!("{}/oauth/introspect", b.url))
            .header("Authorization", &format!("Bearer {}", b.admin))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(format!("token={}", enc(token)))
            .unwrap(),
    )
    .1
}

/// `POST /v1/runs/delegate` with `body`, proved by `signer`.
pub fn delegate_with(b: &Broker, mandate: &str, signer: &SigningKey, body: Value) -> (u16, Value) {
    let url = format!("{}/v1/runs/delegate", b.url);
    let proof = mandate_core::client::dpop_proof(signer, "POST", &url, now(), &jti(), None, None);
    let mut body = body;
    body["mandate"] = json!(mandate);
    read(
        Broker::agent()
            .post(&url)
            .header("DPoP", &proof)
            .send_json(&body)
            .unwrap(),
    )
}

/// Delegates to `agent`; returns (run, mandate, key).
pub fn delegate(
    b: &Broker,
    mandate: &str,
    key: &SigningKey,
    agent: &str,
    caps: Option<Value>,
) -> (String, String, SigningKey) {
    let child = SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng);
    let mut body = json!({"agent": agent, "jwk": child.public().to_json()});
    if let Some(c) = caps {
        body["capabilities"] = c;
    }
    let (s, v) = delegate_with(b, mandate, key, body);
    assert_eq!(s, 201, "{v}");
    (
        v["run"].as_str().unwrap().to_owned(),
        v["mandate"].as_str().unwrap().to_owned(),
        child,
    )
}
