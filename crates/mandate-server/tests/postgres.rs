//! The `postgres` provider against a real PostgreSQL server
//! (`scripts/pg.sh` starts one and prints its admin connection string;
//! `scripts/test.sh` exports it as `MANDATE_TEST_PG`).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use mandate_core::jose::Alg;
use mandate_core::keys::SigningKey;
use serde_json::{Value, json};
use tokio_postgres::NoTls;

fn admin_dsn() -> String {
    std::env::var("MANDATE_TEST_PG").unwrap_or_else(|_| {
        panic!("set MANDATE_TEST_PG to a PostgreSQL admin connection string: export MANDATE_TEST_PG=$(scripts/pg.sh)")
    })
}

/// `dsn` with its database replaced.
fn with_db(dsn: &str, db: &str) -> String {
    let (base, _) = dsn.rsplit_once('/').unwrap();
    format!("{base}/{db}")
}

fn port_of(dsn: &str) -> u16 {
    let cfg: tokio_postgres::Config = dsn.parse().unwrap();
    cfg.get_ports()[0]
}

struct Db {
    rt: tokio::runtime::Runtime,
    name: String,
    reader: String,
    writer: String,
}

impl Db {
    /// A fresh database with a table and two roles for it.
    fn new() -> Db {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let tag = mandate_core::ids::random_id(&mut rand::rngs::OsRng, "")[..10].to_owned();
        let name = format!("mt_{tag}");
        let reader = format!("mt_{tag}_reader");
        let writer = format!("mt_{tag}_writer");
        rt.block_on(async {
            let admin = connect(&admin_dsn()).await.unwrap();
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            admin
                .batch_execute(&format!(
                    "CREATE ROLE {reader} NOLOGIN; CREATE ROLE {writer} NOLOGIN;"
                ))
                .await
                .unwrap();
            let db = connect(&with_db(&admin_dsn(), &name)).await.unwrap();
            db.batch_execute(&format!(
                "CREATE TABLE items (id int PRIMARY KEY, v text);
                 INSERT INTO items VALUES (1, 'one');
                 GRANT USAGE ON SCHEMA public TO {reader}, {writer};
                 GRANT SELECT ON items TO {reader};
                 GRANT SELECT, INSERT ON items TO {writer};"
            ))
            .await
            .unwrap();
        });
        Db {
            rt,
            name,
            reader,
            writer,
        }
    }

    fn admin_dsn(&self) -> String {
        with_db(&admin_dsn(), &self.name)
    }

    /// Roles whose name starts with `prefix`.
    fn roles(&self, prefix: &str) -> Vec<String> {
        self.rt.block_on(async {
            let c = connect(&admin_dsn()).await.unwrap();
            c.query(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)",
                &[&prefix],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect()
        })
    }
}

async fn connect(dsn: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (c, conn) = tokio_postgres::connect(dsn, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(c)
}

fn register(b: &Broker, db: &Db, tool: &str, ttl: u64, secret: &str) {
    let (s, v) = b.admin_post(
        "/v1/tenants/acme/tools",
        json!({
            "name": tool, "provider": "postgres", "actions": ["read", "write", "admin"],
            "max_ttl_secs": ttl,
            "postgres": {"host": "127.0.0.1", "port": port_of(&admin_dsn()), "database": db.name,
                         "roles": {"read": db.reader, "write": db.writer}},
            "env": [{"name": "DATABASE_URL", "value": "{credential}"}]
        }),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = b.admin_put_text(&format!("/v1/tenants/acme/tools/{tool}/secret"), secret);
    assert_eq!(s, 200, "{v}");
}

fn broker(tag: &str, db: &Db, ttl: u64) -> Broker {
    let b = Broker::start(tag);
    b.seed("acme");
    let (s, v) = b.admin_post(
        "/v1/tenants/acme/agents",
        json!({"name": "dbbot", "owner": "team-data", "envelope": ["db:*", "baddb:*"]}),
    );
    assert_eq!(s, 201, "{v}");
    register(&b, db, "db", ttl, &db.admin_dsn());
    b
}

/// Starts a `dbbot` run; returns (run, mandate, key).
fn run(b: &Broker) -> (String, String, SigningKey) {
    let key = SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng);
    let (s, v) = b.admin_post(
        "/v1/runs",
        json!({"tenant": "acme", "agent": "dbbot", "jwk": key.public().to_json()}),
    );
    assert_eq!(s, 201, "{v}");
    (
        v["run"].as_str().unwrap().to_owned(),
        v["mandate"].as_str().unwrap().to_owned(),
        key,
    )
}

fn credential(b: &Broker, mandate: &str, key: &SigningKey, tool: &str, scope: &str) -> Value {
    let (s, v) = b.exchange(mandate, key, tool, scope);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["token_type"], "N_A");
    assert_eq!(
        v["issued_token_type"],
        "urn:mandate:params:oauth:token-type:postgres-uri"
    );
    v
}

