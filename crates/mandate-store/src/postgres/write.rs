//! Writes: one transaction per batch, one savepoint per entry (its
//! mutation and its audit events succeed or fail together), the chain's
//! head read under a lock every committer takes.

use super::listen::CHANNEL;
use super::pool::{Pool, Session};
use super::rows::i64_col;
use super::trail::{append_event, read_head};
use super::{Head, mutate};
use crate::{Change, Committed, Entry, Mutation, Result, StoreError};

/// The advisory lock key that serialises commits across brokers
/// (`MANDAT` then 2): the chain's appends, and the revocation numbers.
const CHAIN_LOCK: i64 = 0x4d41_4e44_4154_0002;

/// Commits `batch` on the writer thread.
pub(super) fn commit(pool: &Pool, batch: Vec<Entry>) -> Result<Vec<Result<Committed>>> {
    // A connection found lost before COMMIT was sent: the server rolled
    // the transaction back, and the pool runs this again on a new
    // connection. Lost during COMMIT: nobody knows, so it is not repeated.
    let mut commit_sent = false;
    pool.run(move |s| {
        if commit_sent {
            return Err(StoreError::Db(
                "the connection to PostgreSQL was lost while committing: the batch may or may not be committed".into(),
            ));
        }
        // Read committed whatever the database's default: each statement
        // sees what other brokers committed before this one took the lock.
        s.batch("BEGIN ISOLATION LEVEL READ COMMITTED")?;
        let results = match entries(s, &batch) {
            Ok(r) => r,
            Err(e) => {
                s.rollback();
                return Err(e);
            }
        };
        commit_sent = true;
        s.batch("COMMIT")?;
        Ok(results)
    })
}

/// The batch's entries, in the open transaction.
fn entries(s: &mut Session<'_>, batch: &[Entry]) -> Result<Vec<Result<Committed>>> {
    // Every committer takes this lock first, and reads the head after it:
    // another broker's commit is either wholly before (its events are
    // visible to this read, READ COMMITTED) or wholly after.
    s.query("SELECT pg_advisory_xact_lock($1)", &[&CHAIN_LOCK])?;
    let mut head = read_head(s)?;
    let mut results = Vec::with_capacity(batch.len());
    for entry in batch {
        let saved_head = head.clone();
        s.batch("SAVEPOINT entry")?;
        match one_entry(s, entry, &mut head) {
            Ok(done) => {
                s.batch("RELEASE SAVEPOINT entry")?;
                results.push(Ok(done));
            }
            Err(e) if !s.healthy() => return Err(e),
            Err(e) => {
                s.batch("ROLLBACK TO SAVEPOINT entry; RELEASE SAVEPOINT entry")?;
                head = saved_head;
                results.push(Err(e));
            }
        }
    }
    if results.iter().any(Result::is_ok) {
        // Every commit is news to the other brokers (a revocation, a
        // registry change, or events their run histories count). Delivered
        // when, and only if, the transaction commits.
        s.batch(&format!("NOTIFY {CHANNEL}"))?;
    }
    Ok(results)
}

fn one_entry(s: &mut Session<'_>, entry: &Entry, head: &mut Head) -> Result<Committed> {
    let revocation_seq = match &entry.mutation {
        Some(m) => apply(s, m)?,
        None => None,
    };
    let change = entry
        .mutation
        .as_ref()
        .map_or(Change::None, Mutation::change);
    let generation = match change {
        Change::Registry => Some(i64_col(
            &s.query_one(
                "UPDATE generation SET value = value + 1 WHERE id = 1 RETURNING value",
                &[],
            )?,
            0,
        )? as u64),
        Change::Revocation | Change::None => None,
    };
    let mut events = Vec::with_capacity(entry.events.len());
    for body in &entry.events {
        events.push(append_event(s, head, body.clone())?);
    }
    Ok(Committed {
        events,
        revocation_seq,
        generation,
    })
}

/// Applies one mutation; the sequence number of a revocation it wrote.
pub(super) fn apply(s: &mut Session<'_>, m: &Mutation) -> Result<Option<u64>> {
    use Mutation as M;
    match m {
        M::CreateTenant(_)
        | M::CreatePrincipal(_)
        | M::CreateAgent(_)
        | M::CreateTool(_)
        | M::ReplaceAgent(_)
        | M::ReplaceTool(_)
        | M::CreateGrant(_)
        | M::PutPolicySet(_)
        | M::DeletePolicySet { .. } => mutate::registry(s, m).map(|()| None),
        M::StartRun(_)
        | M::EndRun { .. }
        | M::Revoke(_)
        | M::SuspendRun { .. }
        | M::ResumeRun { .. }
        | M::CountUses { .. }
        | M::Unrevoked { .. }
        | M::FewerChildren { .. }
        | M::FirstUse { .. } => mutate::runs(s, m),
        M::PutKey(_)
        | M::PutToolSecret(_)
        | M::PutAdminToken(_)
        | M::DeleteAdminToken { .. }
        | M::PutApproverToken(_)
        | M::PutMeta { .. }
        | M::KeepUses { .. }
        | M::Enqueue { .. }
        | M::Dequeue { .. } => mutate::secrets(s, m).map(|()| None),
        M::CreateLease(_)
        | M::DropLease { .. }
        | M::CreateJoinToken(_)
        | M::UseJoinToken { .. } => mutate::leases(s, m).map(|()| None),
        M::CreateApproval(_) | M::DecideApproval { .. } | M::UseApproval { .. } => {
            mutate::approvals(s, m).map(|()| None)
        }
        M::Batch(all) => {
            for m in all {
                apply(s, m)?;
            }
            Ok(None)
        }
    }
}
