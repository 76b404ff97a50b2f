//! Signed audit checkpoints, kept outside the data directory.
//!
//! After commits (every `audit_checkpoint_every` events, every
//! `audit_checkpoint_secs` seconds, and at shutdown) the broker signs the
//! audit trail's head with its Ed25519 credential key (a JWKS key) and
//! replaces the checkpoint file atomically. At start it refuses data that
//! does not extend the file's checkpoint (events cut or rewritten while it
//! was stopped); `GET /v1/audit/checkpoint` hands the latest one out so
//! operators can keep copies elsewhere, and `audit verify` checks against it.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mandate_core::audit::{
    Checkpoint, EventBody, MAX_CHECKPOINT_LEN, VerifiedCheckpoint, verify_checkpoint,
};
use mandate_core::keys::SigningKey;
use mandate_store::{AuditFilter, Store};

use crate::config::{BootError, Config};

/// Writes checkpoints of the audit head.
pub struct Checkpointer {
    file: PathBuf,
    issuer: String,
    key: SigningKey,
    every: u64,
    clock: std::sync::Arc<dyn mandate_core::clock::Clock>,
    inner: Mutex<Inner>,
}

struct Inner {
    head: (u64, String),
    latest: Option<VerifiedCheckpoint>,
    last_error: Option<String>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl Checkpointer {
    /// A checkpointer at `head`, whose last checkpoint is `latest`.
    pub fn new(
        file: PathBuf,
        issuer: String,
        key: SigningKey,
        every: u64,
        clock: std::sync::Arc<dyn mandate_core::clock::Clock>,
        head: (u64, String),
        latest: Option<VerifiedCheckpoint>,
    ) -> Self {
        Checkpointer {
            file,
            issuer,
            key,
            every: every.max(1),
            clock,
            inner: Mutex::new(Inner {
                head,
                latest,
                last_error: None,
            }),
        }
    }

    /// The broker's checkpointer: writes a checkpoint of `head` at once
    /// (covering what start wrote), and refuses to start if it cannot.
    pub fn start(
        cfg: &Config,
        key: SigningKey,
        head: (u64, String),
        anchored: Option<VerifiedCheckpoint>,
    ) -> Result<Arc<Self>, BootError> {
        let c = Arc::new(Self::new(
            cfg.audit_checkpoint_file.clone(),
            cfg.issuer.clone(),
            key,
            cfg.audit_checkpoint_every,
            std::sync::Arc::clone(&cfg.clock),
            head,
            anchored,
        ));
        c.flush();
        match c.last_error() {
            Some(e) => Err(BootError(format!(
                "{e}; the broker needs it to anchor the audit trail (choose another place with --audit-checkpoint-file)"
            ))),
            None => Ok(c),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The file checkpoints are written to.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Called after each commit with the new head, before anyone hears of
    /// it (so a checkpoint asked for afterwards covers it); returns whether
    /// `every` events have passed since the last checkpoint (then call
    /// [`Checkpointer::flush`]).
    pub fn advance(&self, seq: u64, hash: &str) -> bool {
        let mut g = self.lock();
        if seq > g.head.0 {
            g.head = (seq, hash.to_owned());
        }
        let at = g.latest.as_ref().map_or(0, |c| c.checkpoint.seq);
        g.head.0 >= at + self.every
    }

    /// [`Checkpointer::advance`], then [`Checkpointer::flush`] when due.
    pub fn committed(&self, seq: u64, hash: &str) {
        if self.advance(seq, hash) {
            self.flush();
        }
    }

    /// Signs and writes a checkpoint of the head if it moved since the last
    /// one; returns the latest checkpoint. A file that cannot be written is
    /// logged and reported by [`Checkpointer::last_error`]; the checkpoint is
    /// still handed out by the API.
    pub fn flush(&self) -> Option<VerifiedCheckpoint> {
        let mut g = self.lock();
        let at = g.latest.as_ref().map_or(0, |c| c.checkpoint.seq);
        if g.head.0 > at {
            let cp = Checkpoint::of_head(&self.issuer, g.head.0, &g.head.1, self.clock.now_ms())
                .sign(&self.key);
            match write_atomically(&self.file, cp.jws.as_bytes()) {
                Ok(()) => g.last_error = None,
                Err(e) => {
                    let msg = format!(
                        "cannot write the audit checkpoint {}: {e}",
                        self.file.display()
                    );
                    tracing::error!("{msg}");
                    g.last_error = Some(msg);
                }
            }
            g.latest = Some(cp);
        }
        g.latest.clone()
    }

    /// The latest checkpoint made.
    pub fn latest(&self) -> Option<VerifiedCheckpoint> {
        self.lock().latest.clone()
    }

    /// Why the last checkpoint could not be written to its file, if it could not.
    pub fn last_error(&self) -> Option<String> {
        self.lock().last_error.clone()
    }
}

/// Replaces `path` with `data`: a temporary file, synced, renamed over it,
/// and the directory synced, so a crash leaves the old or the new one.
fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

/// Reads and checks the checkpoint file at start: signed by one of this
/// broker's keys (`jwks`), and extended by the stored trail (it reaches the
/// checkpoint's event with the same hash). `None` when there is no file.
pub fn load(
    file: &Path,
    data_dir: &Path,
    jwks: &serde_json::Value,
    store: &dyn Store,
    head: (u64, &str),
    first_start: bool,
) -> Result<Option<VerifiedCheckpoint>, BootError> {
    let data = data_dir.canonicalize().unwrap_or(data_dir.to_path_buf());
    let parent = file
        .parent()
        .map(|p| p.canonicalize().unwrap_or(p.to_path_buf()));
    if parent.as_deref().is_some_and(|p| p.starts_with(&data)) {
        return Err(BootError(format!(
            "the audit checkpoint file {} is inside the data directory {}; keep it elsewhere (--audit-checkpoint-file), or whoever can rewrite the data can rewrite it too",
            file.display(),
            data_dir.display()
        )));
    }
    let text = match fs::read(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(BootError(format!("cannot read {}: {e}", file.display()))),
    };
    if first_start {
        return Err(BootError(format!(
            "the data directory {} has no audit trail and no keys, but the audit checkpoint {} exists: the database was removed or replaced; restore it, or, to start a new broker, move {} aside",
            data_dir.display(),
            file.display(),
            file.display()
        )));
    }
    let aside = format!(
        "restore the database from a backup that has those events; to start on this data anyway, move {} aside (keep it: `mandate audit verify --checkpoint <it>` shows what it no longer matches)",
        file.display()
    );
    let text = String::from_utf8(text)
        .ok()
        .filter(|t| t.len() <= MAX_CHECKPOINT_LEN + 16)
        .ok_or_else(|| BootError(format!("{} is not an audit checkpoint", file.display())))?;
    let cp = verify_checkpoint(&text, jwks).map_err(|e| {
        BootError(format!(
            "the audit checkpoint {} does not verify with this broker's keys: {e}; if it is not this broker's, move it aside",
            file.display()
        ))
    })?;
    let seq = cp.checkpoint.seq;
    if head.0 < seq {
        return Err(BootError(format!(
            "the audit trail ends at event {} but the signed checkpoint {} covers {seq} events: events {}..={seq} were removed from the database; {aside}",
            head.0,
            file.display(),
            head.0 + 1
        )));
    }
    let at = store
        .audit_query(&AuditFilter {
            after_seq: Some(seq - 1),
            limit: Some(1),
            ..Default::default()
        })
        .map_err(|e| BootError(format!("cannot read the audit trail: {e}")))?;
    match at.first() {
        Some(ev) if ev.seq == seq && ev.hash == cp.checkpoint.hash => Ok(Some(cp)),
        _ => Err(BootError(format!(
            "event {seq} of the audit trail does not have the hash the signed checkpoint {} gives it: events up to {seq} were rewritten; {aside}",
            file.display()
        ))),
    }
}

/// At start, before anything is written: the checkpoint the stored trail
/// must extend (see [`load`]); and when a broker that has events has no
/// checkpoint file, the event that records that its events up to now are
/// not anchored.
pub fn at_start(
    cfg: &Config,
    jwks: &serde_json::Value,
    store: &dyn Store,
    head: (u64, &str),
    first_start: bool,
) -> Result<(Option<VerifiedCheckpoint>, Option<EventBody>), BootError> {
    let file = &cfg.audit_checkpoint_file;
    let anchored = load(file, &cfg.data_dir, jwks, store, head, first_start)?;
    if anchored.is_some() || head.0 == 0 {
        return Ok((anchored, None));
    }
    let why = format!(
        "no audit checkpoint at {}: events 1..={} were not anchored; checkpoints start from here",
        file.display(),
        head.0
    );
    tracing::warn!("{why}");
    Ok((
        None,
        Some(EventBody {
            time_ms: cfg.clock.now_ms(),
            event_type: mandate_core::audit::EventType::AuditCheckpointMissing,
            decision: mandate_core::audit::Decision::Ok,
            actor: Some("broker".into()),
            reason: Some(why),
            ..Default::default()
        }),
    ))
}

/// Flushes a checkpoint every `period` seconds (when the head moved).
pub async fn periodic(c: Arc<Checkpointer>, period: u64) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(period.max(1)));
    tick.tick().await;
    loop {
        tick.tick().await;
        let c = Arc::clone(&c);
        let _ = tokio::task::spawn_blocking(move || c.flush()).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use mandate_core::keys::BrokerKeys;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "mandate-cp-{tag}-{}-{}",
            std::process::id(),
            mandate_core::clock::Clock::now_ms(&mandate_core::clock::SystemClock)
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn read(c: &Checkpointer, keys: &BrokerKeys) -> Option<u64> {
        let text = fs::read_to_string(c.file()).ok()?;
        Some(
            verify_checkpoint(&text, &keys.jwks())
                .unwrap()
                .checkpoint
                .seq,
        )
    }

    #[test]
    fn a_checkpoint_is_written_every_n_events_and_on_flush() {
        let keys = BrokerKeys::generate(&mut rand_core::OsRng);
        let file = dir("every").join("audit.checkpoint");
        let h = |n: u8| format!("{n:02x}").repeat(32);
        let c = Checkpointer::new(
            file,
            "http://b".into(),
            keys.jwt_eddsa.clone(),
            3,
            Arc::new(mandate_core::clock::SystemClock),
            (0, h(0)),
            None,
        );
        assert_eq!(c.flush(), None, "nothing to anchor yet");
        c.committed(1, &h(1));
        c.committed(2, &h(2));
        assert_eq!(read(&c, &keys), None);
        c.committed(3, &h(3));
        assert_eq!(read(&c, &keys), Some(3));
        c.committed(4, &h(4));
        assert_eq!(read(&c, &keys), Some(3));
        let latest = c.flush().unwrap();
        assert_eq!((latest.checkpoint.seq, latest.checkpoint.hash), (4, h(4)));
        assert_eq!(read(&c, &keys), Some(4));
        // An older head never replaces a newer checkpoint.
        c.committed(2, &h(2));
        assert_eq!(c.flush().unwrap().checkpoint.seq, 4);
        assert_eq!(c.last_error(), None);
    }

    #[test]
    fn a_file_that_cannot_be_written_is_reported() {
        let keys = BrokerKeys::generate(&mut rand_core::OsRng);
        let blocker = dir("blocked").join("not-a-dir");
        fs::write(&blocker, b"x").unwrap();
        let c = Checkpointer::new(
            blocker.join("audit.checkpoint"),
            "http://b".into(),
            keys.jwt_eddsa,
            10,
            Arc::new(mandate_core::clock::SystemClock),
            (5, "ab".repeat(32)),
            None,
        );
        assert_eq!(c.flush().unwrap().checkpoint.seq, 5);
        assert!(
            c.last_error()
                .unwrap()
                .contains("cannot write the audit checkpoint")
        );
    }
}
