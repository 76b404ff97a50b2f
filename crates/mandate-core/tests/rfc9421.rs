//! RFC 9421 Appendix B test cases (the Ed25519 and ECDSA P-256 ones), and
//! the refusals a verifier owes: replayed parameters aside (the broker's
//! cache), expired, wrong-component, wrong-key, tampered.
#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mandate_core::httpsig::{self, Message, Policy, SignParams};
use mandate_core::jose::{Alg, PublicJwk};
use mandate_core::keys::SigningKey;

fn der_tail(pem_b64: &str, n: usize) -> Vec<u8> {
    let der = STANDARD.decode(pem_b64).unwrap();
    der[der.len() - n..].to_vec()
}

/// B.1.4 test-key-ed25519.
fn ed25519_private() -> SigningKey {
    SigningKey::from_bytes(
        Alg::EdDSA,
        &der_tail(
            "MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF",
            32,
        ),
    )
    .unwrap()
}

fn ed25519_public() -> PublicJwk {
    let x = der_tail(
        "MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=",
        32,
    );
    PublicJwk::Ed25519(ed25519_dalek::VerifyingKey::from_bytes(&x.try_into().unwrap()).unwrap())
}

/// B.1.3 test-key-ecc-p256 (public half).
fn p256_public() -> PublicJwk {
    let point = der_tail(
        "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqIVYZVLCrPZHGHjP17CTW0/+D9Lfw0EkjqF7xB4FivAxzic30tMM4GF+hR6Dxh71Z50VGGdldkkDXZCnTNnoXQ==",
        65,
    );
    PublicJwk::P256(p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap())
}

fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// B.2 test-request.
fn test_request() -> Message {
    Message::request(
        "POST",
        "https://example.com/foo?param=Value&Pet=dog",
        h(&[
            ("host", "example.com"),
            ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
            ("content-type", "application/json"),
            (
                "content-digest",
                "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
            ),
            ("content-length", "18"),
        ]),
    )
}

const B26_INPUT: &str = r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#;
const B26_SIG: &str = "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:";

#[test]
fn b_2_6_ed25519_request_verifies_and_signs_to_the_same_bytes() {
    let msg = test_request();
    let found =
        httpsig::verify_signature(&msg, B26_INPUT, B26_SIG, None, &ed25519_public()).unwrap();
    assert_eq!(found.keyid.as_deref(), Some("test-key-ed25519"));
    assert_eq!(found.created, Some(1618884473));
    // The signature base, exactly as printed in the RFC.
    let (_, base, _) = httpsig::select(&msg, B26_INPUT, B26_SIG, None).unwrap();
    assert_eq!(
        base,
        "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@method\": POST\n\"@path\": /foo\n\"@authority\": example.com\n\
         \"content-type\": application/json\n\"content-length\": 18\n\"@signature-params\": (\"date\" \"@method\" \"@path\" \
         \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\""
    );
    // Ed25519 is deterministic: signing gives the RFC's bytes.
    let (input, sig) = httpsig::sign(
        &msg,
        &ed25519_private(),
        &SignParams {
            label: "sig-b26",
            components: &[
                "date",
                "@method",
                "@path",
                "@authority",
                "content-type",
                "content-length",
            ],
            created: 1618884473,
            expires: None,
            nonce: None,
            keyid: Some("test-key-ed25519"),
            include_alg: false,
            tag: None,
        },
    )
    .unwrap();
    assert_eq!(input, B26_INPUT);
    assert_eq!(sig, B26_SIG);
}

#[test]
fn b_2_4_ecdsa_p256_response_verifies() {
    let msg = Message {
        status: Some(200),
        headers: h(&[
            ("date", "Tue, 20 Apr 2021 02:07:56 GMT"),
            ("content-type", "application/json"),
            (
                "content-digest",
                "sha-512=:mEWXIS7MaLRuGgxOBdODa3xqM1XdEvxoYhvlCFJ41QJgJc4GTsPp29l5oGX69wWdXymyU0rjJuahq4l5aGgfLQ==:",
            ),
            ("content-length", "23"),
        ]),
        ..Default::default()
    };
    let input = r#"sig-b24=("@status" "content-type" "content-digest" "content-length");created=1618884473;keyid="test-key-ecc-p256""#;
    let sig = "sig-b24=:wNmSUAhwb5LxtOtOpNa6W5xj067m5hFrj0XQ4fvpaCLx0NKocgPquLgyahnzDnDAUy5eCdlYUEkLIj+32oiasw==:";
    httpsig::verify_signature(&msg, input, sig, None, &p256_public()).unwrap();
    httpsig::check_content_digest(
        &msg.header("content-digest").unwrap(),
        b"{\"message\": \"good dog\"}",
    )
    .unwrap();
    // Any change to a covered component breaks it.
    let mut m2 = msg.clone();
    m2.status = Some(201);
    assert!(httpsig::verify_signature(&m2, input, sig, None, &p256_public()).is_err());
    // And the Ed25519 key does not verify it.
    assert!(httpsig::verify_signature(&msg, input, sig, None, &ed25519_public()).is_err());
}

fn policy(now: u64) -> Policy<'static> {
    Policy {
        now,
        skew: 5,
        max_lifetime: 300,
        required: &["@method", "@target-uri", "content-digest"],
    }
}

