//! `mandate exec`: run a command as an agent run, so that no static secret
//! (and not even the run's own key or mandate) ever reaches it.
//!
//! The wrapper starts a run with a key it generates and keeps, then runs the
//! command as a child with:
//! - `MANDATE_AGENT_SOCK`: a Unix socket (in a 0700 directory, mode 0600)
//!   serving a small HTTP API, on the model of ssh-agent and the SPIFFE
//!   Workload API: `GET /v1/identity`, `POST /v1/credentials` (a fresh,
//!   cached, refreshed credential for a tool and actions; the wrapper does
//!   the DPoP work) and `POST /v1/dpop` (a DPoP proof signed by the run key
//!   for a request the child makes to a `jwt` tool, or to the broker's MCP
//!   gateway with a DPoP-bound credential; the key never leaves)
//!   and `POST /v1/attenuate` (the run's mandate narrowed and handed to a
//!   sub-agent's key, signed by the run key: the sub-agent gets less, and
//!   only it can use what it gets);
//! - for each `--tool`, the environment variables its registration names
//!   (e.g. an API key variable set to a short-lived proxy credential and a
//!   base-URL variable set to the broker's proxy), so unchanged SDKs work.
//!
//! The exit code passes through; signals are forwarded; when the child
//! exits the run ends, which revokes every credential it got.
//!
//! Against the child (issue 10): the wrapper is non-dumpable, so a
//! same-user, non-root child cannot read its `/proc` environment, memory or
//! descriptors; `/v1/dpop` makes no proof for the broker's own origin but
//! for its MCP gateway URLs (`<broker>/mcp/<tool>`, exactly); and
//! the run is attached at the broker (`POST /v1/runs/attach`) before the
//! child starts, so killing the wrapper ends the run after a short grace.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use mandate_core::jose::{Alg, b64};
use mandate_core::keys::SigningKey;
use mandate_core::tooling::{EnvSpec, EnvValues};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::client::{CliError, Client, enc};

/// Variables the child never inherits: they would hand it the wrapper's authority.
const WITHHELD_ENV: [&str; 3] = [
    "MANDATE_ADMIN_TOKEN_FILE",
    "MANDATE_MASTER_KEY",
    "MANDATE_JOIN_TOKEN_FILE",
];

/// What `mandate exec` was asked to do.
pub(crate) struct ExecArgs {
    pub tenant: String,
    pub agent: String,
    pub principal: Option<String>,
    pub grant: Option<String>,
    pub task: Option<String>,
    pub tools: Vec<String>,
    /// The agents the child may start sub-agent runs of (`/v1/delegate`).
    pub delegate_to: Vec<String>,
    pub ttl: Option<u64>,
    pub quiet: bool,
    pub command: Vec<String>,
}

/// A credential the wrapper holds for the child.
#[derive(Clone)]
struct Held {
    body: Value,
    issued: u64,
    expires: u64,
}

/// The run, as the wrapper holds it.
struct RunAgent {
    http: ureq::Agent,
    token_endpoint: String,
    mandate: String,
    key: SigningKey,
    nonce: Mutex<Option<String>>,
    held: Mutex<HashMap<(String, String), Held>>,
    identity: Value,
    /// The broker's origins (its issuer's and the `--url` one): `/v1/dpop`
    /// signs no proof for them, but for its gateway URLs.
    broker_origins: Vec<String>,
    /// `<issuer>/mcp/`, normalised: the prefix of the broker's MCP gateway
    /// URLs, for which `/v1/dpop` does sign.
    gateway_prefix: Option<String>,
    /// The broker's issuer URL (the token endpoint's base).
    issuer: String,
    /// The agents `/v1/delegate` may start runs of (`--delegate-to`);
    /// delegations go one at a time (the broker counts a run's children).
    delegate_to: Mutex<Vec<String>>,
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_b64(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    b64(&b)
}

impl RunAgent {
    /// A DPoP proof (RFC 9449 §4.2) by the run key.
    fn proof(&self, method: &str, url: &str, access_token: Option<&str>) -> String {
        self.proof_with_nonce(method, url, access_token, None)
    }

    /// [`Self::proof`] with the nonce the server gave (`DPoP-Nonce`), or the
    /// broker's last one.
    fn proof_with_nonce(
        &self,
        method: &str,
        url: &str,
        access_token: Option<&str>,
        given: Option<&str>,
    ) -> String {
        let nonce = match given {
            Some(n) => Some(n.to_owned()),
            None => self.nonce.lock().ok().and_then(|n| n.clone()),
        };
        mandate_core::client::dpop_proof(
            &self.key,
            method,
            url,
            now(),
            &random_b64(16),
            nonce.as_deref(),
            access_token,
        )
    }

