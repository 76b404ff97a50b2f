//! What the store keeps beyond the domain records
//! ([`mandate_core::model`]): the mutations that change them, the snapshot
//! read at start, and the sealed forms of secrets and keys.

use serde::{Deserialize, Serialize};

use mandate_core::model::*;
use mandate_core::tooling::{EnvSpec, PostgresSpec, ProxySpec};

/// What a tool's `config` column holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ToolConfig {
    /// See [`Tool::proxy`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySpec>,
    /// See [`Tool::postgres`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSpec>,
    /// See [`Tool::mcp`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<mandate_core::mcp::McpSpec>,
    /// See [`Tool::env`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvSpec>,
}

/// A tool's upstream secret (the `proxy` provider's API key, the `postgres`
/// provider's admin connection string), sealed under the master key.
#[derive(Clone, PartialEq, Eq)]
pub struct ToolSecret {
    /// Tenant.
    pub tenant: String,
    /// Tool.
    pub tool: String,
    /// ChaCha20-Poly1305 sealed secret (AAD: `tool-secret:<tenant>/<tool>`).
    pub sealed: Vec<u8>,
    /// When it was set (ms).
    pub updated_ms: u64,
}

impl std::fmt::Debug for ToolSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolSecret")
            .field("tenant", &self.tenant)
            .field("tool", &self.tool)
            .field("sealed", &"[sealed]")
            .finish()
    }
}

/// A signing key, sealed under the master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Key id (RFC 7638 thumbprint).
    pub kid: String,
    /// `EdDSA` or `ES256`.
    pub alg: String,
    /// `mandate` or `jwt`.
    pub purpose: String,
    /// ChaCha20-Poly1305 sealed private key.
    pub sealed: Vec<u8>,
    /// Creation time (ms).
    pub created_ms: u64,
}

/// A change to the broker's state.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Create a tenant.
    CreateTenant(Tenant),
    /// Create a principal.
    CreatePrincipal(Principal),
    /// Create an agent.
    CreateAgent(Agent),
    /// Create a tool.
    CreateTool(Tool),
    /// Create a grant.
    CreateGrant(Grant),
    /// Create or replace a named policy set.
    PutPolicySet(PolicySetRecord),
    /// Remove a named policy set.
    DeletePolicySet {
        /// Tenant.
        tenant: String,
        /// Set name.
        name: String,
    },
    /// Record a run.
    StartRun(Run),
    /// Mark a run ended and revoke it, in one step.
    EndRun {
        /// Run id.
        id: String,
        /// End (ms).
        ended_ms: u64,
        /// The revocation of `run:<id>`.
        revocation: Revocation,
    },
    /// Add a revocation.
    Revoke(Revocation),
    /// Store a sealed key.
    PutKey(KeyRecord),
    /// Set (or replace) a tool's sealed upstream secret.
    PutToolSecret(ToolSecret),
    /// Record a database role before it is created.
    CreateLease(Lease),
    /// Store a join token.
    CreateJoinToken(JoinToken),
    /// Consume a join token (fails if it was used already).
    UseJoinToken {
        /// Token id.
        id: String,
        /// When (ms).
        used_ms: u64,
    },
    /// Mark a lease's role dropped.
    DropLease {
        /// Lease id.
        id: String,
        /// When (ms).
        dropped_ms: u64,
    },
    /// Replace an agent's registration (fails if there is none).
    ReplaceAgent(Agent),
    /// Replace a tool's registration (fails if there is none).
    ReplaceTool(Tool),
    /// Store an admin credential.
    PutAdminToken(AdminToken),
    /// Remove an admin credential (fails if there is none with this id).
    DeleteAdminToken {
        /// Its id.
        id: String,
    },
    /// Several mutations, all or none.
    Batch(Vec<Mutation>),
    /// Queue a webhook payload (delivered at least once, in order, also
    /// after a restart).
    Enqueue {
        /// The JSON body.
        body: String,
    },
    /// Remove a delivered (or abandoned) webhook payload.
    Dequeue {
        /// Its id.
        id: i64,
    },
    /// Store an approver credential.
    PutApproverToken(ApproverToken),
    /// Record an approval request.
    CreateApproval(Approval),
    /// Decide a pending, unexpired approval (fails if it is not).
    DecideApproval {
        /// Id.
        id: String,
        /// `approved` or `denied`.
        status: mandate_core::approval::ApprovalStatus,
        /// `principal:<id>` of the approver.
        by: String,
        /// Comment.
        comment: Option<String>,
        /// When (ms).
        decided_ms: u64,
        /// Now (seconds): an expired approval cannot be decided.
        now: u64,
    },
    /// Spend an approved approval on the credential it allowed (fails if it
    /// is not approved or already used).
    UseApproval {
        /// Id.
        id: String,
    },
    /// Suspend a run: its exchanges wait for an admin.
    SuspendRun {
        /// Run id.
        id: String,
        /// When (ms).
        ms: u64,
        /// Why.
        reason: String,
    },
    /// Resume a suspended run.
    ResumeRun {
        /// Run id.
        id: String,
    },
    /// Count one use of each attenuation block (block id, limit); fails,
    /// changing nothing, if any block has reached its limit.
    CountUses {
        /// (block id, use limit).
        blocks: Vec<(String, u64)>,
        /// When the counts can be forgotten (the mandate's expiry).
        until: u64,
    },
    /// Fails with [`crate::StoreError::Revoked`], changing nothing, if a
    /// token issued at `issued_at` with these revocation ids is refused by
    /// the revocations committed so far (by this broker or any other on the
    /// same store): put first in the entry that issues something, so a
    /// revocation committed a moment earlier elsewhere wins.
    Unrevoked {
        /// The issued token's revocation ids.
        keys: Vec<String>,
        /// When the token it descends from was issued (seconds).
        issued_at: u64,
        /// Now (seconds): revocations whose time passed are ignored.
        now: u64,
    },
    /// Fails with [`crate::StoreError::Limit`], changing nothing, if run
    /// `parent` has `max` child runs already: the delegation limit,
    /// counted in the transaction that starts the child (delegations at
    /// once, at this broker or another, cannot pass it together).
    FewerChildren {
        /// The parent run's id.
        parent: String,
        /// The most children a run may have.
        max: u64,
    },
    /// Records one-time uses (proof ids, single-use credentials); fails
    /// with [`crate::StoreError::Replayed`], changing nothing, if one was
    /// recorded before and has not expired: the replay check every broker
    /// on the store shares. A use's `until` must be a function of what is
    /// used (a proof's `iat` plus the window, a credential's `exp`): the
    /// SQLite store finds a replay by `(until, key)`, which keeps its
    /// table in expiry order (see docs/decisions.md).
    FirstUse {
        /// What is used.
        uses: Vec<mandate_core::dpop::Spent>,
        /// Now (seconds): expired records no longer refuse.
        now: u64,
    },
    /// Keeps every one-time use at least `secs` past its `until` before
    /// it is cleared: the longest window (proof age plus skew) of any
    /// broker on the store, which only grows. A use's `until` comes from
    /// the broker that recorded it; brokers with a longer window, or a
    /// clock behind, judge it fresh for longer, and must still find it.
    /// A store only one process uses may ignore the seconds (one window
    /// at a time, a change of it at a restart is covered by the boot's
    /// nonces). It also starts [`crate::USES_CLEARED`], which `FirstUse`
    /// keeps from then on.
    KeepUses {
        /// Seconds.
        secs: u64,
    },
    /// Set a metadata value.
    PutMeta {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
}