fn role_prefix(run: &str) -> String {
    format!("mandate_{}_", run.trim_start_matches("run_"))
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    t.elapsed()
}

#[test]
fn read_can_select_not_insert_and_write_can_insert() {
    let db = Db::new();
    let b = broker("pg-rw", &db, 300);
    let (run_id, mandate, key) = run(&b);
    let read = credential(&b, &mandate, &key, "db", "read");
    let dsn = read["access_token"].as_str().unwrap().to_owned();
    assert!(
        dsn.starts_with(&format!("postgresql://{}", role_prefix(&run_id))),
        "{dsn}"
    );
    db.rt.block_on(async {
        let c = connect(&dsn).await.unwrap();
        let n: i64 = c
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
        let e = c
            .execute("INSERT INTO items VALUES (2, 'two')", &[])
            .await
            .unwrap_err();
        assert_eq!(e.as_db_error().unwrap().code().code(), "42501", "{e}");
        // The role can do nothing else: no new roles, no other tables.
        assert!(c.batch_execute("CREATE ROLE sneaky").await.is_err());
    });
    let write = credential(&b, &mandate, &key, "db", "write");
    db.rt.block_on(async {
        let c = connect(write["access_token"].as_str().unwrap())
            .await
            .unwrap();
        c.execute("INSERT INTO items VALUES (2, 'two')", &[])
            .await
            .unwrap();
    });
    // The role expires in the database too, even if the broker were gone.
    let roles = db.roles(&role_prefix(&run_id));
    assert_eq!(roles.len(), 2, "{roles:?}");
    db.rt.block_on(async {
        let c = connect(&admin_dsn()).await.unwrap();
        let r = c
            .query_one(
                "SELECT extract(epoch FROM rolvaliduntil)::bigint FROM pg_roles WHERE rolname = $1",
                &[&roles[0]],
            )
            .await
            .unwrap();
        let until: i64 = r.get(0);
        assert!(
            (until - now() as i64 - 300).abs() < 10,
            "valid until {until}"
        );
    });
    // The password is not in the audit trail; the role is.
    let text = serde_json::to_string(&b.audit(&format!("run={run_id}"))).unwrap();
    let password = dsn.split(':').nth(2).unwrap().split('@').next().unwrap();
    assert!(!text.contains(password));
    assert!(text.contains(&role_prefix(&run_id)));
}

