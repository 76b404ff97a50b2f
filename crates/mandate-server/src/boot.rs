//! Starting the broker: directories, master key, signing keys, the bootstrap
//! admin credential, and the in-memory state.

use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand_core::OsRng;
use sha2::{Digest, Sha256};

use mandate_core::audit::EventBody;
use mandate_core::jose::Alg;
use mandate_core::keys::{BrokerKeys, SigningKey};
use mandate_core::secret::{MasterKey, Secret};
use mandate_store::sqlite::SqliteStore;
use mandate_store::{AdminToken, Entry, KeyRecord, Mutation, Store};

use crate::state::AppState;

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

/// Broker configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Public base URL (`iss`; DPoP `htu` is checked against it).
    pub issuer: String,
    /// Directory of the SQLite database.
    pub data_dir: PathBuf,
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
            clock: std::sync::Arc::new(mandate_core::clock::SystemClock),
        }
    }
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), BootError> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        fs::create_dir_all(dir)
            .map_err(|e| BootError(format!("cannot create {}: {e}", dir.display())))?;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| BootError(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .map_err(|e| BootError(format!("cannot write {}: {e}", path.display())))
}

fn read_private(path: &Path) -> Result<Secret, BootError> {
    let meta = fs::metadata(path)
        .map_err(|e| BootError(format!("cannot read {}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(BootError(format!(
            "{} is readable by other users (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        )));
    }
    let text = fs::read_to_string(path)
        .map_err(|e| BootError(format!("cannot read {}: {e}", path.display())))?;
    Ok(Secret::new(text.trim().as_bytes().to_vec()))
}

fn decode_master(b64: &[u8], from: &str) -> Result<MasterKey, BootError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| BootError(format!("the master key in {from} is not base64url")))?;
    let secret = Secret::new(bytes);
    MasterKey::from_bytes(secret.expose())
        .map_err(|_| BootError(format!("the master key in {from} must be 32 bytes")))
}

fn master_key(cfg: &Config, first_start: bool) -> Result<MasterKey, BootError> {
    match &cfg.master_key {
        MasterKeySource::Env(s) => decode_master(s.expose(), "MANDATE_MASTER_KEY"),
        MasterKeySource::File(path) => {
            let data = cfg.data_dir.canonicalize().unwrap_or(cfg.data_dir.clone());
            let parent = path
                .parent()
                .map(|p| p.canonicalize().unwrap_or(p.to_path_buf()));
            if parent.as_deref().is_some_and(|p| p.starts_with(&data)) {
                return Err(BootError(format!(
                    "the master key file {} is inside the data directory {}; keep it elsewhere so a copy of the data is not a copy of the key",
                    path.display(),
                    cfg.data_dir.display()
                )));
            }
            if path.exists() {
                decode_master(read_private(path)?.expose(), &path.display().to_string())
            } else if first_start {
                let k = MasterKey::generate(&mut OsRng);
                write_private(
                    path,
                    format!("{}\n", URL_SAFE_NO_PAD.encode(k.expose())).as_bytes(),
                )?;
                tracing::info!("created master key {}", path.display());
                Ok(k)
            } else {
                Err(BootError(format!(
                    "the master key file {} is missing but the data directory has keys sealed under it; restore the file or set MANDATE_MASTER_KEY",
                    path.display()
                )))
            }
        }
    }
}

fn seal_key(
    mk: &MasterKey,
    key: &SigningKey,
    purpose: &str,
    created_ms: u64,
) -> Result<KeyRecord, BootError> {
    let kid = key.kid();
    let aad = format!("{kid}|{purpose}");
    let sealed = mk
        .seal(&mut OsRng, aad.as_bytes(), key.to_secret().expose())
        .map_err(|e| BootError(e.to_string()))?;
    Ok(KeyRecord {
        kid,
        alg: key.alg().as_str().into(),
        purpose: purpose.into(),
        sealed,
        created_ms,
    })
}

