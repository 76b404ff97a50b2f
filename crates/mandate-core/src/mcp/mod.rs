//! The MCP gateway's pure rules (issue 13; design in
//! `docs/design/mcp-gateway.md`): JSON-RPC messages as the gateway accepts
//! them ([`jsonrpc`]), an MCP tool's `inputSchema` as a Cedar type
//! ([`schema`]), and a call's `arguments` checked against that type and
//! turned into the value policies read as `context.arguments` ([`args`]).
//! No IO.

pub mod args;
pub mod jsonrpc;
pub mod schema;
pub mod spec;

pub use spec::{McpSpec, McpTool, Upstream};

/// The Cedar action group every MCP call action belongs to
/// (`action in Mandate::Action::"mcp_call"`).
pub const CALL_GROUP: &str = "mcp_call";

/// The Cedar action id of MCP tool `name` behind Mandate tool `tool`:
/// `"<tool>:<name>"` (a tool's name is a slug, so the first `:` splits).
pub fn call_action(tool: &str, name: &str) -> String {
    format!("{tool}:{name}")
}

/// Protocol revisions the gateway answers `initialize` with, newest first
/// (the handshake era; see the design notes, 1.5).
pub const HANDSHAKE_VERSIONS: [&str; 3] = ["2025-11-25", "2025-06-18", "2025-03-26"];

/// The revision the gateway offers when a client asks for one it does not speak.
pub const LATEST_HANDSHAKE: &str = HANDSHAKE_VERSIONS[0];

/// The revision an `initialize` request that asks for `requested` gets
/// (MCP 2025-11-25 lifecycle §Version Negotiation: the same if supported,
/// else another the server supports).
pub fn negotiate(requested: Option<&str>) -> &'static str {
    requested
        .and_then(|r| HANDSHAKE_VERSIONS.iter().find(|v| **v == r))
        .copied()
        .unwrap_or(LATEST_HANDSHAKE)
}

/// The stateless revision (MCP 2026-07-28): no `initialize`, no session;
/// each request names its revision in `_meta` (and the `MCP-Protocol-Version`
/// header), and a client learns the server's with `server/discover`.
pub const STATELESS: &str = "2026-07-28";

/// The `_meta` member naming a stateless request's revision.
pub const VERSION_META: &str = "io.modelcontextprotocol/protocolVersion";

/// A request at a revision the server does not speak (2026-07-28).
pub const UNSUPPORTED_VERSION: i64 = -32022;

/// A request whose `Mcp-*` headers do not mirror its body (2026-07-28).
pub const HEADER_MISMATCH: i64 = -32020;

/// What a stateless request's `Mcp-*` headers say (each `None` when absent;
/// a header sent twice is refused before).
#[derive(Debug, Clone, Copy, Default)]
pub struct Mirrored<'a> {
    /// `MCP-Protocol-Version`.
    pub version: Option<&'a str>,
    /// `Mcp-Method`.
    pub method: Option<&'a str>,
    /// `Mcp-Name` (the tool of a `tools/call`).
    pub name: Option<&'a str>,
}

/// Which revision's rules a request follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// 2025-11-25 and before: `initialize`, then requests in its session.
    Handshake,
    /// 2026-07-28: every request stands alone.
    Stateless,
}

/// Why a request's revision or its headers cannot be served.
#[derive(Debug, Clone, PartialEq)]
pub struct EraRefusal {
    /// JSON-RPC error code.
    pub code: i64,
    /// Message.
    pub message: String,
    /// `data` (the revisions supported, for [`UNSUPPORTED_VERSION`]).
    pub data: Option<serde_json::Value>,
}

/// The era of a request `method` (naming tool `name`, for a `tools/call`)
/// whose `_meta` names revision `meta_version`, sent with headers `h`.
/// A stateless request's headers must mirror its body (2026-07-28
/// `basic/transports`: a proxy or firewall may route or filter on them, so
/// the server refuses a request whose headers say something else than what
/// it would act on): the version and the method always, the tool's name on
/// a `tools/call`.
pub fn era(
    meta_version: Option<&str>,
    h: Mirrored<'_>,
    method: &str,
    name: Option<&str>,
) -> Result<Era, EraRefusal> {
    let mismatch = |what: &str| EraRefusal {
        code: HEADER_MISMATCH,
        message: format!("the {what} header does not mirror the request's body"),
        data: None,
    };
    if h.method.is_some_and(|m| m != method) {
        return Err(mismatch("Mcp-Method"));
    }
    match meta_version {
        None if method == "server/discover" => Ok(Era::Stateless),
        None if h.version == Some(STATELESS) => Err(mismatch("MCP-Protocol-Version")),
        None => Ok(Era::Handshake),
        Some(v) if v == STATELESS => {
            if h.version != Some(v) {
                return Err(mismatch("MCP-Protocol-Version"));
            }
            if h.method.is_none() {
                return Err(mismatch("Mcp-Method"));
            }
            if method == "tools/call" && h.name != name {
                return Err(mismatch("Mcp-Name"));
            }
            Ok(Era::Stateless)
        }
        Some(v) => Err(EraRefusal {
            code: UNSUPPORTED_VERSION,
            message: format!(
                "protocol revision `{}` is not supported without `initialize`; use {STATELESS}, or initialize",
                v.chars().take(32).collect::<String>()
            ),
            data: Some(serde_json::json!({"supported": [STATELESS]})),
        }),
    }
}

