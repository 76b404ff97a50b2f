//! What each run has done so far, for continuous authorization: the policy
//! context's `history` (credentials per tool and action, labels touched,
//! declared amounts, request rate and denials in the last minute, eval gates
//! passed) and whether an agent used a tool before. Kept in memory, updated
//! after each commit, rebuilt from the audit trail at start (rates restart
//! from zero after a restart).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use mandate_core::policy::History;

/// One run's counters.
#[derive(Debug, Default)]
struct RunStats {
    exchanges: u64,
    per_tool: HashMap<String, (u64, HashMap<String, u64>)>,
    labels: BTreeSet<String>,
    amount_total: i64,
    /// Requests of the last [`WINDOW`] seconds, one bucket per second
    /// (second, requests, denials), oldest first: at most `WINDOW` buckets
    /// whatever the rate, and the counts are exact.
    recent: VecDeque<(u64, u64, u64)>,
    evals_passed: BTreeSet<String>,
    last_seen: u64,
}

/// Every run's history, and which agents used which tools.
#[derive(Debug, Default)]
pub struct Histories {
    runs: HashMap<String, RunStats>,
    agent_tools: HashSet<(String, String, String)>,
    alerted: HashSet<(String, &'static str)>,
    /// A run not seen for this long is over (its mandate has expired: no
    /// mandate lives longer); 0 = a day.
    max_idle: u64,
    /// At this many runs, those idle longer than `max_idle` are forgotten
    /// (amortized: the next sweep is at twice what is left).
    sweep_at: usize,
}

const WINDOW: u64 = 60;
const MAX_RUNS: usize = 200_000;
const SWEEP_MIN: usize = 1024;

impl Histories {
    /// The policy context's history of `run` before an exchange for `tool`.
    pub fn facts(&self, run: &str, issued_at: u64, key: (&str, &str, &str), now: u64) -> History {
        let used_before =
            self.agent_tools
                .contains(&(key.0.to_owned(), key.1.to_owned(), key.2.to_owned()));
        let Some(r) = self.runs.get(run) else {
            return History {
                elapsed: now.saturating_sub(issued_at),
                tool_used_before: used_before,
                ..Default::default()
            };
        };
        let (tool_n, actions) = r
            .per_tool
            .get(key.2)
            .map(|(n, a)| (*n, a.iter().map(|(k, v)| (k.clone(), *v)).collect()))
            .unwrap_or((0, Vec::new()));
        let (rate, denials) = r
            .recent
            .iter()
            .filter(|(t, _, _)| t + WINDOW > now)
            .fold((0u64, 0u64), |(n, d), (_, rn, rd)| (n + rn, d + rd));
        History {
            exchanges: r.exchanges,
            tool_exchanges: tool_n,
            action_exchanges: actions,
            labels_touched: r.labels.iter().cloned().collect(),
            amount_total: r.amount_total,
            elapsed: now.saturating_sub(issued_at),
            tool_used_before: used_before,
            rate_1m: rate,
            denials_1m: denials,
            evals_passed: r.evals_passed.iter().cloned().collect(),
        }
    }

    /// Forgets a run that has ended or been revoked.
    pub fn forget(&mut self, run: &str) {
        self.runs.remove(run);
    }

    /// Runs idle longer than `secs` (the longest a mandate lives) are over.
    pub fn set_max_idle(&mut self, secs: u64) {
        self.max_idle = secs;
    }

    fn run(&mut self, run: &str, now: u64) -> &mut RunStats {
        let sweep_at = self.sweep_at.clamp(SWEEP_MIN, MAX_RUNS);
        if self.runs.len() >= sweep_at && !self.runs.contains_key(run) {
            // Forget the runs over: not seen for longer than a mandate lives.
            let idle = if self.max_idle == 0 {
                86_400
            } else {
                self.max_idle
            };
            let cutoff = now.saturating_sub(idle);
            self.runs.retain(|_, r| r.last_seen >= cutoff);
            self.sweep_at = (self.runs.len() * 2).max(SWEEP_MIN);
        }
        let r = self.runs.entry(run.to_owned()).or_default();
        r.last_seen = now;
        r
    }

