//! The embedded backend: one SQLite file in WAL mode.
//!
//! Every commit is durable before anyone hears of it: the WAL is synced
//! after each batch (group commit amortises that sync over the batch). The
//! writer's connection says `synchronous = NORMAL` and [`Store::sync`]
//! syncs the WAL file itself, so the broker's writer can write its next
//! batch while the previous one syncs (as PostgreSQL's WAL writer does);
//! [`Store::commit`] does both. The audit table
//! is append-only (triggers refuse UPDATE and DELETE); the hash chain makes
//! any edit that bypasses them detectable.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension};

use mandate_core::audit::{self, ChainedEvent};

use crate::records::*;
use crate::{AuditFilter, Committed, Entry, Result, Store, StoreError, VerifyReport};
use mandate_core::model::*;

mod read;
mod schema;
mod trail;
mod write;

use schema::*;

/// The SQLite store.
pub struct SqliteStore {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    head: Mutex<Head>,
    /// The WAL file, opened for syncing it (see the module documentation).
    wal: Mutex<std::fs::File>,
    wal_path: std::path::PathBuf,
    /// The newest audit event, revocation and outbox row committed, and
    /// those known durable: reads that hand rows out by number (the trail,
    /// the revocation log, the webhook outbox) stop at the durable ones,
    /// so nobody is shown a number a power cut could give to another row.
    written: Mutex<Marks>,
    durable: Mutex<Marks>,
    /// The exclusive lock on the database file, held while the store is
    /// open. Last: dropped after the connections, because closing any
    /// descriptor of the file drops the process's POSIX locks SQLite holds.
    _lock: std::fs::File,
}

/// The last event of the chain: what the next one links to, and the time
/// no later event may precede (the trail's times never go back, so "since
/// T" is a sequence range: issue 12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Head {
    seq: u64,
    hash: String,
    time_ms: u64,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

fn open_conn(path: &Path) -> Result<Connection> {
    let c = Connection::open(path)?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "FULL")?;
    c.pragma_update(None, "foreign_keys", "ON")?;
    // 64 MiB of page cache (SQLite's default is 2 MiB): the audit indexes'
    // insertion points (one per agent, tool, principal, ...) stay in memory
    // as the trail grows, so an insert costs the same at 10M events as at 0.
    c.pragma_update(None, "cache_size", -65_536)?;
    // Statement journals (after a refusal, the entries of a batch commit
    // each in its own savepoint, so one refused entry leaves the others) in
    // memory, not in a temporary file: the savepoint's page copies were a
    // write(2) each.
    c.pragma_update(None, "temp_store", "MEMORY")?;
    c.busy_timeout(std::time::Duration::from_secs(5))?;
    // Room for every statement a commit runs (rusqlite keeps 16): one
    // evicted from the cache is parsed again at its next use.
    c.set_prepared_statement_cache_capacity(64);
    Ok(c)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves SQLite's own state consistent
    // (the transaction rolls back on drop), so the data is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> rusqlite::Result<T> {
    serde_json::from_str(s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// Newest row numbers (see [`SqliteStore::durable`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Marks {
    pub audit: u64,
    pub revocation: u64,
    pub outbox: u64,
}

impl Marks {
    /// Where the committed rows end now.
    fn read(c: &Connection, audit: u64) -> rusqlite::Result<Marks> {
        // AUTOINCREMENT's counters: never lower after a delete. One cached
        // statement: read at every commit (parsed each time, two queries
        // were 6% of the commit path).
        let (revocation, outbox) = c
            .prepare_cached(
                "SELECT coalesce(max(CASE WHEN name = 'revocations' THEN seq END), 0),
                        coalesce(max(CASE WHEN name = 'outbox' THEN seq END), 0)
                 FROM sqlite_sequence",
            )?
            .query_row([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
        Ok(Marks {
            audit,
            revocation: revocation.max(0) as u64,
            outbox: outbox.max(0) as u64,
        })
    }
}

/// A text column parsed into a kind (an enum), or a corruption error naming it.
fn parse_col<T>(
    r: &rusqlite::Row<'_>,
    i: usize,
    what: &'static str,
    parse: impl Fn(&str) -> Option<T>,
) -> rusqlite::Result<T> {
    let s: String = r.get(i)?;
    parse(&s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!(
                "unknown {what} `{}`",
                s.chars().take(32).collect::<String>()
            )
            .into(),
        )
    })
}

