//! The in-memory view of the broker's state: loaded from the store at start
//! and updated after each successful commit, so the hot path (token
//! exchange) reads memory only. Revocation is a set of revoked ids checked
//! in O(1) per id (DESIGN: "revocation as data").

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use mandate_core::model::{Agent, Grant, PolicySetRecord, Principal, Revocation, Tenant, Tool};
use mandate_core::policy::{Engine, StoredPolicy, TenantPolicies};
use mandate_core::revocation::RevokedSet;
use mandate_store::{Mutation, Snapshot};

/// Prefix of the kill switch's revocation id: `everything:<unix seconds>`
/// refuses every mandate and credential issued at or before that second.
pub use mandate_core::revocation::EVERYTHING;

/// An approver credential as the registry keeps it (the token is stored
/// hashed only).
#[derive(Debug, Clone)]
pub struct ApproverCredential {
    /// Its id (`apv_...`): `cred:<id>` revokes it.
    pub id: String,
    /// SHA-256 of the token.
    pub hash: Vec<u8>,
    /// Tenant.
    pub tenant: String,
    /// The principal it decides for: revoking them revokes it.
    pub principal: String,
    /// When it was made (seconds).
    pub created: u64,
    /// When it expires (seconds).
    pub expires_at: u64,
}

impl ApproverCredential {
    fn from_record(t: &mandate_core::model::ApproverToken) -> Self {
        Self {
            id: t.id.clone(),
            hash: t.hash.clone(),
            tenant: t.tenant.clone(),
            principal: t.principal.clone(),
            created: t.created_ms / 1000,
            expires_at: t.expires_at,
        }
    }

    /// Every id that revokes it: itself, its principal, its tenant.
    pub fn revocation_keys(&self) -> Vec<String> {
        vec![
            format!("cred:{}", self.id),
            format!("principal:{}/{}", self.tenant, self.principal),
            format!("tenant:{}", self.tenant),
        ]
    }
}

/// Tenants, agents, tools, grants, policies and revocations.
#[derive(Debug, Default)]
pub struct Registry {
    /// Tenants by name.
    pub tenants: BTreeMap<String, Tenant>,
    /// Principals by (tenant, id).
    pub principals: BTreeMap<(String, String), Principal>,
    /// Agents by (tenant, name).
    pub agents: BTreeMap<(String, String), Agent>,
    /// Tools by (tenant, name).
    pub tools: BTreeMap<(String, String), Arc<Tool>>,
    /// Tool names by (tenant, audience).
    pub tools_by_audience: HashMap<(String, String), String>,
    /// Grants by id.
    pub grants: BTreeMap<String, Grant>,
    /// Policy sets by (tenant, name).
    pub policy_sets: BTreeMap<(String, String), PolicySetRecord>,
    /// Compiled policies per tenant.
    pub compiled: HashMap<String, Arc<TenantPolicies>>,
    /// Revoked ids and the kill switch ([`mandate_core::revocation::RevokedSet`]).
    pub revoked: RevokedSet,
    /// Last revocation sequence number.
    pub revocation_seq: u64,
    /// Bumped by every change, so caches derived from the registry know when they are stale.
    pub generation: u64,
    /// The store's generation this registry reflects ([`Snapshot::generation`],
    /// then each registry change committed here).
    pub store_generation: u64,
    /// Approver credentials.
    pub approvers: Vec<ApproverCredential>,
    /// Suspended runs → why.
    pub suspended: HashMap<String, String>,
}

