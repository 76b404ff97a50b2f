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
                 CREATE TABLE secrets (v text);
                 INSERT INTO secrets VALUES ('the admin''s secret');
                 GRANT USAGE ON SCHEMA public TO {reader}, {writer};
                 GRANT CREATE ON SCHEMA public TO {writer};
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

    /// Runs `sql` as the cluster's admin, in this database.
    fn admin(&self, sql: &str) {
        self.rt.block_on(async {
            let c = connect(&self.admin_dsn()).await.unwrap();
            c.batch_execute(sql).await.unwrap();
        });
    }

    /// One value (as text) of a query run as the cluster's admin, in this database.
    fn admin_value(&self, sql: &str) -> Option<String> {
        self.rt.block_on(async {
            let c = connect(&self.admin_dsn()).await.unwrap();
            c.query_opt(sql, &[]).await.unwrap().map(|r| r.get(0))
        })
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

/// The `lease.drop` events of a run, once there are `n` (the reaper writes
/// each event after its role is gone).
fn lease_drops_n(b: &Broker, run_id: &str, n: usize) -> Vec<Value> {
    let mut drops = vec![];
    wait_until("lease.drop audited", Duration::from_secs(5), || {
        drops = b.audit(&format!("run={run_id}&type=lease.drop"));
        drops.len() >= n
    });
    drops
}

/// [`lease_drops_n`] for one.
fn lease_drops(b: &Broker, run_id: &str) -> Vec<Value> {
    lease_drops_n(b, run_id, 1)
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
    let drops = lease_drops(&b, &run_id);
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
    b.advance(3);
    wait_until("expired role dropped", Duration::from_secs(8), || {
        db.roles(&role_prefix(&run_a)).is_empty()
    });
    // Now a lease that expires while the broker is down.
    let (run_b, mandate, key) = run(&b);
    credential(&b, &mandate, &key, "db", "read");
    assert_eq!(db.roles(&role_prefix(&run_b)).len(), 1);
    let (dir, clock) = (b.dir.clone(), std::sync::Arc::clone(&b.clock));
    drop(b);
    clock.advance_secs(3);
    assert_eq!(
        db.roles(&role_prefix(&run_b)).len(),
        1,
        "nobody dropped it yet"
    );
    let b = Broker::start_again_on(&dir, clock);
    wait_until("role dropped after restart", Duration::from_secs(8), || {
        db.roles(&role_prefix(&run_b)).is_empty()
    });
    let drops = lease_drops(&b, &run_b);
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

fn dsn_of(credential: &Value) -> String {
    credential["access_token"].as_str().unwrap().to_owned()
}

fn role_of(credential: &Value) -> String {
    let dsn = dsn_of(credential);
    let user = dsn.trim_start_matches("postgresql://");
    user.split(':').next().unwrap().to_owned()
}

fn revoke_credential(b: &Broker, credential: &Value) {
    let (s, v) = b.admin_post(
        "/v1/revocations",
        json!({"kind": "credential", "id": credential["credential_id"]}),
    );
    assert_eq!(s, 200, "{v}");
}

fn code_of(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_owned())
        .unwrap_or_else(|| format!("not a database error: {e}"))
}

/// Issue 10 item 3: objects a credential created were handed to the admin
/// when its role was dropped (`REASSIGN OWNED ... TO CURRENT_USER`), so a
/// `SECURITY DEFINER` function written by one agent later ran as the admin
/// for any other credential.
#[test]
fn a_dropped_credentials_objects_die_with_it_and_never_run_as_the_admin() {
    let db = Db::new();
    let b = broker("pg-definer", &db, 300);
    let (run_id, mandate, key) = run(&b);
    let write = credential(&b, &mandate, &key, "db", "write");
    db.rt.block_on(async {
        let c = connect(&dsn_of(&write)).await.unwrap();
        let e = c.query("SELECT v FROM secrets", &[]).await.unwrap_err();
        assert_eq!(code_of(&e), "42501", "the writer may not read the secret");
        c.batch_execute(
            "CREATE FUNCTION peek() RETURNS text LANGUAGE plpgsql SECURITY DEFINER
               AS $$ BEGIN RETURN (SELECT string_agg(v, ',') FROM secrets); END $$;
             CREATE VIEW peek_view AS SELECT v FROM secrets;
             GRANT SELECT ON peek_view TO PUBLIC;",
        )
        .await
        .unwrap();
    });
    revoke_credential(&b, &write);
    wait_until("the writer's role dropped", Duration::from_secs(5), || {
        db.roles(&role_prefix(&run_id)).is_empty()
    });
    let read = credential(&b, &mandate, &key, "db", "read");
    db.rt.block_on(async {
        let c = connect(&dsn_of(&read)).await.unwrap();
        match c.query_one("SELECT peek()", &[]).await {
            Ok(r) => panic!(
                "a read credential ran the dropped writer's function and got {:?}",
                r.get::<_, Option<String>>(0)
            ),
            Err(e) => assert_eq!(code_of(&e), "42883", "{e}"),
        }
        match c.query("SELECT v FROM peek_view", &[]).await {
            Ok(rows) => panic!(
                "the dropped writer's view still answers: {} rows",
                rows.len()
            ),
            Err(e) => assert_eq!(code_of(&e), "42P01", "{e}"),
        }
    });
    for (what, sql) in [
        (
            "function",
            "SELECT count(*)::text FROM pg_proc WHERE proname = 'peek'",
        ),
        (
            "view",
            "SELECT count(*)::text FROM pg_class WHERE relname = 'peek_view'",
        ),
    ] {
        assert_eq!(
            db.admin_value(sql).as_deref(),
            Some("0"),
            "the writer's {what} is left, under some owner"
        );
    }
}

/// A role whose objects others depend on is never handed to the admin: it
/// stays, unable to log in and member of nothing (so what it owns runs with
/// nothing), the trail says so once, and it goes once they are gone.
#[test]
fn a_role_others_depend_on_stays_powerless_until_it_can_go() {
    let db = Db::new();
    let b = broker("pg-stuck", &db, 300);
    let (run_id, mandate, key) = run(&b);
    let first = credential(&b, &mandate, &key, "db", "write");
    let second = credential(&b, &mandate, &key, "db", "write");
    let (first_role, second_role) = (role_of(&first), role_of(&second));
    let session = db.rt.block_on(async {
        let c = connect(&dsn_of(&first)).await.unwrap();
        c.batch_execute(
            "CREATE TABLE t1 (v text); INSERT INTO t1 VALUES ('x'); GRANT SELECT ON t1 TO PUBLIC;",
        )
        .await
        .unwrap();
        let c2 = connect(&dsn_of(&second)).await.unwrap();
        c2.batch_execute("CREATE VIEW v2 AS SELECT v FROM t1;")
            .await
            .unwrap();
        c
    });
    revoke_credential(&b, &first);
    wait_until("the stuck role flagged", Duration::from_secs(5), || {
        !b.audit(&format!("run={run_id}&type=lease.stuck"))
            .is_empty()
    });
    let stuck = b.audit(&format!("run={run_id}&type=lease.stuck"));
    assert_eq!(stuck.len(), 1, "said once: {stuck:?}");
    assert_eq!(stuck[0]["decision"], "error");
    assert_eq!(stuck[0]["credential_id"], first["credential_id"]);
    let reason = stuck[0]["reason"].as_str().unwrap();
    assert!(reason.contains("depend"), "{reason}");
    assert!(reason.contains("v2"), "names what depends on it: {reason}");
    // The role is there, but cannot log in, is a member of nothing, its
    // session is gone, and what it owns was not handed to the admin.
    let facts = db.admin_value(&format!(
        "SELECT r.rolcanlogin::text || ' ' || (SELECT count(*) FROM pg_auth_members m WHERE m.member = r.oid)::text
           FROM pg_roles r WHERE r.rolname = '{first_role}'"
    ));
    assert_eq!(facts.as_deref(), Some("false 0"));
    assert!(db.rt.block_on(session.query_one("SELECT 1", &[])).is_err());
    assert!(db.rt.block_on(connect(&dsn_of(&first))).is_err());
    assert_eq!(
        db.admin_value("SELECT tableowner::text FROM pg_tables WHERE tablename = 't1'"),
        Some(first_role)
    );
    // Once what depends on it is gone, it goes too.
    revoke_credential(&b, &second);
    wait_until("both roles dropped", Duration::from_secs(8), || {
        db.roles(&role_prefix(&run_id)).is_empty()
    });
    let drops = lease_drops_n(&b, &run_id, 2);
    assert_eq!(drops.len(), 2, "{drops:?}");
    assert_eq!(
        db.admin_value("SELECT count(*)::text FROM pg_class WHERE relname IN ('t1', 'v2')")
            .as_deref(),
        Some("0")
    );
    assert!(db.roles(&second_role).is_empty());
}

fn register_mapping(b: &Broker, db: &Db, tool: &str, role: &str) {
    let (s, v) = b.admin_post(
        "/v1/tenants/acme/tools",
        json!({
            "name": tool, "provider": "postgres", "actions": ["read"],
            "postgres": {"host": "127.0.0.1", "port": port_of(&admin_dsn()), "database": db.name,
                         "roles": {"read": role}}
        }),
    );
    assert_eq!(s, 201, "{v}");
}

/// Mapped roles may not reach SUPERUSER, CREATEROLE, BYPASSRLS (themselves
/// or through membership at any depth), nor be the admin role: refused when
/// the admin connection string is set, with the reason, audited.
#[test]
fn mapping_an_action_to_a_powerful_role_is_refused_when_the_secret_is_set() {
    let db = Db::new();
    let b = broker("pg-powers", &db, 300);
    let t = &db.name;
    db.admin(&format!(
            "CREATE ROLE {t}_su SUPERUSER; CREATE ROLE {t}_cr CREATEROLE; CREATE ROLE {t}_rls BYPASSRLS;
             CREATE ROLE {t}_mid; CREATE ROLE {t}_deep; GRANT {t}_su TO {t}_mid; GRANT {t}_mid TO {t}_deep;
             CREATE ROLE {t}_adm LOGIN CREATEROLE PASSWORD 'adm_pw';
             CREATE ROLE {t}_ops; GRANT {t}_adm TO {t}_ops;"
        ),
    );
    let other_admin = {
        let cfg = admin_dsn();
        let (_, rest) = cfg.split_once('@').unwrap();
        let (host, _) = rest.rsplit_once('/').unwrap();
        format!("postgresql://{t}_adm:adm_pw@{host}/{}", db.name)
    };
    let db_dsn = db.admin_dsn();
    let cases: Vec<(&str, String, &str, String)> = vec![
        ("su", format!("{t}_su"), &db_dsn, "has SUPERUSER".into()),
        ("cr", format!("{t}_cr"), &db_dsn, "has CREATEROLE".into()),
        ("rls", format!("{t}_rls"), &db_dsn, "has BYPASSRLS".into()),
        (
            "deep",
            format!("{t}_deep"),
            &db_dsn,
            format!("is a member of `{t}_su`, which has SUPERUSER"),
        ),
        (
            "adm",
            format!("{t}_adm"),
            &other_admin,
            "has the broker's admin role".into(),
        ),
        (
            "ops",
            format!("{t}_ops"),
            &other_admin,
            format!("is a member of `{t}_adm`, which has the broker's admin role"),
        ),
        (
            "ghost",
            format!("{t}_ghost"),
            &db_dsn,
            "does not exist".into(),
        ),
    ];
    for (tool, role, dsn, why) in &cases {
        let tool = format!("p{tool}");
        register_mapping(&b, &db, &tool, role);
        let got = b.admin_put_text(&format!("/v1/tenants/acme/tools/{tool}/secret"), dsn);
        assert_refused(&got, 400, "invalid_request", why);
        assert!(got.1.to_string().contains("never reach") || why == "does not exist");
        assert!(
            !got.1.to_string().contains("adm_pw"),
            "the connection string leaked"
        );
        let denied: Vec<Value> = b
            .audit("type=tool.secret.set&decision=deny")
            .into_iter()
            .filter(|e| e["tool"] == json!(tool))
            .collect();
        assert_eq!(denied.len(), 1, "{tool}: {denied:?}");
        assert!(
            denied[0]["reason"].as_str().unwrap().contains(why),
            "{denied:?}"
        );
        let (_, tools) = b.admin_get("/v1/tenants/acme/tools");
        let listed = tools
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == json!(tool))
            .unwrap()
            .clone();
        assert_eq!(listed["secret_set"], false, "{tool}");
    }
    // A harmless mapping is checked and accepted.
    register_mapping(&b, &db, "fine", &db.reader);
    let (s, v) = b.admin_put_text("/v1/tenants/acme/tools/fine/secret", &db.admin_dsn());
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["roles_checked"], true, "{v}");
}

