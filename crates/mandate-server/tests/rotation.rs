//! `--rotate-keys` rotates the mandate root key too: mandates signed by the
//! previous root keep working until they expire; new ones use the new root.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use mandate_core::jose::Alg;
use serde_json::json;

#[test]
fn mandates_of_a_rotated_root_still_exchange() {
    let b = Broker::start("rot-root");
    let grant = b.seed("acme");
    let (_, m_old, k_old) = b.start_run("acme", &grant, Alg::EdDSA);
    assert_eq!(b.exchange(&m_old, &k_old, "crm", "read").0, 200);
    let b = b.restart_with(|c| c.rotate_keys = true);
    let ev = b.audit("type=keys.rotate");
    assert_eq!(ev.len(), 1);
    assert_eq!(
        ev[0]["details"]["retired_mandate_kids"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // The old mandate verifies against the retired root; a new one against the new root.
    assert_eq!(b.exchange(&m_old, &k_old, "crm", "read").0, 200);
    let (_, m_new, k_new) = b.start_run("acme", &grant, Alg::EdDSA);
    assert_eq!(b.exchange(&m_new, &k_new, "crm", "read").0, 200);
    let (s, v) = b.admin_post("/v1/tokens/inspect", json!({"token": m_old}));
    assert_eq!((s, v["verifies"].as_bool()), (200, Some(true)), "{v}");
    // Rotating again keeps both earlier roots (up to four).
    let b = b.restart_with(|c| c.rotate_keys = true);
    assert_eq!(b.exchange(&m_old, &k_old, "crm", "read").0, 200);
    assert_eq!(b.exchange(&m_new, &k_new, "crm", "read").0, 200);
}
