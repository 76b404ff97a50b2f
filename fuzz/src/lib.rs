//! What every fuzz target shares: fixed keys and valid inputs made from them
//! (so mutations start from something that passes the signature checks),
//! and the seed-corpus writer.
//!
//! Keys are fixed bytes, not random, so the committed seeds stay valid: a
//! seed signed by these keys verifies in every run.

use std::sync::OnceLock;

use mandate_core::attenuation::{Narrowing, attenuate};
use mandate_core::capability::CapabilitySet;
use mandate_core::credential::{self, AccessClaims};
use mandate_core::jose::Alg;
use mandate_core::keys::{BrokerKeys, SigningKey};
use mandate_core::mandate::{self, MandateClaims};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::json;

/// The time every target checks at.
pub const NOW: u64 = 1_800_000_000;
/// The broker's issuer.
pub const ISSUER: &str = "https://broker.example";
/// The token endpoint DPoP proofs are for.
pub const TOKEN_URL: &str = "https://broker.example/oauth/token";

/// Fixed keys and valid tokens.
pub struct Fixture {
    /// The broker's keys.
    pub keys: BrokerKeys,
    /// The run's key (holder of the mandate).
    pub run_key: SigningKey,
    /// A mandate minted by `keys.mandate_root` for `run_key`.
    pub mandate: String,
    /// The same, narrowed once by its holder.
    pub narrowed: String,
    /// A credential signed by `keys.jwt_eddsa`.
    pub credential: String,
    /// A DPoP proof by `run_key` for [`TOKEN_URL`].
    pub proof: String,
}

fn key(alg: Alg, byte: u8) -> SigningKey {
    SigningKey::from_bytes(alg, &[byte; 32]).expect("fixed key bytes are a valid key")
}

/// The fixture, made once.
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(make)
}

fn make() -> Fixture {
    let keys = BrokerKeys {
        mandate_root: key(Alg::EdDSA, 1),
        jwt_eddsa: key(Alg::EdDSA, 2),
        jwt_es256: key(Alg::ES256, 3),
        retired: vec![],
        retired_roots: vec![],
        retired_since: Default::default(),
    };
    let run_key = key(Alg::EdDSA, 4);
    let mut rng = StdRng::seed_from_u64(7);
    let claims = MandateClaims {
        issuer: ISSUER.into(),
        tenant: "acme".into(),
        agent: "planner".into(),
        agent_id: "spiffe://mandate.local/tenant/acme/agent/planner".into(),
        run: "run_1".into(),
        run_id: "spiffe://mandate.local/tenant/acme/agent/planner/run/run_1".into(),
        principal: Some("alice".into()),
        grant: None,
        task: "plan".into(),
        capabilities: CapabilitySet::parse(&["github:read", "crm:*"]).expect("capabilities"),
        cnf_jkt: run_key.kid(),
        run_jkt: run_key.kid(),
        issued_at: NOW - 10,
        expires_at: NOW + 900,
        ancestors: vec![],
        hops: vec![],
        resource_prefix: None,
    };
    let root = mandate::root_keypair(&keys.mandate_root).expect("root key");
    let token = mandate::mint(&root, &claims, &mut rng).expect("mint");
    let narrowed = attenuate(
        &token,
        &run_key,
        &Narrowing {
            capabilities: Some(CapabilitySet::parse(&["crm:read"]).expect("capabilities")),
            max_uses: Some(3),
            resource_prefix: Some("/repos/alice".into()),
            ..Narrowing::default()
        },
    )
    .expect("attenuate");
    let access: AccessClaims = serde_json::from_value(json!({
        "iss": ISSUER, "aud": "https://crm.example", "sub": "alice",
        "act": {"sub": claims.run_id}, "client_id": claims.agent_id,
        "scope": "read", "jti": "cred_1", "iat": NOW - 5, "exp": NOW + 300,
        "cnf": {"jkt": run_key.kid()}, "tenant": "acme", "run": "run_1",
        "agent": "planner", "task": "plan"
    }))
    .expect("credential claims");
    let credential = credential::sign(&keys.jwt_eddsa, &access).expect("sign credential");
    let proof = run_key.sign_jws(
        &json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": run_key.public().to_json()}),
        &json!({"jti": "p1", "htm": "POST", "htu": TOKEN_URL, "iat": NOW}),
    );
    Fixture {
        keys,
        run_key,
        mandate: token,
        narrowed,
        credential,
        proof,
    }
}

/// With `MANDATE_FUZZ_SEEDS=<corpus dir>` set, writes `seeds` into
/// `<dir>/<target>/` once per process (fuzz/run.sh does this before
/// fuzzing, so the seeds match the fixed keys).
pub fn write_seeds(target: &str, seeds: impl FnOnce() -> Vec<Vec<u8>>) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let Ok(dir) = std::env::var("MANDATE_FUZZ_SEEDS") else {
            return;
        };
        let dir = std::path::Path::new(&dir).join(target);
        std::fs::create_dir_all(&dir).expect("seed directory");
        for (i, s) in seeds().into_iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), s).expect("write seed");
        }
    });
}

/// Splits fuzz input into `n` text fields on `\n` (the last takes the rest).
pub fn fields(data: &[u8], n: usize) -> Option<Vec<&str>> {
    let text = std::str::from_utf8(data).ok()?;
    let mut out: Vec<&str> = text.splitn(n, '\n').collect();
    while out.len() < n {
        out.push("");
    }
    Some(out)
}
