//! The broker on a PostgreSQL store (`mandate serve --store postgres://…`)
//! against a real server (`MANDATE_TEST_PG`, from `scripts/pg.sh`): what it
//! issues and revokes survives a restart and its audit trail verifies
//! (several brokers on one database: `tests/brokers.rs`).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use mandate_core::jose::Alg;
use mandate_core::secret::Secret;
use serde_json::json;

fn admin_dsn() -> String {
    std::env::var("MANDATE_TEST_PG").unwrap_or_else(|_| {
        panic!("set MANDATE_TEST_PG to a PostgreSQL admin connection string: export MANDATE_TEST_PG=$(scripts/pg.sh)")
    })
}

/// A fresh database; its connection URL.
fn fresh_database() -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tag = mandate_core::ids::random_id(&mut rand::rngs::OsRng, "")[..10].to_owned();
    let name = format!("mstore_{tag}");
    let dsn = admin_dsn();
    rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
    });
    let (base, _) = dsn.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

/// A broker's configuration with its directories in `dir`.
fn config_in(dir: &std::path::Path) -> mandate_server::Config {
    mandate_server::Config::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.join("data"),
        &dir.join("config"),
    )
}

fn on(url: &str) -> impl FnOnce(&mut mandate_server::Config) + '_ {
    move |c| c.store_url = Some(Secret::new(url.as_bytes().to_vec()))
}

#[test]
fn a_broker_on_postgres_keeps_what_it_issued_and_revoked_across_a_restart() {
    let url = fresh_database();
    let b = Broker::start_with("pgstore", on(&url));
    let grant = b.seed("acme");
    let (run, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
    let (s, v) = b.exchange(&mandate, &key, "https://crm.acme.example", "read");
    assert_eq!(s, 200, "{v}");
    let (s, v) = b.admin_post(
        "/v1/revocations",
        json!({"kind": "run", "id": run, "reason": "test"}),
    );
    assert_eq!(s, 200, "{v}");
    // Restarted on the same database: the revocation is there, not only in
    // the memory of the broker that made it.
    let b = b.restart_with(on(&url));
    let (s, v) = b.exchange(&mandate, &key, "https://crm.acme.example", "read");
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error_description"].as_str().unwrap().contains("revoked"),
        "{v}"
    );
    let (run2, mandate2, key2) = b.start_run("acme", &grant, Alg::EdDSA);
    assert_ne!(run2, run);
    let (s, v) = b.exchange(&mandate2, &key2, "https://crm.acme.example", "read");
    assert_eq!(s, 200, "{v}");
    let (s, v) = b.admin_get("/v1/audit/verify");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["verified"].as_u64().unwrap() > 5, "{v}");
    let events = b.audit("type=token.exchange");
    assert!(events.len() >= 3, "{events:?}");
}

#[test]
fn a_store_url_that_is_not_postgres_is_refused_with_the_reason() {
    let dir = tempdir("pgstore-bad");
    let mut cfg = config_in(&dir);
    cfg.store_url = Some(Secret::new(b"mysql://root:hunter2@db/x".to_vec()));
    let e = mandate_server::boot::boot(cfg).err().unwrap().to_string();
    assert!(e.contains("PostgreSQL URL"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
    let mut cfg = config_in(&dir);
    // Nothing listens there: refused, and the password is not repeated.
    cfg.store_url = Some(Secret::new(
        b"postgres://u:hunter2@127.0.0.1:9/x?connect_timeout=2".to_vec(),
    ));
    let e = mandate_server::boot::boot(cfg).err().unwrap().to_string();
    assert!(e.contains("PostgreSQL"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
    // A URL the parser refuses: its text (the password's) is not quoted.
    let mut cfg = config_in(&dir);
    cfg.store_url = Some(Secret::new(
        b"postgres://u:hun\ter2@127.0.0.1:x/db".to_vec(),
    ));
    let e = mandate_server::boot::boot(cfg).err().unwrap().to_string();
    assert!(e.contains("not valid"), "{e}");
    assert!(!e.contains("hun"), "{e}");
}
