//! The MCP gateway: `POST /mcp/{tool}`, MCP's streamable HTTP transport
//! (2025-11-25 `basic/transports`, the `initialize` handshake; clients of
//! the 2026-07-28 revision fall back to it) in front of an `mcp` tool's MCP
//! server.
//!
//! Every request carries a Mandate credential for this tool (`Authorization:
//! Bearer`, MCP 2025-11-25 authorization §Token Requirements), checked as
//! the proxy checks its own: signature, audience = this gateway URL,
//! revocation, suspension. The gateway terminates MCP: it answers
//! `initialize`, `ping` and `tools/list` itself (from the tools pinned by
//! `mandate tool sync`, filtered to what the caller may call), and forwards
//! only a `tools/call` its policies allowed on its *arguments*, with the
//! MCP server's key injected; the caller's credential never goes upstream.
//! Decisions are audited (`mcp.call`, durable before the server sees the
//! call) and outcomes too (`mcp.result`).
//!
//! Sessions (`MCP-Session-Id`) are handed out at `initialize` and bound to
//! the run; they carry no authority (every request is authenticated), but a
//! session id of another run, or one the gateway does not know, is
//! answered 404, after which MCP clients initialize again (§Session
//! Management 3–4). `GET` (a server-to-client stream) is 405: the gateway
//! sends no requests. `DELETE` ends the session.

pub mod call;
pub mod judge;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mandate_core::audit::EventType;
use mandate_core::credential::AccessClaims;
use mandate_core::mcp::jsonrpc::{self, Id, Message};
use mandate_core::mcp::{Era, EraRefusal, Mirrored};
use mandate_core::model::Tool;
use mandate_core::tooling::ProviderKind;
use rand_core::{OsRng, RngCore};
use serde_json::{Value, json};

use super::S;
use crate::error::{ApiError, Code, err};

/// Largest request body (one JSON-RPC message).
pub const MAX_BODY: usize = 1024 * 1024;

/// Most gateway sessions held; beyond it the least recently used goes.
const MAX_SESSIONS: usize = 100_000;

/// Most gateway sessions of one run; beyond it its least recently used goes.
const MAX_SESSIONS_PER_RUN: usize = 8;

/// Gateway sessions: id → the run and tool it was opened for, and each
/// run's sessions, oldest first.
#[derive(Debug, Default)]
pub struct GatewaySessions {
    map: HashMap<String, SessionOwner>,
    by_run: HashMap<String, Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SessionOwner {
    tenant: String,
    run: String,
    tool: String,
    version: &'static str,
}

impl GatewaySessions {
    fn open(&mut self, owner: SessionOwner) -> String {
        let mut b = [0u8; 32];
        OsRng.fill_bytes(&mut b);
        let id = mandate_core::ids::hex(&b);
        let ids = self.by_run.entry(owner.run.clone()).or_default();
        if ids.len() >= MAX_SESSIONS_PER_RUN {
            let oldest = ids.remove(0);
            self.map.remove(&oldest);
        }
        ids.push(id.clone());
        if self.map.len() >= MAX_SESSIONS
            && let Some(any) = self.map.keys().next().cloned()
        {
            self.close(&any);
        }
        self.map.insert(id.clone(), owner);
        id
    }

    /// The session's revision, if it is the caller's.
    fn check(&self, id: &str, c: &AccessClaims, tool: &str) -> Option<&'static str> {
        let o = self.map.get(id)?;
        (o.tenant == c.tenant && o.run == c.run && o.tool == tool).then_some(o.version)
    }

    fn close(&mut self, id: &str) {
        if let Some(o) = self.map.remove(id)
            && let Some(ids) = self.by_run.get_mut(&o.run)
        {
            ids.retain(|x| x != id);
            if ids.is_empty() {
                self.by_run.remove(&o.run);
            }
        }
    }

    /// Ends the sessions of `run` (it was revoked or ended).
    pub fn end_run(&mut self, run: &str) {
        for id in self.by_run.remove(run).unwrap_or_default() {
            self.map.remove(&id);
        }
    }
}

/// The caller, as its credential says, and the tool.
#[derive(Clone)]
pub(crate) struct Caller {
    claims: Arc<AccessClaims>,
    tool: Arc<Tool>,
    /// The request's DPoP proof, used once: committed with a call's
    /// decision, so no broker on the store takes it again.
    spent: Option<mandate_core::dpop::Spent>,
}

