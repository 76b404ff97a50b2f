//! Starting the broker: directories, the store, keys ([`crate::keyring`]),
//! the bootstrap admin credential, and the in-memory state.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand_core::OsRng;
use sha2::{Digest, Sha256};

use mandate_core::audit::EventBody;
use mandate_core::model::AdminToken;
use mandate_core::secret::Secret;
use mandate_store::postgres::PgStore;
use mandate_store::sqlite::SqliteStore;
use mandate_store::{Entry, Mutation, Store};

use crate::config::{BootError, Config};
use crate::keyring::{self, master_key, write_private};
use crate::state::AppState;

/// Id prefix of feed-reader credentials in the admin credential table.
pub const FEED_ID_PREFIX: &str = "feed_";

/// The store the configuration names: PostgreSQL at `store_url`, or the
/// embedded SQLite database in the data directory.
fn open_store(cfg: &Config) -> Result<Arc<dyn Store>, BootError> {
    if let Some(url) = &cfg.store_url {
        let url = std::str::from_utf8(url.expose())
            .map_err(|_| BootError("the store URL is not text".into()))?;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(BootError(
                "--store takes a PostgreSQL URL (postgres://user:password@host:port/database); without it the broker uses SQLite in its data directory".into(),
            ));
        }
        // The URL holds a password: errors name the database, never the URL.
        let store = PgStore::open(url)
            .map_err(|e| BootError(format!("cannot open the PostgreSQL store: {e}")))?;
        return Ok(Arc::new(store));
    }
    let db = cfg.data_dir.join("mandate.db");
    let store = SqliteStore::open(&db).map_err(|e| match e {
        mandate_store::StoreError::Locked(why) => BootError(why),
        e => BootError(format!("cannot open {}: {e}", db.display())),
    })?;
    // The database holds no secrets in clear, but it is nobody else's business.
    for f in [
        db,
        cfg.data_dir.join("mandate.db-wal"),
        cfg.data_dir.join("mandate.db-shm"),
    ] {
        let _ = fs::set_permissions(f, fs::Permissions::from_mode(0o600));
    }
    Ok(Arc::new(store))
}

/// SHA-256 of an admin token.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The metadata key of the proof window (`<max age>,<max skew>` seconds)
/// the recorded one-time uses were computed with.
const PROOF_WINDOW: &str = "dpop_window";

/// The metadata key of the date up to which proofs need a nonce because
/// the window changed (see [`nonce_until`]).
const NONCE_UNTIL: &str = "dpop_nonce_until";

