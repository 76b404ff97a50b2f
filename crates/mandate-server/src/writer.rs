//! The single writer: every state change and audit event goes through one
//! thread that commits them in batches (group commit: one transaction and
//! one sync per batch) and only then answers the waiting handlers. A handler
//! returns a credential only after its event is durable, and throughput grows
//! with concurrency instead of being capped by the disk's sync rate.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use mandate_core::audit::sanitize_event;
use mandate_store::{Committed, Entry, Store, StoreError};

use crate::checkpoint::Checkpointer;

/// Largest batch committed at once.
const MAX_BATCH: usize = 512;

/// While the syncer is busy, the writer gathers up to this many entries
/// before it commits anyway (see [`Handover`]).
const GATHER: usize = 64;

/// The writer's view of the syncer: how many commits it was handed and has
/// not synced yet, and the writer's thread, which it wakes after a sync.
///
/// An entry committed while a sync runs waits for the next sync anyway, so
/// while one runs the writer gathers instead of committing at once: one
/// bigger commit then shares its pages (the audit's and indexes' rightmost
/// leaves, the WAL frame of each) among more entries. Measured (W1, 2
/// cores): 2.0 entries per commit and 1.7 commits per sync before; the
/// commit's CPU per entry falls with the batch (`mandate-bench
/// commit-path`).
#[derive(Debug, Default)]
struct Handover {
    pending: std::sync::atomic::AtomicUsize,
    writer: std::sync::OnceLock<std::thread::Thread>,
}

impl Handover {
    fn busy(&self) -> bool {
        self.pending.load(std::sync::atomic::Ordering::Acquire) > 0
    }

    fn handed(&self) {
        self.pending
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// The syncer is done with `commits`: wake the writer.
    fn synced(&self, commits: usize) {
        self.pending
            .fetch_sub(commits, std::sync::atomic::Ordering::AcqRel);
        if let Some(w) = self.writer.get() {
            w.unpark();
        }
    }
}

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The store refused or failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The writer has stopped.
    #[error("the writer has stopped")]
    Closed,
    /// Committed, but whether it is durable is unknown (the sync failed or
    /// could not run): its effects may be on disk, so nothing it did may be
    /// undone in memory, and nothing is answered as done.
    #[error("committed, but the store's sync failed ({0}); restart the broker")]
    Unsynced(String),
}

type Reply = oneshot::Sender<Result<Committed, WriteError>>;
type Job = (Entry, Reply);

/// A batch committed but not yet durable, and who waits for it.
type Unsynced = (Vec<mandate_store::Result<Committed>>, Vec<Reply>);

/// The audit events this broker committed, while other brokers share its
/// store: [`crate::follow`] reads the trail to learn what the others did,
/// and skips these. Held by the writer from its commit until it has added
/// the commit's events, so a reader that saw one of them in the store finds
/// it here once it takes the lock.
#[derive(Debug, Default)]
pub struct OwnEvents {
    /// Whether to keep them (set when the store turns out shared).
    pub enabled: std::sync::atomic::AtomicBool,
    /// Their sequence numbers, until the follower has read past them.
    pub seqs: Mutex<std::collections::BTreeSet<u64>>,
}

/// Handle to the writer thread.
pub struct Writer {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    failed: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

impl Writer {
    /// Starts the writer thread over `store`; after each commit it tells
    /// `checkpoints` the new audit head.
    ///
    /// Two threads: the writer commits a batch ([`Store::commit_unsynced`])
    /// and goes on with the next, while the syncer makes the commits it
    /// was handed durable in one [`Store::sync`] and only then answers
    /// their handlers and moves the checkpointer's head. A failed sync is
    /// final: every waiting and later write fails (the broker answers 503)
    /// rather than guessing what reached the disk.
    pub fn start(
        store: Arc<dyn Store>,
        checkpoints: Arc<Checkpointer>,
        own: Arc<OwnEvents>,
    ) -> Self {
        let (tx, rx) = mpsc::channel::<Job>(8192);
        let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (to_sync, synced) = std::sync::mpsc::channel::<Unsynced>();
        let handover = Arc::new(Handover::default());
        let syncer = {
            let (store, failed, handover) = (
                Arc::clone(&store),
                Arc::clone(&failed),
                Arc::clone(&handover),
            );
            std::thread::Builder::new()
                .name("mandate-syncer".into())
                .spawn(move || {
                    // A syncer that dies (a panic) stops the writes too.
                    let _stop = StopOnPanic(&failed);
                    sync_loop(&|| store.sync(), &checkpoints, &failed, &synced, &handover)
                })
                .ok()
        };
        if syncer.is_none() {
            tracing::error!("cannot start the store's syncer thread: no writes");
            failed.store(true, std::sync::atomic::Ordering::Release);
        }
        let thread = {
            let failed = Arc::clone(&failed);
            std::thread::Builder::new()
                .name("mandate-writer".into())
                .spawn(move || {
                    let _ = handover.writer.set(std::thread::current());
                    commit_loop(&*store, &own, &failed, rx, (&to_sync, &handover));
                    drop(to_sync);
                    if let Some(s) = syncer {
                        let _ = s.join();
                    }
                })
                .ok()
        };
        Writer {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(thread),
            failed,
        }
    }