/// `POST /mcp/{tool}`.
pub async fn post(
    State(s): State<S>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(tool): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let now = s.now_secs();
    let caller = match authenticate(&s, addr, "POST", &headers, &tool, now).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let body = match super::body(body, MAX_BODY) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    if let Some(o) = headers.get(header::ORIGIN) {
        // MCP 2025-11-25 transports §Security Warning: a present, invalid
        // Origin is refused (DNS rebinding); browsers are not MCP clients
        // of the gateway.
        let _ = o;
        return rpc_error(
            StatusCode::FORBIDDEN,
            None,
            jsonrpc::INVALID_REQUEST,
            "requests from browsers (with an `Origin` header) are not accepted",
            None,
        );
    }
    let msg = match jsonrpc::parse(&body) {
        Ok(m) => m,
        Err(e) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                e.id.as_ref(),
                e.code,
                &e.message,
                None,
            );
        }
    };
    let era = match era_of(&headers, &msg) {
        Ok(e) => e,
        Err((id, r)) => {
            return rpc_error(StatusCode::BAD_REQUEST, id, r.code, &r.message, r.data);
        }
    };
    let session = headers
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap_or("\u{0}").to_owned());
    let initializing = matches!(&msg, Message::Request { method, .. } if method == "initialize");
    if let Some(id) = &session
        && !initializing
        && era == Era::Handshake
    {
        let known = s
            .mcp_gateway
            .lock()
            .ok()
            .and_then(|m| m.check(id, &caller.claims, &tool));
        if known.is_none() {
            return rpc_error(
                StatusCode::NOT_FOUND,
                None,
                jsonrpc::INVALID_REQUEST,
                "no such session (it ended, or the broker restarted): initialize again",
                None,
            );
        }
    }
    match msg {
        Message::Response => rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            jsonrpc::INVALID_REQUEST,
            "the gateway sends no requests, so it takes no responses",
            None,
        ),
        Message::Notification { method, .. } => match method.as_str() {
            "notifications/initialized"
            | "notifications/cancelled"
            | "notifications/roots/list_changed" => StatusCode::ACCEPTED.into_response(),
            _ => rpc_error(
                StatusCode::BAD_REQUEST,
                None,
                jsonrpc::METHOD_NOT_FOUND,
                "the gateway does not take this notification",
                None,
            ),
        },
        Message::Request { id, method, params } => {
            let outcome = dispatch(&s, addr, &caller, &id, &method, params, now).await;
            match outcome {
                Dispatched::Json(mut v) => {
                    if era == Era::Stateless
                        && let Some(r) = v.get_mut("result")
                    {
                        mandate_core::mcp::stateless_result(&method, r);
                    }
                    json_response(StatusCode::OK, &v, None)
                }
                Dispatched::Opened(v, version) => {
                    let sid = s.mcp_gateway.lock().ok().map(|mut m| {
                        m.open(SessionOwner {
                            tenant: caller.claims.tenant.clone(),
                            run: caller.claims.run.clone(),
                            tool: tool.clone(),
                            version,
                        })
                    });
                    json_response(StatusCode::OK, &v, sid.as_deref())
                }
                Dispatched::NeedsScope(scope) => insufficient_scope(&s, &tool, &scope),
            }
        }
    }
}

