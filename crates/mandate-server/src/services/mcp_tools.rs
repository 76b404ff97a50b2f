//! `mcp` tools and the tenant's schema: each enabled MCP tool is a Cedar
//! action typed from its pinned `inputSchema`, so policies are validated
//! against the tools as synced, and a tool change that would make a stored
//! policy invalid is refused (naming the policies). `mandate tool sync`
//! reads the tools from the MCP server and pins them.

use mandate_core::audit::EventType;
use mandate_core::mcp::McpTool;
use mandate_core::model::Tool;
use mandate_core::policy::{CallAction, StoredPolicy, TenantSchema};
use mandate_core::tooling::ProviderKind;
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::{ApiError, Code, err};
use crate::origin::Origin;
use crate::state::AppState;
use mandate_store::Mutation;

/// The MCP call actions of a tool: every synced MCP tool it could enable
/// (so policies on a tool's arguments can be in place before it is enabled).
pub fn call_actions(t: &Tool) -> Vec<CallAction> {
    let Some(m) = &t.mcp else { return Vec::new() };
    m.tools
        .iter()
        .filter(|mt| mandate_core::mcp::enableable(&mt.name))
        .filter_map(|mt| {
            let arguments = mandate_core::mcp::schema::arguments_type(&mt.input_schema).ok()?;
            Some(CallAction {
                id: mandate_core::mcp::call_action(&t.name, &mt.name),
                arguments,
            })
        })
        .collect()
}

/// `tenant`'s schema, with `candidate` in place of its namesake.
pub fn tenant_schema(
    s: &AppState,
    tenant: &str,
    candidate: Option<&Tool>,
) -> Result<TenantSchema, ApiError> {
    let mut calls = Vec::new();
    {
        let reg = s.reg();
        let mut tools: Vec<&Tool> = reg
            .tools
            .values()
            .filter(|t| t.tenant == tenant && t.provider == ProviderKind::Mcp)
            .filter(|t| candidate.is_none_or(|c| c.name != t.name))
            .map(|t| &**t)
            .collect();
        tools.extend(candidate.filter(|c| c.provider == ProviderKind::Mcp));
        tools.sort_by(|a, b| a.name.cmp(&b.name));
        for t in tools {
            calls.extend(call_actions(t));
        }
    }
    s.engine
        .tenant_schema(&calls)
        .map_err(|e| err(Code::InvalidRequest, e.to_string()))
}

/// Refuses a tool change under which a stored policy of its tenant would
/// no longer validate.
pub fn keeps_policies_valid(s: &AppState, t: &Tool) -> Result<(), ApiError> {
    let schema = tenant_schema(s, &t.tenant, Some(t))?;
    let stored: Vec<StoredPolicy> = s
        .reg()
        .policy_sets
        .iter()
        .filter(|((tenant, _), _)| *tenant == t.tenant)
        .flat_map(|(_, set)| {
            set.policies.iter().map(|p| StoredPolicy {
                id: p.id.clone(),
                text: p.text.clone(),
            })
        })
        .collect();
    let broken = s.engine.invalid_under(&schema, &stored);
    if broken.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = broken
        .iter()
        .take(8)
        .map(|(id, why)| format!("`{id}` ({})", why.chars().take(160).collect::<String>()))
        .collect();
    Err(err(
        Code::Conflict,
        format!(
            "tool `{}` would change the tools its policies name, and these policies would no longer be valid: {}; change those policies first",
            t.name,
            list.join("; ")
        ),
    ))
}

/// What a sync found.
#[derive(Debug, Serialize)]
pub struct Synced {
    /// The tool as now registered.
    pub tool: Tool,
    /// Each MCP tool the server offers.
    pub tools: Vec<SyncedTool>,
}

/// One MCP tool the server offers.
#[derive(Debug, Serialize)]
pub struct SyncedTool {
    /// Its name.
    pub name: String,
    /// Enabled (one of the registration's actions).
    pub enabled: bool,
    /// Whether Mandate can enable it (its name is also an action name).
    pub enableable: bool,
    /// Arguments policies can read.
    pub modelled: Vec<String>,
    /// Arguments no policy can read (refused unless `extra_args: pass`).
    pub unmodelled: Vec<String>,
}

/// Most pages of `tools/list` read.
const MAX_PAGES: usize = 16;

/// Reads the tools of `name`'s MCP server (`tools/list`, every page) and
/// pins them in its registration; an enabled tool the server no longer
/// offers can no longer be called. The server is read before the
/// registrations lock is taken (a slow server holds up nobody's policy
/// changes); the tool must not have changed meanwhile. A new snapshot that
/// takes an argument away from an enabled tool, or changes its type, is
/// refused unless `accept_changes` (a policy reading it behind `has` would
/// silently stop applying).
pub async fn sync(
    s: &AppState,
    origin: &Origin,
    (tenant, name): (&str, &str),
    accept_changes: bool,
) -> Result<Synced, ApiError> {
    let before = mcp_tool(s, tenant, name)?;
    crate::mcp_client::forget_tool(s, tenant, name);
    let tools = list_all(s, &before).await;
    // The broker's own session (or process) served the sync only.
    crate::mcp_client::end_own(s, tenant, name);
    let tools = tools?;
    let _one_at_a_time = s.registrations.lock().await;
    if mcp_tool(s, tenant, name)? != before {
        return Err(err(
            Code::Conflict,
            format!("tool `{name}` changed while its MCP server was read; sync again"),
        ));
    }
    let mut after = before.clone();
    if let Some(m) = after.mcp.as_mut() {
        m.tools = tools;
        m.validate(&after.actions).map_err(|e| {
            err(
                Code::BadGateway,
                format!("the MCP server's tools cannot be pinned: {e}"),
            )
        })?;
    }
    key_not_in_snapshot(s, &after)?;
    let changed = narrowed(&before, &after);
    if !changed.is_empty() && !accept_changes {
        return Err(err(
            Code::Conflict,
            format!(
                "the MCP server changed arguments of enabled tools: {}; policies reading them would stop applying. Check the tenant's policies, then sync with `accept_changes` (`mandate tool sync --accept-changes`)",
                changed.join("; ")
            ),
        ));
    }
    keeps_policies_valid(s, &after)?;
    let report = report(&after);
    let mut ev = origin.admin_event(EventType::ToolSync, Some(tenant), s.now_ms());
    ev.tool = Some(name.to_owned());
    ev.details = json!({"tools": report.iter().map(|t| json!({"name": t.name, "enabled": t.enabled})).collect::<Vec<_>>(),
        "changed": changed});
    super::registration::commit_created(s, Mutation::ReplaceTool(after.clone()), ev).await?;
    Ok(Synced {
        tool: after,
        tools: report,
    })
}

