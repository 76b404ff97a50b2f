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

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The store refused or failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The writer has stopped.
    #[error("the writer has stopped")]
    Closed,
}

type Job = (Entry, oneshot::Sender<Result<Committed, WriteError>>);

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
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

impl Writer {
    /// Starts the writer thread over `store`; after each commit it tells
    /// `checkpoints` the new audit head.
    pub fn start(
        store: Arc<dyn Store>,
        checkpoints: Arc<Checkpointer>,
        own: Arc<OwnEvents>,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<Job>(8192);
        let thread = std::thread::Builder::new()
            .name("mandate-writer".into())
            .spawn(move || {
                let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
                let (mut batches, mut entries, mut busy) = (0u64, 0u64, std::time::Duration::ZERO);
                while let Some(first) = rx.blocking_recv() {
                    batch.push(first);
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(j) => batch.push(j),
                            Err(_) => break,
                        }
                    }
                    let (todo, replies): (Vec<Entry>, Vec<_>) = batch.drain(..).unzip();
                    batches += 1;
                    entries += todo.len() as u64;
                    let t0 = std::time::Instant::now();
                    let mut mine = own
                        .enabled
                        .load(std::sync::atomic::Ordering::Acquire)
                        .then(|| own.seqs.lock().unwrap_or_else(|p| p.into_inner()));
                    let result = store.commit(todo);
                    if let (Some(mine), Ok(results)) = (mine.as_mut(), &result) {
                        let seqs = results.iter().flatten().flat_map(|c| &c.events);
                        mine.extend(seqs.map(|e| e.seq));
                    }
                    drop(mine);
                    busy += t0.elapsed();
                    if batches % 1000 == 0 {
                        tracing::debug!(
                            batches,
                            avg_batch = entries as f64 / batches as f64,
                            avg_commit_us = busy.as_micros() as f64 / batches as f64,
                            "group commit"
                        );
                    }
                    match result {
                        Ok(results) => {
                            // The head moves before anyone hears of the commit, so
                            // a checkpoint asked for afterwards covers it; the
                            // file is written after the replies, so its fsync
                            // never delays an answer.
                            let due = results
                                .iter()
                                .filter_map(|r| r.as_ref().ok()?.events.last())
                                .max_by_key(|e| e.seq)
                                .is_some_and(|e| checkpoints.advance(e.seq, &e.hash));
                            for (r, reply) in results.into_iter().zip(replies) {
                                let _ = reply.send(r.map_err(WriteError::Store));
                            }
                            if due {
                                checkpoints.flush();
                            }
                        }
                        Err(e) => {
                            tracing::error!("audit commit failed: {e}");
                            for reply in replies {
                                let _ = reply
                                    .send(Err(WriteError::Store(StoreError::Db(e.to_string()))));
                            }
                        }
                    }
                }
            })
            .ok();
        Writer {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(thread),
        }
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
