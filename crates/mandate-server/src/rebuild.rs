//! What a restart must not forget, rebuilt from the audit trail at start
//! (the trail is the one durable record of what the broker decided): the
//! runs' recent history, the single-use proxy credentials already spent,
//! and the narrowed mandates each run revoked. Each reads only the events
//! of the last `--mandate-max-ttl` seconds: older ones concern runs that
//! have expired.

use mandate_core::forwarding::{SpendRefused, SpentSet};
use mandate_store::Store;

use crate::config::BootError;
use crate::registry::Registry;
use crate::routes::proxy::SPENT_CAP;

/// Calls `each` with every event of `event_type` (and `decision`, if given)
/// of the last `max_ttl` seconds, oldest first, page by page: what a broker
/// rebuilds at start from the trail (nothing older can still matter, no
/// token lives longer). Stops at the first error `each` returns.
pub(crate) fn each_recent_event(
    store: &dyn Store,
    event_type: mandate_core::audit::EventType,
    decision: Option<mandate_core::audit::Decision>,
    max_ttl: u64,
    now_ms: u64,
    mut each: impl FnMut(&mandate_core::audit::ChainedEvent) -> Result<(), BootError>,
) -> Result<(), BootError> {
    const PAGE: u32 = 10_000;
    let since_ms = now_ms.saturating_sub(max_ttl * 1000);
    let mut after = 0;
    loop {
        let page = store
            .audit_query(&mandate_store::AuditFilter {
                event_type: Some(event_type.as_str().to_owned()),
                decision: decision.as_ref().map(|d| d.as_str().to_owned()),
                since_ms: Some(since_ms),
                after_seq: Some(after),
                limit: Some(PAGE),
                ..Default::default()
            })
            .map_err(|e| BootError(format!("cannot read the audit trail: {e}")))?;
        for ev in &page {
            after = after.max(ev.seq);
            each(ev)?;
        }
        if page.len() < PAGE as usize {
            return Ok(());
        }
    }
}

/// The run histories from the audit trail: credentials issued by the runs
/// that can still be alive, eval gates reported for them, and which agents
/// ever used which tools.
pub(crate) fn rebuild_history(
    store: &dyn Store,
    reg: &Registry,
    max_ttl: u64,
    now_ms: u64,
) -> Result<crate::history::Histories, BootError> {
    let mut h = crate::history::Histories::default();
    h.set_max_idle(max_ttl);
    let e = |e: mandate_store::StoreError| BootError(format!("cannot read the audit trail: {e}"));
    for (t, a, tool) in store.agent_tools_used().map_err(e)? {
        h.used(t, a, tool);
    }
    let since_ms = now_ms.saturating_sub(max_ttl * 1000);
    for event_type in [
        mandate_core::audit::EventType::TokenExchange,
        mandate_core::audit::EventType::RunEval,
    ] {
        let mut after = 0;
        loop {
            let page = store
                .audit_query(&mandate_store::AuditFilter {
                    event_type: Some(event_type.as_str().to_owned()),
                    since_ms: Some(since_ms),
                    after_seq: Some(after),
                    limit: Some(10_000),
                    ..Default::default()
                })
                .map_err(e)?;
            for ev in &page {
                after = after.max(ev.seq);
                learn(&mut h, reg, ev);
            }
            if page.len() < 10_000 {
                break;
            }
        }
    }
    Ok(h)
}

/// What one event of the trail tells the run histories: a credential issued
/// (`token.exchange` allowed) or an eval gate reported (`run.eval`). At
/// start for the trail so far; on a shared store, for every event another
/// broker commits ([`crate::follow`]).
pub(crate) fn learn(
    h: &mut crate::history::Histories,
    reg: &Registry,
    ev: &mandate_core::audit::ChainedEvent,
) {
    use mandate_core::audit::{Decision, EventType};
    let b = &ev.body;
    match b.event_type {
        EventType::RunEval => {
            if let (Some(run), Some(name)) = (b.run.as_deref(), b.details["eval"].as_str()) {
                h.eval(run, name, b.decision == Decision::Ok, b.time_ms / 1000);
            }
        }
        EventType::TokenExchange if b.decision == Decision::Allow => {
            let (Some(run), Some(tool)) = (b.run.as_deref(), b.tool.as_deref()) else {
                return;
            };
            let labels = reg
                .tools
                .get(&(b.tenant.clone().unwrap_or_default(), tool.to_owned()))
                .map(|t| t.labels.clone())
                .unwrap_or_default();
            let _ = h.issued(
                (
                    b.tenant.as_deref().unwrap_or_default(),
                    b.agent.as_deref().unwrap_or_default(),
                    tool,
                ),
                run,
                &b.actions,
                &labels,
                b.details["amount"].as_i64(),
                b.time_ms / 1000,
            );
        }
        _ => {}
    }
}

/// Spent single-use (amount) credentials, from the audit trail: every
/// allowed `proxy.call` that spent one is durable before its request went
/// upstream, so a restarted broker refuses the credential again until it
/// expires.
pub(crate) fn spent_from_trail(
    store: &dyn mandate_store::Store,
    max_ttl: u64,
    now_ms: u64,
) -> Result<SpentSet, crate::config::BootError> {
    let mut spent = SpentSet::new(SPENT_CAP);
    let now = now_ms / 1000;
    each_recent_event(
        store,
        mandate_core::audit::EventType::ProxyCall,
        Some(mandate_core::audit::Decision::Allow),
        max_ttl,
        now_ms,
        |ev| {
            let until = ev.body.details["single_use_until"].as_u64();
            if let (Some(until), Some(jti)) = (until, ev.body.credential_id.as_deref())
            && until >= now
            // The proxy never lets more than the cap be alive at once, so
            // full means a trail it did not write: refuse to start rather
            // than forget a spent credential.
            && let Err(SpendRefused::Full) = spent.spend(jti, until, now)
            {
                return Err(crate::config::BootError(format!(
                    "more than {SPENT_CAP} single-use proxy credentials in the audit trail are still alive; wait until they expire (at most {max_ttl} s) and start again"
                )));
            }
            Ok(())
        },
    )?;
    Ok(spent)
}

/// Narrowed mandates revoked at RFC 7009 per run, from the audit trail (the
/// last `max_ttl` seconds: older ones belong to runs that have expired), so
/// a restart does not reset [`MAX_BLOCK_REVOCATIONS`].
pub(crate) fn block_revocations_from_trail(
    store: &dyn mandate_store::Store,
    max_ttl: u64,
    now_ms: u64,
) -> Result<std::collections::HashMap<String, u32>, crate::config::BootError> {
    let mut counts = std::collections::HashMap::new();
    each_recent_event(
        store,
        mandate_core::audit::EventType::Revoke,
        None,
        max_ttl,
        now_ms,
        |ev| {
            let block = ev.body.details["revoked"]
                .as_str()
                .is_some_and(|k| k.starts_with("block:"));
            if let (true, Some(run)) = (block, ev.body.run.as_deref()) {
                *counts.entry(run.to_owned()).or_insert(0u32) += 1;
            }
            Ok(())
        },
    )?;
    Ok(counts)
}
