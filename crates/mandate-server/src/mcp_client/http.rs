//! The broker as an MCP client of a tool's MCP server over streamable
//! HTTP (MCP 2025-11-25 `basic/transports`): the `initialize` handshake, then
//! requests with `MCP-Session-Id` and `MCP-Protocol-Version`; answers read
//! as JSON or as an SSE stream (the response is the event carrying our
//! id; the server's notifications and requests on it are not relayed). One
//! upstream session per run and tool (a stateful server never carries one
//! run's state into another's calls), dropped when the run ends. A session
//! the server forgot (404) is opened again, except under a `tools/call`
//! (the server may have acted: the call fails and the agent decides). The
//! tool's key is injected here and nowhere else, and scrubbed from every
//! answer before it is parsed.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use mandate_core::mcp::jsonrpc::Id;
use mandate_core::model::Tool;
use mandate_core::scrub::Scrubber;
use serde_json::{Value, json};

use super::{Failure, MAX_ANSWER, Returned};
use crate::state::AppState;

/// Most upstream sessions held (beyond it, one is forgotten per new one).
const MAX_SESSIONS: usize = 10_000;

/// An open session with one tool's MCP server.
#[derive(Debug, Clone)]
pub struct Session {
    id: Option<String>,
    version: String,
}

/// Upstream sessions by (tenant, tool, run; the run is empty for the
/// broker's own requests, `tool sync`).
#[derive(Debug, Default)]
pub struct Sessions(std::sync::Mutex<HashMap<(String, String, String), Session>>);

impl Sessions {
    fn get(&self, k: &(String, String, String)) -> Option<Session> {
        self.0.lock().ok()?.get(k).cloned()
    }

    fn put(&self, k: (String, String, String), v: Session) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= MAX_SESSIONS
                && let Some(old) = m.keys().next().cloned()
            {
                m.remove(&old);
            }
            m.insert(k, v);
        }
    }

    fn remove(&self, k: &(String, String, String)) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(k);
        }
    }

    /// Forgets the sessions of `run` (it ended or was revoked).
    pub fn end_run(&self, run: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.retain(|(_, _, r), _| r != run);
        }
    }

    /// Forgets the broker's own session with `tool` of `tenant`.
    pub fn end_own(&self, tenant: &str, tool: &str) {
        self.remove(&(tenant.to_owned(), tool.to_owned(), String::new()));
    }

    /// Forgets the sessions with `tool` of `tenant` (its registration changed).
    pub fn forget_tool(&self, tenant: &str, tool: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.retain(|(t, n, _), _| !(t == tenant && n == tool));
        }
    }
}

/// What one request got back.
enum Answer {
    /// The result, and whether the tool's key had to be scrubbed from it.
    Result(Value, bool),
    /// The session is gone (HTTP 404 with a session id).
    SessionGone,
}

/// The tool's key, rendered, and a scrubber for it.
fn injection(
    s: &AppState,
    tool: &Tool,
) -> Result<Option<(HeaderName, HeaderValue, Scrubber)>, Failure> {
    let Some(inject) = tool.mcp.as_ref().and_then(|m| m.inject.as_ref()) else {
        return Ok(None);
    };
    let secret = s.tool_secret(&tool.tenant, &tool.name).ok_or_else(|| {
        Failure::Unreachable(format!(
            "tool `{}` has no key yet; an admin sets it with `mandate tool set-secret {}`",
            tool.name, tool.name
        ))
    })?;
    let key = std::str::from_utf8(secret.expose())
        .map_err(|_| Failure::Unreachable("the tool's key is not text".into()))?;
    let rendered = zeroize::Zeroizing::new(inject.render(key));
    let mut value = HeaderValue::from_str(&rendered)
        .map_err(|_| Failure::Unreachable("the tool's key cannot go into an HTTP header".into()))?;
    value.set_sensitive(true);
    let name = HeaderName::from_bytes(inject.header.as_bytes())
        .map_err(|_| Failure::Unreachable("the tool's inject header is invalid".into()))?;
    Ok(Some((
        name,
        value,
        Scrubber::new([key.as_bytes(), rendered.as_bytes()]),
    )))
}

