//! The broker's shared state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use biscuit_auth::KeyPair;
use mandate_core::dpop::ReplayCache;
use mandate_core::jose::PublicJwk;
use mandate_core::keys::BrokerKeys;
use mandate_core::mandate::{self, MandateClaims};
use mandate_core::policy::{Engine, ExchangeFacts, TenantPolicies, Verdict};
use mandate_core::secret::{MasterKey, Secret};
use mandate_store::{Committed, Entry, Mutation, Snapshot, Store};

use crate::config::{BootError, Config};
use crate::error::ApiError;
use crate::registry::Registry;
use crate::writer::Writer;

/// Verified tokens by digest, until they expire (DESIGN: "do not pay for
/// the same verification twice"). Bounded. Revocation is checked on every
/// use, outside the cache.
#[derive(Debug)]
pub struct VerifiedCache<T> {
    map: HashMap<[u8; 32], (u64, Arc<T>)>,
    cap: usize,
    /// At this many entries, expired ones are swept (amortized: the next
    /// sweep is at twice what is left), so the cache holds about what is
    /// live, not what was ever seen.
    sweep_at: usize,
}

/// The smallest size at which a cache sweeps expired entries.
const SWEEP_MIN: usize = 1024;

impl<T> Default for VerifiedCache<T> {
    fn default() -> Self {
        Self::with_cap(VERIFIED_CACHE_CAP)
    }
}

/// An attenuated mandate whose holder proved its key: its claims and its
/// parsed token (so each use runs only its Datalog checks again).
#[derive(Debug)]
pub struct Attenuated {
    /// The verified claims.
    pub claims: Arc<MandateClaims>,
    /// The parsed, verified token.
    pub parsed: Arc<biscuit_auth::Biscuit>,
}

/// Attenuated mandates kept at most (holders mint them offline, up to
/// ~80 KB parsed each: a few MB at most, and a miss only costs a verification).
const ATTENUATED_CACHE_CAP: usize = 1024;

/// Verified mandates.
pub type MandateCache = VerifiedCache<MandateClaims>;

const VERIFIED_CACHE_CAP: usize = 100_000;

impl<T> VerifiedCache<T> {
    /// Number of entries (some may have expired).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// An empty cache of at most `cap` entries.
    pub fn with_cap(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            cap: cap.max(1),
            sweep_at: SWEEP_MIN,
        }
    }

    /// A cached, still-unexpired verification.
    pub fn get(&self, digest: &[u8; 32], now: u64) -> Option<Arc<T>> {
        self.map
            .get(digest)
            .filter(|(exp, _)| *exp >= now)
            .map(|(_, c)| Arc::clone(c))
    }
    /// Remembers a verification that holds until `exp`.
    pub fn put(&mut self, digest: [u8; 32], exp: u64, claims: Arc<T>, now: u64) {
        if self.map.len() >= self.sweep_at.min(self.cap) {
            self.map.retain(|_, (e, _)| *e >= now);
            self.sweep_at = (self.map.len() * 2).max(SWEEP_MIN);
            if self.map.len() >= self.cap {
                self.map.clear();
            }
        }
        self.map.insert(digest, (exp, claims));
    }

    /// Forgets the entries `gone` picks.
    pub fn forget(&mut self, mut gone: impl FnMut(&T) -> bool) {
        self.map.retain(|_, (_, v)| !gone(v));
    }
}

