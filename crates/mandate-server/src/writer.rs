//! The single writer: every state change and audit event goes through one
//! thread that commits them in batches (group commit: one transaction and
//! one sync per batch) and only then answers the waiting handlers. A handler
//! returns a credential only after its event is durable, and throughput grows
//! with concurrency instead of being capped by the disk's sync rate.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use mandate_store::{Committed, Entry, Store, StoreError};

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
    /// Starts the writer thread over `store`.
    pub fn start(store: Arc<dyn Store>) -> Self {
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
                    let result = store.commit(todo);
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
                            for (r, reply) in results.into_iter().zip(replies) {
                                let _ = reply.send(r.map_err(WriteError::Store));
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

    /// Commits `entry` and waits until it is durable.
    pub async fn write(&self, entry: Entry) -> Result<Committed, WriteError> {
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
