//! The broker as an MCP *client* of a tool's MCP server: over streamable
//! HTTP ([`http`]) or over stdio, a process the broker starts ([`stdio`]).
//! One upstream session (or process) per run and tool, so a stateful
//! server never carries one run's state into another's calls; dropped when
//! the run ends. The tool's key is given to the server here and nowhere
//! else, and scrubbed from every answer before it is parsed.

pub mod http;
pub mod stdio;

use mandate_core::credential::{AccessClaims, Actor};
use mandate_core::mcp::Upstream;
use mandate_core::mcp::spec::MINTED_TTL;
use mandate_core::model::Tool;
use mandate_core::scrub::Scrubber;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::state::AppState;

pub use http::Sessions;

/// Largest answer read from an MCP server (bytes).
pub const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// Why an MCP server's answer could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No answer in time.
    Timeout,
    /// Not reachable, or not speaking MCP over HTTP.
    Unreachable(String),
    /// It answered with a JSON-RPC error (code, message).
    Rpc(i64, String),
    /// The caller's credential was revoked while the call ran (it was cancelled).
    Revoked,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => f.write_str("the MCP server did not answer in time"),
            Failure::Unreachable(why) => write!(f, "the MCP server cannot be used: {why}"),
            Failure::Rpc(code, m) => write!(f, "the MCP server answered error {code}: {m}"),
            Failure::Revoked => f.write_str("the credential was revoked while the call ran"),
        }
    }
}

/// What a request to an MCP server returned.
#[derive(Debug)]
pub struct Returned {
    /// The JSON-RPC `result`.
    pub result: Value,
    /// The tool's key was in the answer (and was scrubbed from it).
    pub reflected: bool,
}

/// A credential minted for a tool's MCP server (see
/// [`mandate_core::mcp::spec::MintSpec`]).
pub struct Minted {
    /// The signed JWT.
    pub token: Zeroizing<String>,
    /// Its id (in the `mcp.call` event, to match the MCP server's logs).
    pub jti: String,
}

/// Mints the credential of one request to `tool`'s MCP server, if its
/// registration asks for one: for `caller`'s call of MCP tool `scope`, or
/// (no caller) for the broker's own `tools/list` at a sync, where `sub` is
/// the broker. It lives [`MINTED_TTL`] seconds, never past the caller's.
pub fn mint(
    s: &AppState,
    tool: &Tool,
    caller: Option<&AccessClaims>,
    scope: &str,
) -> Result<Option<Minted>, Failure> {
    let Some(spec) = tool.mcp.as_ref().and_then(|m| m.mint.as_ref()) else {
        return Ok(None);
    };
    let now = s.now_secs();
    let jti = mandate_core::ids::random_id(&mut rand_core::OsRng, "cred_");
    let claims = match caller {
        Some(c) => AccessClaims {
            aud: spec.audience.clone(),
            scope: scope.to_owned(),
            jti: jti.clone(),
            iat: now,
            exp: c.exp.min(now + MINTED_TTL),
            cnf: None,
            authorization_details: None,
            path_prefix: None,
            ..c.clone()
        },
        None => {
            let me = s.config.issuer.clone();
            AccessClaims {
                iss: me.clone(),
                aud: spec.audience.clone(),
                sub: me.clone(),
                act: Actor {
                    sub: me.clone(),
                    act: None,
                },
                client_id: me,
                scope: scope.to_owned(),
                jti: jti.clone(),
                iat: now,
                exp: now + MINTED_TTL,
                cnf: None,
                tenant: tool.tenant.clone(),
                run: String::new(),
                agent: String::new(),
                task: "tool sync".into(),
                grant: None,
                path_prefix: None,
                authorization_details: None,
                approval: None,
                approvals: Vec::new(),
                blocks: Vec::new(),
            }
        }
    };
    let token = s
        .signer(tool.alg)
        .sign(&claims)
        .map_err(|_| Failure::Unreachable("the credential for it could not be signed".into()))?;
    Ok(Some(Minted {
        token: Zeroizing::new(token),
        jti,
    }))
}

/// Sends `method` with `params` to the tool's MCP server in the session of
/// `run` (opened first if needed; `""` is the broker's own, for `tool
/// sync`) and returns the JSON-RPC `result`. `minted` goes with it (an
/// HTTP server's `Authorization`; the caller put it in a stdio call's
/// `_meta`) and is scrubbed from the answer like the key: whoever holds
/// it could call the MCP server directly for a minute.
pub async fn request(
    s: &AppState,
    tool: &Tool,
    run: &str,
    (method, params): (&str, Value),
    minted: Option<&Minted>,
) -> Result<Returned, Failure> {
    let bearer = minted.map(|m| m.token.as_str());
    let mut returned = match tool.mcp.as_ref().map(|m| &m.upstream) {
        Some(Upstream::Http(_)) => http::request(s, tool, run, method, params, bearer).await,
        Some(Upstream::Stdio(name)) => stdio::request(s, tool, name, run, method, params).await,
        None => Err(Failure::Unreachable("the tool is not an `mcp` tool".into())),
    }?;
    if let Some(token) = bearer {
        let raw = serde_json::to_vec(&returned.result).unwrap_or_default();
        if let Some(clean) = Scrubber::new([token.as_bytes()]).scrub(&raw) {
            returned.result = serde_json::from_slice(&clean).unwrap_or(Value::Null);
            returned.reflected = true;
        }
    }
    Ok(returned)
}

/// Forgets the sessions and processes of `run` (it ended or was revoked).
pub fn end_run(s: &AppState, run: &str) {
    s.mcp_sessions.end_run(run);
    s.mcp_stdio.end_run(run);
}

/// Forgets the sessions and processes with `tool` of `tenant` (its
/// registration or its key changed).
pub fn forget_tool(s: &AppState, tenant: &str, tool: &str) {
    s.mcp_sessions.forget_tool(tenant, tool);
    s.mcp_stdio.forget_tool(tenant, tool);
}

/// The scrubber for the tool's key (answers are cleaned of it before they
/// reach the agent), if it has one.
pub fn scrubber(s: &AppState, tool: &Tool) -> Option<Scrubber> {
    match tool.mcp.as_ref().map(|m| &m.upstream)? {
        Upstream::Http(_) => http::scrubber(s, tool),
        Upstream::Stdio(_) => {
            let secret = s.tool_secret(&tool.tenant, &tool.name)?;
            Some(Scrubber::new([secret.expose()]))
        }
    }
}

/// The outcome a JSON-RPC response `m` carries.
pub(crate) fn outcome(m: &Value) -> Result<Value, Failure> {
    if let Some(e) = m.get("error") {
        let code = e
            .get("code")
            .and_then(Value::as_i64)
            .unwrap_or(mandate_core::mcp::jsonrpc::INTERNAL_ERROR);
        let msg: String = e
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .chars()
            .take(512)
            .collect();
        return Err(Failure::Rpc(code, msg));
    }
    m.get("result")
        .cloned()
        .ok_or_else(|| Failure::Unreachable("its response has neither `result` nor `error`".into()))
}