    /// RFC 8693 exchange of the mandate for a credential, retrying once
    /// with the broker's DPoP nonce when it asks for one (RFC 9449 §8).
    fn exchange(
        &self,
        tool: &str,
        actions: &[String],
        details: Option<&Value>,
    ) -> Result<Value, Refusal> {
        let mut form = mandate_core::client::exchange_form(&self.mandate, tool, &actions.join(" "));
        if let Some(d) = details {
            // RFC 9396: what the agent declares about this request.
            let mut o = d.clone();
            o["type"] = json!("mandate");
            form.push_str("&authorization_details=");
            form.push_str(&mandate_core::client::form_encode(&json!([o]).to_string()));
        }
        let (status, v) = self.post_proved(
            &self.token_endpoint,
            "application/x-www-form-urlencoded",
            &form,
        )?;
        if status == 200 {
            return Ok(v);
        }
        if v["error"] == "authorization_pending" {
            return Err(Refusal::Pending(v));
        }
        Err(refused_by_broker(
            status,
            &v,
            &format!("a credential for `{tool}`"),
        ))
    }

    /// POSTs `body` to `url` with a DPoP proof of the run key, once more
    /// with the broker's nonce when it asks for one (RFC 9449 §8); the
    /// answer's status and JSON.
    fn post_proved(
        &self,
        url: &str,
        content_type: &str,
        body: &str,
    ) -> Result<(u16, Value), Refusal> {
        let unreachable = |e: &dyn std::fmt::Display| {
            Refusal::Broker(
                UNAVAILABLE.into(),
                CliError::new(format!("cannot reach the broker: {e}")),
            )
        };
        for _ in 0..2 {
            let mut r = self
                .http
                .post(url)
                .header("Content-Type", content_type)
                .header("DPoP", &self.proof("POST", url, None))
                .send(body)
                .map_err(|e| unreachable(&e))?;
            if let Some(n) = r.headers().get("dpop-nonce").and_then(|v| v.to_str().ok())
                && let Ok(mut slot) = self.nonce.lock()
            {
                *slot = Some(n.to_owned());
            }
            let status = r.status().as_u16();
            let v: Value = r.body_mut().read_json().unwrap_or(Value::Null);
            if v["error"] != "use_dpop_nonce" {
                return Ok((status, v));
            }
        }
        Err(Refusal::Broker(
            UNAVAILABLE.into(),
            CliError::new("the broker kept asking for a new DPoP nonce"),
        ))
    }

    /// A child run for a sub-agent (`POST /v1/runs/delegate`, proved by the
    /// run key): the broker's answer, with the child's mandate (bound to
    /// the sub-agent's key, `jwk`). `req` is the broker's request body but
    /// for the mandate, which the wrapper adds (the broker checks the
    /// fields, as for any caller).
    fn delegate(&self, mut req: serde_json::Map<String, Value>) -> Result<Value, Refusal> {
        let url = format!("{}/v1/runs/delegate", self.issuer);
        let agent = req
            .get("agent")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        // One at a time; and only to the agents the operator named.
        let allowed = self
            .delegate_to
            .lock()
            .map_err(|_| Refusal::No(CliError::new("the wrapper failed")))?;
        if !allowed.contains(&agent) {
            return Err(Refusal::No(CliError::new(if allowed.is_empty() {
                "this run may not start sub-agent runs: `mandate exec --delegate-to AGENT` allows it for that agent".to_owned()
            } else {
                format!(
                    "this run may start sub-agent runs of {} only (`mandate exec --delegate-to`)",
                    allowed.join(", ")
                )
            })));
        }
        req.insert("mandate".into(), json!(self.mandate));
        let body = Value::Object(req).to_string();
        let (status, v) = self.post_proved(&url, "application/json", &body)?;
        if status == 200 || status == 201 {
            return Ok(v);
        }
        Err(refused_by_broker(
            status,
            &v,
            &format!("a run for sub-agent `{agent}`"),
        ))
    }

    /// A credential for (tool, actions): the held one while more than a
    /// third of its life is left, else a fresh one.
    fn credential(
        &self,
        tool: &str,
        actions: &[String],
        details: Option<&Value>,
    ) -> Result<Value, Refusal> {
        if details.is_some() {
            // Declared details (and any approval) are for one request: never cached.
            return self.exchange(tool, actions, details);
        }
        let mut sorted = actions.to_vec();
        sorted.sort();
        let key = (tool.to_owned(), sorted.join(" "));
        let t = now();
        if let Some(h) = self.held.lock().ok().and_then(|m| m.get(&key).cloned())
            && fresh(&h, t)
        {
            let mut body = h.body;
            body["expires_in"] = json!(h.expires.saturating_sub(t));
            return Ok(body);
        }
        let body = self.exchange(tool, actions, None)?;
        let life = body["expires_in"].as_u64().unwrap_or(0);
        if let Ok(mut m) = self.held.lock() {
            m.insert(
                key,
                Held {
                    body: body.clone(),
                    issued: t,
                    expires: t + life,
                },
            );
        }
        Ok(body)
    }

    /// Drops the held credential for (tool, actions), if any.
    fn forget(&self, tool: &str, actions: &[String]) {
        let mut sorted = actions.to_vec();
        sorted.sort();
        if let Ok(mut m) = self.held.lock() {
            m.remove(&(tool.to_owned(), sorted.join(" ")));
        }
    }

