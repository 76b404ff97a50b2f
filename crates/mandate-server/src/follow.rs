//! Several brokers on one store: what one commits reaches the others'
//! memory (issue 14).
//!
//! A store shared with other processes ([`mandate_store::Store::watch`])
//! wakes this broker when another commits a change; it also wakes after
//! every reconnection, and the broker looks anyway every [`POLL`], so a
//! notification lost on the way costs latency, never a change. On a wake
//! the broker reads, in order:
//!
//! - the registry again, if the store's generation moved (registrations,
//!   policies, tool secrets, feed and approver credentials, suspensions),
//!   keeping every revocation it already knew (revocations only add up);
//! - the revocation log after the last number it read, applying each as its
//!   own commits do (the run's caches dropped, its MCP sessions cut) and
//!   passing it to this broker's feed subscribers.
//!
//! Memory is only the fast path: what must hold across brokers the moment
//! it is committed (a revocation refusing an issuance, a proof used once,
//! an approval or an attenuation use spent once) is checked inside the
//! committing transaction (`Mutation::Unrevoked`, `Mutation::FirstUse`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mandate_store::StoreError;

use crate::registry::Registry;
use crate::state::AppState;

/// How often a broker on a shared store looks for changes even when it
/// heard of none.
pub const POLL: Duration = Duration::from_secs(2);

/// Revocations read from the log at once.
const PAGE: u32 = 1000;

/// Starts following the store's changes, if other brokers share it.
pub fn start(s: &Arc<AppState>) {
    let wake = Arc::new(tokio::sync::Notify::new());
    if !s.store.watch(Arc::clone(&wake)) {
        return;
    }
    s.shared.store(true, Ordering::Release);
    s.own_events.enabled.store(true, Ordering::Release);
    let s = Arc::clone(s);
    tokio::spawn(async move {
        loop {
            let _ = tokio::time::timeout(POLL, wake.notified()).await;
            if s.is_stopping() {
                return;
            }
            let st = Arc::clone(&s);
            match tokio::task::spawn_blocking(move || catch_up(&st)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("cannot read other brokers' changes yet: {e}"),
                Err(e) => tracing::error!("reading other brokers' changes failed: {e}"),
            }
        }
    });
}

/// Reads what other brokers committed since the last call (blocking).
pub fn catch_up(s: &AppState) -> Result<(), StoreError> {
    if !s.shared.load(Ordering::Acquire) {
        // Nobody else commits: this broker's memory is the store's.
        return Ok(());
    }
    // One at a time: two readers would pass revocations to the feed twice.
    let _one = s.following.lock().unwrap_or_else(|p| p.into_inner());
    catch_up_held(s)
}

/// [`catch_up`] unless a reading is under way already (its result comes
/// soon enough): for requests, which must not queue up readings.
pub fn catch_up_if_idle(s: &AppState) -> Result<(), StoreError> {
    if !s.shared.load(Ordering::Acquire) {
        return Ok(());
    }
    match s.following.try_lock() {
        Ok(_one) => catch_up_held(s),
        Err(_) => Ok(()),
    }
}

fn catch_up_held(s: &AppState) -> Result<(), StoreError> {
    // Revocations first, and whatever happens to the registry's reload.
    let revocations = revocations(s);
    let generation = s.store.generation()?;
    if generation != s.followed_generation.load(Ordering::Acquire) {
        reload(s)?;
    }
    revocations?;
    histories(s)
}

/// The revocation log after the last number read, applied in order.
fn revocations(s: &AppState) -> Result<(), StoreError> {
    loop {
        let after = s.followed_revocation.load(Ordering::Acquire);
        let page = s.store.revocations_after(after, PAGE)?;
        let full = page.len() == PAGE as usize;
        for r in page {
            s.followed_revocation.fetch_max(r.seq, Ordering::AcqRel);
            s.heard_revocation(r);
        }
        if !full {
            return Ok(());
        }
    }
}