/// Everything the handlers share.
pub struct AppState {
    /// Configuration.
    pub config: Config,
    /// Storage (reads; writes go through [`AppState::writer`]).
    pub store: Arc<dyn Store>,
    /// The signing keys and what is built from them; replaced when another
    /// broker on the store rotates them ([`AppState::keyset`]).
    keyset: RwLock<Arc<KeySet>>,
    /// Cedar.
    pub engine: Engine,
    /// In-memory registry.
    pub registry: RwLock<Registry>,
    /// The writer.
    pub writer: Writer,
    /// DPoP `jti` replay cache.
    pub replay: Mutex<ReplayCache>,
    /// Verified mandates.
    pub mandates: Mutex<MandateCache>,
    /// Attenuated mandates, once their holder proved its key (never before:
    /// anyone can mint them offline).
    pub attenuated: Mutex<VerifiedCache<Attenuated>>,
    /// Verified proxy credentials.
    pub proxy_credentials: Mutex<VerifiedCache<mandate_core::credential::AccessClaims>>,
    /// Single-use (amount) proxy credentials already used, until they expire.
    pub proxy_spent: Mutex<mandate_core::forwarding::SpentSet>,
    /// Narrowed mandates revoked at RFC 7009 per run, in this process: at
    /// most [`crate::services::holder_revocation::MAX_BLOCK_REVOCATIONS`] each (anyone
    /// holding a run's key can mint narrowed mandates offline).
    pub block_revocations: Mutex<HashMap<String, u32>>,
    /// SHA-256 of each admin credential.
    pub admin_hashes: RwLock<Vec<Vec<u8>>>,
    /// SHA-256 of each feed-reader credential (revocation log and feed only).
    /// (id, SHA-256) of each feed-reader credential: `cred:<id>` revokes it.
    pub feed_credentials: RwLock<Vec<crate::services::feed_tokens::FeedCredential>>,
    /// The token endpoint URL (DPoP `htu`).
    pub token_endpoint: String,
    /// Run public keys already parsed, by thumbprint (bounded).
    pub run_keys: Mutex<VerifiedCache<PublicJwk>>,
    /// DPoP nonces (RFC 9449 §8): required of every proof with
    /// `--dpop-nonce`, and of proofs dated before this process started
    /// (plus the skew) in any case.
    pub nonces: mandate_core::dpop::NonceIssuer,
    /// The `DPoP-Nonce` header of the current nonce period.
    nonce_header: Mutex<Option<(u64, axum::http::HeaderValue)>>,
    /// Live revocations, for the feed's subscribers.
    pub revocations: tokio::sync::broadcast::Sender<mandate_core::model::Revocation>,
    /// Cedar entities per (run, tool), valid for one registry generation (bounded).
    pub policy_entities: Mutex<EntityCache>,
    /// The master key: seals tool secrets set while running.
    pub master: MasterKey,
    /// Tool secrets, opened, by (tenant, tool), with a version that changes when one is set.
    pub secrets: RwLock<HashMap<ToolKey, (u64, Arc<Secret>)>>,
    /// Held from the checks of a tool or agent registration (or its
    /// replacement) to its commit, so two at once cannot both pass a
    /// uniqueness check, nor apply to memory in another order than they
    /// were committed.
    pub registrations: tokio::sync::Mutex<()>,
    /// Sessions with `mcp` tools' MCP servers.
    pub mcp_sessions: crate::mcp_client::Sessions,
    /// Processes of `mcp` tools' stdio MCP servers.
    pub mcp_stdio: crate::mcp_client::stdio::Pool,
    /// Sessions MCP clients opened at the gateway.
    pub mcp_gateway: std::sync::Mutex<crate::routes::mcp::GatewaySessions>,
    /// Held while other brokers' changes are read ([`crate::follow`]).
    pub following: Mutex<()>,
    /// The store generation whose registry this broker last read.
    pub followed_generation: std::sync::atomic::AtomicU64,
    /// The last revocation number read from the store's log.
    pub followed_revocation: std::sync::atomic::AtomicU64,
    /// Set at shutdown: background tasks end.
    pub stopping: std::sync::atomic::AtomicBool,
    /// Whether other brokers share the store (set by [`crate::follow::start`]).
    pub shared: std::sync::atomic::AtomicBool,
    /// This broker's own events, while the store is shared.
    pub own_events: Arc<crate::writer::OwnEvents>,
    /// The last audit event read for the run histories (its own, at start;
    /// then every broker's, [`crate::follow`]).
    pub followed_audit: std::sync::atomic::AtomicU64,
    /// The proxy's upstream client.
    pub http: crate::upstream::Upstream,
    /// The `postgres` provider's admin connections.
    pub pg: crate::pg::Postgres,
    /// What each run has done (continuous authorization).
    pub history: Mutex<crate::history::Histories>,
    /// Wakes the webhook deliverer when the outbox has something new.
    pub outbox_notify: tokio::sync::Notify,
    /// Refusals nobody authenticated, counted per client for the audit.
    pub refusals: Mutex<mandate_core::limits::RefusalThrottle<crate::refusals::Key>>,
    /// Signed checkpoints of the audit trail.
    pub checkpoints: Arc<crate::checkpoint::Checkpointer>,
    /// Bounds on mandate verification, and refusals remembered.
    pub gate: crate::gate::MandateGate,
    /// Runs tied to a connection (`POST /v1/runs/attach`).
    pub attachments: crate::routes::attach::Attachments,
}

/// Why [`AppState::commit_outcome`] committed nothing.
#[derive(Debug)]
pub enum CommitRefused {
    /// A `Mutation::Unrevoked` found this revocation id in force.
    Revoked(String),
    /// A `Mutation::FirstUse` found this one-time key used before.
    Replayed(String),
    /// Anything else, as the API answers it.
    Failed(ApiError),
}

impl From<CommitRefused> for ApiError {
    fn from(r: CommitRefused) -> Self {
        match r {
            CommitRefused::Revoked(k) => mandate_store::StoreError::Revoked(k).into(),
            CommitRefused::Replayed(k) => mandate_store::StoreError::Replayed(k).into(),
            CommitRefused::Failed(e) => e,
        }
    }
}

