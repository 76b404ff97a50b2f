//! The broker's domain records: tenants, principals, agents, tools, grants,
//! policies, runs, approvals, leases, revocations and credentials of its own
//! (admin, approver, join). Plain data, serialized as JSON by the API and
//! persisted by a `mandate-store` backend (which owns only how they are
//! stored: mutations, snapshots, sealed secrets and keys).

use serde::{Deserialize, Serialize};

use crate::policy::StoredPolicy;
use crate::tooling::{EnvSpec, PostgresSpec, ProxySpec};

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    /// Name (slug).
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Creation time (ms).
    pub created_ms: u64,
}

/// A human or upstream service on whose behalf agents act.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// Tenant.
    pub tenant: String,
    /// Id (often an e-mail address).
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub display_name: String,
    /// Groups (approval policies name them: `@approval("group:finance")`).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Creation time (ms).
    pub created_ms: u64,
}

/// A credential with which a principal decides approval requests (and does
/// nothing else). Only the SHA-256 of the token is stored.
#[derive(Clone, PartialEq, Eq)]
pub struct ApproverToken {
    /// Public id.
    pub id: String,
    /// SHA-256 of the token.
    pub hash: Vec<u8>,
    /// Tenant.
    pub tenant: String,
    /// The principal it authenticates.
    pub principal: String,
    /// Creation time (ms).
    pub created_ms: u64,
    /// Expiry (seconds).
    pub expires_at: u64,
}

impl std::fmt::Debug for ApproverToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApproverToken")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("principal", &self.principal)
            .finish()
    }
}

/// A request for a human's approval of one exchange (CIBA-like).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Id (`apr_...`).
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// The run that asked.
    pub run: String,
    /// Its agent.
    pub agent: String,
    /// The principal the run acts for, if any.
    pub principal: Option<String>,
    /// Tool.
    pub tool: String,
    /// Actions asked for.
    pub actions: Vec<String>,
    /// The request details the agent declared (RFC 9396 `authorization_details`).
    pub details: serde_json::Value,
    /// SHA-256 (base64url) of run, tool, actions and details: what an approval binds.
    pub request_digest: String,
    /// Who may decide: `principal:<id>` or `group:<name>`.
    pub approvers: Vec<String>,
    /// The policies that asked for approval.
    pub policies: Vec<String>,
    /// Where it is in its life.
    pub status: crate::approval::ApprovalStatus,
    /// When asked (ms).
    pub requested_ms: u64,
    /// Until when it can be decided, and then used (seconds).
    pub expires_at: u64,
    /// Who decided.
    pub decided_by: Option<String>,
    /// When (ms).
    pub decided_ms: Option<u64>,
    /// Their comment.
    pub comment: Option<String>,
}

impl crate::approval::ApprovalView for Approval {
    fn id(&self) -> &str {
        &self.id
    }
    fn policies(&self) -> &[String] {
        &self.policies
    }
    fn status(&self) -> crate::approval::ApprovalStatus {
        self.status
    }
}

/// A registered agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    /// Tenant.
    pub tenant: String,
    /// Name (slug).
    pub name: String,
    /// Owner (a person or team accountable for it); mandatory.
    pub owner: String,
    /// What it is for.
    #[serde(default)]
    pub purpose: String,
    /// The most it may ever be granted (`tool:action` patterns).
    pub envelope: Vec<String>,
    /// SPIFFE ID.
    pub spiffe_id: String,
    /// Creation time (ms).
    pub created_ms: u64,
}

/// A registered downstream system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tool {
    /// Tenant.
    pub tenant: String,
    /// Name (slug).
    pub name: String,
    /// Audience URI: the credential's `aud`, and what `resource` names.
    pub audience: String,
    /// Actions the tool understands.
    pub actions: Vec<String>,
    /// Data labels (`pii`, `external_send`, `money`, ...).
    #[serde(default)]
    pub labels: Vec<String>,
    /// `low`, `medium`, `high` or `critical`.
    pub risk: String,
    /// Longest credential lifetime (seconds).
    pub max_ttl_secs: u64,
    /// Credential provider.
    pub provider: crate::tooling::ProviderKind,
    /// JWS algorithm for credentials.
    pub alg: crate::jose::Alg,
    /// Creation time (ms).
    pub created_ms: u64,
    /// The `proxy` provider's upstream, routes and key injection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySpec>,
    /// The `postgres` provider's database and role mapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSpec>,
    /// The `mcp` provider's MCP server and its pinned tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<crate::mcp::McpSpec>,
    /// Variables `mandate exec` sets for its child.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvSpec>,
}