/// A role that gains a forbidden power after registration is refused at
/// exchange time (asked of the database each time), audited as a denial,
/// and no role is made.
#[test]
fn a_mapped_role_that_gains_a_power_later_is_refused_at_exchange() {
    let db = Db::new();
    let b = broker("pg-powers-later", &db, 300);
    let (run_id, mandate, key) = run(&b);
    credential(&b, &mandate, &key, "db", "write");
    let t = &db.name;
    db.admin(&format!(
        "ALTER ROLE {w} CREATEROLE; CREATE ROLE {t}_boss SUPERUSER; GRANT {t}_boss TO {r};",
        w = db.writer,
        r = db.reader
    ));
    let before = db.roles(&role_prefix(&run_id)).len();
    let got = b.exchange(&mandate, &key, "db", "write");
    assert_refused(&got, 403, "access_denied", "has CREATEROLE");
    let got = b.exchange(&mandate, &key, "db", "read");
    assert_refused(
        &got,
        403,
        "access_denied",
        &format!("is a member of `{t}_boss`, which has SUPERUSER"),
    );
    assert_eq!(
        db.roles(&role_prefix(&run_id)).len(),
        before,
        "no role was made"
    );
    let denied = b.audit(&format!("run={run_id}&type=token.failed&decision=deny"));
    assert_eq!(denied.len(), 2, "{denied:?}");
    assert!(
        denied
            .iter()
            .any(|e| e["reason"].as_str().unwrap().contains("CREATEROLE"))
    );
    // Their leases are closed by the reaper (nothing to drop, but nothing left open).
    wait_until("the refused leases closed", Duration::from_secs(5), || {
        b.audit(&format!("run={run_id}&type=lease.drop")).len() == 2
    });
}

