//! `mandate serve`: the broker.

use std::path::PathBuf;

use crate::args::ServeArgs;
use crate::client::CliError;
use crate::{config_dir, data_dir};

/// Raises the soft limit on open files toward the hard one, so that the
/// connection limit is reached before the descriptor limit (which would
/// make every accept fail); warns when the hard limit is lower.
pub(crate) fn raise_descriptor_limit(max_connections: usize) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // Connections, plus the database, logs and upstream connections.
    let want = max_connections as u64 + 256;
    let cur = getrlimit(Resource::Nofile);
    let have = cur.current.unwrap_or(u64::MAX);
    if have >= want {
        return;
    }
    let target = cur.maximum.map_or(want, |m| m.min(want));
    if target > have {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: cur.maximum,
            },
        );
    }
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    if now < want {
        tracing::warn!(
            "open files are limited to {now}; --max-connections {max_connections} needs about {want} (raise `ulimit -n` or lower --max-connections)"
        );
    }
}

/// `mandate serve`; `token_file` is the global `--token-file` (or
/// `MANDATE_ADMIN_TOKEN_FILE`): where the bootstrap admin credential is written.
pub(crate) fn serve(a: ServeArgs, token_file: Option<PathBuf>) -> Result<(), CliError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never in files or journals.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg_dir = config_dir();
    let mut cfg =
        mandate_server::Config::new(a.listen, a.data_dir.unwrap_or_else(data_dir), &cfg_dir);
    cfg.store_url = a
        .store
        .map(|u| mandate_core::secret::Secret::new(u.into_bytes()));
    if let Some(i) = a.issuer {
        cfg.issuer = i.trim_end_matches('/').to_owned();
    }
    if let Ok(k) = std::env::var("MANDATE_MASTER_KEY") {
        cfg.master_key = mandate_server::config::MasterKeySource::Env(
            mandate_core::secret::Secret::new(k.into_bytes()),
        );
    } else if let Some(f) = a.master_key_file {
        cfg.master_key = mandate_server::config::MasterKeySource::File(f);
    }
    if let Some(f) = token_file {
        cfg.admin_token_file = f;
    }
    cfg.trust_domain = a.trust_domain;
    cfg.mandate_ttl = a.mandate_ttl;
    cfg.mandate_max_ttl = a.mandate_max_ttl;
    cfg.max_body = a.max_body;
    cfg.proxy_max_body = a.proxy_max_body;
    cfg.rotate_keys = a.rotate_keys;
    cfg.new_admin_token = a.new_admin_token;
    cfg.dpop_max_age = a.dpop_max_age;
    cfg.dpop_max_skew = a.dpop_skew;
    cfg.dpop_nonce = a.dpop_nonce;
    cfg.dpop_nonce_period = a.dpop_nonce_period;
    if let Some(u) = a.webhook_url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(CliError::new("--webhook-url must be an http(s) URL"));
        }
        cfg.webhook_url = Some(u);
    }
    cfg.approval_ttl = a.approval_ttl;
    cfg.anomaly_rate_1m = a.anomaly_rate;
    cfg.anomaly_denials_1m = a.anomaly_denials;
    cfg.anomaly_new_tool = a.anomaly_new_tool;
    cfg.suspend_on_anomaly = a.suspend_on_anomaly;
    cfg.dpop_replay_per_key = a.dpop_replay_per_key.max(1);
    if a.header_read_timeout == 0 || a.idle_timeout == 0 || a.max_connections == 0 {
        return Err(CliError::new(
            "--header-read-timeout, --idle-timeout and --max-connections must be at least 1",
        ));
    }
    raise_descriptor_limit(a.max_connections);
    cfg.connections = mandate_server::listen::Limits {
        header_read_timeout: std::time::Duration::from_secs(a.header_read_timeout),
        idle_timeout: std::time::Duration::from_secs(a.idle_timeout),
        max_connections: a.max_connections,
        max_connections_per_client: a.max_connections_per_client.max(1),
    };
    if let Some(f) = a.audit_checkpoint_file {
        cfg.audit_checkpoint_file = f;
    }
    // Non-dumpable: a process of the same user (an MCP server the broker
    // started, an agent) cannot read the broker's memory or environment
    // (the master key) through /proc, nor attach a debugger.
    crate::exec::harden()?;
    if let Some(f) = a.mcp_stdio_config {
        cfg.mcp_stdio = mandate_server::mcp_client::stdio::load(&f).map_err(CliError::new)?;
    }
    cfg.audit_checkpoint_every = a.audit_checkpoint_every;
    cfg.audit_checkpoint_secs = a.audit_checkpoint_secs;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(format!("cannot start the runtime: {e}")))?;
    rt.block_on(mandate_server::serve(cfg, async {
        // Stop on Ctrl-C or SIGTERM (systemd, kill): queued audit writes commit first.
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        tracing::info!("shutting down");
    }))
    .map_err(|e| CliError::new(e.to_string()))
}
