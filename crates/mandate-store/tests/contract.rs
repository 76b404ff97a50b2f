//! The `Store` contract: every test runs against every backend (SQLite in
//! a temporary directory, PostgreSQL in a fresh database), through
//! `&dyn Store` only (and raw SQL where a test tampers with the data).
//!
//! PostgreSQL: `export MANDATE_TEST_PG=$(bash scripts/pg.sh 2>/dev/null)`.
#![allow(clippy::unwrap_used)]

mod common;

#[path = "contract/guards.rs"]
mod guards;
#[path = "contract/lifecycle.rs"]
mod lifecycle;
#[path = "contract/registry.rs"]
mod registry;
#[path = "contract/trail.rs"]
mod trail;
