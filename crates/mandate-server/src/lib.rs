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
//! - [`listen`]: the accept loop, with header, idle and connection bounds;
//! - [`pg`]: the `postgres` provider: a role per credential, and the reaper
//!   that drops it on expiry or revocation (also after a restart);
//! - [`refusals`]: the bounded audit of refusals nobody authenticated;
//! - [`gate`]: bounds on the work a presented mandate can cause;
//! - [`error`]: the one place where errors become RFC-shaped responses.
#![forbid(unsafe_code)]

pub mod alerts;
pub mod boot;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod exchange;
pub mod follow;
pub mod form;
pub mod gate;
pub mod history;
pub mod keyring;
pub mod listen;
pub mod mcp_client;
pub mod origin;
pub mod pg;
pub mod pop;
pub mod providers;
pub mod rebuild;
pub mod refusals;
pub mod registry;
pub mod routes;
pub mod services;

pub mod state;
pub mod upstream;
pub mod writer;

pub use config::Config;
pub use state::AppState;

use std::sync::Arc;

/// Starts the broker's background tasks (the lease reaper); needs a Tokio runtime.
pub fn start_background(state: &Arc<AppState>) {
    follow::start(state);
    tokio::spawn(pg::reaper(Arc::clone(state)));
    tokio::spawn(alerts::deliver_webhooks(Arc::clone(state)));
    tokio::spawn(refusals::flush(Arc::clone(state)));
    tokio::spawn(mcp_client::stdio::reaper(Arc::clone(state)));
    tokio::spawn(checkpoint::periodic(
        Arc::clone(&state.checkpoints),
        state.config.audit_checkpoint_secs,
    ));
}

/// Boots the broker from `config` and serves until `shutdown` resolves.
pub async fn serve(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), config::BootError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| config::BootError(format!("cannot listen on {}: {e}", config.listen)))?;
    let state = boot::boot(config)?;
    start_background(&state);
    tracing::info!(issuer = %state.config.issuer, "mandate broker listening on {}", listener.local_addr().map(|a| a.to_string()).unwrap_or_default());
    serve_on(listener, Arc::clone(&state), shutdown).await;
    state.shutdown();
    Ok(())
}

/// Serves the broker's API on `listener` (bounded by the configured
/// connection limits) until `shutdown` resolves.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let app = routes::router(Arc::clone(&state));
    let limits = state.config.connections;
    // Connections over the limits are audited through the throttle.
    let audit = Arc::clone(&state);
    let on_refused: listen::OnRefused = Arc::new(move |ip, why| {
        let s = Arc::clone(&audit);
        tokio::spawn(async move {
            refusals::note(
                &s,
                ip,
                mandate_core::audit::EventType::ConnectionRefuse,
                &why.to_string(),
                serde_json::json!({}),
            )
            .await;
        });
    });
    listen::serve(listener, app, limits, Some(on_refused), shutdown).await;
}
