//! The PostgreSQL backend: several brokers may share one database.
//!
//! Observable behaviour is the SQLite backend's ([`crate::sqlite`]): the
//! same results, error kinds and audit hash chain (chained with the same
//! core functions). The differences are where the state lives:
//!
//! - **Connections.** [`PgStore`] owns a writer thread and a few reader
//!   threads, each with its own current-thread tokio runtime and
//!   connection (`pool.rs`); the synchronous [`Store`] methods send a job
//!   to one and wait for its answer, so they may be called from tokio
//!   worker threads and from plain threads alike. A lost connection is
//!   reopened once by the next job on its thread; every statement has a
//!   server-side timeout, every answer a client-side one.
//! - **The chain's head** is read from the database inside each commit's
//!   transaction, after a transaction-scoped advisory lock that every
//!   committer takes first: commits of several brokers are serialised, so
//!   the chain neither forks nor skips (`audit.seq` is also its primary
//!   key), and revocation numbers are handed out in commit order.
//! - **Schema** versions are recorded in `schema_version` and applied
//!   under an advisory lock (`schema.rs`).
//!
//! TLS is not supported yet: a connection string that requires it is
//! refused.

use std::str::FromStr as _;

use tokio_postgres::Config;
use tokio_postgres::config::SslMode;

use mandate_core::audit::{self, ChainedEvent};
use mandate_core::model::*;

use crate::records::*;
use crate::{AuditFilter, Committed, Entry, Result, Store, StoreError, VerifyReport};

mod listen;
mod mutate;
mod pool;
mod read;
mod rows;
mod schema;
mod trail;
mod write;

use pool::Pool;

/// How many reader threads (and connections) a store keeps.
const READERS: usize = 3;

/// The PostgreSQL store.
pub struct PgStore {
    /// Commits (one at a time, in order).
    writer: Pool,
    /// Everything else.
    readers: Pool,
    /// Where to connect (for the listening connection).
    config: Config,
    /// Dropped with the store: stops the listening threads.
    stop: tokio::sync::watch::Sender<()>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the connection string: it holds a password.
        f.write_str("PgStore")
    }
}

/// The last event of the chain (see the SQLite backend's `Head`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    seq: u64,
    hash: String,
    time_ms: u64,
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        let Some(db) = e.as_db_error() else {
            return StoreError::Db(pool::describe(&e));
        };
        let code = db.code().code();
        if !code.starts_with("23") {
            return StoreError::Db(pool::describe(&e));
        }
        // Integrity violations, named as SQLite names them, without the
        // values (the server's detail has them).
        let table = db.table().unwrap_or("row");
        StoreError::Conflict(match code {
            "23505" => format!(
                "UNIQUE constraint failed: {table} ({})",
                db.constraint().unwrap_or("key")
            ),
            "23503" => "FOREIGN KEY constraint failed".into(),
            "23502" => format!(
                "NOT NULL constraint failed: {table}.{}",
                db.column().unwrap_or("?")
            ),
            "23514" => format!(
                "CHECK constraint failed: {}",
                db.constraint().unwrap_or("?")
            ),
            _ => format!("constraint failed: {}", db.message()),
        })
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// The parsed connection string, refused if it asks for TLS.
fn config(url: &str) -> Result<Config> {
    // The parser's message may quote a character of the string (of the
    // password, perhaps): not repeated.
    let config = Config::from_str(url).map_err(|_| {
        StoreError::Db(
            "the PostgreSQL connection string is not valid (postgresql://user:password@host:port/database)".into(),
        )
    })?;
    match config.get_ssl_mode() {
        SslMode::Disable | SslMode::Prefer => {}
        _ => {
            return Err(StoreError::Db(
                "the PostgreSQL connection string asks for TLS (sslmode=require), which this broker does not support yet; connect over a trusted network with sslmode=disable".into(),
            ));
        }
    }
    let mut config = config;
    config.application_name("mandate");
    Ok(config)
}

impl PgStore {
    /// Connects to the database at `url` (`postgresql://user:password@host:port/db`)
    /// and brings its schema up to date. Several brokers may open the same
    /// database. Without TLS: `sslmode=require` is refused.
    pub fn open(url: &str) -> Result<Self> {
        let config = config(url)?;
        let writer = Pool::start("mandate-pg-writer", &config, 1)?;
        writer.run(|s| {
            let enc: String = s
                .query_one("SHOW server_encoding", &[])?
                .try_get(0)
                .map_err(|e| StoreError::Db(e.to_string()))?;
            if enc != "UTF8" {
                return Err(StoreError::Db(format!(
                    "the database's encoding is {enc}; the broker needs UTF8"
                )));
            }
            schema::migrate(s)
        })?;
        let readers = Pool::start("mandate-pg-reader", &config, READERS)?;
        Ok(Self {
            writer,
            readers,
            config,
            stop: tokio::sync::watch::channel(()).0,
        })
    }
}

