//! How an exchange's policy decision grows with the tenant's policies
//! (issue 12): the policies `prep --policies N` loads, decided in-process.

use std::time::Instant;

use mandate_core::policy::{Details, Engine, ExchangeFacts, History, StoredPolicy};

/// Most policies in one file (the broker's per-file limit).
const PER_FILE: usize = 250;

/// `n` policies as policy files of at most [`PER_FILE`]: one permit, then
/// `forbid` policies for other actions.
pub(crate) fn policy_files(n: usize) -> Vec<(String, String)> {
    let mut texts = vec![
        "@id(\"allow\")\npermit (principal, action == Mandate::Action::\"exchange\", resource);\n"
            .to_owned(),
    ];
    for i in 1..n {
        texts.push(format!(
            "@id(\"deny{i}\")\nforbid (principal, action == Mandate::Action::\"exchange\", resource) when {{ context.action == \"other{i}\" }};\n"
        ));
    }
    texts
        .chunks(PER_FILE)
        .enumerate()
        .map(|(i, c)| (format!("bench{i}"), c.concat()))
        .collect()
}

/// The same `n` policies written so that slicing cannot read them (the
/// action test comes second): every policy is evaluated per exchange.
fn unsliceable(n: usize) -> Vec<StoredPolicy> {
    let mut out = vec![StoredPolicy {
        id: "p/allow".into(),
        text: "permit (principal, action == Mandate::Action::\"exchange\", resource);".into(),
    }];
    for i in 1..n {
        out.push(StoredPolicy {
            id: format!("p/{i}"),
            text: format!(
                "forbid (principal, action == Mandate::Action::\"exchange\", resource) when {{ context.depth >= 0 && context.action == \"other{i}\" }};"
            ),
        });
    }
    out
}

pub(crate) fn run(iterations: u32) -> Result<(), String> {
    let e = Engine::new().map_err(|e| e.to_string())?;
    let details = Details::default();
    let history = History::default();
    let actions = vec!["read".to_owned()];
    let f = ExchangeFacts {
        tenant: "bench",
        now: 1_800_000_000,
        agent: "loader",
        agent_owner: "bench",
        agent_purpose: "",
        run: "run_1",
        task: "load",
        principal: Some("alice@example.com"),
        grant: Some("grt_1"),
        tool: "api",
        tool_audience: "urn:api",
        tool_labels: &[],
        tool_risk: "low",
        tool_provider: "jwt",
        actions: &actions,
        depth: 0,
        hops: 0,
        approved: false,
        details: &details,
        history: &history,
    };
    let entities = e.entities(&f).map_err(|e| e.to_string())?;
    println!("| policies | sliced: us per decision | unsliceable: us per decision |");
    println!("| ---: | ---: | ---: |");
    for n in [1usize, 10, 100, 1_000, 10_000] {
        let mut stored = Vec::new();
        for (name, text) in policy_files(n) {
            stored.extend(
                e.parse_policies(&name, &text)
                    .map_err(|p| format!("{p:?}"))?,
            );
        }
        let mut row = Vec::new();
        for set in [stored, unsliceable(n)] {
            let p = e.compile(&set).map_err(|e| e.to_string())?;
            // First decision builds the slice; not counted.
            let v = e
                .decide_with(&p, &f, &entities)
                .map_err(|e| e.to_string())?;
            if !v.allowed {
                return Err(format!("{n} policies: denied: {:?}", v.reason));
            }
            let iters = (iterations / u32::try_from(n / 100).unwrap_or(u32::MAX).max(1)).max(20);
            let start = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(
                    e.decide_with(&p, &f, &entities)
                        .map_err(|e| e.to_string())?,
                );
            }
            row.push(start.elapsed().as_secs_f64() * 1e6 / f64::from(iters));
        }
        println!("| {n} | {:.1} | {:.1} |", row[0], row[1]);
    }
    Ok(())
}