    /// Renews every held credential that is past two thirds of its life.
    fn refresh(&self) {
        let t = now();
        let stale: Vec<(String, String)> = self
            .held
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(_, h)| !fresh(h, t) && h.expires > t)
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        for (tool, actions) in stale {
            let actions: Vec<String> = actions.split(' ').map(str::to_owned).collect();
            if let Ok(mut m) = self.held.lock() {
                m.remove(&(tool.clone(), actions.join(" ")));
            }
            if let Err(e) = self.credential(&tool, &actions, None) {
                eprintln!("mandate exec: cannot refresh the credential for `{tool}`: {e}");
            }
        }
    }
}

/// The broker's refusal (`status`, body `v`) of `what`, with its own error
/// code; a server error or a 429 as `temporarily_unavailable` (try again).
fn refused_by_broker(status: u16, v: &Value, what: &str) -> Refusal {
    let code = match v["error"].as_str() {
        _ if status >= 500 || status == 429 => UNAVAILABLE,
        Some(c) => c,
        None => "refused",
    };
    Refusal::Broker(
        code.to_owned(),
        CliError::new(format!(
            "the broker refused {what}: {}",
            v["error_description"].as_str().unwrap_or("no reason given")
        )),
    )
}

/// The OAuth error code for "the broker could not be asked; try again".
const UNAVAILABLE: &str = "temporarily_unavailable";

/// Why no credential came back.
enum Refusal {
    /// A human must approve first (or the run is suspended): the broker's answer.
    Pending(Value),
    /// The broker refused: its OAuth error code (`access_denied`,
    /// `invalid_grant` for a revoked or expired run, ...) and what it said.
    Broker(String, CliError),
    /// Refused.
    No(CliError),
}

impl From<CliError> for Refusal {
    fn from(e: CliError) -> Self {
        Refusal::No(e)
    }
}

impl From<Refusal> for CliError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::No(e) | Refusal::Broker(_, e) => e,
            pending => CliError::new(pending.to_string()),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Pending(v) => write!(
                f,
                "waiting for approval: {}",
                v["error_description"].as_str().unwrap_or("")
            ),
            Refusal::No(e) | Refusal::Broker(_, e) => write!(f, "{e}"),
        }
    }
}

fn fresh(h: &Held, t: u64) -> bool {
    let life = h.expires.saturating_sub(h.issued);
    h.expires > t && h.expires - t > life / 3
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialRequest {
    tool: String,
    #[serde(default)]
    actions: Vec<String>,
    /// What the agent declares about this request (amount, currency,
    /// target, description): sent as RFC 9396 `authorization_details`.
    #[serde(default)]
    details: Option<Value>,
    /// Not the held credential but a new one: the one held was refused
    /// (say, the tool now takes DPoP-bound credentials only).
    #[serde(default)]
    fresh: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProofRequest {
    method: String,
    url: String,
    #[serde(default)]
    access_token: Option<String>,
    /// The nonce the server asked for (RFC 9449 §9: its `DPoP-Nonce`).
    #[serde(default)]
    nonce: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttenuateRequest {
    /// RFC 7638 thumbprint of the sub-agent's key.
    to: String,
    #[serde(default)]
    to_name: Option<String>,
    #[serde(default)]
    only: Vec<String>,
    #[serde(default)]
    ttl_secs: Option<u64>,
    #[serde(default)]
    uses: Option<u64>,
    #[serde(default)]
    path_prefix: Option<String>,
}

type Reply = (StatusCode, Json<Value>);

fn refused(status: StatusCode, why: impl Into<String>) -> Reply {
    (
        status,
        Json(json!({"error": "refused", "error_description": why.into()})),
    )
}

async fn identity(State(a): State<Arc<RunAgent>>) -> Json<Value> {
    Json(a.identity.clone())
}

async fn credentials(State(a): State<Arc<RunAgent>>, body: axum::body::Bytes) -> Reply {
    let req: CredentialRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refused(
                StatusCode::BAD_REQUEST,
                format!("send JSON {{\"tool\": ..., \"actions\": [...]}}: {e}"),
            );
        }
    };
    let actions = if req.actions.is_empty() {
        // All the run may do with the tool, as the broker listed at start.
        a.identity["tools"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["name"] == req.tool))
            .and_then(|t| t["actions"].as_array())
            .map(|v| {
                v.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        req.actions
    };
    if actions.is_empty() {
        return refused(
            StatusCode::BAD_REQUEST,
            format!("name the `actions` you need on `{}`", req.tool),
        );
    }
    let tool = req.tool.clone();
    let details = req.details;
    if req.fresh {
        a.forget(&tool, &actions);
    }
    if details.as_ref().is_some_and(|d| !d.is_object()) {
        return refused(
            StatusCode::BAD_REQUEST,
            "`details` is an object: {\"amount\": 2500, \"currency\": \"EUR\", \"target\": \"...\"}",
        );
    }
    reply(
        tokio::task::spawn_blocking(move || a.credential(&tool, &actions, details.as_ref())).await,
    )
}

/// The socket's answer for what the wrapper got from the broker.
fn reply(got: Result<Result<Value, Refusal>, tokio::task::JoinError>) -> Reply {
    match got {
        Ok(Ok(v)) => (StatusCode::OK, Json(v)),
        // 202: not refused, not yet; poll again after `interval` seconds.
        Ok(Err(Refusal::Pending(v))) => (StatusCode::ACCEPTED, Json(v)),
        // The broker's own error code, so a client can tell a revoked run
        // (`invalid_grant`) from a policy refusal (`access_denied`).
        Ok(Err(Refusal::Broker(code, e))) => (
            if code == UNAVAILABLE {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::FORBIDDEN
            },
            Json(json!({"error": code, "error_description": e.msg})),
        ),
        Ok(Err(Refusal::No(e))) => refused(StatusCode::FORBIDDEN, e.msg),
        Err(_) => refused(StatusCode::INTERNAL_SERVER_ERROR, "the wrapper failed"),
    }
}

async fn delegate(State(a): State<Arc<RunAgent>>, body: axum::body::Bytes) -> Reply {
    let req: serde_json::Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refused(
                StatusCode::BAD_REQUEST,
                format!(
                    "send JSON {{\"agent\": ..., \"jwk\": <the sub-agent's public key>, \"capabilities\": [\"tool:action\"], \"ttl_secs\", \"task\"}}: {e}"
                ),
            );
        }
    };
    if req.contains_key("mandate") {
        return refused(
            StatusCode::BAD_REQUEST,
            "leave `mandate` out: the wrapper delegates from the run's own mandate",
        );
    }
    reply(tokio::task::spawn_blocking(move || a.delegate(req)).await)
}