    /// Whether the store's sync failed (or its thread died): no write
    /// succeeds any more, and the broker must be restarted (`/healthz`
    /// says so).
    pub fn failed(&self) -> bool {
        self.failed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Commits `entry` and waits until it is durable. Every text of its
    /// events is escaped and bounded first (`audit::sanitize_event`): events
    /// quote callers, and no caller's text may reach a terminal or a log raw.
    pub async fn write(&self, mut entry: Entry) -> Result<Committed, WriteError> {
        entry.events.iter_mut().for_each(sanitize_event);
        let tx = self
            .tx
            .lock()
            .map_err(|_| WriteError::Closed)?
            .clone()
            .ok_or(WriteError::Closed)?;
        let (reply, wait) = oneshot::channel();
        tx.send((entry, reply))
            .await
            .map_err(|_| WriteError::Closed)?;
        wait.await.map_err(|_| WriteError::Closed)?
    }

    /// Stops accepting writes, lets queued ones commit, and joins the thread.
    pub fn shutdown(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

/// The writer thread: gathers a batch, commits it, hands it to the syncer.
fn commit_loop(
    store: &dyn Store,
    own: &OwnEvents,
    failed: &std::sync::atomic::AtomicBool,
    mut rx: mpsc::Receiver<Job>,
    (to_sync, handover): (&std::sync::mpsc::Sender<Unsynced>, &Handover),
) {
    use std::sync::atomic::Ordering;
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut pace = Pace::default();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        gather(&mut rx, &mut batch, handover, failed);
        let (todo, replies): (Vec<Entry>, Vec<_>) = batch.drain(..).unzip();
        if failed.load(Ordering::Acquire) {
            fail(
                replies,
                "an earlier sync of the store failed; restart the broker",
            );
            continue;
        }
        let (t0, entries) = (std::time::Instant::now(), todo.len());
        let mut mine = own
            .enabled
            .load(Ordering::Acquire)
            .then(|| own.seqs.lock().unwrap_or_else(|p| p.into_inner()));
        let result = store.commit_unsynced(todo);
        if let (Some(mine), Ok(results)) = (mine.as_mut(), &result) {
            let seqs = results.iter().flatten().flat_map(|c| &c.events);
            mine.extend(seqs.map(|e| e.seq));
        }
        drop(mine);
        pace.record(
            entries,
            t0,
            "group commit (entries per commit, us per commit)",
        );
        match result {
            Ok(results) => {
                handover.handed();
                if let Err(std::sync::mpsc::SendError((_, replies))) =
                    to_sync.send((results, replies))
                {
                    // Committed, and nobody will sync it.
                    failed.store(true, Ordering::Release);
                    for reply in replies {
                        let _ =
                            reply.send(Err(WriteError::Unsynced("the syncer has stopped".into())));
                    }
                }
            }
            Err(e) => {
                tracing::error!("audit commit failed: {e}");
                fail(replies, &e.to_string());
            }
        }
    }
}

/// Adds to `batch` what is queued; while the syncer is busy, also what
/// comes until it is done (or [`GATHER`] entries are waiting).
fn gather(
    rx: &mut mpsc::Receiver<Job>,
    batch: &mut Vec<Job>,
    handover: &Handover,
    failed: &std::sync::atomic::AtomicBool,
) {
    loop {
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(mpsc::error::TryRecvError::Empty) => break,
                // Shutting down: commit what came.
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
        // A failed or dead syncer never gets done: nothing to wait for.
        if batch.len() >= GATHER
            || !handover.busy()
            || failed.load(std::sync::atomic::Ordering::Acquire)
        {
            return;
        }
        // The syncer wakes this thread when it is done (the timeout only
        // guards against a lost wake-up).
        std::thread::park_timeout(std::time::Duration::from_millis(2));
    }
}

/// The syncer thread: one sync for every batch committed meanwhile, then
/// the answers.
fn sync_loop(
    sync: &dyn Fn() -> mandate_store::Result<()>,
    checkpoints: &Checkpointer,
    failed: &std::sync::atomic::AtomicBool,
    synced: &std::sync::mpsc::Receiver<Unsynced>,
    handover: &Handover,
) {
    let mut pace = Pace::default();
    while let Ok(first) = synced.recv() {
        let mut done = vec![first];
        done.extend(synced.try_iter());
        let t0 = std::time::Instant::now();
        // After a failed sync a later one may succeed without what the
        // failed one lost: nothing is answered as durable again.
        let synced = if failed.load(std::sync::atomic::Ordering::Acquire) {
            Err(StoreError::Db(
                "an earlier sync of the store failed; restart the broker".into(),
            ))
        } else {
            sync()
        };
        pace.record(done.len(), t0, "group sync (commits per sync, us per sync)");
        handover.synced(done.len());
        if let Err(e) = synced {
            tracing::error!("store sync failed, no more writes: {e}");
            failed.store(true, std::sync::atomic::Ordering::Release);
            for reply in done.into_iter().flat_map(|(_, replies)| replies) {
                let _ = reply.send(Err(WriteError::Unsynced(e.to_string())));
            }
            continue;
        }
        // The head moves before anyone hears of the commit, so a
        // checkpoint asked for afterwards covers it; the file is written
        // after the replies, so its fsync never delays an answer.
        let due = done
            .iter()
            .flat_map(|(results, _)| results)
            .filter_map(|r| r.as_ref().ok()?.events.last())
            .max_by_key(|e| e.seq)
            .is_some_and(|e| checkpoints.advance(e.seq, &e.hash));
        for (results, replies) in done {
            for (r, reply) in results.into_iter().zip(replies) {
                let _ = reply.send(r.map_err(WriteError::Store));
            }
        }
        if due {
            checkpoints.flush();
        }
    }
}

/// How a loop's rounds go (a debug line every 1,000 rounds): items per
/// round, time per round.
#[derive(Default)]
struct Pace {
    rounds: u64,
    items: u64,
    busy: std::time::Duration,
}

impl Pace {
    fn record(&mut self, items: usize, since: std::time::Instant, what: &str) {
        self.rounds += 1;
        self.items += items as u64;
        self.busy += since.elapsed();
        if self.rounds.is_multiple_of(1000) {
            let n = self.rounds as f64;
            tracing::debug!(
                rounds = self.rounds,
                per_round = self.items as f64 / n,
                us_per_round = self.busy.as_micros() as f64 / n,
                "{what}"
            );
        }
    }
}

/// Sets the flag if the thread unwinds while it holds this.
struct StopOnPanic<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

fn fail(replies: Vec<Reply>, why: &str) {
    for reply in replies {
        let _ = reply.send(Err(WriteError::Store(StoreError::Db(why.to_owned()))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// A checkpointer writing into a fresh temporary directory.
    fn checkpointer(name: &str) -> Checkpointer {
        let keys = mandate_core::keys::BrokerKeys::generate(&mut rand_core::OsRng);
        let dir =
            std::env::temp_dir().join(format!("mandate-writer-{name}-{}", std::process::id()));
        Checkpointer::new(
            dir.join("audit.checkpoint"),
            "http://b".into(),
            keys.jwt_eddsa,
            1,
            Arc::new(mandate_core::clock::SystemClock),
            (0, mandate_core::audit::GENESIS.to_owned()),
            None,
        )
    }

    fn committed() -> Committed {
        Committed {
            events: Vec::new(),
            revocation_seq: None,
            generation: None,
        }
    }

    fn job() -> (Job, oneshot::Receiver<Result<Committed, WriteError>>) {
        let (reply, wait) = oneshot::channel();
        let entry = Entry {
            mutation: None,
            events: Vec::new(),
        };
        ((entry, reply), wait)
    }

    /// While a sync runs, the writer gathers what comes (it would wait for
    /// the next sync anyway) and commits it in one batch once the syncer is
    /// done; with the syncer idle, or failed, it commits at once.
    #[test]
    fn while_a_sync_runs_the_writer_gathers_one_batch() {
        let (tx, mut rx) = mpsc::channel::<Job>(1024);
        let handover = Handover::default();
        let failed = AtomicBool::new(false);
        // Idle syncer: what is queued, at once.
        tx.try_send(job().0).unwrap();
        let mut batch = Vec::new();
        gather(&mut rx, &mut batch, &handover, &failed);
        assert_eq!(batch.len(), 1);
        batch.clear();
        // Busy syncer: entries arriving meanwhile join the batch, which is
        // committed when the syncer says it is done.
        handover.handed();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                let _ = handover.writer.set(std::thread::current());
                let mut batch = Vec::new();
                gather(&mut rx, &mut batch, &handover, &failed);
                batch.len()
            });
            for _ in 0..5 {
                tx.try_send(job().0).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert!(!waiter.is_finished(), "no commit while the sync runs");
            handover.synced(1);
            assert_eq!(waiter.join().unwrap(), 5);
        });
        // A full batch is committed even while a sync runs.
        handover.handed();
        for _ in 0..GATHER + 3 {
            tx.try_send(job().0).unwrap();
        }
        gather(&mut rx, &mut batch, &handover, &failed);
        assert_eq!(batch.len(), GATHER + 3);
        batch.clear();
        // A failed syncer is waited for by nobody.
        failed.store(true, Ordering::SeqCst);
        tx.try_send(job().0).unwrap();
        gather(&mut rx, &mut batch, &handover, &failed);
        assert_eq!(batch.len(), 1);
    }

    /// fsync's failure is not retried into a success: after one failed
    /// sync, a later one may report success without what the failed one
    /// lost, so nothing is answered as durable again.
    #[test]
    fn after_a_failed_sync_no_write_is_answered_as_durable() {
        let checkpoints = checkpointer("failed");
        let calls = AtomicUsize::new(0);
        // The first sync fails, every later one would succeed.
        let sync = || match calls.fetch_add(1, Ordering::SeqCst) {
            0 => Err(StoreError::Db("EIO".into())),
            _ => Ok(()),
        };
        let failed = AtomicBool::new(false);
        let (to_sync, synced) = std::sync::mpsc::channel::<Unsynced>();
        std::thread::scope(|scope| {
            let (sync, checkpoints, failed) = (&sync, &checkpoints, &failed);
            scope
                .spawn(move || sync_loop(sync, checkpoints, failed, &synced, &Handover::default()));
            let (reply, wait) = oneshot::channel();
            to_sync.send((vec![Ok(committed())], vec![reply])).unwrap();
            let first = wait.blocking_recv().unwrap();
            assert!(matches!(first, Err(WriteError::Unsynced(ref e)) if e.contains("EIO")));
            let (reply, wait) = oneshot::channel();
            to_sync.send((vec![Ok(committed())], vec![reply])).unwrap();
            let second = wait.blocking_recv().unwrap();
            assert!(
                matches!(second, Err(WriteError::Unsynced(ref e)) if e.contains("earlier sync")),
                "{second:?}"
            );
            drop(to_sync);
        });
        assert!(failed.load(Ordering::SeqCst));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "no second sync after a failed one"
        );
        assert_eq!(checkpoints.flush(), None, "the head never moved");
    }

    /// The writer answers a commit only once the syncer has synced it, and
    /// then with the commit's own result (a refusal stays a refusal).
    #[test]
    fn a_commit_is_answered_after_its_sync_with_its_own_result() {
        let checkpoints = checkpointer("ok");
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let gate = Mutex::new(gate_rx);
        // Each sync waits for the test's go.
        let sync = || {
            gate.lock()
                .unwrap()
                .recv()
                .map_err(|_| StoreError::Db("closed".into()))
        };
        let failed = AtomicBool::new(false);
        let (to_sync, synced) = std::sync::mpsc::channel::<Unsynced>();
        std::thread::scope(|scope| {
            let (sync, checkpoints, failed) = (&sync, &checkpoints, &failed);
            scope
                .spawn(move || sync_loop(sync, checkpoints, failed, &synced, &Handover::default()));
            let (ok, ok_wait) = oneshot::channel();
            let (no, mut no_wait) = oneshot::channel();
            to_sync
                .send((
                    vec![Ok(committed()), Err(StoreError::Replayed("proof:x".into()))],
                    vec![ok, no],
                ))
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(
                no_wait.try_recv().is_err(),
                "nothing answered before the sync"
            );
            gate_tx.send(()).unwrap();
            assert!(ok_wait.blocking_recv().unwrap().is_ok());
            assert!(matches!(
                no_wait.blocking_recv().unwrap(),
                Err(WriteError::Store(StoreError::Replayed(_)))
            ));
            drop(to_sync);
        });
        assert!(!failed.load(Ordering::SeqCst));
    }
}
