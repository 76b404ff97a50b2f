//! One broker per PostgreSQL database, for now.
//!
//! Brokers keep their registry, revocations and replay caches in memory;
//! until they tell each other about every change (issue 14's next step:
//! LISTEN/NOTIFY with a catch-up read), a second broker on the same
//! database would miss the first one's revocations. So a broker holds a
//! session-level advisory lock for as long as it runs: a second one is
//! refused at start, and a broker that loses the connection holding the
//! lock stops (its supervisor restarts it; it takes the lock again, or is
//! refused if another broker did), rather than keep issuing beside another.

use std::sync::mpsc;
use std::time::Duration;

use tokio_postgres::NoTls;
use zeroize::Zeroizing;

use crate::config::BootError;

/// The advisory lock's key: "mandate" in ASCII.
const LOCK_KEY: i64 = 0x006d_616e_6461_7465;

/// How long the start waits for the lock's answer.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(15);

/// How often the holding connection is checked.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// Exit status when the lock is lost (EX_SOFTWARE).
const LOST: i32 = 70;

/// The one-broker lock, held by a thread of its own; dropping it releases
/// the lock (the broker stopped).
#[derive(Debug)]
pub struct PgLock {
    release: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for PgLock {
    fn drop(&mut self) {
        if let Some(tx) = self.release.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Takes the one-broker lock on the database at `url`, or says why not.
pub fn claim(url: &str) -> Result<PgLock, BootError> {
    let url = Zeroizing::new(url.to_owned());
    let (tx, rx) = mpsc::sync_channel::<Result<(), String>>(1);
    let (release, released) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("mandate-pg-lock".into())
        .spawn(move || hold(&url, tx, released))
        .map_err(|e| BootError(format!("cannot start the PostgreSQL lock thread: {e}")))?;
    match rx.recv_timeout(CLAIM_TIMEOUT) {
        Ok(Ok(())) => Ok(PgLock {
            release: Some(release),
            thread: Some(thread),
        }),
        Ok(Err(why)) => Err(BootError(why)),
        Err(_) => Err(BootError(
            "PostgreSQL did not answer the broker's lock request in time".into(),
        )),
    }
}

fn hold(
    url: &str,
    tx: mpsc::SyncSender<Result<(), String>>,
    mut released: tokio::sync::oneshot::Receiver<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = tx.send(Err(format!("cannot start the PostgreSQL lock thread: {e}")));
            return;
        }
    };
    rt.block_on(async move {
        // The parser's message may quote a character of the URL (of its
        // password, perhaps): not repeated.
        let Ok(config) = url.parse::<tokio_postgres::Config>() else {
            let _ = tx.send(Err(
                "the PostgreSQL connection string is not valid (postgresql://user:password@host:port/database)".into(),
            ));
            return;
        };
        let connected = tokio::time::timeout(CLAIM_TIMEOUT, config.connect(NoTls)).await;
        let (client, connection) = match connected {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let _ = tx.send(Err(format!("cannot connect to PostgreSQL: {e}")));
                return;
            }
            Err(_) => {
                let _ = tx.send(Err("PostgreSQL did not accept a connection in time".into()));
                return;
            }
        };
        let mut connection = tokio::spawn(connection);
        let taken = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY])
            .await
            .map(|row| row.get::<_, bool>(0));
        match taken {
            Ok(true) => {
                let _ = tx.send(Ok(()));
            }
            Ok(false) => {
                let _ = tx.send(Err(
                    "another broker is using the database (PostgreSQL): for now one broker serves one database; several brokers sharing one arrive with their change notifications".into(),
                ));
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(format!("cannot take the broker lock in PostgreSQL: {e}")));
                return;
            }
        }
        loop {
            tokio::select! {
                _ = &mut released => {
                    // Bounded: a database that hangs must not hang the
                    // broker's shutdown (closing the connection frees the
                    // lock anyway).
                    let unlock = client.execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY]);
                    let _ = tokio::time::timeout(KEEPALIVE, unlock).await;
                    return;
                }
                _ = &mut connection => break,
                () = tokio::time::sleep(KEEPALIVE) => {
                    let alive = tokio::time::timeout(KEEPALIVE, client.simple_query("SELECT 1")).await;
                    if !matches!(alive, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        tracing::error!(
            "lost the PostgreSQL connection that holds this broker's lock on its database; stopping, so that two brokers never serve one database"
        );
        std::process::exit(LOST);
    });
}
