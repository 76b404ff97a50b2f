//! The connections: a few dedicated std threads, each with its own
//! current-thread tokio runtime and its own [`Client`].
//!
//! The [`Store`](crate::Store) trait is synchronous and is called from
//! tokio worker threads (reads) and from a plain thread (commits). A
//! blocking client that drives a runtime of its own panics on a tokio
//! worker, so no caller ever drives one: a call sends a job to one of
//! these threads and waits on a channel for its answer, which works from
//! inside a runtime and from outside one alike.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, Sender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Row, Statement};

use crate::{Result, StoreError};

/// How long connecting (TCP, startup, authentication) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one statement may run on the server (set on every connection).
const STATEMENT_TIMEOUT: &str = "10s";

/// How long the client waits for any one answer: beyond the server's
/// statement timeout, for a server that no longer answers at all.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Prepared statements kept per connection (the audit query's variants
/// are many but bounded; past this the cache starts over).
const MAX_STATEMENTS: usize = 512;

/// A unit of work for a connection thread.
type Job = Box<dyn FnOnce(&mut Worker) + Send>;

/// Threads sharing one queue of jobs.
pub(super) struct Pool {
    tx: Option<Sender<Job>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn stopped() -> StoreError {
    StoreError::Db("the PostgreSQL connection thread stopped (or its job failed)".into())
}

impl Pool {
    /// Starts `threads` threads named `name-<i>`; each connects on its
    /// first job.
    pub(super) fn start(name: &str, config: &Config, threads: usize) -> Result<Pool> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let (rx, config) = (Arc::clone(&rx), config.clone());
            let h = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || serve(config, &rx))
                .map_err(|e| StoreError::Db(format!("cannot start a database thread: {e}")))?;
            handles.push(h);
        }
        Ok(Pool {
            tx: Some(tx),
            threads: handles,
        })
    }

    /// Runs `f` on one of the threads and waits for its result. If the
    /// connection turns out to be lost, the thread reconnects once and
    /// calls `f` again (so `f` must be safe to repeat after a failure that
    /// closed the connection; see `commit`).
    pub(super) fn run<T: Send + 'static>(
        &self,
        mut f: impl FnMut(&mut Session<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply_tx, reply_rx) = sync_channel(1);
        let job: Job = Box::new(move |w: &mut Worker| {
            let _ = reply_tx.send(w.attempt(&mut f));
        });
        self.tx
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())?;
        reply_rx.recv().map_err(|_| stopped())?
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the queue ends every thread after its current job; they
        // close their connections as they go.
        drop(self.tx.take());
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

/// One open connection.
struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
    health: Health,
}

/// What went wrong with a connection during a job.
#[derive(Default)]
struct Health {
    /// An answer did not come in time: the connection's state is unknown,
    /// so it is dropped after the job (and the job not repeated).
    broken: bool,
    /// The server closed the connection (or said it would): it is dropped
    /// after the job, and the job may run again on a new one.
    lost: bool,
}

/// Whether `e` means the connection is gone: closed, or a server that
/// ends the session (FATAL, shutdown, connection exceptions).
fn is_lost(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::Severity;
    if e.is_closed() {
        return true;
    }
    e.as_db_error().is_some_and(|db| {
        let code = db.code().code();
        matches!(
            db.parsed_severity(),
            Some(Severity::Fatal | Severity::Panic)
        ) || code.starts_with("08")
            || code.starts_with("57P")
    })
}

/// A connection thread's state.
pub(super) struct Worker {
    rt: std::result::Result<Runtime, String>,
    config: Config,
    conn: Option<Conn>,
}

fn serve(config: Config, rx: &Mutex<Receiver<Job>>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the database thread's runtime: {e}"));
    let mut w = Worker {
        rt,
        config,
        conn: None,
    };
    loop {
        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok(job) = job else { break };
        // A job that panicked dropped its reply (its caller gets an
        // error); the connection may be mid-transaction: start afresh.
        if std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut w))).is_err() {
            w.conn = None;
        }
    }
}