/// Takes an exclusive lock (flock) on the database file itself, created
/// 0600 if missing: released when the process ends, however it ends. On
/// the file, not on a name beside it, so another path to the same file (a
/// symlink, a hard link) meets the same lock, and only who may read the
/// database can hold it. The holder's pid goes into `<database>.pid`, for
/// the message a second opener gets.
fn lock_database(db: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(db)
        .map_err(|e| StoreError::Db(format!("cannot open {}: {e}", db.display())))?;
    let mut pid_path = db.as_os_str().to_owned();
    pid_path.push(".pid");
    let pid_path = std::path::PathBuf::from(pid_path);
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(&pid_path).unwrap_or_default();
            let pid = pid.trim();
            let who =
                if !pid.is_empty() && pid.len() < 12 && pid.bytes().all(|b| b.is_ascii_digit()) {
                    format!("another process (pid {pid})")
                } else {
                    "another process".to_owned()
                };
            return Err(StoreError::Locked(format!(
                "{who} is using the database {}: only one broker may use a data directory at a time; stop it first, or give this one its own --data-dir",
                db.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(StoreError::Db(format!("cannot lock {}: {e}", db.display())));
        }
    }
    // Informational only, owner-only; `create_new` (O_CREAT|O_EXCL) never
    // follows a symlink planted at the name.
    let _ = std::fs::remove_file(&pid_path);
    if let Ok(mut p) = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&pid_path)
    {
        let _ = std::io::Write::write_all(&mut p, std::process::id().to_string().as_bytes());
    }
    Ok(f)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, for this process
    /// alone: a second open (another broker on the same data directory)
    /// is refused while the first lasts, instead of both writing one trail
    /// (issue 16: every write of the first then failed on `audit.seq`).
    pub fn open(path: &Path) -> Result<Self> {
        let lock = lock_database(path)?;
        let writer = open_conn(path)?;
        let version: i64 = writer.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Corrupt(format!(
                "database schema version {version} is newer than this broker understands ({SCHEMA_VERSION})"
            )));
        }
        migrate(&writer, version)?;
        writer.execute_batch(LIVE_USES)?;
        let head = writer
            .query_row(
                "SELECT seq, hash, time_ms FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| {
                    Ok(Head {
                        seq: r.get::<_, i64>(0)? as u64,
                        hash: r.get(1)?,
                        time_ms: r.get::<_, i64>(2)?.max(0) as u64,
                    })
                },
            )
            .optional()?
            .unwrap_or(Head {
                seq: 0,
                hash: audit::GENESIS.to_owned(),
                time_ms: 0,
            });
        let reader = open_conn(path)?;
        let mode: String = writer.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Db(format!(
                "{} is not in WAL mode ({mode}); the broker needs a file system that supports it",
                path.display()
            )));
        }
        // From now on the WAL is synced by `sync` (migrations above were
        // synced at their commits). The WAL is opened now, once: a
        // descriptor opened later would not hear of a write-back error
        // that came before it. And it is synced now: a broker killed
        // between a commit and its sync left frames that recovery takes up
        // and that no power cut spares until synced.
        writer.pragma_update(None, "synchronous", "NORMAL")?;
        let mut wal_path = path.as_os_str().to_owned();
        wal_path.push("-wal");
        let wal_path = std::path::PathBuf::from(wal_path);
        let wal = std::fs::OpenOptions::new()
            .read(true)
            .open(&wal_path)
            .map_err(|e| StoreError::Db(format!("cannot open {}: {e}", wal_path.display())))?;
        wal.sync_data()
            .map_err(|e| StoreError::Db(format!("cannot sync {}: {e}", wal_path.display())))?;
        let marks = Marks::read(&writer, head.seq)?;
        Ok(Self {
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            head: Mutex::new(head),
            wal: Mutex::new(wal),
            wal_path,
            written: Mutex::new(marks),
            durable: Mutex::new(marks),
            _lock: lock,
        })
    }

    /// The newest rows known durable.
    pub(super) fn durable(&self) -> Marks {
        *lock(&self.durable)
    }

    /// Syncs the WAL file: every frame written before the call, so every
    /// commit that returned before it, is durable after it; then the rows
    /// those commits wrote may be read out. The descriptor is the one
    /// opened with the store; if another file is at the WAL's path now (it
    /// never is while the store is open), that is an error, not a sync of
    /// a file SQLite no longer writes. (SQLite holds no POSIX lock on the
    /// WAL itself, only on the database and its `-shm`.)
    fn sync_wal(&self) -> Result<()> {
        use std::os::unix::fs::MetadataExt as _;
        let wal = lock(&self.wal);
        let target = *lock(&self.written);
        let io = |e: std::io::Error| {
            StoreError::Db(format!("cannot sync {}: {e}", self.wal_path.display()))
        };
        let at_path = std::fs::metadata(&self.wal_path).map_err(io)?;
        let ours = wal.metadata().map_err(io)?;
        if (at_path.dev(), at_path.ino()) != (ours.dev(), ours.ino()) {
            return Err(StoreError::Db(format!(
                "{} was replaced while the broker had it open",
                self.wal_path.display()
            )));
        }
        wal.sync_data().map_err(io)?;
        let mut durable = lock(&self.durable);
        *durable = Marks {
            audit: durable.audit.max(target.audit),
            revocation: durable.revocation.max(target.revocation),
            outbox: durable.outbox.max(target.outbox),
        };
        Ok(())
    }
}

