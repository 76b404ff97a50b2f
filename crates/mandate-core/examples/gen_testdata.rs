//! Writes `testdata/`: good and bad mandates, DPoP proofs and credentials,
//! with the verdict each must get (`testdata/samples.json`). The keys are
//! test keys made from fixed seeds. Run: `cargo run -p mandate-core --example gen_testdata`.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use mandate_core::capability::CapabilitySet;
use mandate_core::credential::{self, AccessClaims, Actor, Confirmation};
use mandate_core::jose::{Alg, b64};
use mandate_core::keys::{BrokerKeys, SigningKey};
use mandate_core::mandate::{self, MandateClaims};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};

const NOW: u64 = 1_800_000_000;
const HTU: &str = "http://127.0.0.1:8407/oauth/token";

fn key(seed: u8, alg: Alg) -> SigningKey {
    SigningKey::from_bytes(alg, &[seed; 32]).unwrap()
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata");
    let mut rng = StdRng::seed_from_u64(7);
    let keys = BrokerKeys {
        mandate_root: key(1, Alg::EdDSA),
        jwt_eddsa: key(2, Alg::EdDSA),
        jwt_es256: key(3, Alg::ES256),
        retired: vec![],
        retired_roots: vec![],
        retired_since: Default::default(),
    };
    let other_root = key(4, Alg::EdDSA);
    let run_key = key(5, Alg::EdDSA);
    let root = mandate::root_keypair(&keys.mandate_root).unwrap();
    let claims = MandateClaims {
        issuer: "http://127.0.0.1:8407".into(),
        tenant: "acme".into(),
        agent: "triage".into(),
        agent_id: "spiffe://mandate.local/tenant/acme/agent/triage".into(),
        run: "run_1".into(),
        run_id: "spiffe://mandate.local/tenant/acme/agent/triage/run/run_1".into(),
        principal: Some("alice@example.com".into()),
        grant: Some("grt_1".into()),
        task: "triage".into(),
        capabilities: CapabilitySet::parse(&["crm:read"]).unwrap(),
        cnf_jkt: run_key.kid(),
        run_jkt: run_key.kid(),
        issued_at: NOW,
        expires_at: NOW + 900,
        ancestors: vec![],
        hops: vec![],
        resource_prefix: None,
    };
    let mut samples: Vec<Value> = Vec::new();
    let mut put = |name: &str, text: String, kind: &str, now: u64, expect: &str, about: &str| {
        std::fs::write(dir.join(name), text).unwrap();
        samples.push(
            json!({"file": name, "kind": kind, "now": now, "expect": expect, "about": about}),
        );
    };

    let good = mandate::mint(&root, &claims, &mut rng).unwrap();
    put(
        "mandate_valid.txt",
        good.clone(),
        "mandate",
        NOW + 10,
        "ok",
        "a fresh mandate",
    );
    put(
        "mandate_expired.txt",
        good.clone(),
        "mandate",
        NOW + 901,
        "expired",
        "checked after its expiry",
    );
    let theirs = mandate::mint(
        &mandate::root_keypair(&other_root).unwrap(),
        &claims,
        &mut rng,
    )
    .unwrap();
    put(
        "mandate_other_broker.txt",
        theirs,
        "mandate",
        NOW,
        "signature does not verify",
        "signed by another broker's root key",
    );
    let mut forged = good.clone().into_bytes();
    let i = forged.len() / 2;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    put(
        "mandate_forged.txt",
        String::from_utf8(forged).unwrap(),
        "mandate",
        NOW,
        "mandate",
        "one character of the signed payload changed",
    );
    let b = biscuit_auth::Biscuit::from_base64(&good, root.public()).unwrap();
    let extra = b
        .append(
            biscuit_auth::BlockBuilder::new()
                .fact("capability(\"bank\", \"transfer\")")
                .unwrap(),
        )
        .unwrap()
        .to_base64()
        .unwrap();
    put(
        "mandate_attenuated.txt",
        extra,
        "mandate",
        NOW,
        "not signed by the holder's key",
        "a plain block appended (not signed by the holder) that tries to add a capability",
    );
    put(
        "mandate_truncated.txt",
        good[..good.len() / 2].to_owned(),
        "mandate",
        NOW,
        "malformed mandate",
        "cut in half",
    );

    let proof = |k: &SigningKey, header: Value, claims: Value| k.sign_jws(&header, &claims);
    let h = json!({"typ": "dpop+jwt", "jwk": run_key.public().to_json()});
    let c = json!({"jti": "j1", "htm": "POST", "htu": HTU, "iat": NOW});
    put(
        "dpop_valid.txt",
        proof(&run_key, h.clone(), c.clone()),
        "dpop",
        NOW,
        "ok",
        "a proof by the run key",
    );
    put(
        "dpop_stale.txt",
        proof(&run_key, h.clone(), c.clone()),
        "dpop",
        NOW + 120,
        "old",
        "presented two minutes later",
    );
    put(
        "dpop_future.txt",
        proof(
            &run_key,
            h.clone(),
            json!({"jti": "j1", "htm": "POST", "htu": HTU, "iat": NOW + 60}),
        ),
        "dpop",
        NOW,
        "future",
        "dated a minute ahead",
    );
    put(
        "dpop_wrong_htm.txt",
        proof(
            &run_key,
            h.clone(),
            json!({"jti": "j1", "htm": "GET", "htu": HTU, "iat": NOW}),
        ),
        "dpop",
        NOW,
        "htm",
        "for GET",
    );
    put(
        "dpop_wrong_htu.txt",
        proof(
            &run_key,
            h.clone(),
            json!({"jti": "j1", "htm": "POST", "htu": "https://evil.example/token", "iat": NOW}),
        ),
        "dpop",
        NOW,
        "htu",
        "for another server",
    );
    put(
        "dpop_wrong_key.txt",
        proof(
            &key(6, Alg::EdDSA),
            json!({"typ": "dpop+jwt", "jwk": key(6, Alg::EdDSA).public().to_json()}),
            c.clone(),
        ),
        "dpop",
        NOW,
        "cnf.jkt",
        "signed by a key the mandate does not name",
    );
    put(
        "dpop_wrong_typ.txt",
        proof(
            &run_key,
            json!({"typ": "JWT", "jwk": run_key.public().to_json()}),
            c.clone(),
        ),
        "dpop",
        NOW,
        "typ",
        "typ JWT",
    );
    let valid = proof(&run_key, h, c.clone());
    let parts: Vec<&str> = valid.split('.').collect();
    let with_alg = |alg: &str| {
        b64(
            json!({"typ": "dpop+jwt", "alg": alg, "jwk": run_key.public().to_json()})
                .to_string()
                .as_bytes(),
        )
    };
    put(
        "dpop_alg_none.txt",
        format!("{}.{}.", with_alg("none"), parts[1]),
        "dpop",
        NOW,
        "not accepted",
        "alg none, no signature",
    );
    put(
        "dpop_alg_hs256.txt",
        format!("{}.{}.{}", with_alg("HS256"), parts[1], parts[2]),
        "dpop",
        NOW,
        "not accepted",
        "HS256 with the public key as secret",
    );
    let mut leaky = run_key.public().to_json();
    leaky["d"] = json!(b64(run_key.to_secret().expose()));
    put(
        "dpop_private_jwk.txt",
        proof(&run_key, json!({"typ": "dpop+jwt", "jwk": leaky}), c),
        "dpop",
        NOW,
        "private key",
        "the header carries the private key",
    );

    let access = AccessClaims {
        iss: "http://127.0.0.1:8407".into(),
        aud: "https://crm.acme.example".into(),
        sub: "alice@example.com".into(),
        act: Actor {
            sub: claims.run_id.clone(),
            act: None,
        },
        client_id: claims.agent_id.clone(),
        scope: "read".into(),
        jti: "cred_1".into(),
        iat: NOW,
        exp: NOW + 300,
        cnf: Some(Confirmation { jkt: run_key.kid() }),
        tenant: "acme".into(),
        run: "run_1".into(),
        agent: "triage".into(),
        task: "triage".into(),
        grant: Some("grt_1".into()),
        path_prefix: None,
        authorization_details: None,
        approval: None,
        approvals: vec![],
        blocks: vec![],
    };
    let cred = credential::sign(&keys.jwt_eddsa, &access).unwrap();
    put(
        "credential_eddsa.txt",
        cred.clone(),
        "credential",
        NOW + 10,
        "ok",
        "EdDSA credential",
    );
    put(
        "credential_es256.txt",
        credential::sign(&keys.jwt_es256, &access).unwrap(),
        "credential",
        NOW + 10,
        "ok",
        "ES256 credential",
    );
    put(
        "credential_expired.txt",
        cred.clone(),
        "credential",
        NOW + 301,
        "expired",
        "after exp",
    );
    put(
        "credential_other_key.txt",
        credential::sign(&key(9, Alg::EdDSA), &access).unwrap(),
        "credential",
        NOW,
        "signature",
        "signed by a key not in the JWKS",
    );
    let cp: Vec<&str> = cred.split('.').collect();
    let kid = keys.jwt_eddsa.kid();
    put(
        "credential_alg_none.txt",
        format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "at+jwt", "kid": kid})
                .to_string()
                .as_bytes()),
            cp[1]
        ),
        "credential",
        NOW,
        "not accepted",
        "alg none",
    );
    put(
        "credential_alg_hs256.txt",
        format!(
            "{}.{}.{}",
            b64(json!({"alg": "HS256", "typ": "at+jwt", "kid": kid})
                .to_string()
                .as_bytes()),
            cp[1],
            cp[2]
        ),
        "credential",
        NOW,
        "not accepted",
        "HS256 confusion",
    );

    std::fs::write(
        dir.join("samples.json"),
        serde_json::to_string_pretty(&json!({
            "about": "Good and bad tokens with the verdict each must get. Test keys only (fixed seeds); regenerate with `cargo run -p mandate-core --example gen_testdata`.",
            "mandate_root_public_key_hex": hex(&mandate::root_public(&keys.mandate_root).unwrap().to_bytes()),
            "jwks": keys.jwks(),
            "run_key_jkt": run_key.kid(),
            "htu": HTU,
            "samples": samples,
        }))
        .unwrap(),
    )
    .unwrap();
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
