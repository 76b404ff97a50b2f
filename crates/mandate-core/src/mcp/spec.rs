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

/// An MCP server behind the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpSpec {
    /// Its streamable-HTTP endpoint (`https://mcp.internal/mcp`).
    pub upstream: String,
    /// The static key the broker sends it (the tool's secret), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inject: Option<InjectSpec>,
    /// Longest wait for its answer (ms).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Arguments no policy can read: refused (default) or passed.
    #[serde(default)]
    pub extra_args: Extra,
    /// Its tools as last synced (what `tools/list` answers from, and what
    /// arguments are checked against). Empty until `mandate tool sync`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<McpTool>,
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
        crate::tooling::check_upstream("mcp upstream", &self.upstream)?;
        if let Some(i) = &self.inject {
            i.validate("mcp inject")?;
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
