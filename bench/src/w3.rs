//! W3 (../shared/BENCH.md): time from the revoke call until every
//! subscribed verifier (`mandate_verify::live::Live`, each with its own feed
//! connection) refuses a credential it accepted a moment before.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mandate_core::jose::{Alg, b64};
use mandate_core::keys::SigningKey;
use mandate_verify::Request;
use mandate_verify::live::{Live, LiveConfig};
use rand::rngs::OsRng;
use serde_json::json;

use mandate_core::client::{dpop_proof, exchange_form};

use super::{admin_client, post};

/// The tool's audience, one per tenant (audiences are unique per broker).
fn aud(tenant: &str) -> String {
    format!("urn:{tenant}:crm")
}
const URI: &str = "https://crm.w3.example/x";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn jti() -> String {
    b64(&rand::random::<[u8; 12]>())
}

fn proof(key: &SigningKey, cred: &str) -> String {
    dpop_proof(key, "GET", URI, now(), &jti(), None, Some(cred))
}

async fn accepts(live: &Live, key: &SigningKey, cred: &str) -> bool {
    let p = proof(key, cred);
    let req = Request {
        credential: cred,
        proof: Some(&p),
        method: "GET",
        uri: URI,
    };
    live.verify(&req, now()).await.is_ok()
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Runs W3 with `verifiers` subscribers over `rounds` revocations.
pub(crate) fn w3(
    url: &str,
    feed_urls: &[String],
    token_file: &Path,
    verifiers: usize,
    rounds: usize,
) -> Result<(), String> {
    // Verifiers subscribe to these brokers in turn (several brokers on one
    // store: issue 14); the revocations are made at `url`.
    let feeds: Vec<&str> = if feed_urls.is_empty() {
        vec![url]
    } else {
        feed_urls.iter().map(String::as_str).collect()
    };
    let (admin, http) = admin_client(token_file)?;
    let tenant = format!("w3-{verifiers}");
    let p =
        |path: &str, body: serde_json::Value| post(&http, &format!("{url}{path}"), &admin, body);
    p("/v1/tenants", json!({"name": tenant}))?;
    p(
        &format!("/v1/tenants/{tenant}/agents"),
        json!({"name": "bot", "owner": "bench", "envelope": ["crm:read"]}),
    )?;
    p(
        &format!("/v1/tenants/{tenant}/tools"),
        json!({"name": "crm", "audience": aud(&tenant), "actions": ["read"]}),
    )?;
    let r = http
        .put(format!("{url}/v1/tenants/{tenant}/policies/p"))
        .header("Authorization", &format!("Bearer {admin}"))
        .send("permit (principal, action, resource);")
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("policy: {}", r.status()));
    }
    let feed = p("/v1/feed-tokens", json!({}))?["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let lives: Vec<Arc<Live>> = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..verifiers {
            v.push(
                Live::start(LiveConfig::new(
                    feeds[i % feeds.len()],
                    &aud(&tenant),
                    &feed,
                ))
                .await
                .map_err(|e| e.to_string())?,
            );
        }
        let t = Instant::now();
        while !v.iter().all(|l| l.is_streaming()) {
            if t.elapsed() > Duration::from_secs(10) {
                return Err("the verifiers did not all connect".to_string());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok::<_, String>(v)
    })?;
    let mut samples: Vec<f64> = Vec::with_capacity(rounds * verifiers);
    let mut last_all: Vec<f64> = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let key = SigningKey::generate(Alg::EdDSA, &mut OsRng);
        let run = p(
            "/v1/runs",
            json!({"tenant": tenant, "agent": "bot", "jwk": key.public().to_json()}),
        )?;
        let token_url = format!("{url}/oauth/token");
        let dpop = dpop_proof(&key, "POST", &token_url, now(), &jti(), None, None);
        let form = exchange_form(run["mandate"].as_str().unwrap_or_default(), "crm", "read");
        let mut r = http
            .post(&token_url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("DPoP", &dpop)
            .send(form)
            .map_err(|e| e.to_string())?;
        let tok: serde_json::Value = r.body_mut().read_json().map_err(|e| e.to_string())?;
        let cred = tok["access_token"]
            .as_str()
            .ok_or("no credential")?
            .to_owned();
        for l in &lives {
            if !rt.block_on(accepts(l, &key, &cred)) {
                return Err("a verifier refused a valid credential".into());
            }
        }
        let t0 = Instant::now();
        let rev = p("/v1/revocations", json!({"kind": "run", "id": run["run"]}))?;
        let seq = rev["seq"].as_u64().ok_or("no seq")?;
        let mut done = vec![false; lives.len()];
        let mut left = lives.len();
        while left > 0 {
            for (i, l) in lives.iter().enumerate() {
                if !done[i] && l.position() >= seq {
                    if rt.block_on(accepts(l, &key, &cred)) {
                        return Err("a verifier past the revocation still accepts".into());
                    }
                    done[i] = true;
                    left -= 1;
                    samples.push(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(format!("{left} verifiers never refused"));
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        last_all.push(t0.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(20));
    }
    samples.sort_by(f64::total_cmp);
    last_all.sort_by(f64::total_cmp);
    println!(
        "W3 {verifiers} verifier(s), {rounds} revocations: per verifier p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; until all refuse p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(&samples, 0.5),
        pct(&samples, 0.99),
        pct(&samples, 1.0),
        pct(&last_all, 0.5),
        pct(&last_all, 0.99),
        pct(&last_all, 1.0)
    );
    Ok(())
}
