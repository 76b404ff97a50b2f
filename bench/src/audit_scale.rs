//! The audit trail at scale (issue 12): seeding, "latest N matching"
//! queries for every filter, and verification, timed in-process through the
//! store the broker uses (`GET /v1/audit` is this query plus JSON).

use std::path::Path;
use std::time::Instant;

use mandate_core::audit::{Decision, EventBody, EventType};
use mandate_store::sqlite::SqliteStore;
use mandate_store::{AuditFilter, Entry, Store};

const BATCH: u64 = 10_000;
const AGENTS: u64 = 200;
const TOOLS: u64 = 50;
const PRINCIPALS: u64 = 1_000;
/// Events per run (a run makes this many exchanges in a row).
const PER_RUN: u64 = 200;

fn event(i: u64, t0: u64) -> EventBody {
    // One deny in 500; one admin event in 1,000.
    let (event_type, decision) = if i % 1_000 == 7 {
        (EventType::Other("agent.update".into()), Decision::Ok)
    } else if i % 500 == 3 {
        (EventType::TokenExchange, Decision::Deny)
    } else {
        (EventType::TokenExchange, Decision::Allow)
    };
    let run = i / PER_RUN;
    EventBody {
        time_ms: t0 + i / 10,
        event_type,
        decision,
        tenant: Some(format!("tenant{}", run % 5)),
        agent: Some(format!("agent{}", run % AGENTS)),
        run: Some(format!("run_{run:012}")),
        principal: Some(format!("user{}@example.com", run % PRINCIPALS)),
        tool: Some(format!("tool{}", (i * 7) % TOOLS)),
        actions: vec!["read".into()],
        credential_id: Some(format!("crd_{i:016x}")),
        ..Default::default()
    }
}

pub(crate) fn run(db: &Path, events: u64) -> Result<(), String> {
    if db.exists() {
        return Err(format!("{} exists; give a new file", db.display()));
    }
    let store = SqliteStore::open(db).map_err(|e| e.to_string())?;
    let t0 = 1_790_000_000_000;
    let mut per_million = Vec::new();
    let mut start = Instant::now();
    let mut i = 0;
    while i < events {
        let n = BATCH.min(events - i);
        let batch: Vec<Entry> = (i..i + n)
            .map(|k| Entry {
                mutation: None,
                events: vec![event(k, t0)],
            })
            .collect();
        for r in store.commit(batch).map_err(|e| e.to_string())? {
            r.map_err(|e| e.to_string())?;
        }
        i += n;
        if i % 1_000_000 == 0 || i == events {
            let s = start.elapsed().as_secs_f64();
            per_million.push(s);
            eprintln!(
                "seeded {i} events ({:.0} events/s for the last million)",
                1e6 / s
            );
            start = Instant::now();
        }
    }
    println!(
        "insert: seconds per million events, in order: {}",
        per_million
            .iter()
            .map(|s| format!("{s:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let last = t0 + events / 10;
    let since = Some(last - 3_600_000); // the last hour of a trail written at 10,000 events/s
    let some = |v: &str| Some(v.to_owned());
    let cases: Vec<(&str, AuditFilter)> = vec![
        ("latest (no filter)", AuditFilter::default()),
        (
            "tenant=",
            AuditFilter {
                tenant: some("tenant3"),
                ..Default::default()
            },
        ),
        (
            "agent=",
            AuditFilter {
                agent: some("agent17"),
                ..Default::default()
            },
        ),
        (
            "run=",
            AuditFilter {
                run: some(&format!("run_{:012}", events / PER_RUN / 2)),
                ..Default::default()
            },
        ),
        (
            "principal=",
            AuditFilter {
                principal: some("user42@example.com"),
                ..Default::default()
            },
        ),
        (
            "tool=",
            AuditFilter {
                tool: some("tool9"),
                ..Default::default()
            },
        ),
        (
            "decision=deny",
            AuditFilter {
                decision: some("deny"),
                ..Default::default()
            },
        ),
        (
            "type=agent.update",
            AuditFilter {
                event_type: some("agent.update"),
                ..Default::default()
            },
        ),
        (
            "agent= & decision=deny",
            AuditFilter {
                agent: some("agent17"),
                decision: some("deny"),
                ..Default::default()
            },
        ),
        (
            "tool= & decision=deny",
            AuditFilter {
                tool: some("tool9"),
                decision: some("deny"),
                ..Default::default()
            },
        ),
        (
            "agent= & since 1h",
            AuditFilter {
                agent: some("agent17"),
                since_ms: since,
                ..Default::default()
            },
        ),
        (
            "tool= & since 1h",
            AuditFilter {
                tool: some("tool9"),
                since_ms: since,
                ..Default::default()
            },
        ),
        (
            "decision=deny & since 1h",
            AuditFilter {
                decision: some("deny"),
                since_ms: since,
                ..Default::default()
            },
        ),
        (
            "agent= & since 1 min (few match)",
            AuditFilter {
                agent: some("agent17"),
                since_ms: Some(last - 60_000),
                ..Default::default()
            },
        ),
        (
            "agent=unknown",
            AuditFilter {
                agent: some("nobody"),
                ..Default::default()
            },
        ),
    ];
    println!("| query (latest 100 matching) | events | ms |");
    println!("| --- | ---: | ---: |");
    for (name, mut f) in cases {
        f.limit = Some(100);
        let start = Instant::now();
        let got = store.audit_query(&f).map_err(|e| e.to_string())?;
        let first = start.elapsed().as_secs_f64() * 1e3;
        // Keyset: the page before.
        let page2 = got.first().map(|e| AuditFilter {
            before_seq: Some(e.seq),
            ..f.clone()
        });
        let start = Instant::now();
        if let Some(p) = page2 {
            store.audit_query(&p).map_err(|e| e.to_string())?;
        }
        let second = start.elapsed().as_secs_f64() * 1e3;
        println!(
            "| {name} | {} | {first:.1} (next page {second:.1}) |",
            got.len()
        );
    }
    let start = Instant::now();
    let rep = store.audit_verify(vec![]).map_err(|e| e.to_string())?;
    let s = start.elapsed().as_secs_f64();
    println!(
        "audit verify: {} events in {s:.1} s ({:.0} events/s), first break: {:?}",
        rep.verified,
        rep.verified as f64 / s,
        rep.first_break
    );
    // Incremental (from a checkpoint verified before): the last tenth of
    // the trail, then the last 10,000 events.
    for back in [rep.verified / 10, 10_000] {
        let at = rep.verified.saturating_sub(back).max(1);
        let hash = store
            .audit_query(&AuditFilter {
                after_seq: Some(at - 1),
                limit: Some(1),
                ..Default::default()
            })
            .map_err(|e| e.to_string())?
            .first()
            .map(|e| e.hash.clone())
            .unwrap_or_default();
        let from = mandate_core::audit::Anchor {
            seq: at,
            hash,
            label: "the kept checkpoint".into(),
        };
        let start = Instant::now();
        let inc = store
            .audit_verify_after(from, vec![])
            .map_err(|e| e.to_string())?;
        let s = start.elapsed().as_secs_f64();
        println!(
            "audit verify --incremental after event {at}: {} events in {:.1} ms, first break: {:?}",
            inc.verified - at,
            s * 1e3,
            inc.first_break
        );
    }
    Ok(())
}