async fn dpop(State(a): State<Arc<RunAgent>>, body: axum::body::Bytes) -> Reply {
    let req: ProofRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refused(
                StatusCode::BAD_REQUEST,
                format!("send JSON {{\"method\": ..., \"url\": ..., \"access_token\": ...}}: {e}"),
            );
        }
    };
    if req.method.is_empty()
        || !req.method.bytes().all(|b| b.is_ascii_uppercase())
        || !(req.url.starts_with("https://") || req.url.starts_with("http://"))
    {
        return refused(
            StatusCode::BAD_REQUEST,
            "`method` must be an upper-case HTTP method and `url` an http(s) URL",
        );
    }
    let Some(o) = origin(&req.url) else {
        return refused(
            StatusCode::BAD_REQUEST,
            "`url` is not an http(s) URL the wrapper can read: give scheme, host and path, without user info",
        );
    };
    if a.broker_origins.contains(&o) && !is_gateway_url(a.gateway_prefix.as_deref(), &req.url) {
        return refused(
            StatusCode::FORBIDDEN,
            format!(
                "the agent socket makes no proofs for the broker itself ({o}): ask `/v1/credentials` for credentials and `/v1/attenuate` for a sub-agent's mandate"
            ),
        );
    }
    let proof = a.proof_with_nonce(
        &req.method,
        &req.url,
        req.access_token.as_deref(),
        req.nonce.as_deref(),
    );
    (StatusCode::OK, Json(json!({"dpop": proof})))
}

