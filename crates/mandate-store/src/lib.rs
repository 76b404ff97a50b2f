//! # mandate-store
//!
//! Persistence for the Mandate broker, behind the [`Store`] trait, with the
//! embedded SQLite (WAL) backend in [`sqlite`] and a PostgreSQL backend
//! (several brokers on one database) in [`postgres`].
//!
//! Writes are *entries*: an optional [`Mutation`] and the audit events that
//! record it. A batch of entries is committed in one transaction (group
//! commit), and a failed mutation leaves neither its change nor its events
//! behind (SQLite: the batch at once, savepoints per entry only after a
//! refusal), and an event is durable before the
//! broker acts on it. Audit events are hash-chained here, at commit time,
//! because only the committer knows the previous hash.
//!
//! This crate does not decide anything: validation and policy live in
//! `mandate-core` and the server.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod postgres;
pub mod records;
mod search;
pub mod sqlite;

pub use records::*;

use mandate_core::audit::{Anchor, ChainBreak, ChainedEvent, EventBody};
use mandate_core::model::{Approval, JoinToken, Lease, Revocation, Run};

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique key already exists.
    #[error("{0} already exists")]
    Conflict(String),
    /// Something referenced does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The database failed.
    #[error("database error: {0}")]
    Db(String),
    /// Stored data could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Another process has the database open (an embedded database has one
    /// broker at a time).
    #[error("{0}")]
    Locked(String),
    /// A [`Mutation::Unrevoked`] found this revocation id (or the kill
    /// switch) in force.
    #[error("revoked: {0}")]
    Revoked(String),
    /// A [`Mutation::FirstUse`] found this one-time key used before.
    #[error("already used: {0}")]
    Replayed(String),
    /// A limit checked in the transaction was reached (what, and the limit).
    #[error("{0}")]
    Limit(String),
}

/// The refusal of a child run past the delegation limit.
pub(crate) fn limit_of_children(parent: &str, n: u64) -> StoreError {
    StoreError::Limit(format!(
        "run `{parent}` has already delegated {n} runs, this broker's limit"
    ))
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(f, msg) = &e
            && f.code == rusqlite::ErrorCode::ConstraintViolation
        {
            return StoreError::Conflict(msg.clone().unwrap_or_else(|| "row".into()));
        }
        StoreError::Db(e.to_string())
    }
}

/// Shorthand.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One unit of a group commit: a change and the events that record it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The change, if any (a denial records events only).
    pub mutation: Option<Mutation>,
    /// Audit events, chained in order.
    pub events: Vec<EventBody>,
}

/// What an entry's commit produced.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The chained events, with their sequence numbers and hashes.
    pub events: Vec<ChainedEvent>,
    /// Sequence number of a revocation this entry wrote.
    pub revocation_seq: Option<u64>,
    /// The store's new generation, if this entry moved it
    /// ([`Change::Registry`]).
    pub generation: Option<u64>,
}

/// Filters for audit queries; `None` matches anything.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct AuditFilter {
    /// Tenant.
    pub tenant: Option<String>,
    /// Agent name.
    pub agent: Option<String>,
    /// Run id.
    pub run: Option<String>,
    /// Principal.
    pub principal: Option<String>,
    /// Tool name.
    pub tool: Option<String>,
    /// `allow`, `deny` or `ok`.
    pub decision: Option<String>,
    /// Event type.
    pub event_type: Option<String>,
    /// Only events at or after this time (ms).
    pub since_ms: Option<u64>,
    /// Only events with a greater sequence number (oldest first).
    pub after_seq: Option<u64>,
    /// Only events with a smaller sequence number: the next page back
    /// (keyset pagination, newest first).
    pub before_seq: Option<u64>,
    /// At most this many (newest first when unset `after_seq`).
    pub limit: Option<u32>,
}

/// Result of re-verifying the whole audit chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Events that verified (every event before the first break).
    pub verified: u64,
    /// Sequence number and hash of the last event verified.
    pub head: (u64, String),
    /// The first event (and column) that did not, if any.
    pub first_break: Option<ChainBreak>,
}

/// The metadata key of the latest `now` (seconds) with which
/// [`Mutation::FirstUse`] cleared expired uses (kept from the first
/// [`Mutation::KeepUses`] on): a use whose `until` is before it may have
/// been cleared, so a broker whose clock is behind it must not take a
/// proof dated before it on its date alone.
pub const USES_CLEARED: &str = "one_time_uses_cleared";

