//! Audit events and their hash chain.
//!
//! Each event's hash is SHA-256 over the previous event's hash, the event's
//! sequence number and its canonical JSON body; so editing, removing,
//! reordering or inserting an event breaks every hash after it, and
//! [`ChainVerifier`] names the first event (and column) that no longer fits.
//! Every column of a stored row is covered (see [`AuditColumn`]). What the
//! chain alone cannot show (its last events cut, or an edit carried on
//! through every later hash) a signed [`Checkpoint`] kept outside the
//! database shows. Text from callers is escaped and bounded by
//! [`sanitize_event`] before it is stored.

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
    /// What happened (`tenant.create`, `run.start`, `token.exchange`, ...).
    pub event_type: EventType,
    /// How it was decided (`allow`, `deny`, `ok` for admin changes, ...).
    pub decision: Decision,
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

mod checkpoint;
mod kinds;
mod sanitize;

pub use checkpoint::{
    Anchor, CHECKPOINT_TYP, Checkpoint, MAX_CHECKPOINT_LEN, VerifiedCheckpoint, verify_checkpoint,
};
pub use kinds::{Decision, EventType};
pub use sanitize::{MAX_TEXT, escape_controls, is_unsafe_char, sanitize, sanitize_event};

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
    chain_with_body(prev_seq, prev_hash, body).0
}

/// [`chain`], and the canonical JSON of the body that was hashed (what a
/// store keeps in its `body` column).
pub fn chain_with_body(prev_seq: u64, prev_hash: &str, body: EventBody) -> (ChainedEvent, Vec<u8>) {
    let seq = prev_seq + 1;
    let json = canonical(&body);
    let hash = chain_hash(prev_hash, seq, &json);
    let ev = ChainedEvent {
        seq,
        prev_hash: prev_hash.to_owned(),
        hash,
        body,
    };
    (ev, json)
}

/// A column of the audit table. Every one is covered: `seq`, `prev_hash`
/// and `hash` by the chain, `body` by its hash, and the others (copies of
/// body fields, kept so queries can filter) by [`ChainVerifier`], which
/// checks each against the hashed body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditColumn {
    /// Position in the chain.
    Seq,
    /// The previous event's hash.
    PrevHash,
    /// This event's hash.
    Hash,
    /// The canonical JSON body (what is hashed).
    Body,
    /// Copy of `body.time_ms`.
    TimeMs,
    /// Copy of `body.event_type`.
    EventType,
    /// Copy of `body.decision`.
    Decision,
    /// Copy of `body.tenant`.
    Tenant,
    /// Copy of `body.agent`.
    Agent,
    /// Copy of `body.run`.
    Run,
    /// Copy of `body.principal`.
    Principal,
    /// Copy of `body.tool`.
    Tool,
}

impl AuditColumn {
    /// Every column, in the order of a [`Row`].
    pub const ALL: [AuditColumn; 12] = [
        AuditColumn::Seq,
        AuditColumn::PrevHash,
        AuditColumn::Hash,
        AuditColumn::Body,
        AuditColumn::TimeMs,
        AuditColumn::EventType,
        AuditColumn::Decision,
        AuditColumn::Tenant,
        AuditColumn::Agent,
        AuditColumn::Run,
        AuditColumn::Principal,
        AuditColumn::Tool,
    ];

    /// The column's name in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditColumn::Seq => "seq",
            AuditColumn::PrevHash => "prev_hash",
            AuditColumn::Hash => "hash",
            AuditColumn::Body => "body",
            AuditColumn::TimeMs => "time_ms",
            AuditColumn::EventType => "event_type",
            AuditColumn::Decision => "decision",
            AuditColumn::Tenant => "tenant",
            AuditColumn::Agent => "agent",
            AuditColumn::Run => "run",
            AuditColumn::Principal => "principal",
            AuditColumn::Tool => "tool",
        }
    }
}

/// What one column of a stored row holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Cell {
    /// SQL NULL.
    #[default]
    Null,
    /// An integer.
    Integer(i64),
    /// Text.
    Text(String),
    /// Anything else (a blob, a float): never written by the broker.
    Other(&'static str),
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cell::Null => f.write_str("NULL"),
            Cell::Integer(n) => write!(f, "{n}"),
            Cell::Text(t) => {
                let short: String = t.chars().take(80).collect();
                write!(f, "`{}`", sanitize(&short))
            }
            Cell::Other(kind) => write!(f, "a {kind}"),
        }
    }
}

/// A stored audit row: one [`Cell`] per column of [`AuditColumn::ALL`], in order.
pub type Row = [Cell; 12];

