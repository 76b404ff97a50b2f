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