impl Store for SqliteStore {
    fn load(&self) -> Result<Snapshot> {
        self.load_impl()
    }

    fn commit(&self, batch: Vec<Entry>) -> Result<Vec<Result<Committed>>> {
        let done = self.commit_impl(batch)?;
        self.sync_wal()?;
        Ok(done)
    }

    fn commit_unsynced(&self, batch: Vec<Entry>) -> Result<Vec<Result<Committed>>> {
        self.commit_impl(batch)
    }

    fn sync(&self) -> Result<()> {
        self.sync_wal()
    }

    fn audit_query(&self, f: &AuditFilter) -> Result<Vec<ChainedEvent>> {
        self.audit_query_impl(f)
    }

    fn audit_verify(&self, anchors: Vec<audit::Anchor>) -> Result<VerifyReport> {
        self.audit_verify_impl(None, anchors)
    }

    fn audit_verify_after(
        &self,
        from: audit::Anchor,
        anchors: Vec<audit::Anchor>,
    ) -> Result<VerifyReport> {
        self.audit_verify_impl(Some(from), anchors)
    }

    fn list_runs(&self, tenant: Option<&str>, agent: Option<&str>, limit: u32) -> Result<Vec<Run>> {
        self.list_runs_impl(tenant, agent, limit)
    }

    fn revocations_after(&self, after: u64, limit: u32) -> Result<Vec<Revocation>> {
        self.revocations_after_impl(after, limit)
    }

    fn count_children(&self, parent: &str) -> Result<u64> {
        self.count_children_impl(parent)
    }

    fn live_leases(&self) -> Result<Vec<Lease>> {
        self.live_leases_impl()
    }

    fn join_token(&self, id: &str) -> Result<Option<JoinToken>> {
        self.join_token_impl(id)
    }

    fn outbox(&self, limit: u32) -> Result<Vec<(i64, String)>> {
        self.outbox_impl(limit)
    }

    fn agent_tools_used(&self) -> Result<Vec<(String, String, String)>> {
        self.agent_tools_used_impl()
    }

    fn approval(&self, id: &str) -> Result<Option<Approval>> {
        self.approval_impl(id)
    }

    fn pending_approvals_for_run(&self, run: &str, now: u64) -> Result<usize> {
        self.pending_approvals_for_run_impl(run, now)
    }

    fn approvals_for_request(&self, request_digest: &str) -> Result<Vec<Approval>> {
        self.approvals_for_request_impl(request_digest)
    }

    fn list_approvals(
        &self,
        tenant: Option<&str>,
        status: Option<mandate_core::approval::ApprovalStatus>,
        limit: u32,
    ) -> Result<Vec<Approval>> {
        self.list_approvals_impl(tenant, status, limit)
    }

    fn block_uses(&self, blocks: &[String]) -> Result<Vec<u64>> {
        self.block_uses_impl(blocks)
    }

    fn generation(&self) -> Result<u64> {
        read::generation(&lock(&self.reader))
    }

    fn latest_one_time_use(&self) -> Result<u64> {
        read::latest_one_time_use(&lock(&self.reader))
    }