impl Registry {
    /// Builds the registry from a snapshot.
    pub fn from_snapshot(snap: Snapshot, engine: &Engine, now: u64) -> Result<Self, String> {
        let mut r = Registry {
            store_generation: snap.generation,
            ..Registry::default()
        };
        for t in snap.tenants {
            r.tenants.insert(t.name.clone(), t);
        }
        for p in snap.principals {
            r.principals.insert((p.tenant.clone(), p.id.clone()), p);
        }
        for a in snap.agents {
            r.agents.insert((a.tenant.clone(), a.name.clone()), a);
        }
        for t in snap.tools {
            r.add_tool(t);
        }
        for g in snap.grants {
            r.grants.insert(g.id.clone(), g);
        }
        let tenants: Vec<String> = snap.policy_sets.iter().map(|p| p.tenant.clone()).collect();
        for p in snap.policy_sets {
            r.policy_sets.insert((p.tenant.clone(), p.name.clone()), p);
        }
        for t in tenants {
            r.recompile(&t, engine)?;
        }
        for t in &snap.approver_tokens {
            r.approvers.push(ApproverCredential::from_record(t));
        }
        r.suspended = snap.suspended_runs.into_iter().collect();
        for rev in snap.revocations {
            r.revocation_seq = r.revocation_seq.max(rev.seq);
            if rev.until == 0 || rev.until >= now {
                r.add_revoked(&rev.key, rev.until, now);
            }
        }
        Ok(r)
    }

    fn recompile(&mut self, tenant: &str, engine: &Engine) -> Result<(), String> {
        let stored: Vec<StoredPolicy> = self
            .policy_sets
            .range((tenant.to_owned(), String::new())..)
            .take_while(|((t, _), _)| t == tenant)
            .flat_map(|(_, set)| set.policies.iter().map(StoredPolicy::from))
            .collect();
        let compiled = engine.compile(&stored).map_err(|e| e.to_string())?;
        self.compiled.insert(tenant.to_owned(), Arc::new(compiled));
        Ok(())
    }

    /// Applies a committed mutation.
    pub fn apply(&mut self, m: &Mutation, engine: &Engine, revocation_seq: Option<u64>, now: u64) {
        match m {
            // Use counts and approvals live in the store only; they change
            // no cached decision input.
            Mutation::CountUses { .. }
            | Mutation::CreateApproval(_)
            | Mutation::DecideApproval { .. }
            | Mutation::UseApproval { .. }
            | Mutation::Enqueue { .. }
            | Mutation::Dequeue { .. }
            | Mutation::Unrevoked { .. }
            | Mutation::FewerChildren { .. }
            | Mutation::FirstUse { .. } => return,
            Mutation::PutApproverToken(t) => {
                self.approvers.push(ApproverCredential::from_record(t));
                return;
            }
            Mutation::SuspendRun { id, reason, .. } => {
                self.suspended.insert(id.clone(), reason.clone());
                return;
            }
            Mutation::ResumeRun { id } => {
                self.suspended.remove(id);
                return;
            }
            Mutation::Batch(all) => {
                for m in all {
                    self.apply(m, engine, revocation_seq, now);
                }
                return;
            }
            _ => {}
        }
        self.generation += 1;
        match m {
            Mutation::CountUses { .. }
            | Mutation::Batch(_)
            | Mutation::PutApproverToken(_)
            | Mutation::CreateApproval(_)
            | Mutation::DecideApproval { .. }
            | Mutation::UseApproval { .. }
            | Mutation::SuspendRun { .. }
            | Mutation::ResumeRun { .. }
            | Mutation::Enqueue { .. }
            | Mutation::Dequeue { .. }
            | Mutation::Unrevoked { .. }
            | Mutation::FewerChildren { .. }
            | Mutation::FirstUse { .. } => {}
            Mutation::CreateTenant(t) => {
                self.tenants.insert(t.name.clone(), t.clone());
            }
            Mutation::CreatePrincipal(p) => {
                self.principals
                    .insert((p.tenant.clone(), p.id.clone()), p.clone());
            }
            Mutation::CreateAgent(a) => {
                self.agents
                    .insert((a.tenant.clone(), a.name.clone()), a.clone());
            }
            Mutation::CreateTool(t) => self.add_tool(t.clone()),
            Mutation::ReplaceAgent(a) => {
                self.agents
                    .insert((a.tenant.clone(), a.name.clone()), a.clone());
            }
            Mutation::ReplaceTool(t) => {
                if let Some(old) = self.tools.get(&(t.tenant.clone(), t.name.clone())) {
                    let key = (old.tenant.clone(), old.audience.clone());
                    self.tools_by_audience.remove(&key);
                }
                self.add_tool(t.clone());
            }
            Mutation::CreateGrant(g) => {
                self.grants.insert(g.id.clone(), g.clone());
            }
            Mutation::PutPolicySet(p) => {
                self.policy_sets
                    .insert((p.tenant.clone(), p.name.clone()), p.clone());
                if let Err(e) = self.recompile(&p.tenant, engine) {
                    tracing::error!("policies of tenant {} no longer compile: {e}", p.tenant);
                }
            }
            Mutation::DeletePolicySet { tenant, name } => {
                self.policy_sets.remove(&(tenant.clone(), name.clone()));
                if let Err(e) = self.recompile(tenant, engine) {
                    tracing::error!("policies of tenant {tenant} no longer compile: {e}");
                }
            }
            Mutation::Revoke(Revocation { key, until, .. })
            | Mutation::EndRun {
                revocation: Revocation { key, until, .. },
                ..
            } => {
                if let Mutation::EndRun { id, .. } = m {
                    self.suspended.remove(id);
                }
                self.add_revoked(key, *until, now);
                if let Some(s) = revocation_seq {
                    self.revocation_seq = self.revocation_seq.max(s);
                }
            }
            Mutation::StartRun(_)
            | Mutation::PutToolSecret(_)
            | Mutation::CreateLease(_)
            | Mutation::DropLease { .. }
            | Mutation::CreateJoinToken(_)
            | Mutation::UseJoinToken { .. }
            | Mutation::PutKey(_)
            | Mutation::PutAdminToken(_)
            | Mutation::DeleteAdminToken { .. }
            | Mutation::PutMeta { .. }
            | Mutation::KeepUses { .. } => {}
        }
    }