/// What other brokers' runs did (credentials issued, eval gates), from the
/// audit trail, into this broker's run histories: rates, counts and
/// sequences hold across brokers as soon as their events are read.
fn histories(s: &AppState) -> Result<(), StoreError> {
    loop {
        let after = s.followed_audit.load(Ordering::Acquire);
        let page = s.store.audit_query(&mandate_store::AuditFilter {
            after_seq: Some(after),
            limit: Some(PAGE),
            ..Default::default()
        })?;
        let Some(last) = page.last().map(|e| e.seq) else {
            return Ok(());
        };
        {
            let mut own = s.own_events.seqs.lock().unwrap_or_else(|p| p.into_inner());
            let reg = s.reg();
            let mut h = s.history.lock().unwrap_or_else(|p| p.into_inner());
            for ev in page.iter().filter(|e| !own.contains(&e.seq)) {
                crate::rebuild::learn(&mut h, &reg, ev);
            }
            *own = own.split_off(&(last + 1));
        }
        s.followed_audit.store(last, Ordering::Release);
        if page.len() < PAGE as usize {
            return Ok(());
        }
    }
}

/// Reads the registry (and what is built from the same records) again.
fn reload(s: &AppState) -> Result<(), StoreError> {
    let snap = s.store.load()?;
    let generation = snap.generation;
    let now = s.now_secs();
    let secrets = crate::state::open_tool_secrets(&s.master, &snap.tool_secrets)
        .map_err(|e| StoreError::Corrupt(e.0))?;
    let feed = crate::state::feed_credentials(&snap);
    // Admin credentials replaced at another broker (`--new-admin-token`,
    // for a leaked one) stop working here too.
    let admins = crate::state::admin_hashes(&snap);
    // Keys another broker rotated to: used from now on (the ones before
    // stay accepted and published, as after a rotation here).
    let keys = rotated_keys(s, &snap)?;
    let mut fresh = Registry::from_snapshot(snap, &s.engine, now).map_err(StoreError::Corrupt)?;
    {
        let mut reg = s.registry.write().unwrap_or_else(|p| p.into_inner());
        if generation < reg.store_generation {
            // This broker applied a newer change of its own meanwhile; the
            // next look reads a snapshot that has it.
            return Ok(());
        }
        fresh.revoked.absorb(&reg.revoked, now);
        fresh.revocation_seq = fresh.revocation_seq.max(reg.revocation_seq);
        fresh.generation = reg.generation + 1;
        fresh.store_generation = generation;
        *reg = fresh;
    }
    if let Some(keys) = keys {
        s.replace_keys(keys);
        tracing::warn!("signing with the keys another broker rotated to");
    }
    s.replace_tool_secrets(secrets);
    *s.feed_credentials
        .write()
        .unwrap_or_else(|p| p.into_inner()) = feed;
    *s.admin_hashes.write().unwrap_or_else(|p| p.into_inner()) = admins;
    s.followed_generation.store(generation, Ordering::Release);
    tracing::debug!(
        generation,
        "registry read again after another broker's change"
    );
    Ok(())
}

/// The snapshot's key set, if its newest keys (those a broker starting now
/// would sign with) are not the ones this broker signs with.
fn rotated_keys(
    s: &AppState,
    snap: &mandate_store::Snapshot,
) -> Result<Option<crate::state::KeySet>, StoreError> {
    let newest = |purpose: &str, alg: &str| {
        snap.keys
            .iter()
            .rev()
            .find(|k| k.purpose == purpose && k.alg == alg)
            .map(|k| k.kid.clone())
    };
    let stored = [
        newest("mandate", "EdDSA"),
        newest("jwt", "EdDSA"),
        newest("jwt", "ES256"),
    ];
    let held = s.keyset().current_kids();
    if stored.iter().zip(&held).all(|(s, h)| s.as_ref() == Some(h)) {
        return Ok(None);
    }
    let keys = crate::keyring::stored_keys(&s.config, &s.master, &snap.keys)
        .and_then(crate::state::KeySet::new)
        .map_err(|e| StoreError::Corrupt(e.0))?;
    Ok(Some(keys))
}
