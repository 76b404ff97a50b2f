//! Hearing other brokers' changes: a connection of its own that `LISTEN`s
//! on [`CHANNEL`], on a thread of its own.
//!
//! Every commit sends `NOTIFY mandate_changes` inside its transaction
//! (PostgreSQL delivers it at commit, and only then). A notification
//! carries nothing: the broker that hears one reads what changed from the
//! store (the revocation log after the last number it applied, the
//! registry if its generation moved, the trail's new events for its run
//! histories), so a lost notification costs latency, never a change. The same
//! wake-up is given after every (re)connection, because notifications sent
//! while the connection was down are lost.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_postgres::{AsyncMessage, Config, NoTls};

/// The notification channel.
pub(super) const CHANNEL: &str = "mandate_changes";

/// How often the listening connection proves it is alive (a network that
/// drops packets silently would otherwise leave it waiting forever).
const HEALTH_EVERY: Duration = Duration::from_secs(5);

/// How long connecting, or a health check, may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Starts the listening thread; it stops when `stop`'s sender is dropped.
pub(super) fn start(
    config: Config,
    on_change: Arc<Notify>,
    stop: watch::Receiver<()>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("mandate-pg-listen".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("cannot start the PostgreSQL listener: {e}");
                    return;
                }
            };
            rt.block_on(listen_forever(config, on_change, stop));
        })
        .map(|_| ())
}

async fn listen_forever(config: Config, on_change: Arc<Notify>, mut stop: watch::Receiver<()>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            r = listen_once(&config, &on_change) => {
                match r {
                    Ok(()) => tracing::warn!("the PostgreSQL listening connection closed; reconnecting"),
                    Err(e) => tracing::warn!("the PostgreSQL listening connection failed ({e}); reconnecting"),
                }
            }
        }
        // Whatever happened meanwhile is read again after reconnecting.
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: `LISTEN`, a wake-up (to catch up), then a
/// wake-up per notification until the connection fails.
async fn listen_once(config: &Config, on_change: &Arc<Notify>) -> Result<(), String> {
    let (client, mut conn) = tokio::time::timeout(TIMEOUT, config.connect(NoTls))
        .await
        .map_err(|_| "connecting timed out".to_owned())?
        .map_err(|e| super::pool::describe(&e))?;
    let wake = Arc::clone(on_change);
    let mut driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(super::pool::describe(&e)),
                None => return Ok(()),
            }
        }
    });
    tokio::time::timeout(TIMEOUT, client.batch_execute(&format!("LISTEN {CHANNEL}")))
        .await
        .map_err(|_| "LISTEN timed out".to_owned())?
        .map_err(|e| super::pool::describe(&e))?;
    on_change.notify_one();
    loop {
        tokio::select! {
            r = &mut driver => return r.map_err(|e| e.to_string())?,
            _ = tokio::time::sleep(HEALTH_EVERY) => {
                tokio::time::timeout(TIMEOUT, client.batch_execute("SELECT 1"))
                    .await
                    .map_err(|_| "the health check timed out".to_owned())?
                    .map_err(|e| super::pool::describe(&e))?;
            }
        }
    }
}