async fn attenuate(State(a): State<Arc<RunAgent>>, body: axum::body::Bytes) -> Reply {
    let req: AttenuateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refused(
                StatusCode::BAD_REQUEST,
                format!(
                    "send JSON {{\"to\": <key thumbprint>, \"only\": [\"tool:action\"], \"ttl_secs\", \"uses\", \"path_prefix\", \"to_name\"}}: {e}"
                ),
            );
        }
    };
    let capabilities = if req.only.is_empty() {
        None
    } else {
        match mandate_core::capability::CapabilitySet::parse(&req.only) {
            Ok(c) => Some(c),
            Err(e) => return refused(StatusCode::BAD_REQUEST, format!("`only`: {e}")),
        }
    };
    let n = mandate_core::attenuation::Narrowing {
        capabilities,
        not_after: req.ttl_secs.map(|t| now() + t),
        max_uses: req.uses,
        resource_prefix: req.path_prefix,
        next_holder: Some(req.to),
        next_holder_name: req.to_name,
    };
    match mandate_core::attenuation::attenuate(&a.mandate, &a.key, &n) {
        Ok(m) => (
            StatusCode::OK,
            Json(json!({"mandate": m, "holder": n.next_holder, "signed_by": a.key.kid()})),
        ),
        Err(e) => refused(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// The origin (scheme, host and port, normalised as the broker normalises
/// DPoP `htu`) of an http(s) URL; `None` when it does not parse.
fn origin(url: &str) -> Option<String> {
    let n = mandate_core::dpop::normalize_htu(url)?;
    let (scheme, rest) = n.split_once("://")?;
    let host = rest.split('/').next().filter(|h| !h.is_empty())?;
    Some(format!("{scheme}://{host}"))
}

/// Whether `url` is exactly one of the broker's MCP gateway URLs
/// (`prefix` = `<issuer>/mcp/`, normalised, then a tool's name): the one
/// place at the broker where an agent itself presents a DPoP-bound
/// credential. A proof names its URL (`htu`), so one made for a gateway
/// URL is refused at the token endpoint and everywhere else.
fn is_gateway_url(prefix: Option<&str>, url: &str) -> bool {
    let (Some(prefix), Some(n)) = (prefix, mandate_core::dpop::normalize_htu(url)) else {
        return false;
    };
    n.strip_prefix(prefix)
        .is_some_and(|tool| mandate_core::ids::check_slug("tool", tool).is_ok())
}

/// `<issuer>/mcp/`, normalised, from the token endpoint `<issuer>/oauth/token`.
fn gateway_prefix(token_endpoint: &str) -> Option<String> {
    let issuer = token_endpoint.strip_suffix("/oauth/token")?;
    mandate_core::dpop::normalize_htu(&format!("{issuer}/mcp/"))
}

/// A private directory for the socket: $XDG_RUNTIME_DIR or the temp dir.
fn socket_dir(run: &str) -> Result<PathBuf, CliError> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("mandate-{run}"));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| CliError::new(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

fn env_for(
    tool: &Value,
    agent: &RunAgent,
    broker: &str,
) -> Result<Vec<(String, String)>, CliError> {
    let name = tool["name"].as_str().unwrap_or("");
    let specs: Vec<EnvSpec> = serde_json::from_value(tool["env"].clone()).unwrap_or_default();
    if specs.is_empty() {
        return Ok(vec![]);
    }
    let actions: Vec<String> = serde_json::from_value(tool["actions"].clone()).unwrap_or_default();
    let credential = if specs.iter().any(EnvSpec::needs_credential) {
        let v = agent.credential(name, &actions, None)?;
        v["access_token"].as_str().unwrap_or("").to_owned()
    } else {
        String::new()
    };
    let values = EnvValues {
        credential: &credential,
        proxy_url: tool["proxy_url"].as_str().unwrap_or(""),
        mcp_url: tool["mcp_url"].as_str().unwrap_or(""),
        audience: tool["audience"].as_str().unwrap_or(""),
        broker,
    };
    Ok(specs
        .iter()
        .map(|e| (e.name.clone(), e.render(&values)))
        .collect())
}

/// Makes this process non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`): a child
/// running as the same (non-root) user can then no longer read its
/// `/proc/<pid>/environ`, `mem` or `fd`, nor attach a debugger. Called
/// before any credential is read. Children get the usual dumpable flag
/// back when they `exec` their program.
#[cfg(target_os = "linux")]
pub(crate) fn harden() -> Result<(), CliError> {
    use rustix::process::{DumpableBehavior, set_dumpable_behavior};
    set_dumpable_behavior(DumpableBehavior::NotDumpable).map_err(|e| {
        CliError::new(format!(
            "cannot make the wrapper non-dumpable ({e}), so the child could read its memory; run agents as a separate user"
        ))
    })
}

/// Elsewhere there is no `prctl`: the child, as the same user, may read the
/// wrapper's memory (run agents as a separate user).
#[cfg(not(target_os = "linux"))]
pub(crate) fn harden() -> Result<(), CliError> {
    Ok(())
}

/// Runs `mandate exec`; returns the child's exit code. `starter` holds the
/// admin credential or the join token: it is used once, then dropped,
/// before the child starts.
pub(crate) fn exec(starter: Client, url: &str, a: ExecArgs) -> Result<u8, CliError> {
    let Some((program, args)) = a.command.split_first() else {
        return Err(CliError::new(
            "name the command to run after `--`: mandate exec --agent A -- COMMAND ARGS",
        ));
    };
    let key = SigningKey::generate(Alg::EdDSA, &mut rand_core::OsRng);
    let started = starter.post(
        "/v1/runs",
        &json!({
            "tenant": a.tenant, "agent": a.agent, "principal": a.principal, "grant": a.grant,
            "task": a.task, "ttl_secs": a.ttl, "jwk": key.public().to_json(), "tools": a.tools,
        }),
    )?;
    drop(starter);
    if !a.quiet {
        for w in started["warnings"].as_array().into_iter().flatten() {
            eprintln!("mandate exec: warning: {}", crate::output::cell(w));
        }
    }
    let run = started["run"].as_str().unwrap_or_default().to_owned();
    let agent = Arc::new(run_agent(&started, &a, url, key));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| CliError::new(format!("cannot start the wrapper's runtime: {e}")))?;
    // Tied to this process before the child exists: if the child kills the
    // wrapper, the broker ends the run.
    let outcome = rt
        .block_on(tie(Arc::clone(&agent), a.quiet))
        .and_then(|()| supervise(&rt, &agent, url, &run, program, args, a.quiet));
    // Whatever happened, the run ends: every credential it got is refused from now on.
    let ended = end_run(&agent);
    rt.shutdown_timeout(Duration::from_millis(100));
    if !a.quiet {
        match &ended {
            Ok(()) => eprintln!("mandate exec: run {run} ended; its credentials are revoked"),
            Err(e) => eprintln!("mandate exec: could not end run {run}: {e}"),
        }
    }
    let code = outcome?;
    ended?;
    Ok(code)
}

/// The run as the wrapper holds it, from the broker's answer to `POST /v1/runs`.
fn run_agent(started: &Value, a: &ExecArgs, url: &str, key: SigningKey) -> RunAgent {
    let token_endpoint = started["token_endpoint"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let broker_origins = [token_endpoint.as_str(), url]
        .iter()
        .filter_map(|u| origin(u))
        .collect();
    let gateway_prefix = gateway_prefix(&token_endpoint);
    let issuer = token_endpoint
        .strip_suffix("/oauth/token")
        .unwrap_or(&token_endpoint)
        .to_owned();
    RunAgent {
        gateway_prefix,
        issuer: issuer.clone(),
        delegate_to: Mutex::new(a.delegate_to.clone()),
        http: ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into(),
        token_endpoint,
        mandate: started["mandate"].as_str().unwrap_or_default().to_owned(),
        key,
        nonce: Mutex::new(None),
        held: Mutex::new(HashMap::new()),
        identity: json!({
            "run": started["run"], "run_id": started["run_id"], "agent_id": started["agent_id"],
            "tenant": a.tenant, "agent": a.agent, "principal": a.principal,
            "expires_at": started["expires_at"], "capabilities": started["capabilities"],
            "tools": started["tools"],
            "broker": issuer,
        }),
        broker_origins,
    }
}

/// How long the wrapper waits for its first attachment.
const FIRST_ATTACH: Duration = Duration::from_secs(20);
/// The broker sends a keep-alive every 15 s: silence this long means the
/// connection is gone.
const SILENCE: Duration = Duration::from_secs(45);

/// Attaches the run at the broker (`POST /v1/runs/attach`) and keeps it
/// attached in the background, re-attaching after transient errors.
/// Returns once the first attachment holds.
async fn tie(agent: Arc<RunAgent>, quiet: bool) -> Result<(), CliError> {
    let url = agent
        .token_endpoint
        .strip_suffix("/oauth/token")
        .map(|base| format!("{base}/v1/runs/attach"))
        .ok_or_else(|| {
            CliError::new(format!(
                "the broker's token endpoint `{}` does not end in /oauth/token; is this a Mandate broker?",
                agent.token_endpoint
            ))
        })?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(keep_attached(agent, url, tx, quiet));
    match tokio::time::timeout(FIRST_ATTACH, rx).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(why))) => Err(CliError::new(format!(
            "the broker would not tie the run to this wrapper: {why}"
        ))),
        _ => Err(CliError::new(format!(
            "could not attach the run at the broker within {}s; is the broker reachable?",
            FIRST_ATTACH.as_secs()
        ))),
    }
}

