//! Offline attenuation: narrowing only, hop keys proven, the chain tamper-evident.
#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE;
use biscuit_auth::format::schema;
use mandate_core::Error;
use mandate_core::attenuation::{Narrowing, attenuate};
use mandate_core::capability::CapabilitySet;
use mandate_core::jose::Alg;
use mandate_core::keys::SigningKey;
use mandate_core::mandate::{self, MandateClaims};
use prost::Message;
use rand::rngs::OsRng;

const NOW: u64 = 1_800_000_000;

struct Fixture {
    root: biscuit_auth::KeyPair,
    run_key: SigningKey,
    token: String,
}

fn fixture() -> Fixture {
    let root = mandate::root_keypair(&SigningKey::generate(Alg::EdDSA, &mut OsRng)).unwrap();
    let run_key = SigningKey::generate(Alg::EdDSA, &mut OsRng);
    let claims = MandateClaims {
        issuer: "http://127.0.0.1:8407".into(),
        tenant: "acme".into(),
        agent: "planner".into(),
        agent_id: "spiffe://mandate.local/tenant/acme/agent/planner".into(),
        run: "run_1".into(),
        run_id: "spiffe://mandate.local/tenant/acme/agent/planner/run/run_1".into(),
        principal: Some("alice".into()),
        grant: None,
        task: "plan".into(),
        capabilities: CapabilitySet::parse(&["github:read", "github:write", "crm:*"]).unwrap(),
        cnf_jkt: run_key.kid(),
        run_jkt: run_key.kid(),
        issued_at: NOW,
        expires_at: NOW + 900,
        ancestors: vec![],
        hops: vec![],
        resource_prefix: None,
    };
    let token = mandate::mint(&root, &claims, &mut OsRng).unwrap();
    Fixture {
        root,
        run_key,
        token,
    }
}

fn caps(c: &[&str]) -> Option<CapabilitySet> {
    Some(CapabilitySet::parse(c).unwrap())
}

fn hand_to(next: &SigningKey, c: &[&str]) -> Narrowing {
    Narrowing {
        capabilities: caps(c),
        next_holder: Some(next.kid()),
        next_holder_name: Some("reviewer".into()),
        ..Default::default()
    }
}

#[test]
fn a_hop_narrows_and_hands_over_to_the_next_key() {
    let f = fixture();
    let sub = SigningKey::generate(Alg::ES256, &mut OsRng);
    let t = attenuate(
        &f.token,
        &f.run_key,
        &hand_to(&sub, &["github:read", "crm:read"]),
    )
    .unwrap();
    let c = mandate::verify(f.root.public(), &t, NOW).unwrap();
    assert_eq!(c.capabilities.to_strings(), ["crm:read", "github:read"]);
    assert_eq!(
        c.cnf_jkt,
        sub.kid(),
        "the next holder must prove possession"
    );
    assert_eq!(c.run_jkt, f.run_key.kid());
    assert_eq!(c.hops.len(), 1);
    assert_eq!(c.hops[0].signed_by, f.run_key.kid());
    assert_eq!(c.hops[0].holder, sub.kid());

    // The next holder (a P-256 key) narrows further and hands on again.
    let third = SigningKey::generate(Alg::EdDSA, &mut OsRng);
    let n = Narrowing {
        not_after: Some(NOW + 60),
        max_uses: Some(3),
        resource_prefix: Some("/repos/acme/".into()),
        ..hand_to(&third, &["github:read"])
    };
    let t2 = attenuate(&t, &sub, &n).unwrap();
    let c2 = mandate::verify(f.root.public(), &t2, NOW).unwrap();
    assert_eq!(c2.capabilities.to_strings(), ["github:read"]);
    assert_eq!(c2.expires_at, NOW + 60);
    assert_eq!(c2.cnf_jkt, third.kid());
    assert_eq!(c2.resource_prefix.as_deref(), Some("/repos/acme/"));
    assert_eq!(c2.hops.len(), 2);
    assert!(matches!(
        mandate::verify(f.root.public(), &t2, NOW + 61),
        Err(Error::Expired { .. })
    ));
}