    /// Records a revoked id that matters until `until` (0 = forever);
    /// returns whether it was new ([`RevokedSet::add`]).
    pub fn add_revoked(&mut self, key: &str, until: u64, now: u64) -> bool {
        self.revoked.add(key, until, now)
    }

    /// Why a token with these revocation ids waits, if it does: its run,
    /// or a run it descends from, is suspended (a suspended run's
    /// descendants wait with it, or a run could escape its suspension by
    /// delegating). The reason says which run when it is an ancestor.
    pub fn suspension(&self, run: &str, keys: &[String]) -> Option<String> {
        keys.iter()
            .filter_map(|k| k.strip_prefix(mandate_core::revocation::RevocationKind::Run.prefix()))
            .find_map(|r| {
                let why = self.suspended.get(r)?;
                Some(if r == run {
                    why.clone()
                } else {
                    format!("run `{r}`, which it descends from, is suspended: {why}")
                })
            })
    }

    /// Why a token issued at `issued_at` with these revocation ids is
    /// refused, if it is: the first revoked id, or the kill switch.
    pub fn refused(&self, keys: &[String], issued_at: u64) -> Option<String> {
        self.revoked
            .refused(keys, issued_at)
            .map(|k| k.into_owned())
    }

    /// The first of `keys` that is revoked, if any.
    pub fn first_revoked<'a>(&self, keys: &'a [String]) -> Option<&'a str> {
        keys.iter()
            .find(|k| self.revoked.contains(k))
            .map(String::as_str)
    }

    fn add_tool(&mut self, t: Tool) {
        self.tools_by_audience
            .insert((t.tenant.clone(), t.audience.clone()), t.name.clone());
        self.tools
            .insert((t.tenant.clone(), t.name.clone()), Arc::new(t));
    }

    /// A tool by name or audience URI within a tenant.
    pub fn find_tool(&self, tenant: &str, name_or_audience: &str) -> Option<&Arc<Tool>> {
        let key = (tenant.to_owned(), name_or_audience.to_owned());
        self.tools.get(&key).or_else(|| {
            let name = self.tools_by_audience.get(&key)?;
            self.tools.get(&(tenant.to_owned(), name.clone()))
        })
    }

    /// Whether some other tenant has a tool with this name or audience (for
    /// the audit trail only: the caller is told nothing about it).
    pub fn tool_elsewhere(&self, tenant: &str, name_or_audience: &str) -> Option<String> {
        self.tools
            .values()
            .find(|t| {
                t.tenant != tenant && (t.name == name_or_audience || t.audience == name_or_audience)
            })
            .map(|t| t.tenant.clone())
    }
}