/// `GET /mcp/{tool}` (a stream of server messages) is not offered; `DELETE` ends a session.
pub async fn other(
    State(s): State<S>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(tool): Path<String>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> Response {
    let now = s.now_secs();
    let caller = match authenticate(&s, addr, method.as_str(), &headers, &tool, now).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if method == axum::http::Method::DELETE {
        let id = headers.get("mcp-session-id").and_then(|v| v.to_str().ok());
        let ended = id.is_some_and(|id| {
            s.mcp_gateway.lock().ok().is_some_and(|mut m| {
                let ours = m.check(id, &caller.claims, &tool).is_some();
                if ours {
                    m.close(id);
                }
                ours
            })
        });
        return if ended {
            StatusCode::NO_CONTENT.into_response()
        } else {
            StatusCode::NOT_FOUND.into_response()
        };
    }
    let mut r = StatusCode::METHOD_NOT_ALLOWED.into_response();
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST, DELETE"));
    r
}

/// `GET /.well-known/oauth-protected-resource/mcp/{tool}` (RFC 9728 §3):
/// the gateway URL as a protected resource whose authorization server is
/// this broker. The same document for any tool name (no tenant is named,
/// so nothing about registered tools is revealed).
pub async fn resource_metadata(State(s): State<S>, Path(tool): Path<String>) -> Response {
    if mandate_core::ids::check_slug("tool", &tool).is_err() {
        return err(Code::NotFound, "no such resource").into_response();
    }
    let issuer = s.config.issuer.trim_end_matches('/');
    json_response(
        StatusCode::OK,
        &json!({
            "resource": crate::providers::mcp_url(&s, &tool),
            "authorization_servers": [issuer],
            "bearer_methods_supported": ["header"],
            // RFC 9728 §2: a tool registered with `mcp.dpop` takes only
            // DPoP-bound credentials; any tool takes them when bound.
            "dpop_signing_alg_values_supported": DPOP_ALGS.split(' ').collect::<Vec<_>>(),
            "resource_name": format!("Mandate MCP gateway for tool {tool}"),
        }),
        None,
    )
}

/// What the gateway tells an MCP client about itself.
const INSTRUCTIONS: &str =
    "Tools behind Mandate: each call is authorized on its arguments by the tenant's policies.";

fn server_info(c: &Caller) -> Value {
    json!({"name": format!("mandate-gateway/{}", c.tool.name), "version": env!("CARGO_PKG_VERSION")})
}

/// The revision a message follows (MCP 2026-07-28 requests name theirs in
/// `_meta`); a request whose headers and body disagree, or at a revision
/// the gateway does not speak, is refused (with its id).
fn era_of<'m>(headers: &HeaderMap, msg: &'m Message) -> Result<Era, (Option<&'m Id>, EraRefusal)> {
    let Message::Request { id, method, params } = msg else {
        return Ok(Era::Handshake);
    };
    let mut twice = None;
    let mut header = |name: &'static str| {
        let mut all = headers.get_all(name).iter();
        let first = all.next().map(|v| v.to_str().unwrap_or("\u{0}"));
        if all.next().is_some() {
            twice = Some(name);
        }
        first
    };
    let mirrored = Mirrored {
        version: header("mcp-protocol-version"),
        method: header("mcp-method"),
        name: header("mcp-name"),
    };
    if let Some(name) = twice {
        return Err((
            Some(id),
            EraRefusal {
                code: mandate_core::mcp::HEADER_MISMATCH,
                message: format!("the {name} header is sent twice"),
                data: None,
            },
        ));
    }
    let meta = params
        .get("_meta")
        .and_then(|m| m.get(mandate_core::mcp::VERSION_META))
        .map(|v| v.as_str().unwrap_or("\u{0}"));
    let name = params.get("name").and_then(Value::as_str);
    mandate_core::mcp::era(meta, mirrored, method, name).map_err(|r| (Some(id), r))
}

