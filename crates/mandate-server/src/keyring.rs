//! The broker's keys at start: the master key (from the environment or a
//! private file), signing keys sealed under it in the store, the retired
//! keys still trusted, and rotation.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand_core::OsRng;

use mandate_core::audit::EventBody;
use mandate_core::jose::Alg;
use mandate_core::keys::{BrokerKeys, SigningKey};
use mandate_core::secret::{MasterKey, Secret};
use mandate_store::{Entry, KeyRecord, Mutation};

use crate::config::{BootError, Config, MasterKeySource};

pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<(), BootError> {
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

pub(crate) fn master_key(cfg: &Config, first_start: bool) -> Result<MasterKey, BootError> {
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

/// Keys for a first start, and the entries that store them and say so.
pub(crate) fn first_keys(
    cfg: &Config,
    mk: &MasterKey,
) -> Result<(BrokerKeys, Vec<Entry>), BootError> {
    let mut boot_entries = Vec::new();
    let keys = BrokerKeys::generate(&mut OsRng);
    for (k, purpose) in [
        (&keys.mandate_root, "mandate"),
        (&keys.jwt_eddsa, "jwt"),
        (&keys.jwt_es256, "jwt"),
    ] {
        boot_entries.push(Entry {
            mutation: Some(Mutation::PutKey(seal_key(
                mk,
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
            event_type: mandate_core::audit::EventType::BrokerInit,
            decision: mandate_core::audit::Decision::Ok,
            actor: Some("broker".into()),
            details: serde_json::json!({
                "mandate_kid": keys.mandate_root.kid(),
                "jwt_kids": [keys.jwt_eddsa.kid(), keys.jwt_es256.kid()],
            }),
            ..Default::default()
        }],
    });
    Ok((keys, boot_entries))
}

/// The stored keys, with the retired ones still trusted.
pub(crate) fn stored_keys(
    cfg: &Config,
    mk: &MasterKey,
    records: &[KeyRecord],
) -> Result<BrokerKeys, BootError> {
    let find = |purpose: &str, alg: &str| {
        records
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
        mandate_root: unseal_key(mk, find("mandate", "EdDSA")?)?,
        jwt_eddsa: unseal_key(mk, find("jwt", "EdDSA")?)?,
        jwt_es256: unseal_key(mk, find("jwt", "ES256")?)?,
        retired: Vec::new(),
        retired_roots: Vec::new(),
        retired_since: std::collections::HashMap::new(),
    };
    let now = cfg.clock.now_secs();
    // Earlier mandate roots and credential keys, newest first, while
    // what they signed can still be alive; nothing they signed after
    // their retirement is accepted.
    let roots = retired_keys(
        mk,
        records,
        "mandate",
        &[keys.mandate_root.kid()],
        cfg.mandate_max_ttl,
        now,
    )?;
    let jwts = retired_keys(
        mk,
        records,
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
    Ok(keys)
}

/// New credential and mandate keys (`--rotate-keys`); the current ones are
/// retired now and stay trusted for what they signed before.
pub(crate) fn rotate(
    cfg: &Config,
    mk: &MasterKey,
    mut keys: BrokerKeys,
) -> Result<(BrokerKeys, Vec<Entry>), BootError> {
    let now = cfg.clock.now_secs();
    let mut boot_entries = Vec::new();
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
                mk,
                k,
                "jwt",
                cfg.clock.now_ms(),
            )?)),
            events: vec![],
        });
    }
    boot_entries.push(Entry {
        mutation: Some(Mutation::PutKey(seal_key(
            mk,
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
            event_type: mandate_core::audit::EventType::KeysRotate,
            decision: mandate_core::audit::Decision::Ok,
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
    Ok((keys, boot_entries))
}