/// How an attachment ended.
enum Detached {
    /// The broker said no (the run ended, was revoked, or the request is wrong).
    Refused(String),
    /// The connection failed or closed: attach again.
    Lost(String),
    /// The attachment's lease is over (`event: renew`): attach again now.
    Renew,
}

async fn keep_attached(
    agent: Arc<RunAgent>,
    url: String,
    first: tokio::sync::oneshot::Sender<Result<(), String>>,
    quiet: bool,
) {
    let http = mandate_server::upstream::client();
    let mut first = Some(first);
    let mut pause = Duration::from_millis(500);
    loop {
        match attach_once(&agent, &http, &url, &mut first).await {
            Detached::Refused(why) => {
                match first.take() {
                    Some(tx) => {
                        let _ = tx.send(Err(why));
                    }
                    None if !quiet => {
                        eprintln!("mandate exec: the run is no longer attached: {why}")
                    }
                    None => {}
                }
                return;
            }
            Detached::Renew => pause = Duration::from_millis(500),
            Detached::Lost(why) => {
                if first.is_none() && !quiet {
                    eprintln!("mandate exec: lost the broker ({why}); attaching again");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// One attachment: the request (retried once with the broker's DPoP
/// nonce), then reading the stream until it ends. `first` is told once the
/// attachment holds.
async fn attach_once(
    agent: &RunAgent,
    http: &mandate_server::upstream::Upstream,
    url: &str,
    first: &mut Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
) -> Detached {
    let mut resp = None;
    for _ in 0..2 {
        let req = axum::http::Request::post(url)
            .header("content-type", "application/json")
            .header("dpop", agent.proof("POST", url, None))
            .body(axum::body::Body::from(
                json!({"mandate": agent.mandate}).to_string(),
            ));
        let req = match req {
            Ok(r) => r,
            Err(e) => return Detached::Refused(format!("cannot make the request: {e}")),
        };
        let r = match http.request(req).await {
            Ok(r) => r,
            Err(e) => return Detached::Lost(format!("cannot reach the broker: {e}")),
        };
        if let Some(n) = r.headers().get("dpop-nonce").and_then(|v| v.to_str().ok())
            && let Ok(mut slot) = agent.nonce.lock()
        {
            *slot = Some(n.to_owned());
        }
        if r.status() == 200 {
            resp = Some(r);
            break;
        }
        let status = r.status();
        let body = axum::body::to_bytes(axum::body::Body::new(r.into_body()), 64 * 1024).await;
        let v: Value = body
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        if v["error"] == "use_dpop_nonce" {
            continue;
        }
        let why = format!(
            "{} {}",
            status.as_u16(),
            v["error_description"].as_str().unwrap_or("no reason given")
        );
        return if status.is_server_error() {
            Detached::Lost(why)
        } else {
            Detached::Refused(why)
        };
    }
    let Some(resp) = resp else {
        return Detached::Lost("the broker kept asking for a new DPoP nonce".into());
    };
    if let Some(tx) = first.take() {
        let _ = tx.send(Ok(()));
    }
    read_until_closed(axum::body::Body::new(resp.into_body())).await
}

/// Reads the attachment's stream until it ends, fails or falls silent.
async fn read_until_closed(mut body: axum::body::Body) -> Detached {
    use axum::body::HttpBody;
    loop {
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx));
        match tokio::time::timeout(SILENCE, frame).await {
            Err(_) => return Detached::Lost("no keep-alive from the broker".into()),
            Ok(None) => return Detached::Lost("the broker closed the attachment".into()),
            Ok(Some(Err(e))) => return Detached::Lost(e.to_string()),
            Ok(Some(Ok(f))) => {
                let renew = f
                    .data_ref()
                    .is_some_and(|d| d.windows(12).any(|w| w == b"event: renew"));
                if renew {
                    return Detached::Renew;
                }
            }
        }
    }
}

/// RFC 7009 revocation of the mandate by its holder: the broker ends the run.
fn end_run(agent: &RunAgent) -> Result<(), CliError> {
    let revoke = format!("{}/oauth/revoke", agent.issuer);
    let r = agent
        .http
        .post(&revoke)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(&format!("token={}", enc(&agent.mandate)))
        .map_err(|e| CliError::new(format!("cannot reach the broker: {e}")))?;
    if r.status().as_u16() == 200 {
        Ok(())
    } else {
        Err(CliError::new(format!("the broker answered {}", r.status())))
    }
}

fn supervise(
    rt: &tokio::runtime::Runtime,
    agent: &Arc<RunAgent>,
    url: &str,
    run: &str,
    program: &str,
    args: &[String],
    quiet: bool,
) -> Result<u8, CliError> {
    let mut env: Vec<(String, String)> = Vec::new();
    let tools = agent.identity["tools"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for t in &tools {
        env.extend(env_for(t, agent, url)?);
    }
    let dir = socket_dir(run)?;
    let sock = dir.join("agent.sock");
    let result = rt.block_on(async {
        let listener = bind_private(&sock)?;
        serve_socket(listener, agent);
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args);
        for v in WITHHELD_ENV {
            cmd.env_remove(v);
        }
        cmd.env("MANDATE_AGENT_SOCK", &sock).env("MANDATE_RUN", run);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| CliError::new(format!("cannot run `{program}`: {e}")))?;
        if !quiet {
            let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
            eprintln!(
                "mandate exec: run {run} started (tools: {}); agent socket {}",
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                },
                sock.display()
            );
        }
        forward_signals_until_exit(&mut child).await
    });
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_dir(&dir);
    result
}

/// Serves the agent socket and refreshes held credentials, in the background.
fn serve_socket(listener: tokio::net::UnixListener, agent: &Arc<RunAgent>) {
    let app = axum::Router::new()
        .route("/v1/identity", get(identity))
        .route("/v1/credentials", post(credentials))
        .route("/v1/dpop", post(dpop))
        .route("/v1/attenuate", post(attenuate))
        .route("/v1/delegate", post(delegate))
        .with_state(Arc::clone(agent));
    // Bounded like the broker's port: the child (or anything it runs)
    // cannot hold the wrapper's descriptors with stalled connections.
    let limits = mandate_server::listen::Limits {
        max_connections: 64,
        max_connections_per_client: 64,
        ..Default::default()
    };
    tokio::spawn(mandate_server::listen::serve(
        listener,
        app,
        limits,
        None,
        std::future::pending(),
    ));
    let refresher = Arc::clone(agent);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            let a = Arc::clone(&refresher);
            let _ = tokio::task::spawn_blocking(move || a.refresh()).await;
        }
    });
}

