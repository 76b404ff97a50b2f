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

/// A stolen retired key mints nothing: a credential or mandate it signs
/// dated after its retirement is refused, and neither may claim a longer
/// life than the broker gives (issue 10, review of key rotation).
#[test]
fn a_retired_key_signs_nothing_new() {
    let b = Broker::start("rot-stolen");
    let grant = b.seed("acme");
    let (run, m, k) = b.start_run("acme", &grant, Alg::EdDSA);
    let (s, v) = b.exchange(&m, &k, "crm", "read");
    assert_eq!(s, 200, "{v}");
    let honest = v["access_token"].as_str().unwrap().to_owned();
    let stolen = b.state.keyset().keys.jwt_eddsa.clone();
    let stolen_root = b.state.keyset().keys.mandate_root.clone();
    let claims = mandate_core::credential::verify(
        &b.state.keyset().keys,
        &b.state.config.issuer,
        &honest,
        now(),
        false,
    )
    .unwrap();
    b.advance(1);
    let b = b.restart_with(|c| c.rotate_keys = true);
    // What the key signed before it was retired still works.
    assert_eq!(introspect(&b, &honest)["active"], true);
    assert_eq!(b.exchange(&m, &k, "crm", "read").0, 200);
    // A credential it signs later than its retirement (a second on: what it
    // signed in the second it was retired may be honest) is refused, and so
    // is one claiming a long life.
    b.advance(1);
    let now = || mandate_core::clock::Clock::now_secs(&*b.clock);
    let forge = |iat: u64, exp: u64| {
        let mut c = claims.clone();
        c.iat = iat;
        c.exp = exp;
        c.jti = format!("forged-{iat}-{exp}");
        mandate_core::credential::sign(&stolen, &c).unwrap()
    };
    assert_eq!(introspect(&b, &forge(now(), now() + 300))["active"], false);
    assert_eq!(
        introspect(&b, &forge(claims.iat, claims.iat + 10 * 365 * 86_400))["active"],
        false
    );
    // A mandate the retired root signs now is refused, with the reason.
    let mut mc = mandate_core::mandate::verify(&b.state.keyset().roots, &m, now()).unwrap();
    mc.issued_at = now();
    mc.expires_at = now() + 600;
    let root = mandate_core::mandate::root_keypair(&stolen_root).unwrap();
    let forged = mandate_core::mandate::mint(&root, &mc, &mut rand::rngs::OsRng).unwrap();
    assert_refused(
        &b.exchange(&forged, &k, "crm", "read"),
        400,
        "invalid_grant",
        "after the key that signed it was retired",
    );
    let _ = run;
}