enum Dispatched {
    Json(Value),
    /// `initialize` answered: a session is opened at this revision.
    Opened(Value, &'static str),
    /// The credential does not carry the called tool (RFC 6750 §3.1
    /// `insufficient_scope`: a new exchange with this scope would).
    NeedsScope(String),
}

async fn dispatch(
    s: &S,
    addr: SocketAddr,
    c: &Caller,
    id: &Id,
    method: &str,
    params: serde_json::Map<String, Value>,
    now: u64,
) -> Dispatched {
    match method {
        "initialize" => {
            let version =
                mandate_core::mcp::negotiate(params.get("protocolVersion").and_then(Value::as_str));
            Dispatched::Opened(
                jsonrpc::result(
                    id,
                    json!({
                        "protocolVersion": version,
                        "capabilities": {"tools": {"listChanged": false}},
                        "serverInfo": server_info(c),
                        "instructions": INSTRUCTIONS,
                    }),
                ),
                version,
            )
        }
        "server/discover" => Dispatched::Json(jsonrpc::result(
            id,
            json!({
                "supportedVersions": [mandate_core::mcp::STATELESS],
                "capabilities": {"tools": {"listChanged": false}},
                "instructions": INSTRUCTIONS,
                "_meta": {"io.modelcontextprotocol/serverInfo": server_info(c)},
            }),
        )),
        "ping" => Dispatched::Json(jsonrpc::result(id, json!({}))),
        "tools/list" => match judge::suspended(s, c) {
            Some((_, judge::Refusal::Rpc(code, message, data))) => {
                Dispatched::Json(jsonrpc::error(Some(id), code, &message, data))
            }
            _ => Dispatched::Json(jsonrpc::result(id, call::list(s, c, now))),
        },
        "tools/call" => call::call(s, addr, c, id, params, now).await,
        _ => Dispatched::Json(jsonrpc::error(
            Some(id),
            jsonrpc::METHOD_NOT_FOUND,
            &format!(
                "method `{}` is not offered by the gateway (it offers initialize, ping, tools/list and tools/call)",
                method
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(64)
                    .collect::<String>()
            ),
            None,
        )),
    }
}

/// How the credential is presented (RFC 6750 §2.1, RFC 9449 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Bearer,
    Dpop,
}

/// The scheme and credential of one `Authorization` header value.
fn authorization(v: &str) -> Option<(Scheme, &str)> {
    let (scheme, rest) = v.split_once(' ')?;
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Scheme::Dpop
    } else {
        return None;
    };
    Some((scheme, rest.trim())).filter(|(_, t)| !t.is_empty())
}

/// Why a caller was not let in.
enum Refused {
    /// No valid credential for this tool: nobody we know (answered through
    /// the refusal throttle).
    Anonymous(ApiError),
    /// A valid credential whose key was not proven (DPoP): the run's
    /// refusal, audited as such (a bound credential without its key is
    /// what a stolen one looks like).
    Unproven(Box<Caller>, ApiError),
}

/// Who calls, or the answer that refuses them (audited).
async fn authenticate(
    s: &S,
    addr: SocketAddr,
    method: &str,
    headers: &HeaderMap,
    tool: &str,
    now: u64,
) -> Result<Caller, Response> {
    let (c, e) = match identify(s, method, headers, tool, now) {
        Ok(c) => match spend(s, &c, now).await {
            Ok(()) => return Ok(c),
            Err(e) if e.code == Code::InvalidDpopProof => (Box::new(c), e),
            Err(e) => return Err(challenge(s, tool, e, false)),
        },
        Err(Refused::Anonymous(e)) => return Err(challenge(s, tool, e, true)),
        Err(Refused::Unproven(c, e)) => (c, e),
    };
    // A valid credential whose key was not proven, or whose proof was used
    // before (here or at another broker): the run's refusal, audited.
    let mut ev = call::caller_event(s, addr, &c);
    ev.decision = mandate_core::audit::Decision::Deny;
    ev.reason = Some(format!("{}: {}", e.code.as_str(), e.description));
    ev.details = json!({"method": method, "refused": "proof of possession"});
    if let Err(we) = s.record(vec![ev]).await {
        return Err(we.into_response());
    }
    Err(challenge(s, tool, e, false))
}

/// Spends the request's DPoP proof at every broker on the store. A proof
/// binds the method, the URL and the credential, not the JSON-RPC message:
/// whatever the request is, its proof is used once, before anything is
/// answered.
async fn spend(s: &S, c: &Caller, now: u64) -> Result<(), ApiError> {
    let Some(spent) = c.spent.clone() else {
        return Ok(());
    };
    let entry = mandate_store::Entry {
        mutation: Some(mandate_store::Mutation::FirstUse {
            uses: vec![spent],
            now,
        }),
        events: Vec::new(),
    };
    s.commit(entry).await.map(|_| ())
}

/// Who calls: a valid credential for this `mcp` tool, not revoked, and,
/// when it is DPoP-bound (or the tool asks for DPoP), proven with a fresh
/// proof for this request.
fn identify(
    s: &S,
    method: &str,
    headers: &HeaderMap,
    tool_name: &str,
    now: u64,
) -> Result<Caller, Refused> {
    let anonymous = Refused::Anonymous;
    let (claims, tool, presented) =
        credential(s, method, headers, tool_name, now).map_err(anonymous)?;
    match possession(s, headers, &tool, &claims, presented, now) {
        Ok(spent) => Ok(Caller {
            claims,
            tool,
            spent,
        }),
        Err(e) => Err(Refused::Unproven(
            Box::new(Caller {
                claims,
                tool,
                spent: None,
            }),
            e,
        )),
    }
}

