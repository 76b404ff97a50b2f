//! A tool verifying credentials issued by a real broker, with the JWKS fetched
//! over HTTP and revocations taken from the broker's revocation log.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use mandate_core::jose::{Alg, b64};
use mandate_core::keys::SigningKey;
use mandate_verify::{Request, Verifier, VerifyError};
use rand::rngs::OsRng;
use serde_json::{Value, json};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn credential_from_a_real_broker_verifies_until_revoked() {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("mandate-verify-{}-{n}", std::process::id()));
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let cfg = mandate_server::Config::new(addr, dir.join("data"), &dir.join("config"));
    let admin_file = cfg.admin_token_file.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let state = mandate_server::boot::boot(cfg).unwrap();
    let app = mandate_server::routes::router(Arc::clone(&state));
    rt.spawn(async move {
        let l = tokio::net::TcpListener::from_std(l).unwrap();
        axum::serve(l, app.into_make_service_with_connect_info::<SocketAddr>())
            .await
            .unwrap();
    });
    let url = format!("http://{addr}");
    let admin = format!(
        "Bearer {}",
        std::fs::read_to_string(admin_file).unwrap().trim()
    );
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let post = |path: &str, body: Value| -> Value {
        let mut r = http
            .post(format!("{url}{path}"))
            .header("Authorization", &admin)
            .send_json(&body)
            .unwrap();
        assert!(
            r.status().is_success(),
            "{path}: {}",
            r.body_mut().read_to_string().unwrap()
        );
        r.body_mut().read_json().unwrap()
    };
    post("/v1/tenants", json!({"name": "acme"}));
    post(
        "/v1/tenants/acme/agents",
        json!({"name": "bot", "owner": "ops", "envelope": ["crm:read"]}),
    );
    post(
        "/v1/tenants/acme/tools",
        json!({"name": "crm", "audience": "https://crm.acme.example", "actions": ["read"]}),
    );
    let mut r = http
        .put(format!("{url}/v1/tenants/acme/policies/p"))
        .header("Authorization", &admin)
        .send("permit (principal, action, resource);")
        .unwrap();
    assert!(
        r.status().is_success(),
        "{}",
        r.body_mut().read_to_string().unwrap()
    );
    let key = SigningKey::generate(Alg::EdDSA, &mut OsRng);
    let run = post(
        "/v1/runs",
        json!({"tenant": "acme", "agent": "bot", "jwk": key.public().to_json()}),
    );
    let token_url = format!("{url}/oauth/token");
    let dpop = key.sign_jws(
        &json!({"typ": "dpop+jwt", "jwk": key.public().to_json()}),
        &json!({"jti": "x1", "htm": "POST", "htu": token_url, "iat": now()}),
    );
    let form = format!(
        "grant_type={}&subject_token={}&subject_token_type={}&audience=crm&scope=read",
        enc("urn:ietf:params:oauth:grant-type:token-exchange"),
        enc(run["mandate"].as_str().unwrap()),
        enc("urn:mandate:params:oauth:token-type:mandate")
    );
    let mut r = http
        .post(&token_url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("DPoP", &dpop)
        .send(form)
        .unwrap();
    let tok: Value = r.body_mut().read_json().unwrap();
    let credential = tok["access_token"].as_str().unwrap().to_owned();

    // The tool: JWKS from the metadata's jwks_uri.
    let meta: Value = http
        .get(format!("{url}/.well-known/oauth-authorization-server"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    let jwks: Value = http
        .get(meta["jwks_uri"].as_str().unwrap())
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    let mut verifier = Verifier::new(meta["issuer"].as_str().unwrap(), "https://crm.acme.example");
    verifier.set_jwks(&jwks);
    let uri = "https://crm.acme.example/contacts";
    let call_proof = |jti: &str| {
        key.sign_jws(
            &json!({"typ": "dpop+jwt", "jwk": key.public().to_json()}),
            &json!({"jti": jti, "htm": "GET", "htu": uri, "iat": now(),
                    "ath": b64(&mandate_core::mandate::token_digest(&credential))}),
        )
    };
    let p = call_proof("c1");
    let id = verifier
        .verify(
            &Request {
                credential: &credential,
                proof: Some(&p),
                method: "GET",
                uri,
            },
            now(),
        )
        .unwrap();
    assert_eq!(
        (id.tenant.as_str(), id.agent.as_str(), id.run.as_str()),
        ("acme", "bot", run["run"].as_str().unwrap())
    );

    // The broker revokes the run; the tool learns it from the revocation log.
    post("/v1/revocations", json!({"kind": "run", "id": run["run"]}));
    let log: Value = http
        .get(format!("{url}/v1/revocations/log?after=0"))
        .header("Authorization", &admin)
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    for r in log["revocations"].as_array().unwrap() {
        verifier.revoke(r["key"].as_str().unwrap());
    }
    let p = call_proof("c2");
    assert_eq!(
        verifier.verify(
            &Request {
                credential: &credential,
                proof: Some(&p),
                method: "GET",
                uri
            },
            now()
        ),
        Err(VerifyError::Revoked("run".into()))
    );
    state.writer.shutdown();
}