fn bind_private(sock: &Path) -> Result<tokio::net::UnixListener, CliError> {
    use std::os::unix::fs::PermissionsExt;
    let l = tokio::net::UnixListener::bind(sock)
        .map_err(|e| CliError::new(format!("cannot listen on {}: {e}", sock.display())))?;
    std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| CliError::new(format!("cannot restrict {}: {e}", sock.display())))?;
    Ok(l)
}

/// Waits for the child, passing on the signals a supervisor receives.
/// SIGINT from a terminal already reached the child (same process group),
/// so it is passed on only when stdin is not a terminal.
async fn forward_signals_until_exit(child: &mut tokio::process::Child) -> Result<u8, CliError> {
    use std::io::IsTerminal;
    use tokio::signal::unix::{SignalKind, signal};
    let pid = child
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32));
    let kinds = [
        (SignalKind::terminate(), rustix::process::Signal::TERM),
        (SignalKind::hangup(), rustix::process::Signal::HUP),
        (SignalKind::quit(), rustix::process::Signal::QUIT),
        (SignalKind::user_defined1(), rustix::process::Signal::USR1),
        (SignalKind::user_defined2(), rustix::process::Signal::USR2),
        (SignalKind::interrupt(), rustix::process::Signal::INT),
    ];
    let tty = std::io::stdin().is_terminal();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (kind, sig) in kinds {
        if sig == rustix::process::Signal::INT && tty {
            // Still listen, so the wrapper itself is not killed by it.
            if let Ok(mut s) = signal(kind) {
                tokio::spawn(async move { while s.recv().await.is_some() {} });
            }
            continue;
        }
        if let Ok(mut s) = signal(kind) {
            let tx = tx.clone();
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    if tx.send(sig).is_err() {
                        break;
                    }
                }
            });
        }
    }
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|e| CliError::new(format!("waiting for the command failed: {e}")))?;
                use std::os::unix::process::ExitStatusExt;
                return Ok(match (status.code(), status.signal()) {
                    (Some(c), _) => c as u8,
                    (None, Some(s)) => 128u8.saturating_add(s as u8),
                    _ => 1,
                });
            }
            Some(sig) = rx.recv() => {
                if let Some(pid) = pid {
                    let _ = rustix::process::kill_process(pid, sig);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn gateway_urls_are_the_only_broker_urls_the_socket_proves_for() {
        let prefix = gateway_prefix("http://127.0.0.1:8080/oauth/token");
        let p = prefix.as_deref();
        assert!(is_gateway_url(p, "http://127.0.0.1:8080/mcp/github"));
        assert!(is_gateway_url(p, "HTTP://127.0.0.1:8080/mcp/pay-1?x=1"));
        for url in [
            "http://127.0.0.1:8080/oauth/token",
            "http://127.0.0.1:8080/mcp/",
            "http://127.0.0.1:8080/mcp",
            "http://127.0.0.1:8080/mcp/github/",
            "http://127.0.0.1:8080/mcp/Git%2Fhub",
            "http://127.0.0.1:8080/mcp/..",
            "http://127.0.0.1:8080/oauth/token/../mcp/x",
            "http://127.0.0.1:8080/proxy/t/mcp/x",
            "http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp/x",
            "http://127.0.0.1:8080/v1/runs",
            "http://127.0.0.1:9999/mcp/github",
            "http://user@127.0.0.1:8080/mcp/github",
            "not a url",
        ] {
            assert!(!is_gateway_url(p, url), "{url}");
        }
        // A broker under a path prefix.
        let prefix = gateway_prefix("https://id.example/broker/oauth/token");
        assert!(is_gateway_url(
            prefix.as_deref(),
            "https://id.example:443/broker/mcp/github"
        ));
        assert!(!is_gateway_url(
            prefix.as_deref(),
            "https://id.example/mcp/github"
        ));
        assert!(!is_gateway_url(
            None,
            "https://id.example/broker/mcp/github"
        ));
    }

    #[test]
    fn origins_are_normalised_as_the_broker_normalises_htu() {
        let broker = origin("http://127.0.0.1:8407/oauth/token").unwrap();
        assert_eq!(broker, "http://127.0.0.1:8407");
        for same in [
            "HTTP://127.0.0.1:8407/v1/runs/delegate",
            "http://127.0.0.1:8407",
            "http://127.0.0.1:8407/oauth/token?x=1#y",
        ] {
            assert_eq!(origin(same).as_deref(), Some(broker.as_str()), "{same}");
        }
        assert_eq!(
            origin("https://Broker.Example:443/oauth/token").as_deref(),
            Some("https://broker.example")
        );
        assert_eq!(
            origin("http://broker.example:80/x").as_deref(),
            Some("http://broker.example")
        );
        assert_ne!(origin("http://127.0.0.1:8408/x").unwrap(), broker);
        for bad in [
            "http://u@127.0.0.1:8407/x",
            "ftp://x/y",
            "http:///x",
            "nonsense",
        ] {
            assert_eq!(origin(bad), None, "{bad}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_wrapper_makes_itself_non_dumpable() {
        harden().unwrap();
        assert_eq!(
            rustix::process::dumpable_behavior().unwrap(),
            rustix::process::DumpableBehavior::NotDumpable
        );
    }
}