/// A dynamic database role the broker created and must drop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Id: the credential's `jti`.
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// Tool.
    pub tool: String,
    /// Run.
    pub run: String,
    /// Agent.
    pub agent: String,
    /// Principal, when on someone's behalf.
    pub principal: Option<String>,
    /// Grant, when on someone's behalf.
    pub grant: Option<String>,
    /// The database role name.
    pub role: String,
    /// Expiry (seconds).
    pub expires_at: u64,
    /// Creation (ms).
    pub created_ms: u64,
    /// When the role was dropped (ms).
    pub dropped_ms: Option<u64>,
    /// The revocation ids of the credential the lease was issued for
    /// (`AccessClaims::revocation_keys`: with every ancestor run and agent
    /// of a delegated run). Empty for leases stored before schema v6.
    #[serde(default)]
    pub revoked_by: Vec<String>,
}

impl Lease {
    /// Every id whose revocation revokes this lease: the stored ids of its
    /// credential, and (for leases stored before they were kept, and so
    /// that a lease never hangs on less) its own credential, tenant, agent,
    /// run, principal and grant.
    pub fn revocation_keys(&self) -> Vec<String> {
        let mut v = crate::revocation::keys(
            &crate::revocation::Lineage {
                tenant: &self.tenant,
                agent: &self.agent,
                run: &self.run,
                principal: self.principal.as_deref(),
                grant: self.grant.as_deref(),
                credential: Some(&self.id),
                blocks: &[],
            },
            &[],
        );
        for k in &self.revoked_by {
            if !v.contains(k) {
                v.push(k.clone());
            }
        }
        v
    }
}

/// A principal's delegation to an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Id (`grt_...`).
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// Who delegates.
    pub principal: String,
    /// To which agent.
    pub agent: String,
    /// What (`tool:action` patterns).
    pub capabilities: Vec<String>,
    /// For which task.
    pub task: String,
    /// Until when (seconds).
    pub expires_at: u64,
    /// Creation time (ms).
    pub created_ms: u64,
}

/// A named set of Cedar policies of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySetRecord {
    /// Tenant.
    pub tenant: String,
    /// Set name (a file's name, usually).
    pub name: String,
    /// The policies, with ids `<name>/<id>`.
    pub policies: Vec<PolicyText>,
    /// Creation time (ms).
    pub created_ms: u64,
}

/// One stored policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyText {
    /// Id.
    pub id: String,
    /// Cedar text.
    pub text: String,
}

impl From<StoredPolicy> for PolicyText {
    fn from(p: StoredPolicy) -> Self {
        PolicyText {
            id: p.id,
            text: p.text,
        }
    }
}

impl From<&PolicyText> for StoredPolicy {
    fn from(p: &PolicyText) -> Self {
        StoredPolicy {
            id: p.id.clone(),
            text: p.text.clone(),
        }
    }
}

/// One execution of an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// Id (`run_...`).
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// Agent.
    pub agent: String,
    /// Principal, when on someone's behalf.
    pub principal: Option<String>,
    /// Grant, when on someone's behalf.
    pub grant: Option<String>,
    /// Task.
    pub task: String,
    /// Capabilities of its mandate.
    pub capabilities: Vec<String>,
    /// Thumbprint of the run key.
    pub jkt: String,
    /// Start (ms).
    pub started_ms: u64,
    /// Mandate expiry (seconds).
    pub expires_at: u64,
    /// End (ms), when ended explicitly.
    pub ended_ms: Option<u64>,
    /// The run it was delegated from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

impl Run {
    /// Every id whose revocation revokes the run, given its ancestors
    /// (parent first): the same ids its mandate carries.
    pub fn revocation_keys(&self, ancestors: &[crate::revocation::Ancestor]) -> Vec<String> {
        crate::revocation::keys(
            &crate::revocation::Lineage {
                tenant: &self.tenant,
                agent: &self.agent,
                run: &self.id,
                principal: self.principal.as_deref(),
                grant: self.grant.as_deref(),
                credential: None,
                blocks: &[],
            },
            ancestors,
        )
    }