/// Issue 10 item 6: a lease hangs on every revocation id of its credential,
/// ancestors included: revoking the parent run drops the child's role.
#[test]
fn revoking_the_parent_run_drops_the_delegated_childs_role() {
    let db = Db::new();
    let b = broker("pg-child", &db, 300);
    let (s, v) = b.admin_post(
        "/v1/tenants/acme/agents",
        json!({"name": "dbkid", "owner": "team-data", "envelope": ["db:read"]}),
    );
    assert_eq!(s, 201, "{v}");
    let (parent, mandate, key) = run(&b);
    let child_key = SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng);
    let url = format!("{}/v1/runs/delegate", b.url);
    let proof = mandate_core::client::dpop_proof(&key, "POST", &url, now(), &jti(), None, None);
    let (s, v) = read(
        Broker::agent()
            .post(&url)
            .header("DPoP", &proof)
            .send_json(
                json!({"mandate": mandate, "agent": "dbkid", "jwk": child_key.public().to_json()}),
            )
            .unwrap(),
    );
    assert_eq!(s, 201, "{v}");
    let child = v["run"].as_str().unwrap().to_owned();
    let child_mandate = v["mandate"].as_str().unwrap().to_owned();
    let cred = credential(&b, &child_mandate, &child_key, "db", "read");
    let session = db.rt.block_on(connect(&dsn_of(&cred))).unwrap();
    db.rt
        .block_on(session.query_one("SELECT count(*) FROM items", &[]))
        .unwrap();
    let (s, v) = b.admin_post("/v1/revocations", json!({"kind": "run", "id": parent}));
    assert_eq!(s, 200, "{v}");
    wait_until("the child's role dropped", Duration::from_secs(5), || {
        db.roles(&role_prefix(&child)).is_empty()
    });
    assert!(db.rt.block_on(session.query_one("SELECT 1", &[])).is_err());
    assert!(db.rt.block_on(connect(&dsn_of(&cred))).is_err());
    let drops = lease_drops(&b, &child);
    assert_eq!(drops.len(), 1, "{drops:?}");
    let reason = drops[0]["reason"].as_str().unwrap();
    assert!(reason.contains(&format!("run:{parent}")), "{reason}");
}

