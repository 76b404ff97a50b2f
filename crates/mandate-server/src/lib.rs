//! # mandate-server
//!
//! The Mandate broker: wires the pure core (`mandate-core`) to storage
//! (`mandate-store`) and HTTP (axum).
//!
//! - [`boot`]: data directory, master key, signing keys, bootstrap admin credential;
//! - [`writer`]: the single audit/state writer with group commit;
//! - [`checkpoint`]: signed checkpoints of the audit trail, kept outside the data;
//! - [`registry`]: the in-memory view of tenants, agents, tools, grants,
//!   policies and revocations, loaded at start and updated after each commit;
//! - [`routes`]: the OAuth endpoints (RFC 8414, 8693, 7662, 7009, JWKS), the
//!   admin API, and the `proxy` provider's data path (`/proxy/{tool}/...`);
//! - [`upstream`]: the proxy's HTTP client (rustls, pooled);
//! - [`sigs`]: RFC 9421 HTTP message signatures as proof of possession;
//! - [`history`]: what each run has done so far, for continuous authorization;
//! - [`alerts`]: anomalies (alert events, suspension) and the signed webhook;
//! - [`pg`]: the `postgres` provider: a role per credential, and the reaper
//!   that drops it on expiry or revocation (also after a restart);
//! - [`gate`]: bounds on the work a presented mandate can cause;
//! - [`error`]: the one place where errors become RFC-shaped responses.
#![forbid(unsafe_code)]

pub mod alerts;
pub mod boot;
pub mod checkpoint;
pub mod error;
pub mod form;
pub mod gate;
pub mod history;
pub mod pg;
pub mod registry;
pub mod routes;
pub mod sigs;
pub mod state;
pub mod upstream;
pub mod writer;

pub use boot::Config;
pub use state::AppState;

use std::net::SocketAddr;
use std::sync::Arc;

/// Current time in seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Current time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Starts the broker's background tasks (the lease reaper); needs a Tokio runtime.
pub fn start_background(state: &Arc<AppState>) {
    tokio::spawn(pg::reaper(Arc::clone(state)));
    tokio::spawn(alerts::deliver_webhooks(Arc::clone(state)));
    tokio::spawn(checkpoint::periodic(
        Arc::clone(&state.checkpoints),
        state.config.audit_checkpoint_secs,
    ));
}

/// Boots the broker from `config` and serves until `shutdown` resolves.
pub async fn serve(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), boot::BootError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| boot::BootError(format!("cannot listen on {}: {e}", config.listen)))?;
    let state = boot::boot(config)?;
    let app = routes::router(Arc::clone(&state));
    start_background(&state);
    tracing::info!(issuer = %state.config.issuer, "mandate broker listening on {}", listener.local_addr().map(|a| a.to_string()).unwrap_or_default());
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .map_err(|e| boot::BootError(format!("server error: {e}")))?;
    state.shutdown();
    Ok(())
}