fn opt_cell(v: &Option<String>) -> Cell {
    v.as_ref().map_or(Cell::Null, |s| Cell::Text(s.clone()))
}

/// The cells of the columns copied from `body` (`time_ms` .. `tool`).
fn copied_cells(body: &EventBody) -> [Cell; 8] {
    [
        Cell::Integer(i64::try_from(body.time_ms).unwrap_or(i64::MAX)),
        Cell::Text(body.event_type.as_str().to_owned()),
        Cell::Text(body.decision.as_str().to_owned()),
        opt_cell(&body.tenant),
        opt_cell(&body.agent),
        opt_cell(&body.run),
        opt_cell(&body.principal),
        opt_cell(&body.tool),
    ]
}

/// The row a store writes for `ev`, whose canonical body is `body_json`.
/// [`ChainVerifier`] expects exactly this back.
pub fn stored_row(ev: &ChainedEvent, body_json: &str) -> Row {
    let [t, e, d, te, a, r, p, to] = copied_cells(&ev.body);
    [
        Cell::Integer(i64::try_from(ev.seq).unwrap_or(i64::MAX)),
        Cell::Text(ev.prev_hash.clone()),
        Cell::Text(ev.hash.clone()),
        Cell::Text(body_json.to_owned()),
        t,
        e,
        d,
        te,
        a,
        r,
        p,
        to,
    ]
}

/// Where and why a chain stops verifying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The first event that does not verify (every event before it did).
    pub seq: u64,
    /// The column found altered, when it can be told.
    pub column: Option<AuditColumn>,
    /// What is wrong with it.
    pub reason: String,
}

/// A row whose stored hash is not the hash of its content: its body or
/// its hash column was altered; the next row (or an anchor) tells which.
#[derive(Debug)]
struct Suspect {
    seq: u64,
    stored: String,
    computed: String,
}

/// Incremental chain verifier: feed stored rows in order, then
/// [`ChainVerifier::finish`]. Checks every column of every row, and that
/// the chain reaches each [`Anchor`] (a signed checkpoint) with its hash.
#[derive(Debug)]
pub struct ChainVerifier {
    expected_seq: u64,
    prev_hash: String,
    anchors: Vec<Anchor>,
    suspect: Option<Suspect>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self::anchored(Vec::new())
    }
}

fn brk(seq: u64, column: Option<AuditColumn>, reason: impl Into<String>) -> ChainBreak {
    ChainBreak {
        seq,
        column,
        reason: reason.into(),
    }
}

fn text(row: &Row, col: AuditColumn, seq: u64) -> Result<&str, ChainBreak> {
    match &row[col as usize] {
        Cell::Text(t) => Ok(t),
        other => Err(brk(
            seq,
            Some(col),
            format!("its `{}` holds {other}, not text", col.as_str()),
        )),
    }
}

impl ChainVerifier {
    /// A verifier that also requires the chain to have each anchor's hash
    /// at its sequence number.
    pub fn anchored(mut anchors: Vec<Anchor>) -> Self {
        anchors.sort_by_key(|a| a.seq);
        Self {
            expected_seq: 1,
            prev_hash: GENESIS.to_owned(),
            anchors,
            suspect: None,
        }
    }

    /// A verifier that takes the chain up after `from`, a checkpoint
    /// verified before (its event `from.seq` had hash `from.hash`): the
    /// rows after it must follow on from that hash (and reach each later
    /// anchor). The rows up to it are not looked at; a whole verification
    /// checks those (issue 12: incremental verification).
    pub fn resumed(from: &Anchor, anchors: Vec<Anchor>) -> Self {
        let mut v = Self::anchored(anchors.into_iter().filter(|a| a.seq > from.seq).collect());
        v.expected_seq = from.seq + 1;
        v.prev_hash = from.hash.clone();
        v
    }

    /// Checks the next stored row.
    pub fn next(&mut self, row: &Row) -> Result<(), ChainBreak> {
        self.link(Examined::of(row.clone()))
    }

