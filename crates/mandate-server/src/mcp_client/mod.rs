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
    let token =
        s.keyset().signer(tool.alg).sign(&claims).map_err(|_| {
            Failure::Unreachable("the credential for it could not be signed".into())
        })?;
    Ok(Some(Minted {
        token: Zeroizing::new(token),
        jti,
    }))
}

/// Sends `method` with `params` to the tool's MCP server in the session of
/// `caller`'s run (opened first if needed; none is the broker's own, for
/// `tool sync`) and returns the JSON-RPC `result`. `minted` goes with it (an
/// HTTP server's `Authorization`; the caller put it in a stdio call's
/// `_meta`) and is scrubbed from the answer like the key: whoever holds
/// it could call the MCP server directly for a minute.
pub async fn request(
    s: &AppState,
    tool: &Tool,
    caller: Option<&AccessClaims>,
    (method, params): (&str, Value),
    minted: Option<&Minted>,
) -> Result<Returned, Failure> {
    let bearer = minted.map(|m| m.token.as_str());
    let run = caller.map_or("", |c| c.run.as_str());
    let returned = match tool.mcp.as_ref().map(|m| &m.upstream) {
        Some(Upstream::Http(_)) => http::request(s, tool, run, method, params, bearer).await,
        Some(Upstream::Stdio(name)) => stdio::request(s, tool, name, caller, method, params).await,
        None => Err(Failure::Unreachable("the tool is not an `mcp` tool".into())),
    };
    // The raw bytes were scrubbed of the key; now every string of the
    // parsed answer is too (a server can write the key with JSON escapes),
    // and of the minted credential.
    let mut needles: Vec<&[u8]> = Vec::new();
    let secret = key_of(s, tool);
    if let Some(k) = &secret {
        needles.push(k.expose());
    }
    if let Some(t) = bearer {
        needles.push(t.as_bytes());
    }
    let mut sc = Scrubber::new(needles);
    match returned {
        Ok(mut r) => {
            r.reflected |= scrub_value(&mut r.result, &mut sc);
            Ok(r)
        }
        Err(Failure::Rpc(code, m)) => {
            let clean: String = scrub_text(&m, &mut sc).chars().take(512).collect();
            Err(Failure::Rpc(code, clean))
        }
        Err(f) => Err(f),
    }
}

/// Whether `tool`'s MCP server is given a key: an HTTP one when its
/// registration says how (`inject`), a stdio one when its operator named
/// the variable (`secret_env`).
pub fn wants_key(s: &AppState, tool: &Tool) -> bool {
    match tool.mcp.as_ref() {
        Some(m) => match &m.upstream {
            Upstream::Http(_) => m.inject.is_some(),
            Upstream::Stdio(name) => s
                .config
                .mcp_stdio
                .get(name)
                .is_some_and(|c| c.secret_env.is_some()),
        },
        None => false,
    }
}

/// The tool's key, if it has one.
fn key_of(s: &AppState, tool: &Tool) -> Option<std::sync::Arc<mandate_core::secret::Secret>> {
    s.tool_secret(&tool.tenant, &tool.name)
}

fn scrub_text(t: &str, sc: &mut Scrubber) -> String {
    match sc.scrub(t.as_bytes()) {
        Some(clean) => String::from_utf8_lossy(&clean).into_owned(),
        None => t.to_owned(),
    }
}

/// Scrubs every string (and member name) of `v`; whether one held a secret.
fn scrub_value(v: &mut Value, sc: &mut Scrubber) -> bool {
    match v {
        Value::String(t) => match sc.scrub(t.as_bytes()) {
            Some(clean) => {
                *t = String::from_utf8_lossy(&clean).into_owned();
                true
            }
            None => false,
        },
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |hit, x| scrub_value(x, sc) | hit),
        Value::Object(m) => {
            let mut hit = false;
            let old = std::mem::take(m);
            for (k, mut x) in old {
                hit |= scrub_value(&mut x, sc);
                let k = match sc.scrub(k.as_bytes()) {
                    Some(clean) => {
                        hit = true;
                        String::from_utf8_lossy(&clean).into_owned()
                    }
                    None => k,
                };
                m.insert(k, x);
            }
            hit
        }
        _ => false,
    }
}

/// Forgets the sessions and processes of `run` (it ended or was revoked).
pub fn end_run(s: &AppState, run: &str) {
    s.mcp_sessions.end_run(run);
    s.mcp_stdio.end_run(run);
}

/// Ends the broker's own session (or process) with `tool` of `tenant`.
pub fn end_own(s: &AppState, tenant: &str, tool: &str) {
    s.mcp_sessions.end_own(tenant, tool);
    s.mcp_stdio.end_own(tenant, tool);
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
        // Cut to size by `request`, after the secrets are scrubbed from it
        // (a secret across the cut would leave its first part).
        let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
        return Err(Failure::Rpc(code, msg.to_owned()));
    }
    m.get("result")
        .cloned()
        .ok_or_else(|| Failure::Unreachable("its response has neither `result` nor `error`".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_string_of_an_answer_is_scrubbed() {
        let mut sc = Scrubber::new([&b"evil-key-123"[..]]);
        // As parsed from `"\u0065vil-key-123"`: the raw bytes never held it.
        let mut v: Value = serde_json::from_str(
            r#"{"content":[{"type":"text","text":"k=\u0065vil-key-123"}],"evil-key-123":1}"#,
        )
        .unwrap();
        assert!(scrub_value(&mut v, &mut sc));
        let text = v.to_string();
        assert!(!text.contains("evil-key-123"), "{text}");
        let mut clean = json!({"content": [{"type": "text", "text": "fine"}]});
        assert!(!scrub_value(&mut clean, &mut sc));
    }
}
