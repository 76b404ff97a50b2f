//! The broker's durable write path alone (issue 12): exchange-shaped
//! entries (the issuance event, `Unrevoked` over the lineage's ids,
//! `FirstUse` of the proof) committed in batches through the store the
//! broker uses, with the one-time uses of a 65-second proof window already
//! live. Reports the committing thread's CPU and wall time per entry,
//! without the sync and with it: what the writer spends per exchange,
//! free of HTTP, crypto and the load tool.

use std::path::Path;
use std::time::Instant;

use mandate_core::audit::{Decision, EventBody, EventType};
use mandate_core::dpop::Spent;
use mandate_store::sqlite::SqliteStore;
use mandate_store::{Entry, Mutation, Store};
use rand::RngCore as _;
use serde_json::json;

/// This thread's CPU time (user + system), from /proc (clock ticks).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) end with ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat; here 12 and 13.
    (ticks(11) + ticks(12)) / 100.0
}

/// Bytes this process has handed to write calls so far (/proc/self/io
/// `wchar`): the WAL frames and checkpoint pages a commit writes.
fn written_bytes() -> f64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

fn entry(i: u64, now: u64, until: u64) -> Entry {
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let run = format!("run_{:012}", i / 1_000);
    let credential = format!("cred_{i:020}");
    let event = EventBody {
        time_ms: now * 1_000,
        event_type: EventType::TokenExchange,
        decision: Decision::Allow,
        tenant: Some("acme".into()),
        agent: Some("billing-bot".into()),
        run: Some(run.clone()),
        principal: Some("alice@example.com".into()),
        task: Some("reconcile invoices".into()),
        tool: Some("crm".into()),
        actions: vec!["read".into()],
        policies: vec!["policy0".into()],
        correlation_id: Some(format!("req_{i:016}")),
        credential_id: Some(credential.clone()),
        credential_exp: Some(now + 300),
        details: json!({"provider": "jwt", "pop": "dpop", "jkt": "x7Vq3P1qkYfL8VtJm2dC0a4b5e6f7g8h9i0j1k2l3m4"}),
        ..Default::default()
    };
    let keys = vec![
        format!("credential:{credential}"),
        format!("run:{run}"),
        "agent:acme/billing-bot".to_owned(),
        "principal:acme/alice@example.com".to_owned(),
        "mandate:mnd_0123456789abcdef".to_owned(),
    ];
    Entry {
        mutation: Mutation::all(vec![
            Mutation::Unrevoked {
                keys,
                issued_at: now,
                now,
            },
            Mutation::FirstUse {
                uses: vec![Spent {
                    key: format!("proof:{}", mandate_core::jose::b64(&key)),
                    until,
                }],
                now,
            },
        ]),
        events: vec![event],
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn run(db: &Path, entries: u64, batches: &[usize], live: u64) -> Result<(), String> {
    if db.exists() {
        return Err(format!("{} exists; give a new file", db.display()));
    }
    let store = SqliteStore::open(db).map_err(|e| e.to_string())?;
    let mut i = 0u64;
    // The proof window's live uses (65 s at the measured rate), as a broker
    // under load holds them: they expire evenly over the window, so the
    // measured commits also clear expired ones, as in a steady state.
    while i < live {
        let batch: Vec<Entry> = (i..(i + 1_000).min(live))
            .map(|k| {
                let now = now();
                entry(k, now, now + 1 + 64 * k / live)
            })
            .collect();
        i += batch.len() as u64;
        store.commit(batch).map_err(|e| e.to_string())?;
    }
    println!("commit path, exchange-shaped entries, {live} one-time uses live at the start");
    for &b in batches {
        for synced in [false, true] {
            let (c0, w0, t0, start) = (cpu_seconds(), written_bytes(), Instant::now(), i);
            while i < start + entries {
                let batch: Vec<Entry> = (0..b as u64)
                    .map(|k| {
                        let now = now();
                        entry(i + k, now, now + 65)
                    })
                    .collect();
                i += b as u64;
                let results = if synced {
                    store.commit(batch)
                } else {
                    store.commit_unsynced(batch)
                }
                .map_err(|e| e.to_string())?;
                for r in results {
                    r.map_err(|e| e.to_string())?;
                }
            }
            let n = (i - start) as f64;
            println!(
                "batch {b:>3}, {}: {:>6.1} us CPU and {:>6.1} us wall per entry, {:>6.0} bytes written",
                if synced { "synced  " } else { "unsynced" },
                (cpu_seconds() - c0) / n * 1e6,
                t0.elapsed().as_secs_f64() / n * 1e6,
                (written_bytes() - w0) / n,
            );
        }
    }
    Ok(())
}
