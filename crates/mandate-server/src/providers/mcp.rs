//! The `mcp` provider: a credential good only at the broker's MCP gateway
//! for this tool (its audience is the gateway URL, `<issuer>/mcp/<tool>`,
//! the RFC 8707 resource an MCP client names). It is a bearer token, as MCP
//! clients send one (MCP 2025-11-25 authorization §Token Requirements); the
//! gateway judges every `tools/call` on its arguments and gives the MCP
//! server its own key (in a header, or in the environment of a stdio
//! server the broker starts), which never reaches the agent.

use mandate_core::mcp::Upstream;
use mandate_core::model::Tool;
use mandate_core::tooling::ProviderKind;
use serde_json::{Value, json};

use super::{BoxFuture, Credential, Issue, IssueFailure, Pop, Provider, Settings};
use crate::error::{ApiError, Code, err};
use crate::mcp_client::stdio::command_for;
use crate::state::AppState;

/// See the module documentation.
pub(super) struct Mcp;

impl Provider for Mcp {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Mcp
    }

    fn audience(
        &self,
        s: &AppState,
        _: &str,
        name: &str,
        given: Option<&str>,
    ) -> Result<String, String> {
        match given {
            Some(_) => Err(
                "an `mcp` tool's audience is its gateway URL, set by the broker; leave `audience` out"
                    .into(),
            ),
            None => Ok(super::mcp_url(s, name)),
        }
    }

    fn validate(&self, settings: &Settings<'_>) -> Result<(), String> {
        settings.only(self.kind())?;
        match settings.mcp {
            Some(m) => {
                m.validate(settings.actions).map_err(|e| e.to_string())?;
                if let Upstream::Stdio(name) = &m.upstream {
                    command_for(settings.stdio, settings.tenant, name)?;
                }
                Ok(())
            }
            None => Err(
                "an `mcp` tool needs `mcp`: its MCP server's URL (`upstream`) or the name of a stdio server the broker's operator defined (`stdio`), and, for an HTTP server that wants a key, how to send it (`inject`)"
                    .into(),
            ),
        }
    }

    fn holds_secret(&self) -> bool {
        true
    }

    fn check_secret(&self, tool: &Tool, _: &str) -> Result<(), String> {
        match tool.mcp.as_ref() {
            Some(m) if m.inject.is_some() || matches!(m.upstream, Upstream::Stdio(_)) => Ok(()),
            _ => Err(format!(
                "tool `{}` sends its MCP server no key (its registration has no `mcp.inject`); register it with one first",
                tool.name
            )),
        }
    }

    /// A tool that takes DPoP-bound credentials only (`mcp.dpop`) needs an
    /// exchange proved with DPoP: a credential bound otherwise (or not at
    /// all) would be refused at the gateway after spending approvals.
    fn check_pop(&self, tool: &Tool, pop: Option<Pop>) -> Result<(), ApiError> {
        if tool.mcp.as_ref().is_some_and(|m| m.dpop) && pop != Some(Pop::Dpop) {
            return Err(err(
                Code::InvalidRequest,
                format!(
                    "tool `{}` takes DPoP-bound credentials only: make the exchange with a DPoP proof (RFC 9449)",
                    tool.name
                ),
            ));
        }
        Ok(())
    }

    /// Bearer, as MCP client libraries send it, unless the tool asks for
    /// DPoP (`mcp.dpop`) and the exchange proved the key with DPoP.
    fn binds(&self, tool: &Tool, pop: Pop) -> bool {
        pop == Pop::Dpop && tool.mcp.as_ref().is_some_and(|m| m.dpop)
    }

    fn issue<'a>(
        &'a self,
        s: &'a AppState,
        x: Issue<'a>,
    ) -> BoxFuture<'a, Result<Credential, IssueFailure>> {
        Box::pin(async move {
            // RFC 9449 §5: a bound credential is a `DPoP` one.
            let token_type = if x.claims.cnf.is_some() {
                "DPoP"
            } else {
                "Bearer"
            };
            let url = super::mcp_url(s, &x.tool.name);
            super::broker_bearer(s, &x, ("mcp_url", url), token_type)
        })
    }

    fn describe(&self, s: &AppState, tool: &Tool) -> Value {
        let synced: Vec<&str> = tool
            .mcp
            .iter()
            .flat_map(|m| m.tools.iter().map(|t| t.name.as_str()))
            .collect();
        json!({"mcp_url": super::mcp_url(s, &tool.name), "mcp_tools": synced})
    }
}