fn unseal_key(mk: &MasterKey, rec: &KeyRecord) -> Result<SigningKey, BootError> {
    let aad = format!("{}|{}", rec.kid, rec.purpose);
    let secret = mk.open("signing key", aad.as_bytes(), &rec.sealed).map_err(|_| {
        BootError("cannot decrypt the signing keys: the master key is not the one they were sealed with (check MANDATE_MASTER_KEY or the master key file)".into())
    })?;
    let alg = Alg::parse("stored key", &rec.alg).map_err(|e| BootError(e.to_string()))?;
    SigningKey::from_bytes(alg, secret.expose()).map_err(|e| BootError(e.to_string()))
}

/// How many earlier keys of one purpose are kept at most (a backstop: keys
/// are dropped by time, see [`retired_keys`]).
const RETIRED_KEPT: usize = 16;

/// Clock skew allowed on top of a token's life before its retired key goes.
const RETIRED_SKEW: u64 = 60;

/// The earlier keys of `purpose` still trusted at `now`, newest first, each
/// with when it was retired (when its successor of the same algorithm was
/// made). A key retired more than `keep` seconds ago (the longest life of
/// what it signed, plus skew) is dropped: it is no longer published or
/// accepted.
fn retired_keys(
    mk: &MasterKey,
    records: &[mandate_store::KeyRecord],
    purpose: &str,
    current: &[String],
    keep: u64,
    now: u64,
) -> Result<Vec<(SigningKey, u64)>, BootError> {
    let mut out = Vec::new();
    for (i, rec) in records.iter().enumerate().rev() {
        if rec.purpose != purpose || current.contains(&rec.kid) || out.len() >= RETIRED_KEPT {
            continue;
        }
        let successor = records[i + 1..]
            .iter()
            .find(|r| r.purpose == rec.purpose && r.alg == rec.alg);
        let Some(next) = successor else { continue };
        let retired_at = next.created_ms / 1000;
        if retired_at + keep + RETIRED_SKEW >= now {
            out.push((unseal_key(mk, rec)?, retired_at));
        }
    }
    Ok(out)
}

/// Id prefix of feed-reader credentials in the admin credential table.
pub const FEED_ID_PREFIX: &str = "feed_";

