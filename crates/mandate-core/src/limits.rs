//! Bounds on what callers can make the broker hold or write: connection
//! slots per client, and an audit throttle for refusals nobody has
//! authenticated. Pure: the caller passes time (milliseconds) in; every
//! map here is bounded.

use std::collections::HashMap;
use std::hash::Hash;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRefusal {
    /// The broker holds its most connections.
    Full {
        /// The limit.
        max: usize,
    },
    /// This client holds its most connections.
    PerClient {
        /// The limit.
        max: usize,
    },
}

impl std::fmt::Display for SlotRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlotRefusal::Full { max } => write!(
                f,
                "the broker holds its limit of {max} open connections; retry shortly"
            ),
            SlotRefusal::PerClient { max } => write!(
                f,
                "your address holds this broker's limit of {max} open connections; close idle ones (or reuse them) and retry"
            ),
        }
    }
}

/// Open connections, in total and per client. Holds one entry per client
/// with an open connection, so it is bounded by the total.
#[derive(Debug)]
pub struct ConnectionSlots<K> {
    per_client: HashMap<K, usize>,
    open: usize,
    max_total: usize,
    max_per_client: usize,
}

impl<K: Hash + Eq + Clone> ConnectionSlots<K> {
    /// At most `max_total` connections, `max_per_client` of them from one client.
    pub fn new(max_total: usize, max_per_client: usize) -> Self {
        Self {
            per_client: HashMap::new(),
            open: 0,
            max_total,
            max_per_client: max_per_client.min(max_total),
        }
    }

    /// Takes a slot for `client`, or says why not.
    pub fn acquire(&mut self, client: &K) -> Result<(), SlotRefusal> {
        if self.open >= self.max_total {
            return Err(SlotRefusal::Full {
                max: self.max_total,
            });
        }
        let n = self.per_client.get(client).copied().unwrap_or(0);
        if n >= self.max_per_client {
            return Err(SlotRefusal::PerClient {
                max: self.max_per_client,
            });
        }
        self.per_client.insert(client.clone(), n + 1);
        self.open += 1;
        Ok(())
    }

    /// Gives back a slot `client` took.
    pub fn release(&mut self, client: &K) {
        if let Some(n) = self.per_client.get_mut(client) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(client);
            }
            self.open -= 1;
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open
    }
}

/// What to do with a refusal nobody authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Write an event now; it stands for `count` refusals (this one and
    /// those counted since this client's last event).
    Record {
        /// Refusals the event stands for.
        count: u64,
    },
    /// Counted; a later event (from [`RefusalThrottle::drain`]) reports it.
    Counted,
}

/// Refusals counted for one client since its last event.
#[derive(Debug, Clone)]
struct Window {
    start_ms: u64,
    counted: u64,
    reason: String,
}

/// Refusals counted and not yet written, from [`RefusalThrottle::drain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted<K> {
    /// The client, or `None` for clients beyond the throttle's capacity.
    pub client: Option<K>,
    /// How many refusals.
    pub count: u64,
    /// The last one's reason.
    pub reason: String,
}

/// Longest reason kept per client.
const MAX_REASON: usize = 200;

/// At most one audit event per client per window for refusals nobody has
/// authenticated (a bad admin credential, a join token that is not one, a
/// connection over the limit), with a count of the others, so a caller at
/// line rate cannot grow the trail without bound. At most `max_records`
/// immediate events per window over all clients, and at most `capacity`
/// clients tracked: beyond those, refusals are counted together.
#[derive(Debug)]
pub struct RefusalThrottle<K> {
    window_ms: u64,
    capacity: usize,
    max_records: u64,
    clients: HashMap<K, Window>,
    overflow: Option<Window>,
    records: (u64, u64),
}

impl<K: Hash + Eq + Clone> RefusalThrottle<K> {
    /// One event per client per `window_ms`; `capacity` clients tracked;
    /// `max_records` immediate events per window in all.
    pub fn new(window_ms: u64, capacity: usize, max_records: u64) -> Self {
        Self {
            window_ms: window_ms.max(1),
            capacity,
            max_records,
            clients: HashMap::new(),
            overflow: None,
            records: (0, 0),
        }
    }

    fn bounded(reason: &str) -> String {
        reason.chars().take(MAX_REASON).collect()
    }

    /// Notes a refusal of `client` for `reason` at `now_ms`.
    pub fn note(&mut self, client: K, reason: &str, now_ms: u64) -> Admit {
        if now_ms.saturating_sub(self.records.0) >= self.window_ms {
            self.records = (now_ms, 0);
        }
        if let Some(w) = self.clients.get_mut(&client) {
            if now_ms.saturating_sub(w.start_ms) < self.window_ms {
                w.counted += 1;
                w.reason = Self::bounded(reason);
                return Admit::Counted;
            }
            let count = w.counted + 1;
            *w = Window {
                start_ms: now_ms,
                counted: 0,
                reason: String::new(),
            };
            self.records.1 += 1;
            return Admit::Record { count };
        }
        if self.clients.len() >= self.capacity {
            self.clients
                .retain(|_, w| w.counted > 0 || now_ms.saturating_sub(w.start_ms) < self.window_ms);
        }
        if self.clients.len() >= self.capacity || self.records.1 >= self.max_records {
            let o = self.overflow.get_or_insert(Window {
                start_ms: now_ms,
                counted: 0,
                reason: String::new(),
            });
            o.counted += 1;
            o.reason = Self::bounded(reason);
            return Admit::Counted;
        }
        self.clients.insert(
            client,
            Window {
                start_ms: now_ms,
                counted: 0,
                reason: String::new(),
            },
        );
        self.records.1 += 1;
        Admit::Record { count: 1 }
    }

