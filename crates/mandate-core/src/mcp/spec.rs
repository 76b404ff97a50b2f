//! The `mcp` provider's registration: where the MCP server is, how the
//! broker identifies itself to it, what happens to arguments policies
//! cannot read, and the pinned snapshot of its tools (`mandate tool sync`).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::args::Extra;
use super::schema::{Record, arguments_type};
use crate::error::{Result, malformed};
use crate::tooling::InjectSpec;

/// Most tools in one snapshot.
pub const MAX_TOOLS: usize = 512;

/// Largest snapshot, serialised (bytes).
pub const MAX_SNAPSHOT: usize = 2 * 1024 * 1024;

/// Where the MCP server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// Its streamable-HTTP endpoint (`https://mcp.internal/mcp`).
    Http(String),
    /// A stdio server the broker starts itself, by the name its operator
    /// gave the command (`mandate serve --mcp-stdio-config`): a registration
    /// names a command, it never carries one (the admin API does not run
    /// programs on the broker's host).
    Stdio(String),
}

impl Upstream {
    /// How the audit trail and `tool get` name it.
    pub fn describe(&self) -> String {
        match self {
            Upstream::Http(url) => url.clone(),
            Upstream::Stdio(name) => format!("stdio:{name}"),
        }
    }
}

/// An MCP server behind the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawSpec", into = "RawSpec")]
pub struct McpSpec {
    /// Where it is.
    pub upstream: Upstream,
    /// How the static key (the tool's secret) is sent to an HTTP server, if
    /// at all (a stdio server gets it in the environment variable its
    /// operator named).
    pub inject: Option<InjectSpec>,
    /// A credential minted per call for the MCP server, naming the human
    /// and the agents (instead of, or beside, a static key).
    pub mint: Option<MintSpec>,
    /// Whether callers must present DPoP-bound credentials (RFC 9449) at
    /// its gateway URL: bound to the run's key at the exchange, sent as
    /// `Authorization: DPoP` with a fresh proof per request. Off, the
    /// gateway takes bearer credentials (what MCP client libraries send).
    pub dpop: bool,
    /// Longest wait for its answer (ms).
    pub timeout_ms: u64,
    /// Arguments no policy can read: refused (default) or passed.
    pub extra_args: Extra,
    /// Its tools as last synced (what `tools/list` answers from, and what
    /// arguments are checked against). Empty until `mandate tool sync`.
    pub tools: Vec<McpTool>,
}

/// [`McpSpec`] as JSON: `upstream` (a URL) or `stdio` (a command's name).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upstream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stdio: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inject: Option<InjectSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mint: Option<MintSpec>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    dpop: bool,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default)]
    extra_args: Extra,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tools: Vec<McpTool>,
}

impl TryFrom<RawSpec> for McpSpec {
    type Error = String;

    fn try_from(r: RawSpec) -> std::result::Result<Self, String> {
        let upstream = match (r.upstream, r.stdio) {
            (Some(url), None) => Upstream::Http(url),
            (None, Some(name)) => Upstream::Stdio(name),
            _ => {
                return Err(
                    "an `mcp` tool names exactly one of `upstream` (its streamable-HTTP URL) and `stdio` (a stdio server its broker's operator defined)".into(),
                );
            }
        };
        Ok(McpSpec {
            upstream,
            inject: r.inject,
            mint: r.mint,
            dpop: r.dpop,
            timeout_ms: r.timeout_ms,
            extra_args: r.extra_args,
            tools: r.tools,
        })
    }
}

impl From<McpSpec> for RawSpec {
    fn from(m: McpSpec) -> Self {
        let (upstream, stdio) = match m.upstream {
            Upstream::Http(url) => (Some(url), None),
            Upstream::Stdio(name) => (None, Some(name)),
        };
        RawSpec {
            upstream,
            stdio,
            inject: m.inject,
            mint: m.mint,
            dpop: m.dpop,
            timeout_ms: m.timeout_ms,
            extra_args: m.extra_args,
            tools: m.tools,
        }
    }
}

/// A credential the broker mints for the MCP server with each call it
/// forwards: an RFC 9068 JWT signed by the broker (verifiable with its
/// JWKS) with `aud` = [`MintSpec::audience`], `sub` = the human, `act` =
/// the chain of agents, `scope` = the MCP tool, living at most a minute.
/// An HTTP server gets it as `Authorization: Bearer`; a stdio server in
/// `_meta["dev.mandate/credential"]` of the call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintSpec {
    /// The MCP server's own identifier (what it checks `aud` against);
    /// unique across the broker, like a `jwt` tool's audience.
    pub audience: String,
}

/// Longest life of a minted credential (seconds).
pub const MINTED_TTL: u64 = 60;

/// Whether `name` can name an operator's stdio server: 1 to 64 of
/// `a-z 0-9 _ -`, starting with a letter.
pub fn stdio_name_ok(name: &str) -> bool {
    name.len() <= 64
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn default_timeout_ms() -> u64 {
    30_000
}

/// One tool of an MCP server, as its `tools/list` described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct McpTool {
    /// Its name.
    pub name: String,
    /// Its title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Its description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its arguments' JSON Schema.
    pub input_schema: Value,
    /// Its result's JSON Schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    /// Its annotations (untrusted hints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Value>,
}