/// (tenant, tool).
pub type ToolKey = (String, String);

/// AAD binding a sealed tool secret to its tool.
pub fn tool_secret_aad(tenant: &str, tool: &str) -> String {
    format!("tool-secret:{tenant}/{tool}")
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("issuer", &self.config.issuer)
            .finish_non_exhaustive()
    }
}

/// Cedar entities by (run, tool), with the registry generation they were built at.
pub type EntityCache = VerifiedCache<CachedEntities>;

/// A run's Cedar entities for one tool, built at a registry generation.
#[derive(Debug)]
pub struct CachedEntities {
    run: String,
    generation: u64,
    entities: Arc<mandate_core::policy::PolicyEntities>,
}

/// How long derived per-run entries (entities, parsed run keys) are kept
/// without being built again: they are rebuilt on demand.
const DERIVED_TTL: u64 = 300;

fn key_digest(parts: &[&str]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize().into()
}

/// Upper bound on live DPoP proof ids remembered in all (a backstop far
/// above one key's quota; beyond it the oldest are forgotten).
const REPLAY_CAP: usize = 1_000_000;

/// SHA-256 of each admin credential among a snapshot's (not feed readers').
pub(crate) fn admin_hashes(snap: &Snapshot) -> Vec<Vec<u8>> {
    snap.admin_tokens
        .iter()
        .filter(|t| !t.id.starts_with(crate::boot::FEED_ID_PREFIX))
        .map(|t| t.hash.clone())
        .collect()
}

/// The feed-reader credentials among a snapshot's admin credentials.
pub(crate) fn feed_credentials(
    snap: &Snapshot,
) -> Vec<crate::services::feed_tokens::FeedCredential> {
    snap.admin_tokens
        .iter()
        .filter(|t| t.id.starts_with(crate::boot::FEED_ID_PREFIX))
        .map(crate::services::feed_tokens::FeedCredential::from_record)
        .collect()
}

/// The tool secrets, opened with the master key, each with a version.
pub(crate) fn open_tool_secrets(
    master: &MasterKey,
    sealed: &[mandate_store::ToolSecret],
) -> Result<HashMap<ToolKey, (u64, Arc<Secret>)>, BootError> {
    let mut secrets = HashMap::new();
    for (i, t) in sealed.iter().enumerate() {
        let aad = tool_secret_aad(&t.tenant, &t.tool);
        let secret = master
            .open("tool secret", aad.as_bytes(), &t.sealed)
            .map_err(|e| BootError(format!("tool `{}/{}`: {e}", t.tenant, t.tool)))?;
        secrets.insert(
            (t.tenant.clone(), t.tool.clone()),
            (i as u64 + 1, Arc::new(secret)),
        );
    }
    Ok(secrets)
}

/// The broker's signing keys, and what is built from them once.
pub struct KeySet {
    /// Signing keys.
    pub keys: BrokerKeys,
    /// Mandate root key pair.
    pub root: KeyPair,
    /// Every root key mandates are accepted from (current and retired).
    pub roots: mandate::RootKeys,
    /// Credential signers (EdDSA, ES256), headers encoded once.
    signers: [mandate_core::credential::Signer; 2],
}

impl KeySet {
    /// Builds the root key pair and the signers of `keys`.
    pub fn new(keys: BrokerKeys) -> Result<Self, BootError> {
        let (root, roots) = root_keys(&keys)?;
        let signers = [
            mandate_core::credential::Signer::new(keys.jwt_eddsa.clone()),
            mandate_core::credential::Signer::new(keys.jwt_es256.clone()),
        ];
        Ok(Self {
            keys,
            root,
            roots,
            signers,
        })
    }

    /// The credential signer for `alg`.
    pub fn signer(&self, alg: mandate_core::jose::Alg) -> &mandate_core::credential::Signer {
        match alg {
            mandate_core::jose::Alg::EdDSA => &self.signers[0],
            mandate_core::jose::Alg::ES256 => &self.signers[1],
        }
    }

    /// The ids of the keys it signs with: (mandate root, EdDSA, ES256).
    pub fn current_kids(&self) -> [String; 3] {
        [
            self.keys.mandate_root.kid(),
            self.keys.jwt_eddsa.kid(),
            self.keys.jwt_es256.kid(),
        ]
    }
}

