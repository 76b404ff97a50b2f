//! Offline attenuation at the broker (issue 4 §2): a holder narrows and
//! hands on its mandate without calling the broker; the broker verifies the
//! whole chain, requires the last hop's key, counts use limits durably, and
//! names every hop in the audit event and the credential's `act` chain.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use mandate_core::attenuation::{Narrowing, attenuate};
use mandate_core::capability::CapabilitySet;
use mandate_core::jose::Alg;
use mandate_core::keys::SigningKey;
use serde_json::json;

const URN: &str = "urn:ietf:params:oauth:jwk-thumbprint:sha-256:";

fn key() -> SigningKey {
    SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng)
}

#[test]
fn hops_narrow_hand_over_and_are_named_everywhere() {
    let b = Broker::start("att-hops");
    let grant = b.seed("acme");
    let (run, m0, k0) = b.start_run("acme", &grant, Alg::EdDSA);
    let k1 = key();
    let m1 = attenuate(
        &m0,
        &k0,
        &Narrowing {
            capabilities: Some(CapabilitySet::parse(&["github:read", "bank:transfer"]).unwrap()),
            next_holder: Some(k1.kid()),
            next_holder_name: Some("reviewer sub-agent".into()),
            ..Default::default()
        },
    )
    .unwrap();
    // The next holder uses it with its own key.
    let (s, v) = b.exchange(&m1, &k1, "github", "read");
    assert_eq!(s, 200, "{v}");
    let c = introspect(&b, v["access_token"].as_str().unwrap());
    assert_eq!(c["active"], true);
    assert_eq!(c["cnf"]["jkt"], json!(k1.kid()));
    assert_eq!(c["act"]["sub"], json!(format!("{URN}{}", k1.kid())));
    assert!(
        c["act"]["act"]["sub"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/run/{run}"))
    );
    assert_eq!(c["sub"], "alice@example.com");

    // Narrowed away: crm:read was the run's, not this holder's. Never added: bank.
    assert_refused(
        &b.exchange(&m1, &k1, "crm", "read"),
        400,
        "invalid_scope",
        "not granted",
    );
    assert_refused(
        &b.exchange(&m1, &k1, "bank", "transfer"),
        400,
        "invalid_target",
        "no tool",
    );
    // Presented without the last hop's key (by the run key that handed it on): refused.
    assert_refused(
        &b.exchange(&m1, &k0, "github", "read"),
        400,
        "invalid_dpop_proof",
        "",
    );
    // The run key still uses its own, unattenuated mandate.
    assert_eq!(b.exchange(&m0, &k0, "crm", "read").0, 200);

    // A second hop, by the holder, to a third key.
    let k2 = key();
    let m2 = attenuate(
        &m1,
        &k1,
        &Narrowing {
            next_holder: Some(k2.kid()),
            ..Default::default()
        },
    )
    .unwrap();
    let (s, v) = b.exchange(&m2, &k2, "github", "read");
    assert_eq!(s, 200, "{v}");
    let c = introspect(&b, v["access_token"].as_str().unwrap());
    assert_eq!(c["act"]["sub"], json!(format!("{URN}{}", k2.kid())));
    assert_eq!(c["act"]["act"]["sub"], json!(format!("{URN}{}", k1.kid())));
    assert!(
        c["act"]["act"]["act"]["sub"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/run/{run}"))
    );
    // A hop signed by a key that does not hold the mandate.
    let thief = key();
    let bad = attenuate(
        &m1,
        &thief,
        &Narrowing {
            next_holder: Some(thief.kid()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_refused(
        &b.exchange(&bad, &thief, "github", "read"),
        400,
        "invalid_grant",
        "signed by key",
    );

    // Every hop is in the audit event.
    let evs = b.audit(&format!("type=token.exchange&run={run}&decision=allow"));
    let last = evs
        .iter()
        .find(|e| {
            e["details"]["hops"]
                .as_array()
                .is_some_and(|h| h.len() == 2)
        })
        .unwrap();
    let hops = last["details"]["hops"].as_array().unwrap();
    assert_eq!(hops[0]["signed_by"], json!(k0.kid()));
    assert_eq!(hops[0]["holder"], json!(k1.kid()));
    assert_eq!(
        hops[0]["narrowing"]["next_holder_name"],
        "reviewer sub-agent"
    );
    assert_eq!(hops[1]["signed_by"], json!(k1.kid()));
    assert_eq!(last["details"]["holder"], json!(k2.kid()));

    // Revoking the run ends every hop.
    let (s, _) = b.admin_post("/v1/revocations", json!({"kind": "run", "id": run}));
    assert_eq!(s, 200);
    assert_refused(
        &b.exchange(&m2, &k2, "github", "read"),
        400,
        "invalid_grant",
        "revoked",
    );

    // An attenuated mandate cannot start child runs online.
    let url = format!("{}/v1/runs/delegate", b.url);
    let proof = mandate_core::client::dpop_proof(&k1, "POST", &url, now(), &jti(), None, None);
    let got = read(
        Broker::agent()
            .post(&url)
            .header("DPoP", &proof)
            .send_json(json!({"mandate": m1, "agent": "triage", "jwk": key().public().to_json()}))
            .unwrap(),
    );
    assert_eq!(got.0, 400, "{:?}", got.1);
}

#[test]
fn use_limits_are_counted_durably_and_expiry_and_paths_narrow() {
    let b = Broker::start("att-uses");
    let grant = b.seed("acme");
    let (_run, m0, k0) = b.start_run("acme", &grant, Alg::EdDSA);
    let m1 = attenuate(
        &m0,
        &k0,
        &Narrowing {
            max_uses: Some(2),
            resource_prefix: Some("/repos/acme/".into()),
            not_after: Some(now() + 120),
            ..Default::default()
        },
    )
    .unwrap();
    let (s, v) = b.exchange(&m1, &k0, "github", "read");
    assert_eq!(s, 200, "{v}");
    let c = introspect(&b, v["access_token"].as_str().unwrap());
    assert_eq!(c["path_prefix"], "/repos/acme/");
    assert!(c["exp"].as_u64().unwrap() <= now() + 120);
    // The count survives a restart.
    let b = b.restart();
    let (s, v) = b.exchange(&m1, &k0, "crm", "read");
    assert_eq!(s, 200, "{v}");
    assert_refused(
        &b.exchange(&m1, &k0, "crm", "read"),
        400,
        "invalid_grant",
        "2 uses",
    );
    let denied = b.audit("type=token.exchange&decision=deny");
    assert!(
        denied
            .iter()
            .any(|e| e["reason"].as_str().unwrap_or("").contains("use limit"))
    );
    // A further block can narrow the limit, never lift it.
    let m2 = attenuate(
        &m1,
        &k0,
        &Narrowing {
            max_uses: Some(10),
            ..Default::default()
        },
    )
    .unwrap();
    assert_refused(
        &b.exchange(&m2, &k0, "crm", "read"),
        400,
        "invalid_grant",
        "uses",
    );
    // The unattenuated mandate is not limited.
    assert_eq!(b.exchange(&m0, &k0, "crm", "read").0, 200);

    // An earlier expiry that has passed.
    let old = attenuate(
        &m0,
        &k0,
        &Narrowing {
            not_after: Some(now() - 5),
            ..Default::default()
        },
    )
    .unwrap();
    assert_refused(
        &b.exchange(&old, &k0, "crm", "read"),
        400,
        "invalid_grant",
        "expired",
    );
    // Garbage appended.
    assert_refused(
        &b.exchange(&format!("{m1}AAAA"), &k0, "crm", "read"),
        400,
        "invalid_grant",
        "",
    );
}
