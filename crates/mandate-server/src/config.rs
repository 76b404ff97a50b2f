//! The broker's configuration, and the error a start reports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use mandate_core::secret::Secret;

/// A start-up failure, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BootError(pub String);

/// Where the master key comes from.
#[derive(Clone)]
pub enum MasterKeySource {
    /// Base64url of 32 bytes, from `MANDATE_MASTER_KEY`.
    Env(Secret),
    /// A file (mode 0600), created on first start if absent.
    File(PathBuf),
}

impl std::fmt::Debug for MasterKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MasterKeySource::Env(_) => f.write_str("Env([redacted])"),
            MasterKeySource::File(p) => write!(f, "File({})", p.display()),
        }
    }
}

/// The most `dpop_max_age` and `dpop_max_skew` may each be (a day):
/// proofs are meant to be fresh, and a window's seconds are added to proof
/// dates that must stay far inside the stores' integers.
pub const MAX_DPOP_SECS: u64 = 86_400;

/// Broker configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Public base URL (`iss`; DPoP `htu` is checked against it).
    pub issuer: String,
    /// Directory of the SQLite database (and of the audit checkpoint).
    pub data_dir: PathBuf,
    /// A PostgreSQL connection URL (`postgres://…`) to store everything
    /// there instead of the embedded SQLite database; it holds a password,
    /// so it is a secret (never in Debug output or logs).
    pub store_url: Option<mandate_core::secret::Secret>,
    /// Master key.
    pub master_key: MasterKeySource,
    /// Where the bootstrap admin credential is written (mode 0600).
    pub admin_token_file: PathBuf,
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// Default mandate lifetime (seconds).
    pub mandate_ttl: u64,
    /// Longest mandate lifetime (seconds).
    pub mandate_max_ttl: u64,
    /// DPoP proofs older than this are refused (seconds).
    pub dpop_max_age: u64,
    /// Allowed clock skew for DPoP `iat` in the future (seconds).
    pub dpop_max_skew: u64,
    /// Require server-provided DPoP nonces (RFC 9449 §8).
    pub dpop_nonce: bool,
    /// How often DPoP nonces rotate (seconds); each lives one to two periods.
    pub dpop_nonce_period: u64,
    /// Largest request body (bytes).
    pub max_body: usize,
    /// Largest request body the proxy forwards (bytes).
    pub proxy_max_body: usize,
    /// Longest chain of delegated runs below a root run.
    pub max_delegation_depth: usize,
    /// Most runs one run may delegate to.
    pub max_children: u64,
    /// Make new credential signing keys at start; the previous ones stay
    /// published (and accepted) so credentials they signed still verify.
    pub rotate_keys: bool,
    /// Revoke every admin credential and make a new one, written to
    /// [`Config::admin_token_file`] (for a lost admin token).
    pub new_admin_token: bool,
    /// How long an approval request can be decided, then used (seconds).
    pub approval_ttl: u64,
    /// Where approval requests and alerts are POSTed (signed, RFC 9421).
    pub webhook_url: Option<String>,
    /// Alert when a run makes more exchange requests than this in a minute.
    pub anomaly_rate_1m: u64,
    /// Alert when a run is denied this many times in a minute.
    pub anomaly_denials_1m: u64,
    /// Alert when an agent gets a credential for a tool it never used before.
    pub anomaly_new_tool: bool,
    /// Suspend a run on an alert (its exchanges wait for an admin).
    pub suspend_on_anomaly: bool,
    /// Most live DPoP proofs / RFC 9421 nonces one key may hold (each is
    /// remembered for the proof age plus the skew).
    pub dpop_replay_per_key: usize,
    /// Refusals of unauthenticated callers are audited at most once per
    /// client address and kind per this window, with a count.
    pub refusal_audit_window: std::time::Duration,
    /// Connection bounds of the listener: header read and idle timeouts,
    /// most connections in all and per client address.
    pub connections: crate::listen::Limits,
    /// Where signed audit checkpoints are written (outside the data
    /// directory; default: beside the master key).
    pub audit_checkpoint_file: PathBuf,
    /// Write a checkpoint after this many new audit events.
    pub audit_checkpoint_every: u64,
    /// ... and at least this often (seconds) while events come in.
    pub audit_checkpoint_secs: u64,
    /// How long a run attached at `/v1/runs/attach` may stay detached
    /// before the broker ends it.
    pub attach_grace: std::time::Duration,
    /// How long one attachment lasts: then the broker closes it and the
    /// wrapper must attach again (with a fresh proof by the run key), so a
    /// stopped (SIGSTOP) wrapper loses the run too.
    pub attach_lease: std::time::Duration,
    /// The stdio MCP servers `mcp` tools may use, by name (the operator's
    /// `--mcp-stdio-config`; a registration names one, never a command).
    pub mcp_stdio: crate::mcp_client::stdio::Commands,
    /// Where the broker takes the time from (a manual clock in tests).
    pub clock: std::sync::Arc<dyn mandate_core::clock::Clock>,
}

impl Config {
    /// Defaults for listening on `listen` with data in `data_dir`.
    pub fn new(listen: SocketAddr, data_dir: PathBuf, config_dir: &Path) -> Self {
        Config {
            listen,
            issuer: format!("http://{listen}"),
            data_dir,
            store_url: None,
            master_key: MasterKeySource::File(config_dir.join("master.key")),
            admin_token_file: config_dir.join("admin.token"),
            trust_domain: "mandate.local".into(),
            mandate_ttl: 900,
            mandate_max_ttl: 3600,
            dpop_max_age: 60,
            dpop_max_skew: 5,
            dpop_nonce: false,
            dpop_nonce_period: 60,
            max_body: 64 * 1024,
            proxy_max_body: 10 * 1024 * 1024,
            max_delegation_depth: 4,
            max_children: 16,
            rotate_keys: false,
            new_admin_token: false,
            approval_ttl: 600,
            webhook_url: None,
            anomaly_rate_1m: 120,
            anomaly_denials_1m: 10,
            anomaly_new_tool: false,
            suspend_on_anomaly: false,
            dpop_replay_per_key: 10_000,
            refusal_audit_window: std::time::Duration::from_secs(1),
            connections: crate::listen::Limits::default(),
            audit_checkpoint_file: config_dir.join("audit.checkpoint"),
            audit_checkpoint_every: 1000,
            audit_checkpoint_secs: 10,
            attach_grace: std::time::Duration::from_secs(10),
            attach_lease: std::time::Duration::from_secs(30),
            mcp_stdio: Default::default(),
            clock: std::sync::Arc::new(mandate_core::clock::SystemClock),
        }
    }
}
