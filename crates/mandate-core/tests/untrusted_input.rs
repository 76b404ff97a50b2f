//! Every parser of untrusted input refuses garbage without panicking
//! (property tests; no nightly toolchain here for cargo-fuzz).
#![allow(clippy::unwrap_used)]

use mandate_core::dpop::{ProofExpectations, normalize_htu, verify_proof};
use mandate_core::jose::{Alg, CompactJws, PublicJwk, b64};
use mandate_core::keys::{BrokerKeys, SigningKey};
use proptest::prelude::*;

fn expectations() -> ProofExpectations<'static> {
    ProofExpectations {
        method: "POST",
        uri: "http://127.0.0.1:8407/oauth/token",
        now: 1_800_000_000,
        max_age: 60,
        max_skew: 5,
        jkt: None,
        access_token: None,
        known_key: None,
        nonces: None,
    }
}

/// Strings shaped like compact JWS: three base64url-ish parts.
fn jws_like() -> impl Strategy<Value = String> {
    (
        "[A-Za-z0-9_-]{0,80}",
        "[A-Za-z0-9_-]{0,80}",
        "[A-Za-z0-9_-]{0,90}",
    )
        .prop_map(|(a, b, c)| format!("{a}.{b}.{c}"))
}

/// JWS whose header and payload are arbitrary JSON-ish bytes.
fn jws_with_json() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(any::<u8>(), 0..120),
        proptest::collection::vec(any::<u8>(), 0..120),
    )
        .prop_map(|(h, p)| format!("{}.{}.{}", b64(&h), b64(&p), b64(&[1u8; 64])))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn jws_parser_never_panics(s in ".{0,300}", t in jws_like(), u in jws_with_json()) {
        let _ = CompactJws::parse("t", &s, 4096);
        let _ = CompactJws::parse("t", &t, 4096);
        let _ = CompactJws::parse("t", &u, 4096);
    }

    #[test]
    fn dpop_verifier_refuses_garbage(s in ".{0,300}", t in jws_like(), u in jws_with_json()) {
        let e = expectations();
        prop_assert!(verify_proof(&s, &e).is_err());
        prop_assert!(verify_proof(&t, &e).is_err());
        prop_assert!(verify_proof(&u, &e).is_err());
    }

    #[test]
    fn credential_verifier_refuses_garbage(t in jws_like(), u in jws_with_json()) {
        let keys = BrokerKeys { mandate_root: SigningKey::from_bytes(Alg::EdDSA, &[1; 32]).unwrap(),
            jwt_eddsa: SigningKey::from_bytes(Alg::EdDSA, &[2; 32]).unwrap(),
            jwt_es256: SigningKey::from_bytes(Alg::ES256, &[3; 32]).unwrap(), retired: vec![], retired_roots: vec![], retired_since: Default::default() };
        prop_assert!(mandate_core::credential::verify(&keys, "http://b", &t, 0, true).is_err());
        prop_assert!(mandate_core::credential::verify(&keys, "http://b", &u, 0, true).is_err());
    }

    #[test]
    fn mandate_verifier_refuses_garbage(s in "[A-Za-z0-9_=-]{0,400}", bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let root = mandate_core::mandate::root_public(&SigningKey::from_bytes(Alg::EdDSA, &[1; 32]).unwrap()).unwrap();
        prop_assert!(mandate_core::mandate::verify(root, &s, 0).is_err());
        prop_assert!(mandate_core::mandate::verify(root, &b64(&bytes), 0).is_err());
    }

    #[test]
    fn jwk_parser_never_panics(kty in "(OKP|EC|oct|RSA|)", crv in "(Ed25519|P-256|X25519|)", x in "[A-Za-z0-9_-]{0,60}", y in "[A-Za-z0-9_-]{0,60}") {
        let _ = PublicJwk::from_json(&serde_json::json!({"kty": kty, "crv": crv, "x": x, "y": y}));
    }

    #[test]
    fn htu_normaliser_never_panics(s in ".{0,200}") {
        let _ = normalize_htu(&s);
    }

    #[test]
    fn capability_and_name_parsers_never_panic(s in ".{0,100}") {
        let _ = mandate_core::capability::Capability::parse(&s);
        let _ = mandate_core::ids::check_slug("x", &s);
        let _ = mandate_core::ids::check_principal(&s);
        let _ = mandate_core::ids::check_text("x", &s, 50);
    }
}