/// Up to which date proofs need this process's nonce because the proof
/// window changed, and, when the window or that date is not in the store
/// yet, the entry that keeps both (to commit with the boot's).
///
/// The store remembers every use as `(until, key)`, `until` being the
/// proof's date plus the window. After the window changed, a proof used
/// before gets another `until` and would not collide, so every proof dated
/// up to the latest recorded `until` (no proof used before is dated later)
/// needs a nonce. The date is kept, so a restart soon after (the window
/// now unchanged) still asks for it. A missing or unparsable date counts
/// as a change.
fn nonce_until(
    cfg: &Config,
    store: &dyn mandate_store::Store,
    meta: &[(String, String)],
    first_start: bool,
) -> Result<(u64, Option<Entry>), BootError> {
    let get = |k: &str| {
        meta.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let window = format!("{},{}", cfg.dpop_max_age, cfg.dpop_max_skew);
    let stored = get(NONCE_UNTIL).map(str::parse::<u64>);
    let until = match (
        first_start,
        get(PROOF_WINDOW) == Some(window.as_str()),
        stored,
    ) {
        (true, _, _) => 0,
        (false, true, Some(Ok(until))) => return Ok((until, None)),
        (false, _, stored) => store
            .latest_one_time_use()
            .map_err(|e| BootError(e.to_string()))?
            .saturating_add(1)
            .max(stored.and_then(Result::ok).unwrap_or(0)),
    };
    let keep = Entry {
        mutation: mandate_store::Mutation::all(vec![
            mandate_store::Mutation::PutMeta {
                key: PROOF_WINDOW.into(),
                value: window,
            },
            mandate_store::Mutation::PutMeta {
                key: NONCE_UNTIL.into(),
                value: until.to_string(),
            },
        ]),
        events: Vec::new(),
    };
    Ok((until, Some(keep)))
}

/// From which date (Unix seconds) a proof (DPoP, RFC 9421) is accepted
/// without a nonce of this process (RFC 9449 §8).
///
/// An earlier process may have accepted proofs this one cannot remember:
/// any dated up to its last second plus the skew, so those dated before
/// now plus the skew need this process's nonce, and those dated before
/// [`nonce_until`] after a change of the window. A first start has no
/// past.
pub(crate) fn proofs_from(first_start: bool, now: u64, skew: u64, nonce_until: u64) -> u64 {
    if first_start {
        return 0;
    }
    now.saturating_add(skew).saturating_add(1).max(nonce_until)
}

/// The date before which a proof needs this process's nonce because the
/// store may have cleared its use: the latest `now` with which uses were
/// cleared. It is past unless the clock was set back (or ran ahead before
/// the restart); then the broker says so. Its time itself starts from the
/// clock: holding it at a date the clock once showed by mistake would
/// refuse every proof until real time got there.
fn uses_cleared_to(cfg: &Config, meta: &[(String, String)]) -> u64 {
    let cleared = meta
        .iter()
        .find(|(k, _)| k == mandate_store::USES_CLEARED)
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .unwrap_or(0);
    let behind = cleared.saturating_sub(cfg.clock.now_secs());
    if behind > 0 {
        tracing::warn!(
            "the system clock is {behind} s behind the time up to which this store cleared used proofs: DPoP proofs dated before need this broker's nonce, and RFC 9421 signatures dated before are refused, until the clock passes it; check the clock's synchronisation"
        );
    }
    cleared
}

/// Opens the store, loads or creates keys and the admin credential, and
/// builds the shared state (starting the writer).
pub fn boot(mut cfg: Config) -> Result<Arc<AppState>, BootError> {
    let most = crate::config::MAX_DPOP_SECS;
    if cfg.dpop_max_age > most || cfg.dpop_max_skew > most {
        return Err(BootError(format!(
            "the DPoP proof age and skew are at most a day ({most} s) each"
        )));
    }
    mandate_core::ids::check_trust_domain(&cfg.trust_domain)
        .map_err(|e| BootError(e.to_string()))?;
    fs::create_dir_all(&cfg.data_dir).map_err(|e| {
        BootError(format!(
            "cannot create data directory {}: {e}",
            cfg.data_dir.display()
        ))
    })?;
    let _ = fs::set_permissions(&cfg.data_dir, fs::Permissions::from_mode(0o700));
    // Its time never goes back while it runs (see `Monotone`).
    cfg.clock = Arc::new(mandate_core::clock::Monotone::new(cfg.clock));
    let store = open_store(&cfg)?;
    let snap = store.load().map_err(|e| BootError(e.to_string()))?;
    let first_start = snap.keys.is_empty();
    let mk = master_key(&cfg, first_start)?;
    let (keys, mut boot_entries) = if first_start {
        keyring::first_keys(&cfg, &mk)?
    } else {
        let keys = keyring::stored_keys(&cfg, &mk, &snap.keys)?;
        if cfg.rotate_keys {
            keyring::rotate(&cfg, &mk, keys)?
        } else {
            (keys, Vec::new())
        }
    };
    // Before anything is written: the data must extend the signed checkpoint.
    let (anchored, unanchored) = crate::checkpoint::at_start(
        &cfg,
        &keys.jwks(),
        store.as_ref(),
        (snap.audit_head.0, &snap.audit_head.1),
        first_start,
    )?;
    boot_entries.extend(unanchored.map(|e| Entry {
        mutation: None,
        events: vec![e],
    }));
    let admin_hashes = admin_credentials(&cfg, &snap.admin_tokens, &mut boot_entries)?;
    // Paths in these events are the operator's text: escaped like any other.
    for e in &mut boot_entries {
        e.events
            .iter_mut()
            .for_each(mandate_core::audit::sanitize_event);
    }
    let (nonce_until, keep) = nonce_until(&cfg, store.as_ref(), &snap.meta, first_start)?;
    boot_entries.extend(keep);
    // Before it takes a proof: other brokers on the store keep uses as
    // long as this one judges them fresh.
    boot_entries.push(Entry {
        mutation: Some(mandate_store::Mutation::KeepUses {
            secs: cfg.dpop_max_age.saturating_add(cfg.dpop_max_skew),
        }),
        events: Vec::new(),
    });
    for r in store
        .commit(boot_entries)
        .map_err(|e| BootError(e.to_string()))?
    {
        r.map_err(|e| BootError(format!("cannot store initial keys: {e}")))?;
    }
    let snap = store.load().map_err(|e| BootError(e.to_string()))?;
    let proofs_from = proofs_from(
        first_start,
        cfg.clock.now_secs(),
        cfg.dpop_max_skew,
        nonce_until.max(uses_cleared_to(&cfg, &snap.meta)),
    );
    let checkpoints = crate::checkpoint::Checkpointer::start(
        &cfg,
        keys.jwt_eddsa.clone(),
        snap.audit_head.clone(),
        anchored,
    )?;
    let state = AppState::new(
        cfg,
        store,
        keys,
        snap,
        admin_hashes,
        mk,
        proofs_from,
        checkpoints,
    )?;
    Ok(state)
}

/// The admin credentials' hashes. A broker that has none gets a new
/// bootstrap credential, and so does one started with `new_admin_token`
/// (the old ones revoked in the same entry, for a lost admin token: only
/// who holds the master key can start the broker). The new credential's
/// entry is added to `boot_entries`, and it is written to the admin token file.
fn admin_credentials(
    cfg: &Config,
    stored: &[AdminToken],
    boot_entries: &mut Vec<Entry>,
) -> Result<Vec<Vec<u8>>, BootError> {
    // Feed-reader credentials live in the same table, ids prefixed `feed_`.
    let admins: Vec<&AdminToken> = stored
        .iter()
        .filter(|t| !t.id.starts_with(FEED_ID_PREFIX))
        .collect();
    if !admins.is_empty() && !cfg.new_admin_token {
        return Ok(admins.iter().map(|t| t.hash.clone()).collect());
    }
    let now_ms = cfg.clock.now_ms();
    let secret = Secret::random(&mut OsRng, 32);
    let token = format!("mandate_admin_{}", URL_SAFE_NO_PAD.encode(secret.expose()));
    let hash = token_hash(&token);
    let id = if admins.is_empty() && stored.iter().all(|t| t.id != "bootstrap") {
        "bootstrap".to_owned()
    } else {
        format!("admin_{now_ms}")
    };
    let put = Mutation::PutAdminToken(AdminToken {
        id: id.clone(),
        hash: hash.clone(),
        created_ms: now_ms,
        tenant: None,
        expires_at: 0,
    });
    let mut events: Vec<EventBody> = admins
        .iter()
        .map(|t| EventBody {
            time_ms: now_ms,
            event_type: mandate_core::audit::EventType::AdminTokenRevoke,
            decision: mandate_core::audit::Decision::Ok,
            actor: Some("operator (mandate serve --new-admin-token)".into()),
            details: serde_json::json!({"id": t.id, "replaced_by": id}),
            ..Default::default()
        })
        .collect();
    events.push(EventBody {
        time_ms: now_ms,
        event_type: mandate_core::audit::EventType::AdminTokenCreate,
        decision: mandate_core::audit::Decision::Ok,
        actor: Some("broker".into()),
        details: serde_json::json!({"id": id, "file": cfg.admin_token_file.display().to_string()}),
        ..Default::default()
    });
    let mutation = if admins.is_empty() {
        put
    } else {
        let mut all: Vec<Mutation> = admins
            .iter()
            .map(|t| Mutation::DeleteAdminToken { id: t.id.clone() })
            .collect();
        all.push(put);
        Mutation::Batch(all)
    };
    boot_entries.push(Entry {
        mutation: Some(mutation),
        events,
    });
    let new_admin_token = Some(token);
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
        if admins.is_empty() {
            tracing::info!(
                "wrote the bootstrap admin credential to {}",
                cfg.admin_token_file.display()
            );
        } else {
            tracing::warn!(
                "wrote a new admin credential to {}; the {} earlier one(s) are revoked. What they made lives on until it expires (approver and feed credentials, join tokens, runs): after a leak, revoke those too",
                cfg.admin_token_file.display(),
                admins.len()
            );
        }
    }
    Ok(vec![hash])
}

#[cfg(test)]
mod tests {
    use super::proofs_from;

    #[test]
    fn proofs_need_a_nonce_up_to_the_skew_or_after_a_window_change() {
        assert_eq!(proofs_from(true, 1_000, 5, 9_999), 0);
        assert_eq!(proofs_from(false, 1_000, 5, 0), 1_006);
        // The window changed: up to the latest recorded use, if later.
        assert_eq!(proofs_from(false, 1_000, 5, 1_366), 1_366);
        assert_eq!(proofs_from(false, 1_000, 5, 900), 1_006);
        assert_eq!(proofs_from(false, u64::MAX, 5, u64::MAX), u64::MAX);
    }
}