/// The credential presented for this `mcp` tool: valid, for this gateway
/// URL, not revoked.
fn credential<'h>(
    s: &S,
    method: &'h str,
    headers: &'h HeaderMap,
    tool_name: &str,
    now: u64,
) -> Result<(Arc<AccessClaims>, Arc<Tool>, Presented<'h>), ApiError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return Err(err(
            Code::Unauthorized,
            "send one `Authorization: Bearer <credential>` header with a Mandate credential for this tool (from `mandate exec` or the token endpoint, resource = this URL)",
        ));
    };
    let (scheme, token) = v.to_str().ok().and_then(authorization).ok_or_else(|| {
        err(
            Code::Unauthorized,
            "the `Authorization` header must be `Bearer <credential>` (or `DPoP <credential>` for a DPoP-bound one)",
        )
    })?;
    let claims = super::proxy::verify_credential(s, token, now)?;
    let tool = s
        .reg()
        .tools
        .get(&(claims.tenant.clone(), tool_name.to_owned()))
        .filter(|t| t.provider == ProviderKind::Mcp)
        .cloned()
        .ok_or_else(|| {
            err(
                Code::Unauthorized,
                "this credential is not for this gateway URL; ask for one for this tool",
            )
        })?;
    if claims.aud != tool.audience {
        return Err(err(
            Code::Unauthorized,
            format!(
                "this credential is for `{}`, not for this gateway URL; ask for one for tool `{}`",
                claims.aud, tool.name
            ),
        ));
    }
    if let Some(k) = s.reg().refused(&claims.revocation_keys(), claims.iat) {
        if let Ok(mut m) = s.mcp_gateway.lock() {
            m.end_run(&claims.run);
        }
        return Err(err(
            Code::Unauthorized,
            format!(
                "the credential has been revoked ({}); the run must start again",
                k.split(':').next().unwrap_or("credential")
            ),
        ));
    }
    let presented = Presented {
        scheme,
        token,
        method,
    };
    Ok((claims, tool, presented))
}

/// A credential as presented with one request.
#[derive(Debug, Clone, Copy)]
struct Presented<'a> {
    scheme: Scheme,
    token: &'a str,
    method: &'a str,
}

/// A DPoP-bound credential is taken only as `DPoP` with a fresh proof of
/// its key for this method and URL (RFC 9449 §7.1: `htm`, `htu`, `ath`,
/// `jkt`, replay); an unbound one only as `Bearer`, and not at all where
/// the tool asks for DPoP (`mcp.dpop`).
fn possession(
    s: &S,
    headers: &HeaderMap,
    tool: &Tool,
    claims: &AccessClaims,
    p: Presented<'_>,
    now: u64,
) -> Result<Option<mandate_core::dpop::Spent>, ApiError> {
    let required = tool.mcp.as_ref().is_some_and(|m| m.dpop);
    match (&claims.cnf, p.scheme) {
        (Some(cnf), Scheme::Dpop) => {
            let mut proofs = headers.get_all("dpop").iter();
            let (Some(proof), None) = (proofs.next(), proofs.next()) else {
                return Err(err(
                    Code::InvalidDpopProof,
                    "send one `DPoP` header with a proof (RFC 9449) for this request: htm = its method, htu = this URL, ath = the credential's hash",
                ));
            };
            let proof = proof
                .to_str()
                .map_err(|_| err(Code::InvalidDpopProof, "the `DPoP` header is not text"))?;
            let uri = crate::providers::mcp_url(s, &tool.name);
            crate::pop::dpop::dpop_at_resource(
                s,
                proof,
                crate::pop::dpop::AtResource {
                    method: p.method,
                    uri: &uri,
                    access_token: p.token,
                    jkt: &cnf.jkt,
                },
                now,
            )
            .map(Some)
        }
        (Some(_), Scheme::Bearer) => Err(err(
            Code::InvalidDpopProof,
            "this credential is DPoP-bound: send it as `Authorization: DPoP <credential>` with a `DPoP` proof (RFC 9449) for this request",
        )),
        (None, Scheme::Dpop) => Err(err(
            Code::Unauthorized,
            "this credential is not DPoP-bound: send it as `Authorization: Bearer <credential>`",
        )),
        (None, Scheme::Bearer) if required => Err(err(
            Code::InvalidDpopProof,
            format!(
                "tool `{}` takes DPoP-bound credentials only: exchange for one with a DPoP proof (RFC 9449), then send it as `Authorization: DPoP` with a proof per request",
                tool.name
            ),
        )),
        (None, Scheme::Bearer) => Ok(None),
    }
}

