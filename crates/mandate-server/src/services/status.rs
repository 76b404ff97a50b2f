//! What the broker is and holds, for an operator (`GET /v1/status`,
//! `mandate status` and `mandate doctor`): version, issuer, time, and per
//! tenant what is registered and what is missing before the first
//! exchange can succeed (no policy; a tool whose provider needs a secret
//! it does not have).

use serde::Serialize;

use crate::state::AppState;

/// The broker as an operator sees it.
#[derive(Debug, Serialize)]
pub struct Status {
    /// This broker's version.
    pub version: &'static str,
    /// Its issuer (the `iss` of what it signs).
    pub issuer: String,
    /// Its time (Unix seconds), for clock-skew checks.
    pub time: u64,
    /// Revocations so far (the feed's head).
    pub revocation_seq: u64,
    /// When the kill switch was last used (Unix seconds; 0: never):
    /// everything issued until then is refused.
    pub kill_switch_at: u64,
    /// Runs suspended now.
    pub suspended_runs: usize,
    /// Each tenant.
    pub tenants: Vec<TenantStatus>,
}

/// One tenant's registrations, and what blocks exchanges.
#[derive(Debug, Serialize)]
pub struct TenantStatus {
    /// Its name.
    pub name: String,
    /// Principals registered.
    pub principals: usize,
    /// Agents registered.
    pub agents: usize,
    /// Tools registered.
    pub tools: usize,
    /// Grants made.
    pub grants: usize,
    /// Policy sets loaded (with none, every exchange is refused).
    pub policy_sets: usize,
    /// Tools whose provider needs a secret (`mandate tool set-secret`)
    /// that has none yet: every exchange for them is refused.
    pub tools_without_secret: Vec<String>,
}

/// The broker's status now.
pub fn status(s: &AppState) -> Status {
    let reg = s.reg();
    let count = |t: &str, keys: &mut dyn Iterator<Item = &String>| keys.filter(|k| *k == t).count();
    let tenants = reg
        .tenants
        .keys()
        .map(|t| TenantStatus {
            name: t.clone(),
            principals: count(t, &mut reg.principals.keys().map(|k| &k.0)),
            agents: count(t, &mut reg.agents.keys().map(|k| &k.0)),
            tools: count(t, &mut reg.tools.keys().map(|k| &k.0)),
            grants: count(t, &mut reg.grants.values().map(|g| &g.tenant)),
            policy_sets: count(t, &mut reg.policy_sets.keys().map(|k| &k.0)),
            tools_without_secret: reg
                .tools
                .values()
                .filter(|tool| {
                    &tool.tenant == t
                        && crate::providers::of(tool.provider).holds_secret()
                        && s.tool_secret(&tool.tenant, &tool.name).is_none()
                })
                .map(|tool| tool.name.clone())
                .collect(),
        })
        .collect();
    Status {
        version: env!("CARGO_PKG_VERSION"),
        issuer: s.config.issuer.clone(),
        time: s.now_secs(),
        revocation_seq: reg.revocation_seq,
        kill_switch_at: reg.revoked.revoked_before(),
        suspended_runs: reg.suspended.len(),
        tenants,
    }
}