fn mcp_tool(s: &AppState, tenant: &str, name: &str) -> Result<Tool, ApiError> {
    let t = super::registration::registered_tool(s, tenant, name)?;
    if t.provider != ProviderKind::Mcp {
        return Err(err(
            Code::InvalidRequest,
            format!(
                "tool `{name}` is a `{}` tool; only `mcp` tools are synced",
                t.provider
            ),
        ));
    }
    Ok(t)
}

/// An MCP server whose tool descriptions hold its own key would hand it to
/// every agent that lists them.
fn key_not_in_snapshot(s: &AppState, t: &Tool) -> Result<(), ApiError> {
    let bytes = serde_json::to_vec(&t.mcp.as_ref().map(|m| &m.tools)).unwrap_or_default();
    if crate::mcp_client::scrubber(s, t).is_some_and(|mut sc| sc.scrub(&bytes).is_some()) {
        return Err(err(
            Code::BadGateway,
            "the MCP server's tool descriptions contain its own key; they were not pinned",
        ));
    }
    Ok(())
}

/// Arguments of enabled tools that the new snapshot takes away or retypes.
fn narrowed(before: &Tool, after: &Tool) -> Vec<String> {
    let types = |t: &Tool| -> Vec<(String, mandate_core::mcp::schema::Record)> {
        t.mcp
            .iter()
            .flat_map(|m| m.tools.iter())
            .filter(|mt| t.actions.contains(&mt.name))
            .filter_map(|mt| {
                let ty = mandate_core::mcp::schema::arguments_type(&mt.input_schema).ok()?;
                Some((mt.name.clone(), ty))
            })
            .collect()
    };
    let new = types(after);
    let mut out = Vec::new();
    for (name, old) in types(before) {
        match new.iter().find(|(n, _)| *n == name) {
            None => out.push(format!("`{name}` is gone")),
            Some((_, ty)) => out.extend(
                mandate_core::mcp::schema::narrowed(&old, ty)
                    .into_iter()
                    .map(|p| format!("`{name}` argument `{p}`")),
            ),
        }
    }
    out
}

async fn list_all(s: &AppState, tool: &Tool) -> Result<Vec<McpTool>, ApiError> {
    let mut out: Vec<McpTool> = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let params = match &cursor {
            Some(c) => json!({"cursor": c}),
            None => json!({}),
        };
        let minted = crate::mcp_client::mint(s, tool, None, "tools/list")
            .map_err(|e| err(Code::BadGateway, format!("`tools/list` failed: {e}")))?;
        let list = ("tools/list", params);
        let returned = crate::mcp_client::request(s, tool, None, list, minted.as_ref())
            .await
            .map_err(|e| err(Code::BadGateway, format!("`tools/list` failed: {e}")))?;
        if returned.reflected {
            return Err(err(
                Code::BadGateway,
                "the MCP server's tool descriptions contain its own key; they were not pinned",
            ));
        }
        let page = returned.result;
        let tools = page.get("tools").and_then(Value::as_array).ok_or_else(|| {
            err(
                Code::BadGateway,
                "the MCP server's `tools/list` answer has no `tools`",
            )
        })?;
        for t in tools {
            let t: McpTool = serde_json::from_value(t.clone()).map_err(|e| {
                err(
                    Code::BadGateway,
                    format!("the MCP server lists a tool Mandate cannot read: {e}"),
                )
            })?;
            out.push(t);
        }
        if out.len() > mandate_core::mcp::spec::MAX_TOOLS {
            break;
        }
        cursor = page
            .get("nextCursor")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if cursor.is_none() {
            return Ok(out);
        }
    }
    Err(err(
        Code::BadGateway,
        format!(
            "the MCP server lists more than {} tools or {MAX_PAGES} pages",
            mandate_core::mcp::spec::MAX_TOOLS
        ),
    ))
}

fn report(t: &Tool) -> Vec<SyncedTool> {
    let Some(m) = &t.mcp else { return Vec::new() };
    m.tools
        .iter()
        .map(|mt| {
            let ty =
                mandate_core::mcp::schema::arguments_type(&mt.input_schema).unwrap_or_default();
            SyncedTool {
                name: mt.name.clone(),
                enabled: t.actions.contains(&mt.name),
                enableable: mandate_core::mcp::enableable(&mt.name),
                modelled: ty.attrs.keys().cloned().collect(),
                unmodelled: ty.unmodelled,
            }
        })
        .collect()
}