/// Sends `method` with `params` to the tool's MCP server in the session of
/// `run` (opened first if needed) and returns the JSON-RPC `result`.
pub(super) async fn request(
    s: &AppState,
    tool: &Tool,
    run: &str,
    method: &str,
    params: Value,
    bearer: Option<&str>,
) -> Result<Returned, Failure> {
    let target = Target { s, tool, bearer };
    let key = (tool.tenant.clone(), tool.name.clone(), run.to_owned());
    // A call the server may have acted on is never sent twice.
    let attempts = if method == "tools/call" { 1 } else { 2 };
    for _ in 0..attempts {
        let session = match s.mcp_sessions.get(&key) {
            Some(sess) => sess,
            None => {
                let sess = open(&target).await?;
                s.mcp_sessions.put(key.clone(), sess.clone());
                sess
            }
        };
        match send(&target, Some(&session), method, params.clone()).await? {
            Answer::Result(result, reflected) => return Ok(Returned { result, reflected }),
            Answer::SessionGone => s.mcp_sessions.remove(&key),
        }
    }
    Err(Failure::Unreachable(
        "the MCP server ended its session (it may have restarted); send the call again".into(),
    ))
}

/// Where a request goes, and the credential minted for it, if any.
struct Target<'a> {
    s: &'a AppState,
    tool: &'a Tool,
    bearer: Option<&'a str>,
}

/// The `initialize` handshake (MCP 2025-11-25 `basic/lifecycle`).
async fn open(t: &Target<'_>) -> Result<Session, Failure> {
    let params = json!({
        "protocolVersion": mandate_core::mcp::LATEST_HANDSHAKE,
        // No capabilities: the server has no reason to ask us anything.
        "capabilities": {},
        "clientInfo": {"name": "mandate-gateway", "version": env!("CARGO_PKG_VERSION")},
    });
    let (result, id) = post(t, None, "initialize", Some(params)).await?;
    let Answer::Result(result, _) = result else {
        return Err(Failure::Unreachable(
            "the MCP server refused to open a session".into(),
        ));
    };
    let version = result
        .get("protocolVersion")
        .and_then(Value::as_str)
        .filter(|v| mandate_core::mcp::HANDSHAKE_VERSIONS.contains(v))
        .ok_or_else(|| {
            Failure::Unreachable(
                "the MCP server answered `initialize` with a protocol revision the gateway does not speak".into(),
            )
        })?
        .to_owned();
    let session = Session { id, version };
    notify(t, &session, "notifications/initialized").await?;
    Ok(session)
}

async fn notify(t: &Target<'_>, session: &Session, method: &str) -> Result<(), Failure> {
    let (s, tool) = (t.s, t.tool);
    let body = json!({"jsonrpc": "2.0", "method": method});
    let req = build(t, Some(session), &body)?;
    let timeout = timeout_of(tool);
    let resp = tokio::time::timeout(timeout, s.http.request(req))
        .await
        .map_err(|_| Failure::Timeout)?
        .map_err(|e| Failure::Unreachable(connect_error(&e)))?;
    if !resp.status().is_success() {
        return Err(Failure::Unreachable(format!(
            "it answered {} to `{method}`",
            resp.status()
        )));
    }
    Ok(())
}

fn timeout_of(tool: &Tool) -> Duration {
    Duration::from_millis(tool.mcp.as_ref().map_or(30_000, |m| m.timeout_ms))
}

fn connect_error(e: &hyper_util::client::legacy::Error) -> String {
    if e.is_connect() {
        "it cannot be reached (the URL is in the tool's registration)".into()
    } else {
        "it closed the connection or sent an invalid response".into()
    }
}

async fn send(
    t: &Target<'_>,
    session: Option<&Session>,
    method: &str,
    params: Value,
) -> Result<Answer, Failure> {
    post(t, session, method, Some(params)).await.map(|(a, _)| a)
}

fn build(
    t: &Target<'_>,
    session: Option<&Session>,
    body: &Value,
) -> Result<Request<Body>, Failure> {
    let (s, tool) = (t.s, t.tool);
    let url = tool
        .mcp
        .as_ref()
        .and_then(|m| match &m.upstream {
            mandate_core::mcp::Upstream::Http(url) => Some(url.clone()),
            mandate_core::mcp::Upstream::Stdio(_) => None,
        })
        .ok_or_else(|| Failure::Unreachable("the tool is not an HTTP MCP server".into()))?;
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(&url)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header(header::ACCEPT_ENCODING, "identity")
        .body(Body::from(serde_json::to_vec(body).unwrap_or_default()))
        .map_err(|_| Failure::Unreachable("its URL cannot be used".into()))?;
    let h = req.headers_mut();
    if let Some(sess) = session {
        if let Some(id) = &sess.id
            && let Ok(v) = HeaderValue::from_str(id)
        {
            h.insert("mcp-session-id", v);
        }
        if let Ok(v) = HeaderValue::from_str(&sess.version) {
            h.insert("mcp-protocol-version", v);
        }
    }
    if let Some((name, value, _)) = injection(s, tool)? {
        h.insert(name, value);
    }
    if let Some(token) = t.bearer {
        let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            Failure::Unreachable("the minted credential is not a header value".into())
        })?;
        v.set_sensitive(true);
        h.insert(header::AUTHORIZATION, v);
    }
    Ok(req)
}

