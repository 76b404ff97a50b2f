//! JSON-RPC 2.0 messages as the MCP gateway accepts them: one message per
//! POST (MCP 2025-11-25 transports §Sending Messages to the Server: "a
//! single JSON-RPC request, notification, or response"; batches were
//! removed in 2025-06-18), read strictly (a key twice, also in another
//! letter case, is refused: parsers disagree on which one wins), ids that
//! are strings or integers (MCP basic §Requests: "MUST NOT be null").

use serde::Serialize;
use serde_json::{Map, Value};

/// Parse error.
pub const PARSE_ERROR: i64 = -32700;
/// Invalid request.
pub const INVALID_REQUEST: i64 = -32600;
/// Method not found.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Invalid params (also MCP's "Unknown tool").
pub const INVALID_PARAMS: i64 = -32602;
/// Internal error.
pub const INTERNAL_ERROR: i64 = -32603;

/// A request id, kept as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Id {
    /// An integer id (within ±(2^53 − 1)).
    Int(i64),
    /// A string id (at most 128 characters).
    Str(String),
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Id::Int(i) => write!(f, "{i}"),
            Id::Str(s) => f.write_str(s),
        }
    }
}

/// One message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A request (it has an id and wants an answer).
    Request {
        /// Its id.
        id: Id,
        /// Its method, exactly as sent.
        method: String,
        /// Its params (`{}` when absent).
        params: Map<String, Value>,
    },
    /// A notification (no id, no answer).
    Notification {
        /// Its method.
        method: String,
        /// Its params.
        params: Map<String, Value>,
    },
    /// A response (the gateway sends no requests, so it expects none).
    Response,
}

/// Why a message is refused: a JSON-RPC error (with the request's id when
/// it could be read).
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    /// The JSON-RPC error code.
    pub code: i64,
    /// What is wrong.
    pub message: String,
    /// The request's id, if read.
    pub id: Option<Id>,
}

fn invalid(code: i64, message: impl Into<String>, id: Option<Id>) -> Invalid {
    Invalid {
        code,
        message: message.into(),
        id,
    }
}

/// Reads one message.
pub fn parse(body: &[u8]) -> Result<Message, Invalid> {
    let v = crate::forwarding::strict_json(body)
        .map_err(|e| invalid(PARSE_ERROR, format!("the body is {e}"), None))?;
    let o = match v {
        Value::Object(o) => o,
        Value::Array(_) => {
            return Err(invalid(
                INVALID_REQUEST,
                "batches are not accepted: send one JSON-RPC message per request (MCP removed batching in 2025-06-18)",
                None,
            ));
        }
        _ => {
            return Err(invalid(
                INVALID_REQUEST,
                "send a JSON-RPC message (a JSON object)",
                None,
            ));
        }
    };
    let id = match o.get("id") {
        None => None,
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= 128 => {
            Some(Id::Str(s.clone()))
        }
        Some(Value::Number(n))
            if n.as_i64()
                .is_some_and(|i| i.unsigned_abs() <= super::args::MAX_SAFE_INTEGER as u64) =>
        {
            n.as_i64().map(Id::Int)
        }
        Some(_) => {
            return Err(invalid(
                INVALID_REQUEST,
                "`id` must be a string (1 to 128 characters) or an integer; never null",
                None,
            ));
        }
    };
    if o.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid(INVALID_REQUEST, "`jsonrpc` must be \"2.0\"", id));
    }
    let method = match o.get("method") {
        Some(Value::String(m)) if !m.is_empty() && m.len() <= 128 => m.clone(),
        Some(_) => {
            return Err(invalid(
                INVALID_REQUEST,
                "`method` must be a short string",
                id,
            ));
        }
        None if o.contains_key("result") || o.contains_key("error") => {
            return Ok(Message::Response);
        }
        None => return Err(invalid(INVALID_REQUEST, "the message has no `method`", id)),
    };
    let params = match o.get("params") {
        None => Map::new(),
        Some(Value::Object(p)) => p.clone(),
        Some(_) => return Err(invalid(INVALID_REQUEST, "`params` must be an object", id)),
    };
    if o.keys()
        .any(|k| !["jsonrpc", "id", "method", "params"].contains(&k.as_str()))
    {
        return Err(invalid(
            INVALID_REQUEST,
            "the message has members JSON-RPC does not define",
            id,
        ));
    }
    Ok(match id {
        Some(id) => Message::Request { id, method, params },
        None => Message::Notification { method, params },
    })
}

/// A JSON-RPC success answer.
pub fn result(id: &Id, result: Value) -> Value {
    serde_json::json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// A JSON-RPC error answer (`id` null when the request's could not be read).
pub fn error(id: Option<&Id>, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut e = serde_json::json!({"code": code, "message": message});
    if let Some(d) = data {
        e["data"] = d;
    }
    serde_json::json!({"jsonrpc": "2.0", "id": id, "error": e})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(b: &str) -> i64 {
        parse(b.as_bytes()).unwrap_err().code
    }

    #[test]
    fn requests_notifications_and_responses() {
        let m = parse(br#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#).unwrap();
        assert_eq!(
            m,
            Message::Request {
                id: Id::Int(7),
                method: "tools/list".into(),
                params: Map::new()
            }
        );
        let m = parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert!(matches!(m, Message::Notification { .. }));
        let m = parse(br#"{"jsonrpc":"2.0","id":"a","result":{}}"#).unwrap();
        assert_eq!(m, Message::Response);
    }

    #[test]
    fn what_the_gateway_refuses() {
        assert_eq!(code("{"), PARSE_ERROR);
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1,"method":"a","method":"b"}"#),
            PARSE_ERROR
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1,"method":"a","Method":"b"}"#),
            PARSE_ERROR
        );
        assert_eq!(
            code(
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#
            ),
            PARSE_ERROR
        );
        assert_eq!(
            code(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#),
            INVALID_REQUEST
        );
        assert_eq!(code("[]"), INVALID_REQUEST);
        // Keys Go's encoding/json would fold together (`ſ` is `s`).
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1,"method":"a","params":{"dest":1,"de\u017ft":2}}"#),
            PARSE_ERROR
        );
        assert_eq!(code(r#""x""#), INVALID_REQUEST);
        for id in [
            "null",
            "1.5",
            "{}",
            "[]",
            "true",
            "\"\"",
            "9007199254740993",
        ] {
            assert_eq!(
                code(&format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#)),
                INVALID_REQUEST,
                "{id}"
            );
        }
        assert_eq!(
            code(r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#),
            INVALID_REQUEST
        );
        assert_eq!(code(r#"{"id":1,"method":"ping"}"#), INVALID_REQUEST);
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1,"method":7}"#),
            INVALID_REQUEST
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1,"method":"a","params":[1]}"#),
            INVALID_REQUEST
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1,"method":"a","extra":1}"#),
            INVALID_REQUEST
        );
        assert_eq!(code(r#"{"jsonrpc":"2.0","id":1}"#), INVALID_REQUEST);
        // The id is echoed when it could be read.
        let e = parse(br#"{"jsonrpc":"1.0","id":"x","method":"ping"}"#).unwrap_err();
        assert_eq!(e.id, Some(Id::Str("x".into())));
    }
}