/// SHA-256 of an admin token.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Opens the store, loads or creates keys and the admin credential, and
/// builds the shared state (starting the writer).
pub fn boot(cfg: Config) -> Result<Arc<AppState>, BootError> {
    mandate_core::ids::check_trust_domain(&cfg.trust_domain)
        .map_err(|e| BootError(e.to_string()))?;
    fs::create_dir_all(&cfg.data_dir).map_err(|e| {
        BootError(format!(
            "cannot create data directory {}: {e}",
            cfg.data_dir.display()
        ))
    })?;
    let _ = fs::set_permissions(&cfg.data_dir, fs::Permissions::from_mode(0o700));
    let db = cfg.data_dir.join("mandate.db");
    let store = SqliteStore::open(&db)
        .map_err(|e| BootError(format!("cannot open {}: {e}", db.display())))?;
    // The database holds no secrets in clear, but it is nobody else's business.
    for f in [
        db,
        cfg.data_dir.join("mandate.db-wal"),
        cfg.data_dir.join("mandate.db-shm"),
    ] {
        let _ = fs::set_permissions(f, fs::Permissions::from_mode(0o600));
    }
    let snap = store.load().map_err(|e| BootError(e.to_string()))?;
    let first_start = snap.keys.is_empty();
    let mk = master_key(&cfg, first_start)?;
    let mut boot_entries = Vec::new();
    let keys = if first_start {
        let keys = BrokerKeys::generate(&mut OsRng);
        for (k, purpose) in [
            (&keys.mandate_root, "mandate"),
            (&keys.jwt_eddsa, "jwt"),
            (&keys.jwt_es256, "jwt"),
        ] {
            boot_entries.push(Entry {
                mutation: Some(Mutation::PutKey(seal_key(
                    &mk,
                    k,
                    purpose,
                    cfg.clock.now_ms(),
                )?)),
                events: vec![],
            });
        }
        boot_entries.push(Entry {
            mutation: None,
            events: vec![EventBody {
                time_ms: cfg.clock.now_ms(),
                event_type: "broker.init".into(),
                decision: "ok".into(),
                actor: Some("broker".into()),
                details: serde_json::json!({
                    "mandate_kid": keys.mandate_root.kid(),
                    "jwt_kids": [keys.jwt_eddsa.kid(), keys.jwt_es256.kid()],
                }),
                ..Default::default()
            }],
        });
        keys
    } else {
        let find = |purpose: &str, alg: &str| {
            snap.keys
                .iter()
                .rev()
                .find(|k| k.purpose == purpose && k.alg == alg)
                .ok_or_else(|| {
                    BootError(format!(
                        "stored keys are incomplete: no {purpose} {alg} key"
                    ))
                })
        };
        let mut keys = BrokerKeys {
            mandate_root: unseal_key(&mk, find("mandate", "EdDSA")?)?,
            jwt_eddsa: unseal_key(&mk, find("jwt", "EdDSA")?)?,
            jwt_es256: unseal_key(&mk, find("jwt", "ES256")?)?,
            retired: Vec::new(),
            retired_roots: Vec::new(),
            retired_since: std::collections::HashMap::new(),
        };
        let now = cfg.clock.now_secs();
        // Earlier mandate roots and credential keys, newest first, while
        // what they signed can still be alive; nothing they signed after
        // their retirement is accepted.
        let roots = retired_keys(
            &mk,
            &snap.keys,
            "mandate",
            &[keys.mandate_root.kid()],
            cfg.mandate_max_ttl,
            now,
        )?;
        let jwts = retired_keys(
            &mk,
            &snap.keys,
            "jwt",
            &[keys.jwt_eddsa.kid(), keys.jwt_es256.kid()],
            mandate_core::credential::MAX_CREDENTIAL_LIFETIME,
            now,
        )?;
        for (k, at) in roots.iter().chain(jwts.iter()) {
            keys.retired_since.insert(k.kid(), *at);
        }
        keys.retired_roots = roots.into_iter().map(|(k, _)| k).collect();
        keys.retired = jwts.into_iter().map(|(k, _)| k).collect();
        if cfg.rotate_keys {
            let fresh = BrokerKeys::generate(&mut OsRng);
            let mut retired = vec![keys.jwt_eddsa.clone(), keys.jwt_es256.clone()];
            retired.append(&mut keys.retired);
            retired.truncate(RETIRED_KEPT);
            for k in [&keys.jwt_eddsa, &keys.jwt_es256, &keys.mandate_root] {
                keys.retired_since.insert(k.kid(), now);
            }
            for k in [&fresh.jwt_eddsa, &fresh.jwt_es256] {
                boot_entries.push(Entry {
                    mutation: Some(Mutation::PutKey(seal_key(
                        &mk,
                        k,
                        "jwt",
                        cfg.clock.now_ms(),
                    )?)),
                    events: vec![],
                });
            }
            boot_entries.push(Entry {
                mutation: Some(Mutation::PutKey(seal_key(
                    &mk,
                    &fresh.mandate_root,
                    "mandate",
                    cfg.clock.now_ms(),
                )?)),
                events: vec![],
            });
            let mut retired_roots = vec![keys.mandate_root.clone()];
            retired_roots.append(&mut keys.retired_roots);
            retired_roots.truncate(RETIRED_KEPT);
            boot_entries.push(Entry {
                mutation: None,
                events: vec![EventBody {
                    time_ms: cfg.clock.now_ms(),
                    event_type: "keys.rotate".into(),
                    decision: "ok".into(),
                    actor: Some("broker (--rotate-keys)".into()),
                    details: serde_json::json!({
                        "jwt_kids": [fresh.jwt_eddsa.kid(), fresh.jwt_es256.kid()],
                        "retired": retired.iter().map(SigningKey::kid).collect::<Vec<_>>(),
                        "mandate_kid": fresh.mandate_root.kid(),
                        "retired_mandate_kids": retired_roots.iter().map(SigningKey::kid).collect::<Vec<_>>(),
                    }),
                    ..Default::default()
                }],
            });
            keys = BrokerKeys {
                mandate_root: fresh.mandate_root,
                jwt_eddsa: fresh.jwt_eddsa,
                jwt_es256: fresh.jwt_es256,
                retired,
                retired_roots,
                retired_since: std::mem::take(&mut keys.retired_since),
            };
        }
        keys
    };
    // Before anything is written: the data must extend the signed checkpoint.
    let (anchored, unanchored) = crate::checkpoint::at_start(
        &cfg,
        &keys.jwks(),
        &store,
        (snap.audit_head.0, &snap.audit_head.1),
        first_start,
    )?;
    boot_entries.extend(unanchored.map(|e| Entry {
        mutation: None,
        events: vec![e],
    }));
    // Feed-reader credentials live in the same table, ids prefixed `feed_`.
    let mut admin_hashes: Vec<Vec<u8>> = snap
        .admin_tokens
        .iter()
        .filter(|t| !t.id.starts_with(FEED_ID_PREFIX))
        .map(|t| t.hash.clone())
        .collect();
    let mut new_admin_token = None;
    if admin_hashes.is_empty() {
        let secret = Secret::random(&mut OsRng, 32);
        let token = format!("mandate_admin_{}", URL_SAFE_NO_PAD.encode(secret.expose()));
        let hash = token_hash(&token);
        admin_hashes.push(hash.clone());
        boot_entries.push(Entry {
            mutation: Some(Mutation::PutAdminToken(AdminToken {
                id: "bootstrap".into(),
                hash,
                created_ms: cfg.clock.now_ms(),
                tenant: None,
                expires_at: 0,
            })),
            events: vec![EventBody {
                time_ms: cfg.clock.now_ms(),
                event_type: "admin_token.create".into(),
                decision: "ok".into(),
                actor: Some("broker".into()),
                details: serde_json::json!({"id": "bootstrap", "file": cfg.admin_token_file.display().to_string()}),
                ..Default::default()
            }],
        });
        new_admin_token = Some(token);
    }
    if let Some(token) = &new_admin_token {
        if cfg.admin_token_file.exists() {
            fs::remove_file(&cfg.admin_token_file).map_err(|e| {
                BootError(format!(
                    "cannot replace stale {}: {e}",
                    cfg.admin_token_file.display()
                ))
            })?;
        }
        write_private(&cfg.admin_token_file, format!("{token}\n").as_bytes())?;
        tracing::info!(
            "wrote the bootstrap admin credential to {}",
            cfg.admin_token_file.display()
        );
    }
    // Paths in these events are the operator's text: escaped like any other.
    for e in &mut boot_entries {
        e.events
            .iter_mut()
            .for_each(mandate_core::audit::sanitize_event);
    }
    if !boot_entries.is_empty() {
        for r in store
            .commit(boot_entries)
            .map_err(|e| BootError(e.to_string()))?
        {
            r.map_err(|e| BootError(format!("cannot store initial keys: {e}")))?;
        }
    }
    let snap = store.load().map_err(|e| BootError(e.to_string()))?;
    // An earlier process may have accepted proofs this one cannot remember:
    // any dated up to its last second plus the skew. Those need a nonce of
    // this process (RFC 9449 §8) from now on. A first start has no past.
    let proofs_from = if first_start {
        0
    } else {
        cfg.clock.now_secs() + cfg.dpop_max_skew + 1
    };
    let checkpoints = crate::checkpoint::Checkpointer::start(
        &cfg,
        keys.jwt_eddsa.clone(),
        snap.audit_head.clone(),
        anchored,
    )?;
    AppState::new(
        cfg,
        Arc::new(store),
        keys,
        snap,
        admin_hashes,
        mk,
        proofs_from,
        checkpoints,
    )
}