    fn get_run(&self, id: &str) -> Result<Option<Run>> {
        self.get_run_impl(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mandate_core::audit::EventBody;

    #[test]
    fn a_database_is_open_in_one_store_at_a_time() {
        let path = tmp();
        let first = SqliteStore::open(&path).unwrap();
        let Err(StoreError::Locked(why)) = SqliteStore::open(&path) else {
            panic!("a second store opened the same database");
        };
        assert!(
            why.contains(&format!("pid {}", std::process::id())) && why.contains("--data-dir"),
            "{why}"
        );
        // Another name for the same file meets the same lock.
        let linked = path.with_extension("linked");
        std::fs::hard_link(&path, &linked).unwrap();
        let symlinked = path.with_extension("symlinked");
        std::os::unix::fs::symlink(&path, &symlinked).unwrap();
        for other in [&linked, &symlinked] {
            assert!(matches!(
                SqliteStore::open(other),
                Err(StoreError::Locked(_))
            ));
        }
        // Whoever plants a symlink at the pid file's name gets nothing written through it.
        drop(first);
        let mut pid = path.as_os_str().to_owned();
        pid.push(".pid");
        let target = path.with_extension("target");
        std::fs::write(&target, "keep").unwrap();
        std::fs::remove_file(&pid).unwrap();
        std::os::unix::fs::symlink(&target, &pid).unwrap();
        let again = SqliteStore::open(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(again);
    }

    #[test]
    fn a_version_1_database_is_migrated_and_keeps_its_data() {
        let path = tmp();
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(&format!(
                "BEGIN; {SCHEMA_V1} PRAGMA user_version = 1; COMMIT;"
            ))
            .unwrap();
            c.execute_batch(
                "INSERT INTO tenants VALUES ('acme', '', 1);
                 INSERT INTO agents VALUES ('acme', 'bot', 'ops', '', '[]', 'spiffe://x', 1);
                 INSERT INTO tools (tenant, name, audience, actions, labels, risk, max_ttl_secs, provider, alg, created_ms)
                   VALUES ('acme', 'crm', 'https://crm', '[\"read\"]', '[]', 'low', 300, 'jwt', 'EdDSA', 1);
                 INSERT INTO runs (id, tenant, agent, principal, grant_id, task, capabilities, jkt, started_ms, expires_at, ended_ms)
                   VALUES ('run_1', 'acme', 'bot', NULL, NULL, 't', '[]', 'k', 1, 2, NULL);",
            )
            .unwrap();
        }
        let st = SqliteStore::open(&path).unwrap();
        let snap = st.load().unwrap();
        assert_eq!(snap.tools.len(), 1);
        assert!(snap.tools[0].proxy.is_none() && snap.tools[0].env.is_empty());
        let run = st.get_run("run_1").unwrap().unwrap();
        assert_eq!(run.parent, None);
        assert_eq!(st.count_children("run_1").unwrap(), 0);
        assert!(st.live_leases().unwrap().is_empty());
        drop(st);
        // Opening again is a no-op.
        let st = SqliteStore::open(&path).unwrap();
        assert_eq!(st.load().unwrap().tools.len(), 1);
    }

    #[test]
    fn a_version_5_lease_is_revoked_by_its_own_ids_after_the_migration() {
        let path = tmp();
        {
            let c = Connection::open(&path).unwrap();
            for (v, sql) in [SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5]
                .iter()
                .enumerate()
            {
                c.execute_batch(&format!(
                    "BEGIN; {sql} PRAGMA user_version = {}; COMMIT;",
                    v + 1
                ))
                .unwrap();
            }
            c.execute_batch(
                "INSERT INTO leases (id, tenant, tool, run, agent, principal, grant_id, role, expires_at, created_ms, dropped_ms)
                   VALUES ('cred_1', 'acme', 'db', 'run_1', 'bot', 'alice', 'grt_1', 'mandate_1_abcdef', 9, 1, NULL);",
            )
            .unwrap();
        }
        let st = SqliteStore::open(&path).unwrap();
        let leases = st.live_leases().unwrap();
        assert_eq!(leases.len(), 1);
        assert!(leases[0].revoked_by.is_empty());
        assert_eq!(
            leases[0].revocation_keys(),
            [
                "cred:cred_1",
                "run:run_1",
                "agent:acme/bot",
                "principal:acme/alice",
                "grant:grt_1",
                "tenant:acme"
            ]
        );
    }

    /// v10 keeps one-time uses in expiry order, v11 in arrival order
    /// within it: a use recorded before the migrations is still refused
    /// after them, and an expired one is cleared.
    #[test]
    fn a_version_9_one_time_use_is_still_refused_after_the_migration() {
        let path = tmp();
        {
            let c = Connection::open(&path).unwrap();
            let all = [
                SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5, SCHEMA_V6, SCHEMA_V7,
                SCHEMA_V8, SCHEMA_V9,
            ];
            for (v, sql) in all.iter().enumerate() {
                c.execute_batch(&format!(
                    "BEGIN; {sql} PRAGMA user_version = {}; COMMIT;",
                    v + 1
                ))
                .unwrap();
            }
            c.execute_batch(
                "INSERT INTO one_time_uses (key, until) VALUES ('proof:live', 200), ('proof:old', 50), ('proof:live2', 200), ('proof:live3', 200);",
            )
            .unwrap();
        }
        let st = SqliteStore::open(&path).unwrap();
        let first_use = |key: &str, until: u64| {
            st.commit(vec![Entry {
                mutation: Some(Mutation::FirstUse {
                    uses: vec![mandate_core::dpop::Spent {
                        key: key.into(),
                        until,
                    }],
                    now: 100,
                }),
                events: Vec::new(),
            }])
            .unwrap()
            .remove(0)
        };
        // Three of one expiry: v11 numbers them within it (`n`).
        for live in ["proof:live", "proof:live2", "proof:live3"] {
            assert!(matches!(
                first_use(live, 200),
                Err(StoreError::Replayed(k)) if k == live
            ));
        }
        first_use("proof:other", 200).unwrap();
        // The expired use was cleared by that commit (and no longer refuses).
        let left: Vec<String> = lock(&st.reader)
            .prepare("SELECT key FROM one_time_uses ORDER BY until, key")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            left,
            ["proof:live", "proof:live2", "proof:live3", "proof:other"]
        );
        first_use("proof:old", 150).unwrap();
    }

    #[test]
    fn a_lease_keeps_its_credentials_revocation_ids() {
        let st = SqliteStore::open(&tmp()).unwrap();
        let lease = Lease {
            id: "cred_2".into(),
            tenant: "acme".into(),
            tool: "db".into(),
            run: "run_child".into(),
            agent: "kid".into(),
            principal: None,
            grant: None,
            role: "mandate_child_abcdef".into(),
            expires_at: 9,
            created_ms: 1,
            dropped_ms: None,
            revoked_by: vec![
                "cred:cred_2".into(),
                "run:run_child".into(),
                "run:run_parent".into(),
                "agent:acme/parent".into(),
            ],
        };
        st.commit(vec![Entry {
            mutation: Some(Mutation::CreateLease(lease.clone())),
            events: vec![ev("token.exchange", "acme")],
        }])
        .unwrap()
        .remove(0)
        .unwrap();
        let got = st.live_leases().unwrap();
        assert_eq!(got, [lease]);
        let keys = got[0].revocation_keys();
        for k in ["run:run_parent", "agent:acme/parent", "agent:acme/kid"] {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
        assert_eq!(
            keys.iter().filter(|k| *k == "cred:cred_2").count(),
            1,
            "{keys:?}"
        );
    }

    fn tmp() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "mandate-store-test-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d.join("mandate.db")
    }

    fn rand_suffix() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    }