/// Owned copies of borrowed arguments, for a job on another thread.
fn own(s: Option<&str>) -> Option<String> {
    s.map(str::to_owned)
}

impl Store for PgStore {
    fn load(&self) -> Result<Snapshot> {
        self.readers.run(read::load)
    }

    fn commit(&self, batch: Vec<Entry>) -> Result<Vec<Result<Committed>>> {
        write::commit(&self.writer, batch)
    }

    fn audit_query(&self, f: &AuditFilter) -> Result<Vec<ChainedEvent>> {
        let f = f.clone();
        self.readers.run(move |s| trail::query(s, &f))
    }

    fn audit_verify(&self, anchors: Vec<audit::Anchor>) -> Result<VerifyReport> {
        self.readers
            .run(move |s| trail::verify(s, None, anchors.clone()))
    }

    fn audit_verify_after(
        &self,
        from: audit::Anchor,
        anchors: Vec<audit::Anchor>,
    ) -> Result<VerifyReport> {
        self.readers
            .run(move |s| trail::verify(s, Some(from.clone()), anchors.clone()))
    }

    fn list_runs(&self, tenant: Option<&str>, agent: Option<&str>, limit: u32) -> Result<Vec<Run>> {
        let (tenant, agent) = (own(tenant), own(agent));
        self.readers
            .run(move |s| read::list_runs(s, tenant.as_deref(), agent.as_deref(), limit))
    }

    fn get_run(&self, id: &str) -> Result<Option<Run>> {
        let id = id.to_owned();
        self.readers.run(move |s| read::get_run(s, &id))
    }

    fn revocations_after(&self, after: u64, limit: u32) -> Result<Vec<Revocation>> {
        self.readers
            .run(move |s| read::revocations_after(s, after, limit))
    }

    fn count_children(&self, parent: &str) -> Result<u64> {
        let parent = parent.to_owned();
        self.readers.run(move |s| read::count_children(s, &parent))
    }

    fn live_leases(&self) -> Result<Vec<Lease>> {
        self.readers.run(read::live_leases)
    }

    fn join_token(&self, id: &str) -> Result<Option<JoinToken>> {
        let id = id.to_owned();
        self.readers.run(move |s| read::join_token(s, &id))
    }

    fn outbox(&self, limit: u32) -> Result<Vec<(i64, String)>> {
        self.readers.run(move |s| read::outbox(s, limit))
    }

    fn agent_tools_used(&self) -> Result<Vec<(String, String, String)>> {
        self.readers.run(read::agent_tools_used)
    }

    fn approval(&self, id: &str) -> Result<Option<Approval>> {
        let id = id.to_owned();
        self.readers.run(move |s| read::approval(s, &id))
    }

    fn pending_approvals_for_run(&self, run: &str, now: u64) -> Result<usize> {
        let run = run.to_owned();
        self.readers
            .run(move |s| read::pending_approvals_for_run(s, &run, now))
    }

    fn approvals_for_request(&self, request_digest: &str) -> Result<Vec<Approval>> {
        let digest = request_digest.to_owned();
        self.readers
            .run(move |s| read::approvals_for_request(s, &digest))
    }

    fn list_approvals(
        &self,
        tenant: Option<&str>,
        status: Option<mandate_core::approval::ApprovalStatus>,
        limit: u32,
    ) -> Result<Vec<Approval>> {
        let tenant = own(tenant);
        self.readers
            .run(move |s| read::list_approvals(s, tenant.as_deref(), status, limit))
    }

    fn block_uses(&self, blocks: &[String]) -> Result<Vec<u64>> {
        let blocks = blocks.to_vec();
        self.readers.run(move |s| read::block_uses(s, &blocks))
    }

    fn generation(&self) -> Result<u64> {
        self.readers.run(read::generation)
    }

    fn latest_one_time_use(&self) -> Result<u64> {
        self.readers.run(read::latest_one_time_use)
    }

    fn watch(&self, on_change: std::sync::Arc<tokio::sync::Notify>) -> bool {
        match listen::start(self.config.clone(), on_change, self.stop.subscribe()) {
            Ok(()) => true,
            Err(e) => {
                // Without it, changes are still read by the caller's
                // periodic catch-up; the store is shared all the same.
                tracing::error!("cannot start the PostgreSQL listener: {e}");
                true
            }
        }
    }
}