/// The mandate root key pair, and every root mandates are accepted from
/// (current and retired, each with when it was retired).
fn root_keys(keys: &BrokerKeys) -> Result<(KeyPair, mandate::RootKeys), BootError> {
    let root = mandate::root_keypair(&keys.mandate_root).map_err(|e| BootError(e.to_string()))?;
    let root_public = root.public();
    let mut retired = Vec::new();
    for k in &keys.retired_roots {
        retired.push(mandate::root_public(k).map_err(|e| BootError(e.to_string()))?);
    }
    let retired_since = keys
        .retired_roots
        .iter()
        .zip(&retired)
        .filter_map(|(k, p)| {
            let at = keys.retired_since.get(&k.kid())?;
            Some((mandate::root_key_id(p), *at))
        })
        .collect();
    let roots = mandate::RootKeys {
        current: root_public,
        legacy: retired.last().copied().unwrap_or(root_public),
        retired,
        retired_since,
    };
    Ok((root, roots))
}

impl AppState {
    /// Builds the state and starts the writer.
    // Issue 11 replaces this constructor with the service layer's builder.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        keys: BrokerKeys,
        snap: Snapshot,
        admin_hashes: Vec<Vec<u8>>,
        master: MasterKey,
        proofs_from: mandate_core::UnixTime,
        checkpoints: Arc<crate::checkpoint::Checkpointer>,
    ) -> Result<Arc<Self>, BootError> {
        let engine = Engine::new().map_err(|e| BootError(e.to_string()))?;
        let feed_credentials = feed_credentials(&snap);
        let followed_generation = snap.generation;
        // Histories are rebuilt from the trail below, a little past this
        // head if another broker commits meanwhile: those few events may
        // count twice (stricter limits, never looser).
        let followed_audit = snap.audit_head.0;
        let secrets = open_tool_secrets(&master, &snap.tool_secrets)?;
        let registry =
            Registry::from_snapshot(snap, &engine, config.clock.now_secs()).map_err(BootError)?;
        let keyset = KeySet::new(keys)?;
        let own_events = Arc::new(crate::writer::OwnEvents::default());
        let writer = Writer::start(
            Arc::clone(&store),
            Arc::clone(&checkpoints),
            Arc::clone(&own_events),
        );
        let token_endpoint = format!("{}/oauth/token", config.issuer.trim_end_matches('/'));
        let nonces = mandate_core::dpop::NonceIssuer::new(
            mandate_core::secret::Secret::random(&mut rand_core::OsRng, 32),
            config.dpop_nonce_period,
        );
        let replay = ReplayCache::new(
            mandate_core::dpop::ReplayLimits {
                per_key: config.dpop_replay_per_key,
                capacity: REPLAY_CAP,
            },
            proofs_from,
        );
        let history = crate::rebuild::rebuild_history(
            store.as_ref(),
            &registry,
            config.mandate_max_ttl,
            config.clock.now_ms(),
        )?;
        let proxy_spent = crate::rebuild::spent_from_trail(
            store.as_ref(),
            config.mandate_max_ttl,
            config.clock.now_ms(),
        )?;
        let block_revocations = crate::rebuild::block_revocations_from_trail(
            store.as_ref(),
            config.mandate_max_ttl,
            config.clock.now_ms(),
        )?;
        let config_window_ms = config.refusal_audit_window.as_millis() as u64;
        let followed_revocation = registry.revocation_seq;

        Ok(Arc::new(AppState {
            config,
            store,
            keyset: RwLock::new(Arc::new(keyset)),
            engine,
            registry: RwLock::new(registry),
            writer,
            replay: Mutex::new(replay),
            mandates: Mutex::new(MandateCache::default()),
            attenuated: Mutex::new(VerifiedCache::with_cap(ATTENUATED_CACHE_CAP)),
            proxy_credentials: Mutex::new(VerifiedCache::default()),
            proxy_spent: Mutex::new(proxy_spent),
            block_revocations: Mutex::new(block_revocations),
            admin_hashes: RwLock::new(admin_hashes),
            feed_credentials: RwLock::new(feed_credentials),
            token_endpoint,
            nonces,
            nonce_header: Mutex::new(None),
            run_keys: Mutex::new(VerifiedCache::default()),
            revocations: tokio::sync::broadcast::channel(4096).0,
            policy_entities: Mutex::new(VerifiedCache::default()),
            master,
            secrets: RwLock::new(secrets),
            registrations: tokio::sync::Mutex::new(()),
            mcp_sessions: Default::default(),
            mcp_stdio: Default::default(),
            mcp_gateway: Default::default(),
            following: Mutex::new(()),
            followed_generation: followed_generation.into(),
            followed_revocation: followed_revocation.into(),
            stopping: Default::default(),
            shared: Default::default(),
            own_events,
            followed_audit: followed_audit.into(),
            http: crate::upstream::client(),
            pg: crate::pg::Postgres::default(),
            history: Mutex::new(history),
            outbox_notify: tokio::sync::Notify::new(),
            refusals: Mutex::new(crate::refusals::throttle(config_window_ms)),
            checkpoints,
            gate: crate::gate::MandateGate::default(),
            attachments: crate::routes::attach::Attachments::default(),
        }))
    }

    /// Stops the writer (queued writes commit first), then writes a last
    /// audit checkpoint covering everything committed.
    pub fn shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
        self.writer.shutdown();
        self.checkpoints.flush();
    }

    /// Whether [`AppState::shutdown`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A revocation another broker committed (read from the store's log):
    /// applied as this broker's own are, and passed to its feed.
    pub fn heard_revocation(&self, r: mandate_core::model::Revocation) {
        {
            let mut reg = self.registry.write().unwrap_or_else(|p| p.into_inner());
            reg.add_revoked(&r.key, r.until, self.now_secs());
            reg.revocation_seq = reg.revocation_seq.max(r.seq);
        }
        if let Some(run) = r.key.strip_prefix("run:") {
            self.forget_run(run);
        }
        let _ = self.revocations.send(r);
    }

    /// Replaces the opened tool secrets with `fresh` (read again from the
    /// store): a secret that did not change keeps its version, one that did
    /// gets a new one (so what was built from the old one is rebuilt).
    pub(crate) fn replace_tool_secrets(&self, fresh: HashMap<ToolKey, (u64, Arc<Secret>)>) {
        let mut m = self.secrets.write().unwrap_or_else(|p| p.into_inner());
        let mut next = m.values().map(|(v, _)| *v).max().unwrap_or(0);
        let mut out = HashMap::with_capacity(fresh.len());
        for (k, (_, secret)) in fresh {
            let version = match m.get(&k) {
                Some((v, old)) if old.ct_eq(secret.expose()) => *v,
                _ => {
                    next += 1;
                    next
                }
            };
            out.insert(k, (version, secret));
        }
        *m = out;
    }

    /// Reads the registry.
    pub fn reg(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits `entry` durably, then applies its mutation to the registry.
    ///
    /// A revocation is refused in memory *before* it is queued (fail closed),
    /// and forgotten again only if its commit fails; so any exchange whose
    /// event commits after a revocation's sees it when it checks again.
    pub async fn commit(&self, entry: Entry) -> Result<Committed, ApiError> {
        self.commit_outcome(entry).await.map_err(ApiError::from)
    }

    /// [`AppState::commit`], saying why an entry that issues something was
    /// refused at commit time (a revocation or a use committed before it,
    /// perhaps by another broker), for callers that record the refusal.
    pub async fn commit_outcome(&self, entry: Entry) -> Result<Committed, CommitRefused> {
        let mutation = entry.mutation.clone();
        let early = match &mutation {
            Some(Mutation::Revoke(r)) | Some(Mutation::EndRun { revocation: r, .. }) => {
                let mut reg = self.registry.write().unwrap_or_else(|p| p.into_inner());
                reg.add_revoked(&r.key, r.until, self.now_secs())
                    .then(|| r.key.clone())
            }
            _ => None,
        };
        let done = match self.writer.write(entry).await {
            Ok(d) => d,
            Err(e) => {
                // On a shared store another broker may have committed the
                // same revocation (heard meanwhile), and a commit whose sync
                // failed may be on disk: it stays (fail closed).
                let maybe_on_disk = matches!(e, crate::writer::WriteError::Unsynced(_))
                    || self.shared.load(std::sync::atomic::Ordering::Acquire);
                if let Some(k) = early.filter(|_| !maybe_on_disk) {
                    let mut reg = self.registry.write().unwrap_or_else(|p| p.into_inner());
                    reg.revoked.remove(&k);
                }
                return Err(match e {
                    crate::writer::WriteError::Store(mandate_store::StoreError::Revoked(k)) => {
                        CommitRefused::Revoked(k)
                    }
                    crate::writer::WriteError::Store(mandate_store::StoreError::Replayed(k)) => {
                        CommitRefused::Replayed(k)
                    }
                    e => CommitRefused::Failed(e.into()),
                });
            }
        };
        if let Some(m) = mutation {
            {
                let mut reg = self.registry.write().unwrap_or_else(|p| p.into_inner());
                match done.generation {
                    // Read already with a newer snapshot (another broker's
                    // change came after it): applying it would go back.
                    Some(g) if g <= reg.store_generation => {}
                    g => {
                        reg.apply(&m, &self.engine, done.revocation_seq, self.now_secs());
                        if let Some(g) = g {
                            reg.store_generation = g;
                        }
                    }
                }
            }
            let revoked = match m {
                Mutation::Revoke(r) | Mutation::EndRun { revocation: r, .. } => Some(r),
                _ => None,
            };
            if let Some(run) = revoked.as_ref().and_then(|r| r.key.strip_prefix("run:")) {
                self.forget_run(run);
            }
            if let (Some(mut r), Some(seq)) = (revoked, done.revocation_seq) {
                r.seq = seq;
                // No subscribers is fine: the log is in the store.
                let _ = self.revocations.send(r);
            }
        }
        Ok(done)
    }

    /// A tool's opened secret.
    pub fn tool_secret(&self, tenant: &str, tool: &str) -> Option<Arc<Secret>> {
        self.tool_secret_versioned(tenant, tool).map(|(_, s)| s)
    }

    /// A tool's opened secret and its version.
    pub fn tool_secret_versioned(&self, tenant: &str, tool: &str) -> Option<(u64, Arc<Secret>)> {
        self.secrets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(tenant.to_owned(), tool.to_owned()))
            .cloned()
    }

    /// Makes a newly stored secret current.
    pub fn set_tool_secret(&self, tenant: &str, tool: &str, secret: Secret) {
        let mut m = self.secrets.write().unwrap_or_else(|p| p.into_inner());
        let version = m.values().map(|(v, _)| *v).max().unwrap_or(0) + 1;
        m.insert(
            (tenant.to_owned(), tool.to_owned()),
            (version, Arc::new(secret)),
        );
    }

    /// Now, in seconds since the Unix epoch, from the configured clock.
    pub fn now_secs(&self) -> u64 {
        self.config.clock.now_secs()
    }

    /// Now, in milliseconds since the Unix epoch, from the configured clock.
    pub fn now_ms(&self) -> u64 {
        self.config.clock.now_ms()
    }

    /// The signing keys in force (held for one use: a rotation by another
    /// broker replaces them, [`AppState::replace_keys`]).
    pub fn keyset(&self) -> Arc<KeySet> {
        Arc::clone(&self.keyset.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Uses `keys` from now on (read again after another broker rotated).
    pub fn replace_keys(&self, keys: KeySet) {
        *self.keyset.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
    }

    /// Asks the tenant's policies about `facts`.
    pub fn decide(
        &self,
        generation: u64,
        policies: &TenantPolicies,
        facts: &ExchangeFacts<'_>,
    ) -> Result<Verdict, ApiError> {
        self.policy_entities(generation, facts)
            .and_then(|entities| self.engine.decide_with(policies, facts, &entities))
            .map_err(|e| {
                crate::error::err(
                    crate::error::Code::ServerError,
                    format!("policy evaluation failed: {e}"),
                )
            })
    }

    /// Asks the tenant's policies and refuses with `access_denied` unless
    /// they allow; the deciding policy ids go to `decided_by` either way.
    pub fn enforce(
        &self,
        generation: u64,
        policies: &TenantPolicies,
        facts: &ExchangeFacts<'_>,
        decided_by: &mut Vec<String>,
    ) -> Result<(), ApiError> {
        let verdict = self.decide(generation, policies, facts)?;
        *decided_by = verdict.policies;
        if verdict.allowed {
            Ok(())
        } else {
            Err(crate::error::err(
                crate::error::Code::AccessDenied,
                verdict.reason.unwrap_or_else(|| "denied by policy".into()),
            ))
        }
    }

    /// Adds the DPoP nonce to use next (RFC 9449 §8.1) to an answer of an
    /// endpoint that takes DPoP proofs.
    /// The header is made once per nonce period (an HMAC and an encoding
    /// that every answer repeated).
    pub fn add_dpop_nonce(&self, resp: &mut axum::response::Response) {
        let now = self.now_secs();
        let slot = self.nonces.slot(now);
        let mut cached = self.nonce_header.lock().unwrap_or_else(|p| p.into_inner());
        let v = match &*cached {
            Some((s, v)) if *s == slot => v.clone(),
            _ => {
                let nonce = self.nonces.current(now);
                let Ok(v) = axum::http::HeaderValue::from_str(&nonce) else {
                    return;
                };
                *cached = Some((slot, v.clone()));
                v
            }
        };
        drop(cached);
        resp.headers_mut().insert("dpop-nonce", v);
    }

    /// The nonce issuer when every proof must carry a nonce (`--dpop-nonce`).
    pub fn required_nonces(&self) -> Option<&mandate_core::dpop::NonceIssuer> {
        self.config.dpop_nonce.then_some(&self.nonces)
    }

    /// Records one use of a proof of possession (RFC 9449 §11.1, RFC 9421
    /// §7.2.2) in the replay cache: refused if seen before, if its key is
    /// over its quota, or if it is dated before this process could check
    /// (see [`mandate_core::dpop::ReplayCache`]). Call it only once the
    /// proof is otherwise valid and bound to the right key.
    /// The use returned is to be committed with what the proof is for
    /// (`Mutation::FirstUse`): every broker on the store refuses it then.
    pub fn first_use(
        &self,
        used: &mandate_core::dpop::ProofUse<'_>,
        now: u64,
    ) -> Result<mandate_core::dpop::Spent, mandate_core::dpop::ReplayError> {
        self.replay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check_and_insert(used, now)?;
        Ok(used.spent())
    }

    /// Refuses a DPoP proof seen before (RFC 9449 §11.1), remembering this
    /// one until it would be too old anyway.
    pub fn first_use_of_proof(
        &self,
        proof: &mandate_core::dpop::VerifiedProof,
        now: u64,
    ) -> Result<mandate_core::dpop::Spent, ApiError> {
        use crate::error::{Code, err};
        use mandate_core::dpop::ReplayError;
        let used = mandate_core::dpop::ProofUse {
            jkt: &proof.jkt,
            id: &proof.jti,
            dated: proof.iat,
            forget_after: proof.iat + self.config.dpop_max_age + self.config.dpop_max_skew,
            nonce: proof
                .nonce
                .as_deref()
                .is_some_and(|n| self.nonces.is_current(n, now)),
        };
        self.first_use(&used, now).map_err(|e| match e {
            ReplayError::Replayed => err(
                Code::InvalidDpopProof,
                "this DPoP proof was already used (`jti` replayed); make a fresh proof for every request",
            ),
            ReplayError::BeforeStart { from } => err(
                Code::UseDpopNonce,
                format!(
                    "the broker restarted: a proof dated before {from} (Unix time) may have been used before, so it needs this broker's nonce; retry with the nonce in the `DPoP-Nonce` response header"
                ),
            ),
            ReplayError::Forgotten { upto } => err(
                Code::InvalidDpopProof,
                format!(
                    "the broker can no longer check proofs dated {upto} (Unix time) or earlier for replay; make a fresh proof"
                ),
            ),
            ReplayError::OverQuota { per_key } => err(
                Code::SlowDown,
                format!(
                    "this key already has {per_key} live DPoP proofs (each is remembered for {} s); slow down",
                    self.config.dpop_max_age + self.config.dpop_max_skew
                ),
            ),
        })
    }

    /// Commits audit events that change nothing else (a decision, a denial).
    pub async fn record(
        &self,
        events: Vec<mandate_core::audit::EventBody>,
    ) -> Result<Committed, ApiError> {
        self.commit(Entry {
            mutation: None,
            events,
        })
        .await
    }

    /// Remembers a run's parsed public key.
    pub fn remember_run_key(&self, jkt: &str, key: PublicJwk) {
        let now = self.now_secs();
        if let Ok(mut m) = self.run_keys.lock() {
            m.put(key_digest(&[jkt]), now + DERIVED_TTL, Arc::new(key), now);
        }
    }

    /// A run key parsed before, by thumbprint.
    pub fn known_run_key(&self, jkt: &str) -> Option<Arc<PublicJwk>> {
        let now = self.now_secs();
        self.run_keys
            .lock()
            .ok()
            .and_then(|m| m.get(&key_digest(&[jkt]), now))
    }

    /// Forgets what is kept in memory for `run`, which has ended or been
    /// revoked (its history and its Cedar entities).
    fn forget_run(&self, run: &str) {
        if let Ok(mut h) = self.history.lock() {
            h.forget(run);
        }
        if let Ok(mut m) = self.policy_entities.lock() {
            m.forget(|e| e.run == run);
        }
        if let Ok(mut m) = self.mcp_gateway.lock() {
            m.end_run(run);
        }
        crate::mcp_client::end_run(self, run);
    }

    /// The Cedar entities of an exchange, built once per (run, tool) and
    /// registry generation.
    pub fn policy_entities(
        &self,
        generation: u64,
        facts: &mandate_core::policy::ExchangeFacts<'_>,
    ) -> Result<Arc<mandate_core::policy::PolicyEntities>, mandate_core::Error> {
        let key = key_digest(&[facts.run, facts.tool]);
        self.cached_entities(key, (facts.run, generation), || self.engine.entities(facts))
    }

    /// The entities cached under `key` for `run` at `generation`, or built
    /// (and cached until [`DERIVED_TTL`] or the run ends).
    fn cached_entities(
        &self,
        key: [u8; 32],
        (run, generation): (&str, u64),
        build: impl FnOnce() -> Result<mandate_core::policy::PolicyEntities, mandate_core::Error>,
    ) -> Result<Arc<mandate_core::policy::PolicyEntities>, mandate_core::Error> {
        let now = self.now_secs();
        if let Some(c) = self
            .policy_entities
            .lock()
            .ok()
            .and_then(|m| m.get(&key, now))
            && c.generation == generation
        {
            return Ok(Arc::clone(&c.entities));
        }
        let e = Arc::new(build()?);
        if let Ok(mut m) = self.policy_entities.lock() {
            let c = CachedEntities {
                run: run.to_owned(),
                generation,
                entities: Arc::clone(&e),
            };
            m.put(key, now + DERIVED_TTL, Arc::new(c), now);
        }
        Ok(e)
    }

    /// The Cedar entities of an MCP call question ([`Self::policy_entities`]
    /// plus the call action), built once per (run, tool, call) and
    /// registry generation.
    pub fn call_entities(
        &self,
        generation: u64,
        facts: &mandate_core::policy::ExchangeFacts<'_>,
        call: &str,
    ) -> Result<Arc<mandate_core::policy::PolicyEntities>, mandate_core::Error> {
        let key = key_digest(&[facts.run, facts.tool, call, "call"]);
        self.cached_entities(key, (facts.run, generation), || {
            let base = self.policy_entities(generation, facts)?;
            self.engine.call_entities(&base, call)
        })
    }

    /// A mandate verified before and not expired, from the cache.
    pub fn cached_mandate(&self, digest: &[u8; 32], now: u64) -> Option<Arc<MandateClaims>> {
        self.mandates.lock().ok().and_then(|m| m.get(digest, now))
    }

    /// Verifies a mandate, using the cache. Blocking work: request handlers
    /// go through [`crate::gate::verify_mandate`].
    pub fn verify_mandate(
        &self,
        token: &str,
        now: u64,
    ) -> Result<Arc<MandateClaims>, mandate_core::Error> {
        let digest = mandate::token_digest(token);
        if let Some(c) = self.mandates.lock().ok().and_then(|m| m.get(&digest, now)) {
            return Ok(c);
        }
        if let Some(a) = self
            .attenuated
            .lock()
            .ok()
            .and_then(|m| m.get(&digest, now))
        {
            return Ok(Arc::clone(&a.claims));
        }
        let (claims, _) = self.verify_uncached(token, now)?;
        // Only the broker's own mandates (one per run) are cached here;
        // attenuated ones, which holders mint offline, once their holder
        // proved its key ([`AppState::parsed_mandate`]).
        if claims.hops.is_empty()
            && let Ok(mut m) = self.mandates.lock()
        {
            m.put(digest, claims.expires_at, Arc::clone(&claims), now);
        }
        Ok(claims)
    }

    fn verify_uncached(
        &self,
        token: &str,
        now: u64,
    ) -> Result<(Arc<MandateClaims>, biscuit_auth::Biscuit), mandate_core::Error> {
        let keyset = self.keyset();
        let (claims, parsed) = mandate::verify_parsed(&keyset.roots, token, now)?;
        keyset
            .roots
            .check_signed_before_retirement(&parsed, claims.issued_at)?;
        if claims.expires_at.saturating_sub(claims.issued_at) > self.config.mandate_max_ttl {
            return Err(mandate_core::Error::Malformed {
                what: "mandate",
                reason: format!(
                    "it lives longer than this broker's longest mandate ({} s)",
                    self.config.mandate_max_ttl
                ),
            });
        }
        if claims.issuer != self.config.issuer {
            return Err(mandate_core::Error::Malformed {
                what: "mandate",
                reason: "it was issued for another broker address".into(),
            });
        }
        Ok((Arc::new(claims), parsed))
    }

    /// The parsed token of an attenuated mandate [`AppState::verify_mandate`]
    /// accepted (verified again if it fell out of the cache).
    pub fn parsed_mandate(
        &self,
        token: &str,
        now: u64,
    ) -> Result<Arc<biscuit_auth::Biscuit>, mandate_core::Error> {
        let digest = mandate::token_digest(token);
        if let Some(a) = self
            .attenuated
            .lock()
            .ok()
            .and_then(|m| m.get(&digest, now))
        {
            return Ok(Arc::clone(&a.parsed));
        }
        let (claims, parsed) = self.verify_uncached(token, now)?;
        let parsed = Arc::new(parsed);
        if let Ok(mut m) = self.attenuated.lock() {
            let exp = claims.expires_at;
            let entry = Attenuated {
                claims,
                parsed: Arc::clone(&parsed),
            };
            m.put(digest, exp, Arc::new(entry), now);
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_holds_about_what_is_live_not_what_was_ever_seen() {
        let mut c: VerifiedCache<u64> = VerifiedCache::default();
        for i in 0..10_000u64 {
            // Each entry lives 10 s; time moves one second per 100 entries.
            let now = i / 100;
            c.put(key_digest(&[&i.to_string()]), now + 10, Arc::new(i), now);
        }
        // About 1,000 are live at the end; the sweeps keep it near that.
        assert!(c.len() <= 3 * SWEEP_MIN, "{}", c.len());
        assert_eq!(c.get(&key_digest(&["9999"]), 99).as_deref(), Some(&9999));
        c.forget(|v| *v == 9999);
        assert!(c.get(&key_digest(&["9999"]), 99).is_none());
    }
}