impl Worker {
    fn attempt<T>(&mut self, f: &mut dyn FnMut(&mut Session<'_>) -> Result<T>) -> Result<T> {
        let rt = self.rt.as_ref().map_err(|e| StoreError::Db(e.clone()))?;
        let mut retried = false;
        loop {
            if self.conn.as_ref().is_none_or(|c| c.client.is_closed()) {
                self.conn = None;
                self.conn = Some(connect(rt, &self.config)?);
            }
            let Some(conn) = self.conn.as_mut() else {
                return Err(stopped());
            };
            let out = f(&mut Session { rt, conn });
            let lost = conn.health.lost || conn.client.is_closed();
            if lost || conn.health.broken {
                self.conn = None;
            }
            match out {
                Err(_) if lost && !retried => retried = true,
                out => return out,
            }
        }
    }
}

fn connect(rt: &Runtime, config: &Config) -> Result<Conn> {
    let (client, connection) = rt
        .block_on(async { tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls)).await })
        .map_err(|_| {
            StoreError::Db(format!(
                "connecting to PostgreSQL timed out after {} s",
                CONNECT_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| StoreError::Db(format!("cannot connect to PostgreSQL: {}", describe(&e))))?;
    // Polled whenever the thread waits for an answer (`block_on`).
    rt.spawn(async move {
        let _ = connection.await;
    });
    let mut conn = Conn {
        client,
        statements: HashMap::new(),
        health: Health::default(),
    };
    Session {
        rt,
        conn: &mut conn,
    }
    .batch(&format!(
        "SET statement_timeout = '{STATEMENT_TIMEOUT}'; SET idle_in_transaction_session_timeout = '60s'"
    ))?;
    Ok(conn)
}

/// A tokio-postgres error, described without anything from the
/// connection string.
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
    }
}

/// Waits for `fut` on the thread's runtime, at most [`CALL_TIMEOUT`].
fn wait<R>(
    rt: &Runtime,
    health: &mut Health,
    fut: impl Future<Output = std::result::Result<R, tokio_postgres::Error>>,
) -> Result<R> {
    // The timer is made inside the runtime (it needs one to exist).
    match rt.block_on(async { tokio::time::timeout(CALL_TIMEOUT, fut).await }) {
        Ok(r) => r.map_err(|e| {
            health.lost |= is_lost(&e);
            StoreError::from(e)
        }),
        Err(_) => {
            health.broken = true;
            Err(StoreError::Db(format!(
                "PostgreSQL did not answer within {} s",
                CALL_TIMEOUT.as_secs()
            )))
        }
    }
}

/// Parameters of a statement.
pub(super) type Params<'p> = [&'p (dyn ToSql + Sync)];

/// A connection lent to a job: synchronous calls, each waiting on the
/// thread's own runtime; statements are prepared once per connection.
pub(super) struct Session<'a> {
    rt: &'a Runtime,
    conn: &'a mut Conn,
}

impl Session<'_> {
    fn prepare(&mut self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.conn.statements.get(sql) {
            return Ok(s.clone());
        }
        let Conn {
            client,
            statements,
            health,
        } = &mut *self.conn;
        let s = wait(self.rt, health, client.prepare(sql))?;
        if statements.len() >= MAX_STATEMENTS {
            statements.clear();
        }
        statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    /// The rows of a statement.
    pub(super) fn query(&mut self, sql: &str, params: &Params<'_>) -> Result<Vec<Row>> {
        let stmt = self.prepare(sql)?;
        let Conn { client, health, .. } = &mut *self.conn;
        wait(self.rt, health, client.query(&stmt, params))
    }

    /// The row of a statement that returns at most one.
    pub(super) fn query_opt(&mut self, sql: &str, params: &Params<'_>) -> Result<Option<Row>> {
        let stmt = self.prepare(sql)?;
        let Conn { client, health, .. } = &mut *self.conn;
        wait(self.rt, health, client.query_opt(&stmt, params))
    }

    /// The row of a statement that returns exactly one.
    pub(super) fn query_one(&mut self, sql: &str, params: &Params<'_>) -> Result<Row> {
        self.query_opt(sql, params)?
            .ok_or_else(|| StoreError::Db("a query that returns a row returned none".into()))
    }

    /// Runs a statement; the number of rows it changed.
    pub(super) fn execute(&mut self, sql: &str, params: &Params<'_>) -> Result<u64> {
        let stmt = self.prepare(sql)?;
        let Conn { client, health, .. } = &mut *self.conn;
        wait(self.rt, health, client.execute(&stmt, params))
    }

    /// Runs statements without parameters (simple query protocol).
    pub(super) fn batch(&mut self, sql: &str) -> Result<()> {
        let Conn { client, health, .. } = &mut *self.conn;
        wait(self.rt, health, client.batch_execute(sql))
    }

    /// Runs `f` in a transaction opened by `begin`: committed if `f`
    /// succeeds, rolled back if it fails.
    pub(super) fn transaction<T>(
        &mut self,
        begin: &str,
        f: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        self.batch(begin)?;
        match f(self) {
            Ok(v) => {
                self.batch("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    /// Whether the connection is still usable in this job (no answer
    /// overdue, not closed by the server).
    pub(super) fn healthy(&self) -> bool {
        !self.conn.health.broken && !self.conn.health.lost
    }

    /// Rolls back the transaction in progress; a connection that cannot
    /// is not used again (nor one that is not healthy: it is dropped).
    pub(super) fn rollback(&mut self) {
        if self.healthy() && self.batch("ROLLBACK").is_err() {
            self.conn.health.broken = true;
        }
    }
}