impl McpSpec {
    /// Checks the spec against the tool's actions (the MCP tools it enables).
    pub fn validate(&self, actions: &[String]) -> Result<()> {
        match &self.upstream {
            Upstream::Http(url) => crate::tooling::check_upstream("mcp upstream", url)?,
            Upstream::Stdio(name) => {
                if !stdio_name_ok(name) {
                    return Err(malformed(
                        "mcp stdio",
                        "a stdio server's name is 1 to 64 of a-z, 0-9, `_`, `-`, starting with a letter (the name its broker's operator gave it)",
                    ));
                }
                if self.inject.is_some() {
                    return Err(malformed(
                        "mcp inject",
                        "a stdio server gets its key in the environment variable its operator named; `inject` is for HTTP servers",
                    ));
                }
            }
        }
        if let Some(i) = &self.inject {
            i.validate("mcp inject")?;
        }
        if let Some(m) = &self.mint {
            crate::tooling::check_upstream("mcp mint audience", &m.audience)?;
            if self
                .inject
                .as_ref()
                .is_some_and(|i| i.header.eq_ignore_ascii_case("authorization"))
            {
                return Err(malformed(
                    "mcp mint",
                    "the minted credential goes in `Authorization`; inject the static key in another header",
                ));
            }
        }
        crate::tooling::check_timeout("mcp timeout", self.timeout_ms)?;
        for a in actions {
            if !super::enableable(a) {
                return Err(malformed(
                    "mcp action",
                    format!(
                        "`{}`: an `mcp` tool's actions are the MCP tool names it enables, of a-z, 0-9, `.`, `_`, `-`",
                        a.chars().take(64).collect::<String>()
                    ),
                ));
            }
        }
        check_snapshot(&self.tools)
    }

    /// Enabled tool `name` and its arguments' type, if synced and enabled.
    pub fn enabled<'a>(&'a self, actions: &[String], name: &str) -> Option<(&'a McpTool, Record)> {
        if !actions.iter().any(|a| a == name) {
            return None;
        }
        let t = self.tools.iter().find(|t| t.name == name)?;
        let ty = arguments_type(&t.input_schema).ok()?;
        Some((t, ty))
    }
}

/// A snapshot is bounded, its names unique, and every schema usable.
pub fn check_snapshot(tools: &[McpTool]) -> Result<()> {
    if tools.len() > MAX_TOOLS {
        return Err(malformed("mcp tools", format!("at most {MAX_TOOLS} tools")));
    }
    let size = serde_json::to_vec(tools)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_SNAPSHOT {
        return Err(malformed(
            "mcp tools",
            format!("the tools' descriptions exceed {MAX_SNAPSHOT} bytes"),
        ));
    }
    let mut seen = BTreeSet::new();
    for t in tools {
        let name: String = t.name.chars().take(64).collect();
        if t.name.is_empty()
            || t.name.len() > 128
            || !t
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        {
            return Err(malformed(
                "mcp tool",
                format!("`{name}` is not a valid MCP tool name"),
            ));
        }
        if !seen.insert(t.name.to_ascii_lowercase()) {
            return Err(malformed(
                "mcp tool",
                format!("`{name}` is listed twice (letter case ignored)"),
            ));
        }
        arguments_type(&t.input_schema)
            .map_err(|e| malformed("mcp tool", format!("`{name}`: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_spec_names_one_upstream_of_one_kind() {
        let http: McpSpec =
            serde_json::from_value(json!({"upstream": "https://mcp.example/mcp"})).unwrap();
        assert_eq!(
            http.upstream,
            Upstream::Http("https://mcp.example/mcp".into())
        );
        assert_eq!(http.timeout_ms, 30_000);
        let stdio: McpSpec = serde_json::from_value(json!({"stdio": "github"})).unwrap();
        assert_eq!(stdio.upstream, Upstream::Stdio("github".into()));
        stdio.validate(&[]).unwrap();
        assert_eq!(serde_json::to_value(&stdio).unwrap()["stdio"], "github");
        for bad in [
            json!({}),
            json!({"upstream": "https://a.example/mcp", "stdio": "github"}),
            json!({"stdio": "github", "command": ["sh", "-c", "id"]}),
        ] {
            assert!(
                serde_json::from_value::<McpSpec>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        for name in ["GitHub", "../x", "", "a b", "sh -c id"] {
            let s: McpSpec = serde_json::from_value(json!({"stdio": name})).unwrap();
            assert!(s.validate(&[]).is_err(), "{name}");
        }
        let s: McpSpec = serde_json::from_value(json!({"stdio": "github",
            "inject": {"header": "authorization", "format": "Bearer {secret}"}}))
        .unwrap();
        assert!(s.validate(&[]).is_err());
        // A minted credential goes in Authorization: the key cannot too.
        let minted = |inject: &str| {
            serde_json::from_value::<McpSpec>(json!({"upstream": "https://mcp.example/mcp",
                "mint": {"audience": "https://mcp.example"},
                "inject": {"header": inject, "format": "{secret}"}}))
            .unwrap()
            .validate(&[])
        };
        assert!(minted("Authorization").is_err());
        assert!(minted("x-api-key").is_ok());
        let bad_aud: McpSpec =
            serde_json::from_value(json!({"upstream": "https://mcp.example/mcp",
            "mint": {"audience": "not a url"}}))
            .unwrap();
        assert!(bad_aud.validate(&[]).is_err());
    }
}