#[test]
fn a_block_that_tries_to_add_a_capability_changes_nothing() {
    let f = fixture();
    // Naming an ungranted capability in `only` grants nothing.
    let t = attenuate(
        &f.token,
        &f.run_key,
        &Narrowing {
            capabilities: caps(&["bank:transfer", "github:read"]),
            ..Default::default()
        },
    )
    .unwrap();
    let c = mandate::verify(f.root.public(), &t, NOW).unwrap();
    assert_eq!(c.capabilities.to_strings(), ["github:read"]);
    let root = f.root.public();
    // The Datalog checks say the same to any Biscuit verifier.
    let use_ = |tool: &str, action: &str| {
        mandate::authorize_use(root, &t, NOW, tool, &[action.to_owned()], &[], None)
    };
    assert!(use_("github", "read").is_ok());
    // The authority block's own check refuses what was never granted.
    assert!(use_("bank", "transfer").is_err());
    // The block's own Datalog check refuses what the authority grants but
    // the block left out (`github:write`, `crm:*`): this half can fail.
    assert!(use_("github", "write").is_err());
    assert!(use_("crm", "read").is_err());
    let whole = |tool: &str, action: &str| {
        mandate::authorize_use(root, &f.token, NOW, tool, &[action.to_owned()], &[], None)
    };
    assert!(whole("github", "write").is_ok() && whole("crm", "read").is_ok());

    // A block that states a `capability` fact, signed by the holder, is refused.
    let b = biscuit_auth::UnverifiedBiscuit::from_base64(&f.token).unwrap();
    let blk = biscuit_auth::builder::BlockBuilder::new()
        .fact("capability(\"bank\", \"transfer\")")
        .unwrap();
    let key = biscuit_auth::PrivateKey::from_bytes(
        f.run_key.to_secret().expose(),
        biscuit_auth::Algorithm::Ed25519,
    )
    .unwrap();
    let signed = b
        .third_party_request()
        .unwrap()
        .create_block(&key, blk)
        .unwrap();
    let forged = b
        .append_third_party(&signed.serialize().unwrap())
        .unwrap()
        .to_base64()
        .unwrap();
    let e = mandate::verify(root, &forged, NOW).unwrap_err().to_string();
    assert!(e.contains("unknown fact `capability`"), "{e}");

    // A plain (first-party) block, signed by nobody's key, is refused.
    let plain = b
        .append(
            biscuit_auth::builder::BlockBuilder::new()
                .fact("only(\"github\", \"read\")")
                .unwrap(),
        )
        .unwrap()
        .to_base64()
        .unwrap();
    let e = mandate::verify(root, &plain, NOW).unwrap_err().to_string();
    assert!(e.contains("not signed by the holder's key"), "{e}");
}

#[test]
fn a_hop_signed_by_the_wrong_key_is_refused() {
    let f = fixture();
    let sub = SigningKey::generate(Alg::EdDSA, &mut OsRng);
    let thief = SigningKey::generate(Alg::EdDSA, &mut OsRng);
    // The first block must be signed by the run key.
    let e = attenuate(&f.token, &thief, &hand_to(&thief, &["github:read"])).unwrap();
    let err = mandate::verify(f.root.public(), &e, NOW)
        .unwrap_err()
        .to_string();
    assert!(err.contains("signed by key"), "{err}");
    // Handed to `sub`: only `sub` may sign the next block.
    let t = attenuate(&f.token, &f.run_key, &hand_to(&sub, &["github:read"])).unwrap();
    let by_thief = attenuate(&t, &thief, &hand_to(&thief, &["github:read"])).unwrap();
    let err = mandate::verify(f.root.public(), &by_thief, NOW)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("held by key {}", sub.kid())), "{err}");
    // Nor may the run key take it back once handed on.
    let by_run = attenuate(&t, &f.run_key, &Narrowing::default()).unwrap();
    assert!(mandate::verify(f.root.public(), &by_run, NOW).is_err());
}