    /// Checks the next stored row, [examined](Examined::of) already (so
    /// rows can be examined in parallel and linked in order).
    pub fn link(&mut self, e: Examined) -> Result<(), ChainBreak> {
        let Examined { row, seq, work } = e;
        let want = self.expected_seq;
        let Some(seq) = seq else {
            return Err(brk(
                want,
                Some(AuditColumn::Seq),
                format!("the next row's `seq` holds {}", row[0]),
            ));
        };
        if let Some(s) = self.suspect.take() {
            let successor = text(&row, AuditColumn::PrevHash, seq).unwrap_or_default();
            return Err(s.resolve(Some(successor)));
        }
        if seq != want {
            return Err(brk(
                want,
                Some(AuditColumn::Seq),
                format!("event {want} is missing (found {seq} next)"),
            ));
        }
        let prev_hash = text(&row, AuditColumn::PrevHash, seq)?;
        if prev_hash != self.prev_hash {
            return Err(brk(
                seq,
                Some(AuditColumn::PrevHash),
                "its prev_hash does not match the previous event's hash",
            ));
        }
        let Work {
            hash,
            computed,
            copies,
        } = work?;
        self.expected_seq += 1;
        if computed != hash {
            let s = Suspect {
                seq,
                stored: hash.clone(),
                computed,
            };
            self.prev_hash = hash;
            return match self.anchor_at(seq) {
                Some(a) => Err(s.resolve(Some(&a.hash))),
                None => {
                    self.suspect = Some(s);
                    Ok(())
                }
            };
        }
        copies?;
        if let Some(a) = self.anchors.iter().find(|a| a.seq == seq && a.hash != hash) {
            return Err(brk(
                seq,
                None,
                format!(
                    "the chain verifies, but its hash at event {seq} is not the one in {}: events up to {seq} were rewritten and the later hashes recomputed",
                    a.label
                ),
            ));
        }
        self.prev_hash = hash;
        Ok(())
    }

    fn anchor_at(&self, seq: u64) -> Option<&Anchor> {
        self.anchors.iter().find(|a| a.seq == seq)
    }

    /// Ends verification: the last row's hash must be its content's, and
    /// the chain must reach every anchor. Returns the events verified.
    pub fn finish(&mut self) -> Result<u64, ChainBreak> {
        if let Some(s) = self.suspect.take() {
            return Err(s.resolve(None));
        }
        let count = self.count();
        if let Some(a) = self.anchors.iter().rev().find(|a| a.seq > count) {
            let missing = if a.seq == count + 1 {
                format!("event {} is missing", a.seq)
            } else {
                format!("events {}..={} are missing", count + 1, a.seq)
            };
            return Err(brk(
                count + 1,
                None,
                format!(
                    "{missing}: {} covers {} events, but the trail ends at event {count} (its last events were removed)",
                    a.label, a.seq
                ),
            ));
        }
        Ok(count)
    }

    /// Events verified so far (a row awaiting its successor's word excluded).
    pub fn count(&self) -> u64 {
        self.expected_seq - 1 - u64::from(self.suspect.is_some())
    }

    /// The sequence number and hash of the last event verified.
    pub fn head(&self) -> (u64, &str) {
        (self.count(), &self.prev_hash)
    }
}

/// The break an incremental verification reports when the event its
/// checkpoint names is gone, or no longer has the checkpoint's hash
/// (`stored`: that event's hash column, if the event is there).
pub fn resume_point_break(from: &Anchor, stored: Option<&str>) -> Option<ChainBreak> {
    match stored {
        Some(h) if h == from.hash => None,
        Some(_) => Some(brk(
            from.seq,
            Some(AuditColumn::Hash),
            format!(
                "event {} no longer has the hash {} records: the trail was changed up to it (run a whole verification)",
                from.seq, from.label
            ),
        )),
        None => Some(brk(
            from.seq,
            None,
            format!(
                "event {}, which {} covers, is missing: the trail was cut (run a whole verification)",
                from.seq, from.label
            ),
        )),
    }
}

/// What can be told of one stored row alone, without the rows before it:
/// its body parsed and in canonical form, its hash recomputed over its own
/// `prev_hash`, and its copied columns matching the body. The costly part
/// of verification, so a store may examine rows in parallel and
/// [link](ChainVerifier::link) them in order.
#[derive(Debug)]
pub struct Examined {
    row: Row,
    seq: Option<u64>,
    work: Result<Work, ChainBreak>,
}

#[derive(Debug)]
struct Work {
    hash: String,
    computed: String,
    copies: Result<(), ChainBreak>,
}

impl Examined {
    /// Examines `row`.
    pub fn of(row: Row) -> Self {
        let seq = match &row[0] {
            Cell::Integer(n) => Some(u64::try_from(*n).unwrap_or(0)),
            _ => None,
        };
        let work = match seq {
            Some(seq) => Self::work(&row, seq),
            None => Err(brk(0, Some(AuditColumn::Seq), "no sequence number")),
        };
        Self { row, seq, work }
    }

