//! Audit events and their hash chain.
//!
//! Each event's hash is SHA-256 over the previous event's hash, the event's
//! sequence number and its canonical JSON body; so editing, removing,
//! reordering or inserting an event breaks every hash after it, and
//! [`verify_chain`] names the first event that no longer fits.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The hash that precedes the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened. Fields that do not apply are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBody {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// `tenant.create`, `run.start`, `token.exchange`, `revoke`, ...
    pub event_type: String,
    /// `allow`, `deny` or `ok` (for admin changes).
    pub decision: String,
    /// Human-readable reason for a denial (never a secret).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// Tenant concerned.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tenant: Option<String>,
    /// Agent name.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub agent: Option<String>,
    /// Run id.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub run: Option<String>,
    /// Principal on whose behalf.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub principal: Option<String>,
    /// Task.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub task: Option<String>,
    /// Tool.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tool: Option<String>,
    /// Actions requested or granted.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub actions: Vec<String>,
    /// Policies that decided.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub policies: Vec<String>,
    /// Credential id (`jti`) issued or revoked.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub credential_id: Option<String>,
    /// Credential expiry (seconds).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub credential_exp: Option<u64>,
    /// W3C trace id from `traceparent`, or a fresh one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub correlation_id: Option<String>,
    /// Client address.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub client_addr: Option<String>,
    /// Who made an admin change (`admin`, ...).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub actor: Option<String>,
    /// Anything else worth keeping (object; never secrets).
    #[serde(skip_serializing_if = "Value::is_null", default)]
    pub details: Value,
}

/// An event in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainedEvent {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// Hash of the previous event (hex), or [`GENESIS`].
    pub prev_hash: String,
    /// This event's hash (hex).
    pub hash: String,
    /// The event.
    #[serde(flatten)]
    pub body: EventBody,
}

use crate::ids::hex;

/// The canonical bytes of a body: serde_json of the struct (fixed field
/// order; `details` maps are sorted because serde_json's map is a BTreeMap).
pub fn canonical(body: &EventBody) -> Vec<u8> {
    serde_json::to_vec(body).unwrap_or_default()
}

/// The hash of event `seq` with `body` after `prev_hash`.
pub fn chain_hash(prev_hash: &str, seq: u64, body_json: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"mandate-audit-v1\0");
    h.update(prev_hash.as_bytes());
    h.update(seq.to_be_bytes());
    h.update(body_json);
    hex(&h.finalize())
}

/// Appends `body` after `(prev_seq, prev_hash)`.
pub fn chain(prev_seq: u64, prev_hash: &str, body: EventBody) -> ChainedEvent {
    let seq = prev_seq + 1;
    let hash = chain_hash(prev_hash, seq, &canonical(&body));
    ChainedEvent {
        seq,
        prev_hash: prev_hash.to_owned(),
        hash,
        body,
    }
}

/// Where and why a chain stops verifying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The first event that does not verify.
    pub seq: u64,
    /// What is wrong with it.
    pub reason: String,
}

/// Incremental chain verifier: feed events in order.
#[derive(Debug)]
pub struct ChainVerifier {
    expected_seq: u64,
    prev_hash: String,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            expected_seq: 1,
            prev_hash: GENESIS.to_owned(),
        }
    }
}

impl ChainVerifier {
    /// Checks the next event. `body_json` is the body exactly as stored.
    pub fn next(
        &mut self,
        seq: u64,
        prev_hash: &str,
        hash: &str,
        body_json: &[u8],
    ) -> Result<(), ChainBreak> {
        let brk = |reason: String| ChainBreak { seq, reason };
        if seq != self.expected_seq {
            return Err(ChainBreak {
                seq: self.expected_seq,
                reason: format!("event {} is missing (found {seq} next)", self.expected_seq),
            });
        }
        if prev_hash != self.prev_hash {
            return Err(brk(
                "its prev_hash does not match the previous event's hash".into(),
            ));
        }
        let want = chain_hash(prev_hash, seq, body_json);
        if want != hash {
            return Err(brk(
                "its content does not match its hash (the event was altered)".into(),
            ));
        }
        // Canonical form: a body that re-serialises differently was edited by hand.
        let parsed: EventBody = serde_json::from_slice(body_json)
            .map_err(|e| brk(format!("its body is not a valid event: {e}")))?;
        if canonical(&parsed) != body_json {
            return Err(brk("its body is not in canonical form".into()));
        }
        self.expected_seq += 1;
        self.prev_hash = hash.to_owned();
        Ok(())
    }

    /// Events verified so far.
    pub fn count(&self) -> u64 {
        self.expected_seq - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: &str) -> EventBody {
        EventBody {
            time_ms: 1,
            event_type: t.into(),
            decision: "ok".into(),
            ..Default::default()
        }
    }

    fn build(n: usize) -> Vec<(ChainedEvent, Vec<u8>)> {
        let mut out = Vec::new();
        let (mut seq, mut prev) = (0, GENESIS.to_owned());
        for i in 0..n {
            let e = chain(seq, &prev, ev(&format!("e{i}")));
            seq = e.seq;
            prev = e.hash.clone();
            let j = canonical(&e.body);
            out.push((e, j));
        }
        out
    }

    fn verify(events: &[(ChainedEvent, Vec<u8>)]) -> Result<u64, ChainBreak> {
        let mut v = ChainVerifier::default();
        for (e, j) in events {
            v.next(e.seq, &e.prev_hash, &e.hash, j)?;
        }
        Ok(v.count())
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(verify(&build(5)), Ok(5));
    }

    #[test]
    fn altered_event_is_named() {
        let mut c = build(5);
        c[2].1 = canonical(&ev("forged"));
        assert_eq!(verify(&c).unwrap_err().seq, 3);
    }

    #[test]
    fn removed_or_reordered_event_is_named() {
        let mut c = build(5);
        c.remove(1);
        assert_eq!(verify(&c).unwrap_err().seq, 2);
        let mut c = build(5);
        c.swap(3, 4);
        assert_eq!(verify(&c).unwrap_err().seq, 4);
    }

    #[test]
    fn rehashed_forgery_breaks_the_next_link() {
        let mut c = build(4);
        let body = ev("forged");
        let forged = chain(1, &c[0].0.hash, body);
        c[1] = (forged.clone(), canonical(&forged.body));
        // Event 2 now verifies on its own, but event 3 no longer links to it.
        assert_eq!(verify(&c).unwrap_err().seq, 3);
    }
}