/// Issue 11: when a role cannot be created and the revocation of its lease
/// cannot be stored either, the reaper still closes the lease (and would
/// drop the role) instead of leaving it until expiry.
#[test]
fn a_lease_whose_revocation_could_not_be_stored_is_still_reaped() {
    let db = Db::new();
    let b = broker("pg-unstored", &db, 300);
    let (run_id, mandate, key) = run(&b);
    // The store refuses to record credential revocations from now on (a
    // real SQLite failure, injected with a trigger on the broker's file).
    let store = rusqlite::Connection::open(b.dir.join("data").join("mandate.db")).unwrap();
    store
        .execute_batch(
            "CREATE TRIGGER no_cred_revocations BEFORE INSERT ON revocations
               WHEN NEW.key LIKE 'cred:%' BEGIN SELECT RAISE(ABORT, 'disk trouble'); END;",
        )
        .unwrap();
    db.admin(&format!("ALTER ROLE {} BYPASSRLS", db.reader));
    let got = b.exchange(&mandate, &key, "db", "read");
    assert_refused(&got, 403, "access_denied", "has BYPASSRLS");
    let issued = b.audit(&format!("run={run_id}&type=token.exchange&decision=allow"));
    assert_eq!(
        issued.len(),
        1,
        "the lease was recorded with its allow event"
    );
    assert!(
        b.audit(&format!("run={run_id}&type=token.failed"))
            .is_empty(),
        "the store failed: the refusal could not be recorded"
    );
    let (_, revs) = b.admin_get("/v1/revocations");
    assert!(
        !revs
            .to_string()
            .contains(issued[0]["credential_id"].as_str().unwrap()),
        "the revocation was not stored: {revs}"
    );
    wait_until("the lease closed anyway", Duration::from_secs(5), || {
        !b.audit(&format!("run={run_id}&type=lease.drop")).is_empty()
    });
    let drops = lease_drops(&b, &run_id);
    assert_eq!(drops[0]["credential_id"], issued[0]["credential_id"]);
    assert_eq!(drops[0]["reason"], "the database role could not be created");
}