    fn work(row: &Row, seq: u64) -> Result<Work, ChainBreak> {
        let prev_hash = text(row, AuditColumn::PrevHash, seq)?;
        let body_json = text(row, AuditColumn::Body, seq)?;
        let hash = text(row, AuditColumn::Hash, seq)?.to_owned();
        // Canonical form: a body that re-serialises differently was edited by hand.
        let parsed: EventBody = serde_json::from_str(body_json).map_err(|e| {
            brk(
                seq,
                Some(AuditColumn::Body),
                format!("its body is not a valid event: {e}"),
            )
        })?;
        if canonical(&parsed) != body_json.as_bytes() {
            return Err(brk(
                seq,
                Some(AuditColumn::Body),
                "its body is not in canonical form",
            ));
        }
        let computed = chain_hash(prev_hash, seq, body_json.as_bytes());
        let copies = check_copies(seq, row, &parsed);
        Ok(Work {
            hash,
            computed,
            copies,
        })
    }
}

impl Suspect {
    /// Which column was altered, told by the hash the next event links to
    /// (or an anchor's hash, or neither).
    fn resolve(self, witness: Option<&str>) -> ChainBreak {
        match witness {
            Some(w) if w == self.computed => brk(
                self.seq,
                Some(AuditColumn::Hash),
                "its stored hash was altered (its content has the hash the chain expects)",
            ),
            Some(w) if w == self.stored => brk(
                self.seq,
                Some(AuditColumn::Body),
                "its content does not match its hash: the event was altered",
            ),
            _ => brk(
                self.seq,
                Some(AuditColumn::Body),
                "its content does not match its hash (the event, and perhaps its hash, was altered)",
            ),
        }
    }
}