/// What a committed mutation changes that other brokers on the same
/// store must hear of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// Nothing any broker keeps in memory.
    None,
    /// A revocation: read from the revocation log, in order.
    Revocation,
    /// Registration, policy, keys, credentials or suspensions: the
    /// registry is read again (the store's generation moves).
    Registry,
}

impl Mutation {
    /// What this mutation changes, for the brokers sharing the store.
    pub fn change(&self) -> Change {
        use Mutation as M;
        match self {
            M::Batch(all) => all.iter().map(M::change).max().unwrap_or(Change::None),
            M::Revoke(_) | M::EndRun { .. } => Change::Revocation,
            M::CreateTenant(_)
            | M::CreatePrincipal(_)
            | M::CreateAgent(_)
            | M::CreateTool(_)
            | M::CreateGrant(_)
            | M::PutPolicySet(_)
            | M::DeletePolicySet { .. }
            | M::ReplaceAgent(_)
            | M::ReplaceTool(_)
            | M::PutKey(_)
            | M::PutToolSecret(_)
            | M::PutAdminToken(_)
            | M::DeleteAdminToken { .. }
            | M::PutApproverToken(_)
            | M::SuspendRun { .. }
            | M::ResumeRun { .. } => Change::Registry,
            M::StartRun(_)
            | M::CreateLease(_)
            | M::CreateJoinToken(_)
            | M::UseJoinToken { .. }
            | M::DropLease { .. }
            | M::Enqueue { .. }
            | M::Dequeue { .. }
            | M::CreateApproval(_)
            | M::DecideApproval { .. }
            | M::UseApproval { .. }
            | M::CountUses { .. }
            | M::PutMeta { .. }
            | M::KeepUses { .. }
            | M::Unrevoked { .. }
            | M::FewerChildren { .. }
            | M::FirstUse { .. } => Change::None,
        }
    }

    /// Several mutations as one: none, the one, or a batch.
    pub fn all(mut v: Vec<Mutation>) -> Option<Mutation> {
        match v.len() {
            0 | 1 => v.pop(),
            _ => Some(Mutation::Batch(v)),
        }
    }
}

/// Everything the broker keeps in memory.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Tenants.
    pub tenants: Vec<Tenant>,
    /// Principals.
    pub principals: Vec<Principal>,
    /// Agents.
    pub agents: Vec<Agent>,
    /// Tools.
    pub tools: Vec<Tool>,
    /// Grants.
    pub grants: Vec<Grant>,
    /// Policy sets.
    pub policy_sets: Vec<PolicySetRecord>,
    /// Revocations still in force.
    pub revocations: Vec<Revocation>,
    /// Keys.
    pub keys: Vec<KeyRecord>,
    /// Sealed tool secrets.
    pub tool_secrets: Vec<ToolSecret>,
    /// Admin credentials.
    pub admin_tokens: Vec<AdminToken>,
    /// Approver credentials.
    pub approver_tokens: Vec<ApproverToken>,
    /// Suspended runs (not ended): (run id, reason).
    pub suspended_runs: Vec<(String, String)>,
    /// Metadata.
    pub meta: Vec<(String, String)>,
    /// Last audit event (seq, hash).
    pub audit_head: (u64, String),
    /// The registry's generation in the store: moved by every commit whose
    /// [`Mutation::change`] is [`Change::Registry`].
    pub generation: u64,
}