    /// Where the run stands at `now` (seconds), given why it is refused
    /// (a revoked id or the kill switch), if it is, and whether it is
    /// suspended. An end or a revocation outranks expiry.
    pub fn status(&self, refused: Option<&str>, suspended: bool, now: u64) -> RunStatus {
        match (self.ended_ms, refused) {
            (Some(_), _) => RunStatus::Ended,
            (None, Some(why)) => RunStatus::Revoked(why.to_owned()),
            (None, None) if self.expires_at <= now => RunStatus::Expired,
            (None, None) if suspended => RunStatus::Suspended,
            (None, None) => RunStatus::Active,
        }
    }
}

/// Where a run stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStatus {
    /// Its mandate works.
    Active,
    /// Its exchanges wait until it is resumed or revoked.
    Suspended,
    /// Its mandate expired.
    Expired,
    /// It was ended (by its wrapper or an admin).
    Ended,
    /// It is refused: by this revoked id (or the kill switch).
    Revoked(String),
}

impl RunStatus {
    /// As shown: `active`, `suspended`, `expired`, `ended`, `revoked`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Expired => "expired",
            Self::Ended => "ended",
            Self::Revoked(_) => "revoked",
        }
    }
}

/// A revocation: an id that is refused from now on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Sequence number in the revocation log (0 before commit).
    pub seq: u64,
    /// The revoked id: `cred:<jti>`, `run:<id>`, `agent:<t>/<name>`,
    /// `principal:<t>/<id>`, `grant:<id>` or `tenant:<t>`.
    pub key: String,
    /// Why.
    pub reason: String,
    /// When (ms).
    pub time_ms: u64,
    /// Until when it matters (seconds; 0 = forever). A credential's
    /// revocation can be forgotten after the credential expires.
    pub until: u64,
    /// The tenant whose ids it revokes; `None` for the kill switch (every
    /// tenant). A tenant's feed credential reads only its own (and the kill
    /// switch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// An admin credential, stored as the SHA-256 of the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminToken {
    /// Public id (the token's prefix).
    pub id: String,
    /// SHA-256 of the whole token.
    pub hash: Vec<u8>,
    /// Creation time (ms).
    pub created_ms: u64,
    /// The tenant it is limited to (feed credentials; `None`: every tenant).
    pub tenant: Option<String>,
    /// Expiry (seconds; 0 = never: admin credentials, and feed credentials
    /// made before expiries existed).
    pub expires_at: u64,
}

/// A one-time, short-lived credential that starts one run of one agent
/// (what `mandate exec` uses on an agent host instead of the admin
/// credential). Only the SHA-256 of the token is stored.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Public id (part of the token).
    pub id: String,
    /// SHA-256 of the whole token.
    pub hash: Vec<u8>,
    /// Tenant.
    pub tenant: String,
    /// The agent it starts a run of.
    pub agent: String,
    /// The principal the run must act for, if any.
    pub principal: Option<String>,
    /// The grant the run must use, if any.
    pub grant: Option<String>,
    /// Expiry (seconds).
    pub expires_at: u64,
    /// Creation (ms).
    pub created_ms: u64,
    /// When it was used (ms).
    pub used_ms: Option<u64>,
}

impl JoinToken {
    /// Every id whose revocation refuses it: itself (`cred:<id>`), its
    /// tenant, agent, principal and grant (and the kill switch, by its
    /// creation time).
    pub fn revocation_keys(&self) -> Vec<String> {
        let mut keys = vec![
            format!("cred:{}", self.id),
            format!("tenant:{}", self.tenant),
            format!("agent:{}/{}", self.tenant, self.agent),
        ];
        keys.extend(
            self.principal
                .iter()
                .map(|p| format!("principal:{}/{p}", self.tenant)),
        );
        keys.extend(self.grant.iter().map(|g| format!("grant:{g}")));
        keys
    }
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("agent", &self.agent)
            .field("expires_at", &self.expires_at)
            .field("used_ms", &self.used_ms)
            .finish_non_exhaustive()
    }
}