/// An HTTP refusal with the challenge MCP clients follow (RFC 6750 §3,
/// RFC 9728 §5.1): where the resource's metadata is, and for a missing
/// scope, which scope (MCP 2025-11-25 authorization §Scope Challenge
/// Handling). Unidentified callers go through the refusal throttle.
fn challenge(s: &S, tool: &str, e: ApiError, anonymous: bool) -> Response {
    let tool_shown: String = tool
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(63)
        .collect();
    let metadata = metadata_url(s, &tool_shown);
    // RFC 9449 §7.1 and §9: a proof that fails, or lacks the nonce, is
    // answered 401 with a `DPoP` challenge naming the error. Without a
    // (valid) credential, both schemes are offered, Bearer first (MCP
    // clients look for `resource_metadata` there), DPoP with its algorithms
    // (some tools take DPoP-bound credentials only; which ones is not said
    // to a caller nobody authenticated).
    let values = match e.code {
        Code::Unauthorized => vec![
            format!(r#"Bearer resource_metadata="{metadata}""#),
            format!(r#"DPoP algs="{DPOP_ALGS}", resource_metadata="{metadata}""#),
        ],
        Code::InvalidDpopProof | Code::UseDpopNonce => vec![format!(
            r#"DPoP error="{}", algs="{DPOP_ALGS}", resource_metadata="{metadata}""#,
            e.code.as_str()
        )],
        _ => Vec::new(),
    };
    let nonce = e.code == Code::UseDpopNonce;
    let unauthenticated = !values.is_empty();
    let e = if unauthenticated && anonymous {
        e.unauthenticated(EventType::McpCall)
    } else {
        e
    };
    let mut r = e.into_response();
    if unauthenticated {
        *r.status_mut() = StatusCode::UNAUTHORIZED;
    }
    r.headers_mut().remove(header::WWW_AUTHENTICATE);
    for v in values.iter().filter_map(|v| HeaderValue::from_str(v).ok()) {
        r.headers_mut().append(header::WWW_AUTHENTICATE, v);
    }
    if nonce {
        s.add_dpop_nonce(&mut r);
    }
    r
}

/// The DPoP proof algorithms the gateway verifies.
const DPOP_ALGS: &str = "EdDSA ES256";

fn metadata_url(s: &S, tool: &str) -> String {
    let issuer = s.config.issuer.trim_end_matches('/');
    format!("{issuer}/.well-known/oauth-protected-resource/mcp/{tool}")
}

/// 403 `insufficient_scope` naming the scope (the MCP tool) to ask for.
fn insufficient_scope(s: &S, tool: &str, scope: &str) -> Response {
    let mut r = json_response(
        StatusCode::FORBIDDEN,
        &json!({"error": "insufficient_scope", "error_description": format!("this credential does not carry `{scope}`; ask for a credential for tool `{tool}` with scope `{scope}`")}),
        None,
    );
    let v = format!(
        r#"Bearer error="insufficient_scope", scope="{scope}", resource_metadata="{}""#,
        metadata_url(s, tool)
    );
    if let Ok(v) = HeaderValue::from_str(&v) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

fn json_response(status: StatusCode, v: &Value, session: Option<&str>) -> Response {
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response();
    if let Some(sid) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
        r.headers_mut().insert("mcp-session-id", sid);
    }
    r
}

fn rpc_error(
    status: StatusCode,
    id: Option<&Id>,
    code: i64,
    message: &str,
    data: Option<Value>,
) -> Response {
    json_response(status, &jsonrpc::error(id, code, message, data), None)
}
