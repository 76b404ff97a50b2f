//! Test helpers: fresh stores of every backend, raw access to their
//! databases (to tamper with them), and sample records.
#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use mandate_core::audit::{Decision, EventBody, EventType};
use mandate_core::model::*;
use mandate_store::postgres::PgStore;
use mandate_store::sqlite::SqliteStore;
use mandate_store::{Committed, Entry, Mutation, Store, StoreError};

/// A fresh store and a way around it to its database.
pub struct Backend {
    /// `sqlite` or `postgres`.
    pub name: &'static str,
    /// The store (dropped before the database is removed).
    pub store: Box<dyn Store>,
    /// The database itself.
    pub raw: Raw,
}

/// Where a backend's data is.
pub enum Raw {
    /// A SQLite file, in a directory removed at the end.
    Sqlite(TempDir),
    /// A PostgreSQL database, dropped at the end.
    Postgres(PgDb),
}

/// Every backend, each fresh.
pub fn backends() -> Vec<Backend> {
    vec![sqlite(), postgres()]
}

pub fn sqlite() -> Backend {
    let dir = TempDir::new();
    let store = SqliteStore::open(&dir.db()).unwrap();
    Backend {
        name: "sqlite",
        store: Box::new(store),
        raw: Raw::Sqlite(dir),
    }
}

pub fn postgres() -> Backend {
    let db = PgDb::new();
    let store = PgStore::open(&db.url).unwrap();
    Backend {
        name: "postgres",
        store: Box::new(store),
        raw: Raw::Postgres(db),
    }
}

impl Backend {
    /// The same database opened again, as a restarted broker does (the
    /// store is closed first).
    pub fn reopened(self) -> Backend {
        let Backend { name, store, raw } = self;
        drop(store);
        let store: Box<dyn Store> = match &raw {
            Raw::Sqlite(dir) => Box::new(SqliteStore::open(&dir.db()).unwrap()),
            Raw::Postgres(db) => Box::new(PgStore::open(&db.url).unwrap()),
        };
        Backend { name, store, raw }
    }
}

impl Raw {
    /// Runs `sql` on the database directly.
    pub fn exec(&self, sql: &str) -> Result<(), String> {
        match self {
            Raw::Sqlite(d) => rusqlite::Connection::open(d.db())
                .and_then(|c| c.execute_batch(sql))
                .map_err(|e| e.to_string()),
            Raw::Postgres(db) => pg_exec(&db.url, sql),
        }
    }

    /// The one number `sql` answers.
    pub fn count(&self, sql: &str) -> i64 {
        match self {
            Raw::Sqlite(d) => rusqlite::Connection::open(d.db())
                .unwrap()
                .query_row(sql, [], |r| r.get(0))
                .unwrap(),
            Raw::Postgres(db) => pg_count(&db.url, sql),
        }
    }

    /// Lets the audit table be edited (as an attacker with write access
    /// to the database could).
    pub fn unguard_audit(&self) {
        match self {
            Raw::Sqlite(_) => self
                .exec("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete")
                .unwrap(),
            Raw::Postgres(_) => self.exec("ALTER TABLE audit DISABLE TRIGGER USER").unwrap(),
        }
    }
}

fn unique() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{}_{:x}_{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let d = std::env::temp_dir().join(format!("mandate-contract-{}", unique()));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    pub fn db(&self) -> PathBuf {
        self.0.join("mandate.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The admin connection string of the test server.
pub fn admin_url() -> String {
    std::env::var("MANDATE_TEST_PG").unwrap_or_else(|_| {
        panic!(
            "MANDATE_TEST_PG is not set: the store's tests need a PostgreSQL server. \
             Run `export MANDATE_TEST_PG=$(bash scripts/pg.sh 2>/dev/null)` from the \
             workspace root (it starts, installing if needed, a local server and prints \
             its admin connection string), then run the tests again."
        )
    })
}

/// `url` with its database name replaced by `db`.
pub fn with_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{db}?{q}"),
        None => format!("{host_part}/{db}"),
    }
}

/// Runs `sql` (simple protocol, several statements) at `url`, on a thread
/// of its own (so it works inside a tokio runtime too).
pub fn pg_exec(url: &str, sql: &str) -> Result<(), String> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| match e.as_db_error() {
                    Some(db) => db.message().to_owned(),
                    None => e.to_string(),
                })
        })
    })
    .join()
    .unwrap()
}

/// The one number `sql` answers at `url` (on a thread of its own).
pub fn pg_count(url: &str, sql: &str) -> i64 {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0)
        })
    })
    .join()
    .unwrap()
}