/// A tool whose admin connection fails (missing or wrong secret) is tried
/// with exponential backoff by the reaper, not every second, and at once
/// when an admin sets a new secret.
#[test]
fn the_reaper_backs_off_per_tool_and_retries_at_once_on_a_new_secret() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let db = Db::new();
    let b = broker("pg-backoff", &db, 300);
    // A "database" that hangs up on every connection, counting them.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let tries = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&tries);
    std::thread::spawn(move || {
        for c in listener.incoming() {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(c);
        }
    });
    register(
        &b,
        &db,
        "baddb",
        300,
        &format!("postgresql://nobody:x@127.0.0.1:{port}/{}", db.name),
    );
    let (run_id, mandate, key) = run(&b);
    let before = tries.load(Ordering::SeqCst);
    let got = b.exchange(&mandate, &key, "baddb", "read");
    assert_refused(&got, 503, "temporarily_unavailable", "admin connection");
    // The revoked lease is due; passes of the reaper in quick succession
    // (these 20, and the broker's own every second, which may come first
    // on a loaded machine) try the dead database once, then back off.
    let rt = tokio::runtime::Runtime::new().unwrap();
    for _ in 0..20 {
        rt.block_on(mandate_server::pg::reap_once(&b.state));
    }
    // One attempt was the exchange's own.
    let reaper_tries = tries.load(Ordering::SeqCst) - before - 1;
    assert!(
        (1..=3).contains(&reaper_tries),
        "{reaper_tries} connection attempts for 20 passes"
    );
    assert!(b.audit(&format!("run={run_id}&type=lease.drop")).is_empty());
    // A new (good) secret is tried at once, not after the backoff.
    let (s, v) = b.admin_put_text("/v1/tenants/acme/tools/baddb/secret", &db.admin_dsn());
    assert_eq!(s, 200, "{v}");
    rt.block_on(mandate_server::pg::reap_once(&b.state));
    let drops = lease_drops(&b, &run_id);
    assert_eq!(drops.len(), 1, "{drops:?}");
}