#[test]
fn revoking_the_run_ends_sessions_and_drops_the_role() {
    let db = Db::new();
    let b = broker("pg-revoke", &db, 300);
    let (run_id, mandate, key) = run(&b);
    let dsn = credential(&b, &mandate, &key, "db", "read")["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let session = db.rt.block_on(connect(&dsn)).unwrap();
    db.rt.block_on(session.query_one("SELECT 1", &[])).unwrap();
    let (s, v) = b.admin_post("/v1/revocations", json!({"kind": "run", "id": run_id}));
    assert_eq!(s, 200, "{v}");
    let took = wait_until("role dropped", Duration::from_secs(5), || {
        db.roles(&role_prefix(&run_id)).is_empty()
    });
    eprintln!("role dropped {took:?} after the revocation");
    // The open session was terminated; a new login is refused.
    assert!(db.rt.block_on(session.query_one("SELECT 1", &[])).is_err());
    let e = db.rt.block_on(connect(&dsn)).err().unwrap();
    assert!(
        e.to_string().contains("authentication") || e.as_db_error().is_some(),
        "{e}"
    );
    let drops = b.audit(&format!("run={run_id}&type=lease.drop"));
    assert_eq!(drops.len(), 1);
    assert!(
        drops[0]["reason"]
            .as_str()
            .unwrap()
            .contains("revoked: run:")
    );
    // A revoked run gets no new database credential either.
    let (s, v) = b.exchange(&mandate, &key, "db", "read");
    assert_refused(&(s, v), 400, "invalid_grant", "revoked");
}

#[test]
fn an_expired_lease_is_dropped_even_across_a_broker_restart() {
    let db = Db::new();
    let b = broker("pg-expiry", &db, 2);
    let (run_a, mandate, key) = run(&b);
    credential(&b, &mandate, &key, "db", "read");
    wait_until("expired role dropped", Duration::from_secs(8), || {
        db.roles(&role_prefix(&run_a)).is_empty()
    });
    // Now a lease that expires while the broker is down.
    let (run_b, mandate, key) = run(&b);
    credential(&b, &mandate, &key, "db", "read");
    assert_eq!(db.roles(&role_prefix(&run_b)).len(), 1);
    let dir = b.dir.clone();
    drop(b);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        db.roles(&role_prefix(&run_b)).len(),
        1,
        "nobody dropped it yet"
    );
    let b = Broker::start_again(&dir);
    wait_until("role dropped after restart", Duration::from_secs(8), || {
        db.roles(&role_prefix(&run_b)).is_empty()
    });
    let drops = b.audit(&format!("run={run_b}&type=lease.drop"));
    assert_eq!(drops[0]["reason"], "expired");
}

#[test]
fn a_down_admin_connection_is_a_clear_error_and_leaves_no_role() {
    let db = Db::new();
    let b = broker("pg-down", &db, 300);
    let dead = format!("postgresql://mandate_admin:x@127.0.0.1:1/{}", db.name);
    register(&b, &db, "baddb", 300, &dead);
    let (run_id, mandate, key) = run(&b);
    let got = b.exchange(&mandate, &key, "baddb", "read");
    assert_refused(
        &got,
        503,
        "temporarily_unavailable",
        "admin connection of tool `baddb` failed",
    );
    assert!(
        !got.1.to_string().contains("127.0.0.1:1"),
        "the connection string leaked"
    );
    assert!(db.roles(&role_prefix(&run_id)).is_empty());
    let failed = b.audit(&format!("run={run_id}&type=token.failed"));
    assert_eq!(failed.len(), 1);
    // Actions without a database role, and bad registrations, are refused.
    let got = b.exchange(&mandate, &key, "db", "admin");
    assert_refused(&got, 400, "invalid_scope", "maps to no database role");
    let (s, v) = b.admin_post(
        "/v1/tenants/acme/tools",
        json!({"name": "evil", "provider": "postgres", "actions": ["read"],
               "postgres": {"host": "h", "database": "d", "roles": {"read": "x\"; DROP ROLE y; --"}}}),
    );
    assert_refused(&(s, v), 400, "invalid_request", "lower-case letters");
    assert_refused(
        &b.admin_put_text(
            "/v1/tenants/acme/tools/db/secret",
            "not a connection string = =",
        ),
        400,
        "invalid_request",
        "not valid",
    );
}

#[test]
fn revoking_one_credential_drops_only_its_role() {
    let db = Db::new();
    let b = broker("pg-one", &db, 300);
    let (run_id, mandate, key) = run(&b);
    let read = credential(&b, &mandate, &key, "db", "read");
    let write = credential(&b, &mandate, &key, "db", "write");
    assert_eq!(db.roles(&role_prefix(&run_id)).len(), 2);
    let (s, v) = b.admin_post(
        "/v1/revocations",
        json!({"kind": "credential", "id": read["credential_id"]}),
    );
    assert_eq!(s, 200, "{v}");
    wait_until("one role dropped", Duration::from_secs(5), || {
        db.roles(&role_prefix(&run_id)).len() == 1
    });
    db.rt.block_on(async {
        assert!(
            connect(read["access_token"].as_str().unwrap())
                .await
                .is_err()
        );
        let c = connect(write["access_token"].as_str().unwrap())
            .await
            .unwrap();
        c.execute("INSERT INTO items VALUES (3, 'three')", &[])
            .await
            .unwrap();
    });
}