/// The storage backend.
pub trait Store: Send + Sync {
    /// Everything the broker keeps in memory, read at start.
    fn load(&self) -> Result<Snapshot>;
    /// Commits a batch in one transaction; one result per entry, in order.
    /// Only one caller (the broker's writer task) may call this at a time.
    fn commit(&self, batch: Vec<Entry>) -> Result<Vec<Result<Committed>>>;
    /// [`Store::commit`], except that the batch may not be durable yet when
    /// this returns: [`Store::sync`] makes it so. Later commits see it at
    /// once; reads that hand rows out by number (the trail, the revocation
    /// log, the outbox) only once it is synced. The writer overlaps the two
    /// (its next batch is written while this one syncs) and answers nobody
    /// before the sync.
    /// By default a commit is durable when it returns.
    fn commit_unsynced(&self, batch: Vec<Entry>) -> Result<Vec<Result<Committed>>> {
        self.commit(batch)
    }
    /// Makes durable every commit that returned before this call began.
    /// May run while the next [`Store::commit_unsynced`] runs. An error is
    /// final: what was committed may or may not be durable, so the caller
    /// must stop writing.
    fn sync(&self) -> Result<()> {
        Ok(())
    }
    /// Audit events matching `filter`, in sequence order.
    fn audit_query(&self, filter: &AuditFilter) -> Result<Vec<ChainedEvent>>;
    /// Recomputes the audit hash chain from the first event, checks every
    /// column of every row, and that the chain has each anchor's hash (a
    /// signed checkpoint's) at the anchor's sequence number.
    fn audit_verify(&self, anchors: Vec<Anchor>) -> Result<VerifyReport>;
    /// [`Store::audit_verify`] from a checkpoint verified before (`from`):
    /// the event it names must still have its hash, and every later row is
    /// checked as a whole verification checks it; earlier rows are not
    /// read. `verified` is the last event checked, as for a whole one.
    fn audit_verify_after(&self, from: Anchor, anchors: Vec<Anchor>) -> Result<VerifyReport>;
    /// Runs, newest first, optionally of one tenant and/or agent.
    fn list_runs(&self, tenant: Option<&str>, agent: Option<&str>, limit: u32) -> Result<Vec<Run>>;
    /// One run.
    fn get_run(&self, id: &str) -> Result<Option<Run>>;
    /// Revocations with a sequence number above `after`, in order: the
    /// revocation feed's log, so a verifier that reconnects misses nothing.
    fn revocations_after(&self, after: u64, limit: u32) -> Result<Vec<Revocation>>;
    /// How many runs were delegated from `parent`.
    fn count_children(&self, parent: &str) -> Result<u64>;
    /// Leases whose role has not been dropped yet.
    fn live_leases(&self) -> Result<Vec<Lease>>;
    /// A join token by id.
    fn join_token(&self, id: &str) -> Result<Option<JoinToken>>;
    /// Queued webhook payloads, oldest first: (id, body).
    fn outbox(&self, limit: u32) -> Result<Vec<(i64, String)>>;
    /// Every (tenant, agent, tool) that ever got a credential.
    fn agent_tools_used(&self) -> Result<Vec<(String, String, String)>>;
    /// An approval by id.
    fn approval(&self, id: &str) -> Result<Option<Approval>>;
    /// How many approvals of a run wait for a decision and have not expired.
    fn pending_approvals_for_run(&self, run: &str, now: u64) -> Result<usize>;
    /// The live (pending, approved or denied) approvals for a request
    /// digest, newest first (one per `@approval` policy that asked).
    fn approvals_for_request(&self, request_digest: &str) -> Result<Vec<Approval>>;
    /// Approvals, newest first.
    fn list_approvals(
        &self,
        tenant: Option<&str>,
        status: Option<mandate_core::approval::ApprovalStatus>,
        limit: u32,
    ) -> Result<Vec<Approval>>;
    /// How many times each attenuation block has been used (0 if never).
    fn block_uses(&self, blocks: &[String]) -> Result<Vec<u64>>;
    /// The registry's generation ([`Snapshot::generation`]) now.
    fn generation(&self) -> Result<u64>;
    /// The latest `until` of a recorded one-time use (0: none): every
    /// proof an earlier process accepted is dated no later.
    fn latest_one_time_use(&self) -> Result<u64>;
    /// Whether other processes may commit to this store, and if so, wakes
    /// `on_change` whenever one commits (and once after every
    /// reconnection of the listening connection, since a change may have
    /// been missed meanwhile). A store only this process uses returns
    /// `false` and never wakes it.
    fn watch(&self, on_change: std::sync::Arc<tokio::sync::Notify>) -> bool {
        let _ = on_change;
        false
    }
}

/// Whether a token issued at `issued_at` with revocation ids `keys` is
/// refused by revocation rows `(key, until)` read from a store: the rule of
/// [`mandate_core::revocation::RevokedSet`], applied to what the store
/// found for [`Mutation::Unrevoked`].
pub(crate) fn refused_by(
    rows: impl IntoIterator<Item = (String, u64)>,
    keys: &[String],
    issued_at: u64,
    now: u64,
) -> Option<String> {
    let mut set = mandate_core::revocation::RevokedSet::default();
    // As a registry loads a snapshot: what expired before now is not read.
    for (key, until) in rows.into_iter().filter(|(_, u)| *u == 0 || *u >= now) {
        set.add(&key, until, now);
    }
    set.refused(keys, issued_at).map(|k| k.into_owned())
}