fn blocks(token: &str) -> schema::Biscuit {
    schema::Biscuit::decode(URL_SAFE.decode(token).unwrap().as_slice()).unwrap()
}

fn encode(b: &schema::Biscuit) -> String {
    URL_SAFE.encode(b.encode_to_vec())
}

#[test]
fn reordered_removed_or_altered_blocks_are_refused() {
    let f = fixture();
    let k1 = SigningKey::generate(Alg::EdDSA, &mut OsRng);
    let k2 = SigningKey::generate(Alg::EdDSA, &mut OsRng);
    let t = attenuate(
        &f.token,
        &f.run_key,
        &hand_to(&k1, &["github:read", "crm:read"]),
    )
    .unwrap();
    let t = attenuate(&t, &k1, &hand_to(&k2, &["github:read"])).unwrap();
    let root = f.root.public();
    assert!(mandate::verify(root, &t, NOW).is_ok());
    let b = blocks(&t);
    assert_eq!(b.blocks.len(), 2);

    let mut swapped = b.clone();
    swapped.blocks.swap(0, 1);
    assert!(mandate::verify(root, &encode(&swapped), NOW).is_err());

    let mut removed = b.clone();
    removed.blocks.remove(0);
    assert!(mandate::verify(root, &encode(&removed), NOW).is_err());

    let mut altered = b.clone();
    let n = altered.blocks[0].block.len();
    altered.blocks[0].block[n / 2] ^= 1;
    assert!(mandate::verify(root, &encode(&altered), NOW).is_err());

    // A block lifted from another chain does not fit.
    let other = attenuate(&f.token, &f.run_key, &hand_to(&k1, &["crm:read"])).unwrap();
    let mut spliced = b;
    spliced.blocks[0] = blocks(&other).blocks[0].clone();
    assert!(mandate::verify(root, &encode(&spliced), NOW).is_err());
}

#[test]
fn use_limits_and_resource_prefixes_are_checked_in_datalog() {
    let f = fixture();
    let t = attenuate(
        &f.token,
        &f.run_key,
        &Narrowing {
            max_uses: Some(2),
            resource_prefix: Some("/repos/acme/".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let root = f.root.public();
    let a = ["read".to_owned()];
    assert!(
        mandate::authorize_use(
            root,
            &t,
            NOW,
            "github",
            &a,
            &[(1, 1)],
            Some("/repos/acme/x")
        )
        .is_ok()
    );
    let e = mandate::authorize_use(root, &t, NOW, "github", &a, &[(1, 2)], None).unwrap_err();
    assert!(e.to_string().contains("does not allow this use"), "{e}");
    assert!(
        mandate::authorize_use(
            root,
            &t,
            NOW,
            "github",
            &a,
            &[(1, 0)],
            Some("/repos/other/x")
        )
        .is_err()
    );
}

#[test]
fn bad_narrowing_is_refused_before_signing() {
    let f = fixture();
    for n in [
        Narrowing {
            max_uses: Some(0),
            ..Default::default()
        },
        Narrowing {
            resource_prefix: Some("repos".into()),
            ..Default::default()
        },
        Narrowing {
            resource_prefix: Some("/a/../b".into()),
            ..Default::default()
        },
        Narrowing {
            next_holder: Some("not-a-thumbprint".into()),
            ..Default::default()
        },
        Narrowing {
            capabilities: Some(CapabilitySet::default()),
            ..Default::default()
        },
    ] {
        assert!(attenuate(&f.token, &f.run_key, &n).is_err(), "{n:?}");
    }
    assert!(attenuate("garbage", &f.run_key, &Narrowing::default()).is_err());
    // At most MAX_HOPS blocks.
    let mut t = f.token.clone();
    for _ in 0..mandate_core::attenuation::MAX_HOPS {
        t = attenuate(&t, &f.run_key, &Narrowing::default()).unwrap();
    }
    assert!(mandate::verify(f.root.public(), &t, NOW).is_ok());
    assert!(attenuate(&t, &f.run_key, &Narrowing::default()).is_err());
}