/// A fresh database on the test server, dropped when this is.
pub struct PgDb {
    pub name: String,
    pub url: String,
}

impl PgDb {
    pub fn new() -> Self {
        let admin = admin_url();
        let name = format!("mandate_contract_{}", unique());
        pg_exec(&admin, &format!("CREATE DATABASE {name}")).unwrap();
        PgDb {
            url: with_db(&admin, &name),
            name,
        }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let _ = pg_exec(
            &admin_url(),
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

// ---- sample records ----

pub fn ev(t: &str, tenant: &str) -> EventBody {
    EventBody {
        time_ms: 5,
        event_type: EventType::parse(t),
        decision: Decision::Ok,
        tenant: Some(tenant.into()),
        ..Default::default()
    }
}

pub fn entry(m: Option<Mutation>, events: Vec<EventBody>) -> Entry {
    Entry {
        mutation: m,
        events,
    }
}

/// Commits one entry; its outcome.
pub fn commit1(
    s: &dyn Store,
    m: Option<Mutation>,
    events: Vec<EventBody>,
) -> Result<Committed, StoreError> {
    s.commit(vec![entry(m, events)]).unwrap().remove(0)
}

/// Commits one mutation recorded by one event, which must succeed.
pub fn apply(s: &dyn Store, m: Mutation) -> Committed {
    commit1(s, Some(m), vec![ev("x", "acme")]).unwrap()
}

pub fn tenant(name: &str) -> Tenant {
    Tenant {
        name: name.into(),
        description: format!("{name} inc."),
        created_ms: 1,
    }
}

pub fn principal(tenant: &str, id: &str) -> Principal {
    Principal {
        tenant: tenant.into(),
        id: id.into(),
        display_name: id.to_uppercase(),
        groups: vec!["ops".into()],
        created_ms: 2,
    }
}

pub fn agent(tenant: &str, name: &str) -> Agent {
    Agent {
        tenant: tenant.into(),
        name: name.into(),
        owner: "alice".into(),
        purpose: "tests".into(),
        envelope: vec!["crm:read".into()],
        spiffe_id: format!("spiffe://example.org/{name}"),
        created_ms: 3,
    }
}

pub fn tool(tenant: &str, name: &str) -> Tool {
    Tool {
        tenant: tenant.into(),
        name: name.into(),
        audience: format!("https://{name}.example"),
        actions: vec!["read".into(), "write".into()],
        labels: vec!["pii".into()],
        risk: "low".into(),
        max_ttl_secs: 300,
        provider: mandate_core::tooling::ProviderKind::Jwt,
        alg: mandate_core::jose::Alg::EdDSA,
        created_ms: 4,
        proxy: None,
        postgres: None,
        mcp: None,
        env: Vec::new(),
    }
}

pub fn run(id: &str, started_ms: u64, parent: Option<&str>) -> Run {
    Run {
        id: id.into(),
        tenant: "acme".into(),
        agent: "bot".into(),
        principal: Some("alice".into()),
        grant: None,
        task: "t".into(),
        capabilities: vec!["crm:read".into()],
        jkt: "jkt".into(),
        started_ms,
        expires_at: 9_999,
        ended_ms: None,
        parent: parent.map(Into::into),
    }
}

pub fn revocation(key: &str, tenant: Option<&str>) -> Revocation {
    Revocation {
        seq: 0,
        key: key.into(),
        reason: "test".into(),
        time_ms: 7,
        until: 99,
        tenant: tenant.map(Into::into),
    }
}

pub fn approval(id: &str, run: &str, digest: &str, expires_at: u64) -> Approval {
    Approval {
        id: id.into(),
        tenant: "acme".into(),
        run: run.into(),
        agent: "bot".into(),
        principal: Some("alice".into()),
        tool: "crm".into(),
        actions: vec!["write".into()],
        details: serde_json::json!({"amount": 5}),
        request_digest: digest.into(),
        approvers: vec!["principal:bob".into()],
        policies: vec!["p1".into()],
        status: mandate_core::approval::ApprovalStatus::Pending,
        requested_ms: 10,
        expires_at,
        decided_by: None,
        decided_ms: None,
        comment: None,
    }
}

/// A tenant `acme` with principal `alice`, agent `bot` and tool `crm`.
pub fn registry(s: &dyn Store) {
    apply(s, Mutation::CreateTenant(tenant("acme")));
    apply(s, Mutation::CreatePrincipal(principal("acme", "alice")));
    apply(s, Mutation::CreateAgent(agent("acme", "bot")));
    apply(s, Mutation::CreateTool(tool("acme", "crm")));
}