    /// A request was judged (allowed or denied): counts toward the rate.
    pub fn request(&mut self, run: &str, now: u64, denied: bool) {
        let r = self.run(run, now);
        while r.recent.front().is_some_and(|(t, _, _)| t + WINDOW <= now) {
            r.recent.pop_front();
        }
        // A clock that stepped back: buckets dated after now are dropped
        // (kept, the newest would count every request until the clock
        // caught up, and the rate would grow without bound).
        while r.recent.back().is_some_and(|(t, _, _)| *t > now) {
            r.recent.pop_back();
        }
        let denied = u64::from(denied);
        match r.recent.back_mut() {
            Some((t, n, d)) if *t == now => {
                *n += 1;
                *d += denied;
            }
            _ => r.recent.push_back((now, 1, denied)),
        }
    }

    /// Whether `kind` has not been alerted for `run` yet (and now is).
    pub fn first_alert(&mut self, run: &str, kind: &'static str) -> bool {
        if self.alerted.len() > MAX_RUNS {
            self.alerted.clear();
        }
        self.alerted.insert((run.to_owned(), kind))
    }

    /// A credential was issued; returns whether it is the agent's first
    /// for this tool.
    pub fn issued(
        &mut self,
        key: (&str, &str, &str),
        run: &str,
        actions: &[String],
        labels: &[String],
        amount: Option<i64>,
        now: u64,
    ) -> bool {
        let first = self
            .agent_tools
            .insert((key.0.to_owned(), key.1.to_owned(), key.2.to_owned()));
        let r = self.run(run, now);
        r.exchanges += 1;
        let t = r.per_tool.entry(key.2.to_owned()).or_default();
        t.0 += 1;
        for a in actions {
            *t.1.entry(a.clone()).or_default() += 1;
        }
        r.labels.extend(labels.iter().cloned());
        // The exchange refused any amount that would pass the bound
        // (`policy::add_amount`); a total rebuilt from a tampered trail
        // that would still pass it stays at the bound, which refuses.
        r.amount_total = mandate_core::policy::add_amount(r.amount_total, amount.unwrap_or(0))
            .unwrap_or(mandate_core::policy::MAX_AMOUNT_TOTAL);
        first
    }

    /// An eval gate was reported for a run.
    pub fn eval(&mut self, run: &str, name: &str, passed: bool, now: u64) {
        let r = self.run(run, now);
        if passed {
            r.evals_passed.insert(name.to_owned());
        } else {
            r.evals_passed.remove(name);
        }
    }

    /// Marks that an agent used a tool (from the audit trail at start).
    pub fn used(&mut self, tenant: String, agent: String, tool: String) {
        self.agent_tools.insert((tenant, agent, tool));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_idle_longer_than_a_mandate_lives_are_forgotten() {
        let mut h = Histories::default();
        h.set_max_idle(300);
        for i in 0..5_000u64 {
            // One new run a second, each seen once.
            h.request(&format!("run_{i}"), i, false);
        }
        // Only about the last 300 s of runs (plus what a sweep leaves) stay.
        assert!(h.runs.len() <= 2 * SWEEP_MIN + 300, "{}", h.runs.len());
        assert!(h.runs.contains_key("run_4999"));
        assert!(!h.runs.contains_key("run_0"));
    }

    #[test]
    fn the_rate_counts_every_request_of_the_last_minute_exactly() {
        let mut h = Histories::default();
        // 50,000 requests in one second (more than any cap would keep),
        // every tenth denied, then 10 more a minute minus one second later.
        for i in 0..50_000u64 {
            h.request("run_a", 1_000, i % 10 == 0);
        }
        let f = h.facts("run_a", 900, ("t", "a", "tool"), 1_000);
        assert_eq!((f.rate_1m, f.denials_1m), (50_000, 5_000));
        for _ in 0..10 {
            h.request("run_a", 1_059, false);
        }
        let f = h.facts("run_a", 900, ("t", "a", "tool"), 1_059);
        assert_eq!((f.rate_1m, f.denials_1m), (50_010, 5_000));
        // A minute after the burst only the later ten remain.
        let f = h.facts("run_a", 900, ("t", "a", "tool"), 1_060);
        assert_eq!((f.rate_1m, f.denials_1m), (10, 0));
        assert!(h.runs["run_a"].recent.len() <= WINDOW as usize);
        // The clock jumps an hour ahead (the minute before is forgotten),
        // then back: the hour-ahead second does not keep counting what
        // happens after the correction.
        h.request("run_a", 4_660, false);
        for _ in 0..100 {
            h.request("run_a", 1_061, false);
        }
        let f = h.facts("run_a", 900, ("t", "a", "tool"), 1_061);
        assert_eq!(f.rate_1m, 100);
    }
}