    fn ev(t: &str, tenant: &str) -> EventBody {
        EventBody {
            time_ms: 5,
            event_type: mandate_core::audit::EventType::parse(t),
            decision: mandate_core::audit::Decision::Ok,
            tenant: Some(tenant.into()),
            ..Default::default()
        }
    }

    fn tenant(name: &str) -> Mutation {
        Mutation::CreateTenant(Tenant {
            name: name.into(),
            description: String::new(),
            created_ms: 1,
        })
    }

    #[test]
    fn failed_entry_leaves_neither_change_nor_event() {
        let p = tmp();
        let s = SqliteStore::open(&p).unwrap();
        let r = s
            .commit(vec![
                Entry {
                    mutation: Some(tenant("a")),
                    events: vec![ev("tenant.create", "a")],
                },
                Entry {
                    mutation: Some(tenant("a")),
                    events: vec![ev("tenant.create", "a")],
                },
                Entry {
                    mutation: None,
                    events: vec![ev("note", "a")],
                },
            ])
            .unwrap();
        assert!(r[0].is_ok());
        assert!(matches!(r[1], Err(StoreError::Conflict(_))));
        assert_eq!(r[2].as_ref().unwrap().events[0].seq, 2);
        let snap = s.load().unwrap();
        assert_eq!(snap.tenants.len(), 1);
        let rep = s.audit_verify(vec![]).unwrap();
        assert_eq!((rep.verified, rep.first_break), (2, None));
        let head = lock(&s.head).clone();
        assert_eq!(rep.head, (head.seq, head.hash));
    }