fn signed(
    key: &SigningKey,
    now: u64,
    components: &[&str],
    nonce: Option<&str>,
) -> (Message, String, String) {
    let body = b"grant_type=x";
    let msg = Message::request(
        "POST",
        "http://127.0.0.1:8407/oauth/token",
        h(&[
            ("content-digest", &httpsig::content_digest(body)),
            ("content-type", "application/x-www-form-urlencoded"),
        ]),
    );
    let (i, s) = httpsig::sign(
        &msg,
        key,
        &SignParams {
            label: "sig1",
            components,
            created: now,
            expires: Some(now + 60),
            nonce,
            keyid: Some(&key.kid()),
            include_alg: true,
            tag: None,
        },
    )
    .unwrap();
    (msg, i, s)
}

#[test]
fn our_signatures_verify_under_policy_for_both_algorithms() {
    let now = 1_800_000_000;
    for alg in [Alg::EdDSA, Alg::ES256] {
        let k = SigningKey::generate(alg, &mut rand::rngs::OsRng);
        let (msg, i, s) = signed(
            &k,
            now,
            &["@method", "@target-uri", "content-digest"],
            Some("n-0123456789"),
        );
        let f = httpsig::verify_request(&msg, &i, &s, Some("sig1"), &k.public(), &policy(now + 10))
            .unwrap();
        assert_eq!(f.nonce.as_deref(), Some("n-0123456789"));
    }
}

#[test]
fn refusals_say_why() {
    let now = 1_800_000_000;
    let k = SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng);
    let all = ["@method", "@target-uri", "content-digest"];
    let (msg, i, s) = signed(&k, now, &all, Some("n-0123456789"));
    let err = |r: mandate_core::error::Result<httpsig::Found>| r.unwrap_err().to_string();
    // Expired.
    let e = err(httpsig::verify_request(
        &msg,
        &i,
        &s,
        None,
        &k.public(),
        &policy(now + 120),
    ));
    assert!(e.contains("expired"), "{e}");
    // Created in the future.
    let e = err(httpsig::verify_request(
        &msg,
        &i,
        &s,
        None,
        &k.public(),
        &policy(now - 60),
    ));
    assert!(e.contains("future"), "{e}");
    // Wrong key.
    let other = SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng);
    let e = err(httpsig::verify_request(
        &msg,
        &i,
        &s,
        None,
        &other.public(),
        &policy(now),
    ));
    assert!(e.contains("signature"), "{e}");
    // A P-256 key against an Ed25519 `alg`.
    let p = SigningKey::generate(Alg::ES256, &mut rand::rngs::OsRng);
    assert!(httpsig::verify_request(&msg, &i, &s, None, &p.public(), &policy(now)).is_err());
    // Missing a required component.
    let (m2, i2, s2) = signed(&k, now, &["@method", "@target-uri"], Some("n-0123456789"));
    let e = err(httpsig::verify_request(
        &m2,
        &i2,
        &s2,
        None,
        &k.public(),
        &policy(now),
    ));
    assert!(e.contains("must cover `content-digest`"), "{e}");
    // No nonce.
    let (m3, i3, s3) = signed(&k, now, &all, None);
    let e = err(httpsig::verify_request(
        &m3,
        &i3,
        &s3,
        None,
        &k.public(),
        &policy(now),
    ));
    assert!(e.contains("nonce"), "{e}");
    // The message changed after signing: another target.
    let mut m4 = msg.clone();
    m4.target_uri = Some("http://127.0.0.1:8407/oauth/introspect".into());
    assert!(httpsig::verify_request(&m4, &i, &s, None, &k.public(), &policy(now)).is_err());
    // The signed parameters changed (a later `expires`).
    let i5 = i.replace(
        &format!("expires={}", now + 60),
        &format!("expires={}", now + 6000),
    );
    assert!(httpsig::verify_request(&msg, &i5, &s, None, &k.public(), &policy(now)).is_err());
    // Labels that do not match, a signature for another label, garbage.
    assert!(
        httpsig::verify_request(&msg, &i, &s, Some("sig2"), &k.public(), &policy(now)).is_err()
    );
    assert!(
        httpsig::verify_request(&msg, &i, "sig2=:AAAA:", None, &k.public(), &policy(now)).is_err()
    );
    assert!(httpsig::verify_request(&msg, "garbage", &s, None, &k.public(), &policy(now)).is_err());
    // A covered header that is absent.
    let (m6, i6, s6) = signed(&k, now, &all, Some("n-0123456789"));
    let mut m6 = m6;
    m6.headers.retain(|(n, _)| n != "content-digest");
    let e = err(httpsig::verify_request(
        &m6,
        &i6,
        &s6,
        None,
        &k.public(),
        &policy(now),
    ));
    assert!(e.contains("not in the message"), "{e}");
}

#[test]
fn signature_key_carries_the_public_key() {
    for alg in [Alg::EdDSA, Alg::ES256] {
        let k = SigningKey::generate(alg, &mut rand::rngs::OsRng);
        let f = httpsig::signature_key_field("sig1", &k.public());
        let back = httpsig::parse_signature_key(&f, "sig1").unwrap();
        assert_eq!(back.thumbprint(), k.kid());
        assert!(httpsig::parse_signature_key(&f, "sig2").is_err());
    }
    assert!(httpsig::parse_signature_key("sig1=jwks_uri;id=\"x\"", "sig1").is_err());
}