/// Each copied column must hold what the hashed body says.
fn check_copies(seq: u64, row: &Row, body: &EventBody) -> Result<(), ChainBreak> {
    let want = copied_cells(body);
    for (i, w) in want.iter().enumerate() {
        let col = AuditColumn::ALL[4 + i];
        let got = &row[4 + i];
        if got != w {
            return Err(brk(
                seq,
                Some(col),
                format!(
                    "column `{}` holds {got}, but the event (as hashed) says {w}: the column was altered",
                    col.as_str()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: &str) -> EventBody {
        EventBody {
            time_ms: 1,
            event_type: EventType::parse(t),
            decision: crate::audit::Decision::Deny,
            tenant: Some("acme".into()),
            ..Default::default()
        }
    }

    fn build(n: usize) -> Vec<Row> {
        let mut out = Vec::new();
        let (mut seq, mut prev) = (0, GENESIS.to_owned());
        for i in 0..n {
            let e = chain(seq, &prev, ev(&format!("e{i}")));
            seq = e.seq;
            prev = e.hash.clone();
            let j = String::from_utf8(canonical(&e.body)).unwrap();
            out.push(stored_row(&e, &j));
        }
        out
    }

    fn verify_with(rows: &[Row], anchors: Vec<Anchor>) -> Result<u64, ChainBreak> {
        let mut v = ChainVerifier::anchored(anchors);
        for r in rows {
            v.next(r)?;
        }
        v.finish()
    }

    fn verify(rows: &[Row]) -> Result<u64, ChainBreak> {
        verify_with(rows, Vec::new())
    }

    fn set(rows: &mut [Row], seq: usize, col: AuditColumn, cell: Cell) {
        rows[seq - 1][col as usize] = cell;
    }

    fn anchor(rows: &[Row], seq: usize) -> Anchor {
        let Cell::Text(h) = &rows[seq - 1][AuditColumn::Hash as usize] else {
            panic!("hash is text")
        };
        Anchor {
            seq: seq as u64,
            hash: h.clone(),
            label: "the test checkpoint".into(),
        }
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(verify(&build(5)), Ok(5));
        let rows = build(5);
        assert_eq!(
            verify_with(&rows, vec![anchor(&rows, 5), anchor(&rows, 2)]),
            Ok(5)
        );
    }

    #[test]
    fn altered_body_is_named() {
        let mut c = build(5);
        let forged = String::from_utf8(canonical(&ev("forged"))).unwrap();
        set(&mut c, 3, AuditColumn::Body, Cell::Text(forged.clone()));
        let b = verify(&c).unwrap_err();
        assert_eq!((b.seq, b.column), (3, Some(AuditColumn::Body)), "{b:?}");
        // The last event too.
        let mut c = build(5);
        set(&mut c, 5, AuditColumn::Body, Cell::Text(forged));
        let b = verify(&c).unwrap_err();
        assert_eq!((b.seq, b.column), (5, Some(AuditColumn::Body)), "{b:?}");
    }

    #[test]
    fn altered_hash_is_told_from_an_altered_body() {
        let mut c = build(5);
        set(&mut c, 2, AuditColumn::Hash, Cell::Text("00".repeat(32)));
        let b = verify(&c).unwrap_err();
        assert_eq!((b.seq, b.column), (2, Some(AuditColumn::Hash)), "{b:?}");
        // The last event: an anchor at it tells which.
        let mut c = build(5);
        let a = anchor(&c, 5);
        set(&mut c, 5, AuditColumn::Hash, Cell::Text("11".repeat(32)));
        let b = verify_with(&c, vec![a]).unwrap_err();
        assert_eq!((b.seq, b.column), (5, Some(AuditColumn::Hash)), "{b:?}");
    }

    #[test]
    fn every_copied_column_is_checked_against_the_body() {
        for col in &AuditColumn::ALL[4..] {
            let mut c = build(4);
            let cell = if *col == AuditColumn::TimeMs {
                Cell::Integer(99)
            } else {
                Cell::Text("allow".into())
            };
            set(&mut c, 3, *col, cell);
            let b = verify(&c).unwrap_err();
            assert_eq!((b.seq, b.column), (3, Some(*col)), "{b:?}");
            assert!(b.reason.contains(col.as_str()), "{}", b.reason);
        }
        let mut c = build(4);
        set(&mut c, 2, AuditColumn::Tenant, Cell::Null);
        assert_eq!(verify(&c).unwrap_err().column, Some(AuditColumn::Tenant));
        set(&mut c, 2, AuditColumn::Tenant, Cell::Other("blob"));
        assert_eq!(verify(&c).unwrap_err().column, Some(AuditColumn::Tenant));
    }

    #[test]
    fn removed_or_reordered_event_is_named() {
        let mut c = build(5);
        c.remove(1);
        let b = verify(&c).unwrap_err();
        assert_eq!((b.seq, b.column), (2, Some(AuditColumn::Seq)));
        let mut c = build(5);
        c.swap(3, 4);
        assert_eq!(verify(&c).unwrap_err().seq, 4);
        let mut c = build(5);
        set(&mut c, 4, AuditColumn::PrevHash, Cell::Text(GENESIS.into()));
        assert_eq!(verify(&c).unwrap_err().column, Some(AuditColumn::PrevHash));
    }

    #[test]
    fn rehashed_forgery_breaks_the_next_link() {
        let mut c = build(4);
        let Cell::Text(h1) = c[0][AuditColumn::Hash as usize].clone() else {
            panic!()
        };
        let forged = chain(1, &h1, ev("forged"));
        c[1] = stored_row(
            &forged,
            &String::from_utf8(canonical(&forged.body)).unwrap(),
        );
        // Event 2 now verifies on its own, but event 3 no longer links to it.
        assert_eq!(verify(&c).unwrap_err().seq, 3);
    }

    /// What an attacker with write access to the database does: edit an
    /// event and recompute every later hash. The chain verifies; only an
    /// anchor from outside shows it.
    #[test]
    fn a_recomputed_rewrite_is_caught_only_by_an_anchor() {
        let honest = build(6);
        let a = anchor(&honest, 5);
        let mut c = honest;
        let mut prev = GENESIS.to_owned();
        for (i, row) in c.iter_mut().enumerate() {
            let seq = i as u64 + 1;
            let Cell::Text(body) = &row[AuditColumn::Body as usize] else {
                panic!()
            };
            let mut b: EventBody = serde_json::from_str(body).unwrap();
            if seq == 3 {
                b.decision = crate::audit::Decision::Allow;
            }
            let e = chain(seq - 1, &prev, b);
            prev = e.hash.clone();
            *row = stored_row(&e, &String::from_utf8(canonical(&e.body)).unwrap());
        }
        assert_eq!(verify(&c), Ok(6));
        let b = verify_with(&c, vec![a]).unwrap_err();
        assert_eq!((b.seq, b.column), (5, None), "{b:?}");
        assert!(b.reason.contains("rewritten"), "{}", b.reason);
    }

    #[test]
    fn truncation_below_an_anchor_names_the_missing_range() {
        let mut c = build(8);
        let a = anchor(&c, 8);
        c.truncate(5);
        assert_eq!(verify(&c), Ok(5));
        let b = verify_with(&c, vec![a.clone()]).unwrap_err();
        assert_eq!(b.seq, 6);
        assert!(
            b.reason.contains("events 6..=8 are missing"),
            "{}",
            b.reason
        );
        let b = verify_with(&[], vec![a]).unwrap_err();
        assert!(b.reason.contains("events 1..=8"), "{}", b.reason);
    }
}