    /// Times never go back along the chain (also across a reopen), so
    /// "since" is a sequence range; pages go back by sequence (keyset).
    #[test]
    fn times_keep_their_order_and_pages_go_back_by_sequence() {
        let p = tmp();
        let at = |t: u64, agent: &str| EventBody {
            time_ms: t,
            agent: Some(agent.into()),
            ..ev("x", "a")
        };
        {
            let s = SqliteStore::open(&p).unwrap();
            // Made concurrently, committed out of order; then a clock step back.
            let times = [100, 300, 200, 400, 50, 500];
            let batch = times
                .iter()
                .enumerate()
                .map(|(i, t)| Entry {
                    mutation: None,
                    events: vec![at(*t, if i % 2 == 0 { "even" } else { "odd" })],
                })
                .collect();
            for r in s.commit(batch).unwrap() {
                r.unwrap();
            }
        }
        let s = SqliteStore::open(&p).unwrap();
        s.commit(vec![Entry {
            mutation: None,
            events: vec![at(10, "odd")],
        }])
        .unwrap()
        .remove(0)
        .unwrap();
        let all = s.audit_query(&AuditFilter::default()).unwrap();
        let times: Vec<u64> = all.iter().map(|e| e.body.time_ms).collect();
        assert_eq!(times, [100, 300, 300, 400, 400, 500, 500]);
        // The stored columns agree with the hashed bodies.
        let rep = s.audit_verify(vec![]).unwrap();
        assert_eq!((rep.verified, rep.first_break), (7, None));
        let seqs = |f: AuditFilter| -> Vec<u64> {
            s.audit_query(&f).unwrap().iter().map(|e| e.seq).collect()
        };
        let since = |t| AuditFilter {
            since_ms: Some(t),
            ..Default::default()
        };
        assert_eq!(seqs(since(300)), [2, 3, 4, 5, 6, 7]);
        assert_eq!(seqs(since(401)), [6, 7]);
        assert!(seqs(since(501)).is_empty());
        let odd = |before: Option<u64>| AuditFilter {
            agent: Some("odd".into()),
            before_seq: before,
            limit: Some(2),
            ..Default::default()
        };
        // Newest two first, then the page before them, then nothing.
        assert_eq!(seqs(odd(None)), [6, 7]);
        assert_eq!(seqs(odd(Some(6))), [2, 4]);
        assert!(seqs(odd(Some(2))).is_empty());
        let odd_since = AuditFilter {
            since_ms: Some(350),
            ..odd(None)
        };
        assert_eq!(
            seqs(AuditFilter {
                limit: Some(10),
                ..odd_since
            }),
            [4, 6, 7]
        );
    }

    /// A clock that jumped ahead and came back: later events keep their
    /// own times (the jump does not stamp them), the step is noted, and
    /// "since" still finds every event on either side of it.
    #[test]
    fn a_clock_step_back_is_kept_and_since_still_finds_everything() {
        let s = SqliteStore::open(&tmp()).unwrap();
        for t in [1_000_000, 2_000_000, 1_000_500, 1_001_000] {
            s.commit(vec![Entry {
                mutation: None,
                events: vec![EventBody {
                    time_ms: t,
                    ..ev("x", "a")
                }],
            }])
            .unwrap()
            .remove(0)
            .unwrap();
        }
        let f = |since: u64, limit: u32, after: Option<u64>| -> Vec<(u64, u64)> {
            s.audit_query(&AuditFilter {
                since_ms: Some(since),
                limit: Some(limit),
                after_seq: after,
                ..Default::default()
            })
            .unwrap()
            .iter()
            .map(|e| (e.seq, e.body.time_ms))
            .collect()
        };
        assert_eq!(
            f(1_000_400, 10, None),
            [(2, 2_000_000), (3, 1_000_500), (4, 1_001_000)]
        );
        assert_eq!(f(1_500_000, 10, None), [(2, 2_000_000)]);
        assert_eq!(f(1_000_400, 1, None), [(4, 1_001_000)]);
        assert_eq!(f(1_000_400, 2, Some(0)), [(2, 2_000_000), (3, 1_000_500)]);
        assert!(f(2_000_001, 10, None).is_empty());
        assert_eq!(s.audit_verify(vec![]).unwrap().first_break, None);
    }