/// One request; the answer and the session id the server gave (on `initialize`).
async fn post(
    t: &Target<'_>,
    session: Option<&Session>,
    method: &str,
    params: Option<Value>,
) -> Result<(Answer, Option<String>), Failure> {
    let (s, tool) = (t.s, t.tool);
    let id = Id::Str(mandate_core::ids::random_id(
        &mut rand_core::OsRng,
        "mandate",
    ));
    let mut body = json!({"jsonrpc": "2.0", "id": id, "method": method});
    if let Some(p) = params {
        body["params"] = p;
    }
    let req = build(t, session, &body)?;
    let timeout = timeout_of(tool);
    let read = async {
        let resp = s
            .http
            .request(req)
            .await
            .map_err(|e| Failure::Unreachable(connect_error(&e)))?;
        let status = resp.status();
        let session_id = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                !v.is_empty() && v.len() <= 256 && v.bytes().all(|b| (0x21..=0x7e).contains(&b))
            })
            .map(str::to_owned);
        let sse = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if status == StatusCode::NOT_FOUND && session.and_then(|s| s.id.as_ref()).is_some() {
            return Ok((Answer::SessionGone, None));
        }
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|_| {
                Failure::Unreachable(format!(
                    "its answer is larger than {MAX_ANSWER} bytes or was cut"
                ))
            })?
            .to_bytes();
        // The key never comes back, whatever the server echoes (results,
        // error messages), as sent or JSON-escaped.
        let (bytes, reflected) = match super::scrubber(s, tool).and_then(|mut sc| sc.scrub(&bytes))
        {
            Some(clean) => (clean, true),
            None => (bytes.to_vec(), false),
        };
        if !status.is_success() {
            // A JSON-RPC error in an HTTP error (MCP servers answer 4xx so).
            if let Some(m) = message_for(&bytes, sse, &id) {
                return rpc(m, reflected).map(|a| (a, session_id));
            }
            return Err(Failure::Unreachable(format!("it answered HTTP {status}")));
        }
        let m = message_for(&bytes, sse, &id).ok_or_else(|| {
            Failure::Unreachable("its answer holds no JSON-RPC response to the request".into())
        })?;
        rpc(m, reflected).map(|a| (a, session_id))
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| Failure::Timeout)?
}

fn rpc(m: Value, reflected: bool) -> Result<Answer, Failure> {
    super::outcome(&m).map(|r| Answer::Result(r, reflected))
}

/// The JSON-RPC response to `id` in a JSON body or an SSE stream.
fn message_for(bytes: &[u8], sse: bool, id: &Id) -> Option<Value> {
    let want = serde_json::to_value(id).ok()?;
    let is_ours = |v: &Value| {
        v.get("id") == Some(&want) && (v.get("result").is_some() || v.get("error").is_some())
    };
    if !sse {
        let v: Value = serde_json::from_slice(bytes).ok()?;
        return is_ours(&v).then_some(v);
    }
    let text = std::str::from_utf8(bytes).ok()?;
    // SSE (WHATWG HTML §9.2.6): events end at a blank line; `data:` lines join with "\n".
    for event in text.replace("\r\n", "\n").split("\n\n") {
        let data: Vec<&str> = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        if data.is_empty() {
            continue;
        }
        if let Ok(v) = serde_json::from_str::<Value>(&data.join("\n"))
            && is_ours(&v)
        {
            return Some(v);
        }
    }
    None
}

/// The scrubber for the tool's key and its header value.
pub(super) fn scrubber(s: &AppState, tool: &Tool) -> Option<Scrubber> {
    injection(s, tool).ok().flatten().map(|(_, _, sc)| sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_response_is_found_in_json_or_sse() {
        let id = Id::Str("mandate-1".into());
        let body = br#"{"jsonrpc":"2.0","id":"mandate-1","result":{"ok":true}}"#;
        assert_eq!(message_for(body, false, &id).unwrap()["result"]["ok"], true);
        let sse = b"event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\r\n\r\nid: 7\ndata: {\"jsonrpc\":\"2.0\",\"id\":\"mandate-1\",\ndata: \"result\":{\"n\":1}}\n\n";
        assert_eq!(message_for(sse, true, &id).unwrap()["result"]["n"], 1);
        let other = br#"{"jsonrpc":"2.0","id":"mandate-2","result":{}}"#;
        assert!(message_for(other, false, &id).is_none());
        assert!(message_for(b"garbage", false, &id).is_none());
    }
}