/// A result as the stateless revision wants it: `resultType` always, and
/// caching hints on what a client may cache (`server/discover`,
/// `tools/list`: never, since what a run may call can change any moment).
pub fn stateless_result(method: &str, result: &mut serde_json::Value) {
    let Some(m) = result.as_object_mut() else {
        return;
    };
    m.entry("resultType").or_insert_with(|| "complete".into());
    if matches!(method, "server/discover" | "tools/list") {
        m.entry("ttlMs").or_insert_with(|| 0.into());
        m.entry("cacheScope").or_insert_with(|| "private".into());
    }
}

/// An MCP tool name Mandate can enable: it is a tool action as well
/// (`capability::check_action`: lower-case letters, digits, `.`, `_`, `-`;
/// at most 64), and a name MCP allows (1 to 128 of `A-Z a-z 0-9 _ - .`).
pub fn enableable(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_states_its_era_and_its_headers_agree() {
        let none = Mirrored::default();
        let all = |m, n| Mirrored {
            version: Some(STATELESS),
            method: Some(m),
            name: n,
        };
        assert_eq!(
            era(None, none, "tools/call", Some("pay")),
            Ok(Era::Handshake)
        );
        let old = Mirrored {
            version: Some("2025-11-25"),
            ..none
        };
        assert_eq!(
            era(None, old, "tools/call", Some("pay")),
            Ok(Era::Handshake)
        );
        assert_eq!(era(None, none, "server/discover", None), Ok(Era::Stateless));
        let call = all("tools/call", Some("pay"));
        assert_eq!(
            era(Some(STATELESS), call, "tools/call", Some("pay")),
            Ok(Era::Stateless)
        );
        assert_eq!(
            era(Some(STATELESS), all("tools/list", None), "tools/list", None),
            Ok(Era::Stateless)
        );
        // Headers that say something else than the body, or are missing, are refused.
        for (meta, h, method, name) in [
            (
                Some(STATELESS),
                all("tools/list", Some("pay")),
                "tools/call",
                Some("pay"),
            ),
            (
                Some(STATELESS),
                all("tools/call", Some("echo")),
                "tools/call",
                Some("pay"),
            ),
            (
                Some(STATELESS),
                all("tools/call", None),
                "tools/call",
                Some("pay"),
            ),
            (
                Some(STATELESS),
                Mirrored {
                    version: Some("2025-11-25"),
                    ..call
                },
                "tools/call",
                Some("pay"),
            ),
            (
                Some(STATELESS),
                Mirrored {
                    version: None,
                    ..call
                },
                "tools/call",
                Some("pay"),
            ),
            (
                Some(STATELESS),
                Mirrored {
                    method: None,
                    ..call
                },
                "tools/call",
                Some("pay"),
            ),
            (None, call, "tools/call", Some("pay")),
        ] {
            let e = era(meta, h, method, name).unwrap_err();
            assert_eq!(e.code, HEADER_MISMATCH, "{h:?}");
        }
        let e = era(Some("2027-01-01"), none, "tools/call", None).unwrap_err();
        assert_eq!(e.code, UNSUPPORTED_VERSION);
        assert_eq!(e.data.unwrap()["supported"][0], STATELESS);
        let mut r = serde_json::json!({"tools": []});
        stateless_result("tools/list", &mut r);
        assert_eq!(r["resultType"], "complete");
        assert_eq!(r["ttlMs"], 0);
        let mut r = serde_json::json!({"content": [], "resultType": "complete"});
        stateless_result("tools/call", &mut r);
        assert!(r.get("ttlMs").is_none());
    }

    #[test]
    fn negotiation_answers_a_known_revision_or_the_latest() {
        assert_eq!(negotiate(Some("2025-06-18")), "2025-06-18");
        assert_eq!(negotiate(Some("2024-11-05")), LATEST_HANDSHAKE);
        assert_eq!(negotiate(Some("2026-07-28")), LATEST_HANDSHAKE);
        assert_eq!(negotiate(None), LATEST_HANDSHAKE);
    }

    #[test]
    fn only_names_that_are_also_actions_can_be_enabled() {
        assert!(enableable("create_issue"));
        assert!(enableable("v2.list-repos"));
        assert!(!enableable("createIssue"));
        assert!(!enableable("a:b"));
        assert!(!enableable(""));
        assert!(!enableable(&"a".repeat(65)));
    }
}