    #[test]
    fn chain_survives_reopen_and_edits_are_named() {
        let p = tmp();
        {
            let s = SqliteStore::open(&p).unwrap();
            s.commit(vec![Entry {
                mutation: Some(tenant("a")),
                events: vec![ev("x", "a"), ev("y", "a")],
            }])
            .unwrap();
        }
        let s = SqliteStore::open(&p).unwrap();
        s.commit(vec![Entry {
            mutation: None,
            events: vec![ev("z", "a")],
        }])
        .unwrap();
        assert_eq!(s.audit_verify(vec![]).unwrap().verified, 3);
        assert_eq!(
            s.audit_query(&AuditFilter {
                tenant: Some("a".into()),
                ..Default::default()
            })
            .unwrap()
            .len(),
            3
        );
        // The table refuses edits...
        let c = Connection::open(&p).unwrap();
        assert!(
            c.execute("UPDATE audit SET body = 'x' WHERE seq = 2", [])
                .is_err()
        );
        // ...and an edit that gets around the trigger is caught by the chain.
        c.execute_batch("DROP TRIGGER audit_no_update").unwrap();
        c.execute(
            "UPDATE audit SET body = replace(body, '\"y\"', '\"w\"') WHERE seq = 2",
            [],
        )
        .unwrap();
        let rep = s.audit_verify(vec![]).unwrap();
        assert_eq!(rep.verified, 1);
        let b = rep.first_break.unwrap();
        assert_eq!((b.seq, b.column), (2, Some(audit::AuditColumn::Body)));
    }

    /// Verification reads, examines in parallel batches and links in order:
    /// a trail of several batches verifies whole, and an edit in a late
    /// batch (or a cut row, or a copied column changed) is named exactly
    /// as the one-thread verifier named it.
    #[test]
    fn a_long_trail_is_verified_in_parallel_batches_and_breaks_are_named() {
        let p = tmp();
        let s = SqliteStore::open(&p).unwrap();
        let n = 5000u64;
        for chunk in 0..(n / 500) {
            let entries: Vec<Entry> = (0..500)
                .map(|i| Entry {
                    mutation: None,
                    events: vec![ev("token.exchange", &format!("t{}", chunk * 500 + i))],
                })
                .collect();
            for r in s.commit(entries).unwrap() {
                r.unwrap();
            }
        }
        let whole = s.audit_verify(vec![]).unwrap();
        assert_eq!((whole.verified, whole.first_break), (n, None));
        assert_eq!(whole.head.0, n);
        let c = Connection::open(&p).unwrap();
        c.execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER IF EXISTS audit_no_delete")
            .unwrap();
        // A copied column changed in the third batch.
        c.execute("UPDATE audit SET tenant = 'evil' WHERE seq = 4100", [])
            .unwrap();
        let rep = s.audit_verify(vec![]).unwrap();
        assert_eq!(rep.verified, 4099);
        let b = rep.first_break.unwrap();
        assert_eq!((b.seq, b.column), (4100, Some(audit::AuditColumn::Tenant)));
        c.execute("UPDATE audit SET tenant = 't4099' WHERE seq = 4100", [])
            .unwrap();
        assert_eq!(s.audit_verify(vec![]).unwrap().first_break, None);
        // A row cut at a batch boundary.
        c.execute("DELETE FROM audit WHERE seq = 2049", []).unwrap();
        let b = s.audit_verify(vec![]).unwrap().first_break.unwrap();
        assert_eq!(b.seq, 2049);
        assert!(b.reason.contains("missing"), "{}", b.reason);
    }
}