    /// Refusals counted in windows that have ended: one entry per client
    /// (then forgotten), and one for all clients beyond the capacity.
    pub fn drain(&mut self, now_ms: u64) -> Vec<Counted<K>> {
        let window = self.window_ms;
        let mut out = Vec::new();
        self.clients.retain(|k, w| {
            if now_ms.saturating_sub(w.start_ms) < window {
                return true;
            }
            if w.counted > 0 {
                out.push(Counted {
                    client: Some(k.clone()),
                    count: w.counted,
                    reason: std::mem::take(&mut w.reason),
                });
            }
            false
        });
        if let Some(o) = self
            .overflow
            .take_if(|o| now_ms.saturating_sub(o.start_ms) >= window)
        {
            out.push(Counted {
                client: None,
                count: o.counted,
                reason: o.reason,
            });
        }
        out
    }

    /// Clients tracked now.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// True when no client is tracked.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_in_total_and_per_client() {
        let mut s = ConnectionSlots::new(3, 2);
        assert!(s.acquire(&"a").is_ok());
        assert!(s.acquire(&"a").is_ok());
        assert_eq!(s.acquire(&"a"), Err(SlotRefusal::PerClient { max: 2 }));
        assert!(s.acquire(&"b").is_ok());
        assert_eq!(s.acquire(&"c"), Err(SlotRefusal::Full { max: 3 }));
        s.release(&"a");
        assert!(s.acquire(&"c").is_ok());
        assert_eq!(s.open(), 3);
        // Releasing what was never taken changes nothing.
        s.release(&"z");
        assert_eq!(s.open(), 3);
        for k in ["a", "b", "c"] {
            s.release(&k);
        }
        assert_eq!((s.open(), s.per_client.len()), (0, 0));
        assert!(
            SlotRefusal::PerClient { max: 2 }
                .to_string()
                .contains("your address holds this broker's limit of 2")
        );
    }

    #[test]
    fn one_event_per_client_per_window_with_a_count() {
        let mut t = RefusalThrottle::new(1000, 10, 100);
        assert_eq!(t.note("ip1", "bad token", 0), Admit::Record { count: 1 });
        for i in 1..=50 {
            assert_eq!(t.note("ip1", "bad token", i), Admit::Counted);
        }
        // Another client has its own window.
        assert_eq!(t.note("ip2", "bad token", 10), Admit::Record { count: 1 });
        // Nothing drained before the window ends.
        assert!(t.drain(999).is_empty());
        let d = t.drain(1000);
        assert_eq!(
            d,
            vec![Counted {
                client: Some("ip1"),
                count: 50,
                reason: "bad token".into()
            }]
        );
        // Drained clients are forgotten; ip2 (nothing counted) once its
        // window ends, with nothing to write.
        assert_eq!(t.len(), 1);
        assert!(t.drain(1010).is_empty());
        assert!(t.is_empty());
        assert_eq!(t.note("ip1", "x", 1001), Admit::Record { count: 1 });
    }

    #[test]
    fn a_note_after_the_window_reports_what_was_counted() {
        let mut t = RefusalThrottle::new(1000, 10, 100);
        t.note("ip1", "a", 0);
        t.note("ip1", "b", 5);
        t.note("ip1", "c", 6);
        assert_eq!(t.note("ip1", "d", 1500), Admit::Record { count: 3 });
        assert!(t.drain(1600).is_empty());
    }

    #[test]
    fn many_clients_are_counted_together_beyond_the_bounds() {
        let mut t = RefusalThrottle::new(1000, 4, 100);
        for i in 0..4u32 {
            assert_eq!(t.note(i, "r", 0), Admit::Record { count: 1 });
        }
        for i in 4..1000u32 {
            assert_eq!(t.note(i, "r", 1), Admit::Counted);
        }
        assert_eq!(t.len(), 4);
        let d = t.drain(1001);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].client, d[0].count), (None, 996));
        // At most `max_records` immediate events per window, in all.
        let mut t = RefusalThrottle::new(1000, 1000, 3);
        let records = (0..100u32)
            .filter(|i| t.note(*i, "r", 0) != Admit::Counted)
            .count();
        assert_eq!(records, 3);
        let long = "x".repeat(10_000);
        t.note(5000, &long, 1);
        assert!(t.drain(2000)[0].reason.len() <= MAX_REASON);
    }
}
