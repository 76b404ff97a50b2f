//! `mandate-bench`: the W1 harness's helpers (see `bench/w1.sh` and ../shared/BENCH.md).
//!
//! - `prep`: registers a tenant, agent, tool and policy on a running broker,
//!   starts a run, and writes the exchange body and pools of never-used DPoP
//!   proofs (one per request) for wrk;
//! - `ceiling`: a hello-world axum server answering a fixed JSON body;
//! - `floor`: the signature work one exchange cannot avoid (verify the
//!   mandate's signature, verify the DPoP proof, sign the JWT), in a loop.
#![forbid(unsafe_code)]

mod audit_scale;
mod commit_path;
mod policy_curve;
mod w3;

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand};
use ed25519_dalek::Signer as _;
use mandate_core::jose::{Alg, b64};
use mandate_core::keys::SigningKey;
use rand::RngCore as _;
use rand::rngs::OsRng;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(name = "mandate-bench", about = "W1 load harness helpers")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Register what the load needs and write the body and proof pools.
    Prep {
        #[arg(long)]
        url: String,
        #[arg(long)]
        admin_token_file: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Proofs in the warm-up pool.
        #[arg(long, default_value_t = 60_000)]
        warm: usize,
        /// Proofs in the counted pool.
        #[arg(long, default_value_t = 400_000)]
        count: usize,
        /// The run key's algorithm, which signs every DPoP proof: `EdDSA`
        /// or `ES256`.
        #[arg(long, default_value = "EdDSA")]
        alg: String,
        /// Policies of the tenant: one permit, and `forbid` policies for
        /// other actions (`when { context.action == "other<i>" }`), as in
        /// issue 12's measurements of how the cost grows.
        #[arg(long, default_value_t = 1)]
        policies: usize,
    },
    /// The audit trail at scale: seed N events into a fresh database (time
    /// per million, to show inserts stay flat), then time "the latest 100
    /// matching" for every filter, with and without `since`, and `audit
    /// verify`.
    AuditScale {
        /// The database file to create (must not exist).
        #[arg(long)]
        db: PathBuf,
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
    },
    /// The durable write path alone: exchange-shaped entries committed in
    /// batches, CPU and wall time per entry, without and with the sync.
    CommitPath {
        /// The database file to create (must not exist).
        #[arg(long)]
        db: PathBuf,
        /// Entries per measurement.
        #[arg(long, default_value_t = 40_000)]
        entries: u64,
        /// Batch sizes to measure.
        #[arg(long, value_delimiter = ',', default_value = "1,3,8")]
        batch: Vec<usize>,
        /// One-time uses live before measuring (a proof window's).
        #[arg(long, default_value_t = 400_000)]
        live: u64,
    },
    /// Decision cost as a tenant's policies grow (1 to 10,000), in one
    /// process: Cedar through Mandate's engine, per exchange.
    PolicyCurve {
        #[arg(long, default_value_t = 2_000)]
        iterations: u32,
    },
    /// Hello-world axum server (also the proxy benchmark's upstream: `POST
    /// /emails`, and the MCP gateway benchmark's: `POST /mcp`).
    Ceiling {
        #[arg(long, default_value = "127.0.0.1:8499")]
        listen: std::net::SocketAddr,
    },
    /// Revocation feed delivery: N SSE subscribers, R revocations; time from
    /// the revoke call until every subscriber has the event.
    Feed {
        #[arg(long)]
        url: String,
        #[arg(long)]
        admin_token_file: PathBuf,
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        #[arg(long, default_value_t = 100)]
        revocations: usize,
    },
    /// W2: offline verification by a tool (credential + DPoP proof + revocation
    /// lookup) against raw signature verification, in one run.
    Verify {
        #[arg(long, default_value_t = 20_000)]
        iterations: u32,
    },
    /// Verification of a mandate with 0 and 3 attenuation blocks (hops) plus
    /// the last holder's DPoP proof, against raw Ed25519 verification × the
    /// number of signatures it contains, in one run.
    Attenuated {
        #[arg(long, default_value_t = 5_000)]
        iterations: u32,
    },
    /// W3: revoke → every subscribed verifier (mandate-verify live) refuses.
    W3 {
        #[arg(long)]
        url: String,
        /// Brokers the verifiers subscribe to, in turn (default: `--url`).
        #[arg(long = "feed-url")]
        feed_urls: Vec<String>,
        #[arg(long)]
        admin_token_file: PathBuf,
        #[arg(long, default_value_t = 100)]
        verifiers: usize,
        #[arg(long, default_value_t = 50)]
        rounds: usize,
    },
    /// The crypto floor: exchanges/s if only the unavoidable signatures cost.
    Floor {
        #[arg(long, default_value_t = 20_000)]
        iterations: u32,
        /// One run-key algorithm only (EdDSA or ES256); both by default.
        #[arg(long)]
        alg: Option<String>,
    },
}

fn main() -> Result<(), String> {
    match Cli::parse().cmd {
        Cmd::Prep {
            url,
            admin_token_file,
            out,
            warm,
            count,
            alg,
            policies,
        } => prep(
            &url,
            &admin_token_file,
            &out,
            (warm, count, policies),
            Alg::parse("--alg", &alg).map_err(|e| e.to_string())?,
        ),
        Cmd::AuditScale { db, events } => audit_scale::run(&db, events),
        Cmd::CommitPath {
            db,
            entries,
            batch,
            live,
        } => commit_path::run(&db, entries, &batch, live),
        Cmd::PolicyCurve { iterations } => policy_curve::run(iterations),
        Cmd::Ceiling { listen } => ceiling(listen),
        Cmd::Feed {
            url,
            admin_token_file,
            subscribers,
            revocations,
        } => feed(&url, &admin_token_file, subscribers, revocations),
        Cmd::W3 {
            url,
            feed_urls,
            admin_token_file,
            verifiers,
            rounds,
        } => w3::w3(&url, &feed_urls, &admin_token_file, verifiers, rounds),
        Cmd::Verify { iterations } => {
            verify_bench(iterations);
            Ok(())
        }
        Cmd::Attenuated { iterations } => attenuated_bench(iterations),
        Cmd::Floor { iterations, alg } => {
            let algs = match alg {
                Some(a) => vec![Alg::parse("--alg", &a).map_err(|e| e.to_string())?],
                None => vec![Alg::EdDSA, Alg::ES256],
            };
            floor(iterations, &algs);
            Ok(())
        }
    }
}

/// The admin credential from `token_file`, and an HTTP client that reports
/// error statuses instead of failing on them.
fn admin_client(token_file: &std::path::Path) -> Result<(String, ureq::Agent), String> {
    let admin = std::fs::read_to_string(token_file)
        .map_err(|e| format!("{}: {e}", token_file.display()))?
        .trim()
        .to_owned();
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    Ok((admin, agent))
}

fn post(agent: &ureq::Agent, url: &str, admin: &str, body: Value) -> Result<Value, String> {
    let mut r = agent
        .post(url)
        .header("Authorization", &format!("Bearer {admin}"))
        .send_json(&body)
        .map_err(|e| e.to_string())?;
    let text = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("{url}: {} {text}", r.status()));
    }
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

use mandate_core::client::form_encode as enc;

fn prep(
    url: &str,
    token_file: &std::path::Path,
    out: &PathBuf,
    (warm, count, policies): (usize, usize, usize),
    alg: Alg,
) -> Result<(), String> {
    let (admin, agent) = admin_client(token_file)?;
    post(
        &agent,
        &format!("{url}/v1/tenants"),
        &admin,
        json!({"name": "bench"}),
    )?;
    post(
        &agent,
        &format!("{url}/v1/tenants/bench/principals"),
        &admin,
        json!({"id": "alice@example.com"}),
    )?;
    post(
        &agent,
        &format!("{url}/v1/tenants/bench/agents"),
        &admin,
        json!({"name": "loader", "owner": "bench", "envelope": ["api:*"]}),
    )?;
    post(
        &agent,
        &format!("{url}/v1/tenants/bench/tools"),
        &admin,
        json!({"name": "api", "audience": "urn:api", "actions": ["read", "write"]}),
    )?;
    let grant = post(
        &agent,
        &format!("{url}/v1/tenants/bench/grants"),
        &admin,
        json!({"principal": "alice@example.com", "agent": "loader", "capabilities": ["api:read"], "task": "load"}),
    )?;
    for (name, text) in policy_curve::policy_files(policies) {
        let mut r = agent
            .put(format!("{url}/v1/tenants/bench/policies/{name}"))
            .header("Authorization", &format!("Bearer {admin}"))
            .send(&text)
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!(
                "policy: {}",
                r.body_mut().read_to_string().unwrap_or_default()
            ));
        }
    }
    let key = SigningKey::generate(alg, &mut OsRng);
    let run = post(
        &agent,
        &format!("{url}/v1/runs"),
        &admin,
        json!({"tenant": "bench", "agent": "loader", "principal": "alice@example.com",
               "grant": grant["id"], "ttl_secs": 3600, "jwk": key.public().to_json()}),
    )?;
    let mandate = run["mandate"].as_str().ok_or("no mandate")?;
    let body = format!(
        "grant_type={}&subject_token={}&subject_token_type={}&resource=urn%3Aapi&scope=read",
        enc("urn:ietf:params:oauth:grant-type:token-exchange"),
        enc(mandate),
        enc("urn:mandate:params:oauth:token-type:mandate")
    );
    std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
    std::fs::write(out.join("body.txt"), &body).map_err(|e| e.to_string())?;
    let htu = run["token_endpoint"]
        .as_str()
        .ok_or("no token endpoint")?
        .to_owned();
    let header = json!({"typ": "dpop+jwt", "jwk": key.public().to_json()});
    // Dated when made: making the pools takes long enough (ES256 on a slow
    // machine) that one date for all would make the first proofs stale
    // before the load reaches them; made on every core, in the order used.
    let make = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| {
                let iat = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let mut j = [0u8; 16];
                OsRng.fill_bytes(&mut j);
                key.sign_jws(
                    &header,
                    &json!({"jti": b64(&j), "htm": "POST", "htu": htu, "iat": iat}),
                )
            })
            .collect()
    };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let started = std::time::Instant::now();
    let mut made = 0usize;
    for (name, mut n) in [("proofs-warm.txt", warm), ("proofs-count.txt", count)] {
        if name == "proofs-count.txt" && made > 0 {
            // The first counted proof is used after the whole pool is made:
            // a pool that takes longer than half the proof window (60 s) to
            // make (ES256 signing on a slow machine) would be stale by then.
            let rate = made as f64 / started.elapsed().as_secs_f64().max(1e-3);
            let most = (rate * 30.0) as usize;
            if most < n {
                eprintln!(
                    "making proofs at {rate:.0}/s: {most} counted proofs instead of {n}, so the first is fresh when used"
                );
                n = most;
            }
        }
        made += n;
        let parts: Vec<Vec<String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..cores)
                .map(|i| {
                    let share = n / cores + usize::from(i < n % cores);
                    scope.spawn(move || make(share))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        let f = std::fs::File::create(out.join(name)).map_err(|e| e.to_string())?;
        let mut w = std::io::BufWriter::new(f);
        // In the order made (the cores' proofs interleaved), so the load
        // uses the oldest first.
        let longest = parts.iter().map(Vec::len).max().unwrap_or(0);
        for i in 0..longest {
            for p in parts.iter().filter_map(|part| part.get(i)) {
                writeln!(w, "{p}").map_err(|e| e.to_string())?;
            }
        }
    }
    eprintln!("prepared {made} proofs in {}", out.display());
    Ok(())
}

fn ceiling(listen: std::net::SocketAddr) -> Result<(), String> {
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let app = axum::Router::new()
            .route(
                "/",
                axum::routing::post(|| async {
                    axum::Json(
                        json!({"access_token": "x", "token_type": "DPoP", "expires_in": 300}),
                    )
                })
                .get(|| async { "ok" }),
            )
            // A stand-in for an upstream API call (the proxy benchmark's upstream).
            .route(
                "/emails",
                // `?ms=N`: the upstream takes N ms to answer, like a real API.
                axum::routing::post(
                    |q: axum::extract::Query<std::collections::HashMap<String, u64>>| async move {
                        if let Some(ms) = q.get("ms") {
                            tokio::time::sleep(std::time::Duration::from_millis((*ms).min(10_000)))
                                .await;
                        }
                        (
                            axum::http::StatusCode::OK,
                            axum::Json(json!({"id": "49a3999c-0ce1-4ea6-ab68-afcd6dc2e794"})),
                        )
                    },
                ),
            );
        let app = app.route("/mcp", axum::routing::post(mcp_upstream));
        let l = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| e.to_string())?;
        axum::serve(l, app).await.map_err(|e| e.to_string())
    })
}

/// The least an MCP server over streamable HTTP does (MCP 2025-11-25
/// `basic/transports`, JSON responses): `initialize` (with a session id),
/// notifications (202), `tools/list` with one tool, and `tools/call` of it,
/// which takes `arguments.ms` milliseconds (the gateway benchmark's
/// upstream, W6).
async fn mcp_upstream(body: axum::body::Bytes) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Ok(m) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return axum::http::StatusCode::BAD_REQUEST.into_response();
    };
    let Some(id) = m.get("id").cloned() else {
        return axum::http::StatusCode::ACCEPTED.into_response();
    };
    let result = match m["method"].as_str().unwrap_or("") {
        "initialize" => json!({"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
            "serverInfo": {"name": "mandate-bench", "version": "1"}}),
        "tools/list" => {
            json!({"tools": [{"name": "noop", "description": "Does nothing, in `ms` ms.",
            "inputSchema": {"type": "object", "properties": {"ms": {"type": "integer"}}}}]})
        }
        "tools/call" => {
            if let Some(ms) = m["params"]["arguments"]["ms"].as_u64() {
                tokio::time::sleep(std::time::Duration::from_millis(ms.min(10_000))).await;
            }
            json!({"content": [{"type": "text", "text": "ok"}], "isError": false})
        }
        _ => {
            return axum::Json(json!({"jsonrpc": "2.0", "id": id,
                "error": {"code": -32601, "message": "method not found"}}))
            .into_response();
        }
    };
    (
        [("mcp-session-id", "bench-session")],
        axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": result})),
    )
        .into_response()
}

fn floor(iterations: u32, algs: &[Alg]) {
    // One exchange's unavoidable signature work: verify the mandate's authority
    // signature (Ed25519, the broker's key), verify the DPoP proof (with the
    // run key's algorithm, through the same verifier the broker uses), sign
    // the JWT (Ed25519). One floor per run-key algorithm.
    let broker = ed25519_dalek::SigningKey::generate(&mut OsRng);
    let jwt = ed25519_dalek::SigningKey::generate(&mut OsRng);
    let mandate_msg = vec![7u8; 400];
    let proof_msg = vec![9u8; 300];
    let claims_msg = vec![3u8; 600];
    let mandate_sig = broker.sign(&mandate_msg);
    let bv = broker.verifying_key();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    for &alg in algs {
        let run = SigningKey::generate(alg, &mut OsRng);
        let (run_pub, proof_sig) = (run.public(), run.sign(&proof_msg));
        let start = Instant::now();
        for _ in 0..iterations {
            assert!(bv.verify_strict(&mandate_msg, &mandate_sig).is_ok());
            assert!(run_pub.verify("proof", alg, &proof_msg, &proof_sig).is_ok());
            std::hint::black_box(jwt.sign(&claims_msg));
        }
        let per = start.elapsed().as_secs_f64() / f64::from(iterations);
        println!(
            "crypto floor ({} run keys): {:.1} us per exchange on one core; {:.0} exchanges/s on {cores} cores",
            alg.as_str(),
            per * 1e6,
            cores as f64 / per
        );
    }
}

fn feed(
    url: &str,
    token_file: &std::path::Path,
    subscribers: usize,
    revocations: usize,
) -> Result<(), String> {
    use std::io::BufRead as _;
    use std::sync::mpsc;
    let (admin, agent) = admin_client(token_file)?;
    // Start from the current head so old revocations are not replayed.
    let head = {
        let mut r = agent
            .get(format!("{url}/v1/revocations/log?after=0&limit=1"))
            .header("Authorization", &format!("Bearer {admin}"))
            .call()
            .map_err(|e| e.to_string())?;
        let v: Value =
            serde_json::from_str(&r.body_mut().read_to_string().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        v["head"].as_u64().unwrap_or(0)
    };
    let (tx, rx) = mpsc::channel::<(usize, String, Instant)>();
    for i in 0..subscribers {
        let resp = agent
            .get(format!("{url}/v1/revocations/feed?after={head}"))
            .header("Authorization", &format!("Bearer {admin}"))
            .call()
            .map_err(|e| e.to_string())?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            let reader = std::io::BufReader::new(resp.into_body().into_reader());
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if let Some(d) = line.strip_prefix("data:") {
                    let v: Value = serde_json::from_str(d.trim()).unwrap_or(Value::Null);
                    let key = v["key"].as_str().unwrap_or("").to_owned();
                    if tx.send((i, key, Instant::now())).is_err() {
                        return;
                    }
                }
            }
        });
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut lat = Vec::with_capacity(revocations);
    for n in 0..revocations {
        let key = format!("bench-{n}-{}", std::process::id());
        let start = Instant::now();
        let mut r = agent
            .post(format!("{url}/v1/revocations"))
            .header("Authorization", &format!("Bearer {admin}"))
            .send_json(json!({"kind": "credential", "id": key}))
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(r.body_mut().read_to_string().unwrap_or_default());
        }
        let want = format!("cred:{key}");
        let mut seen = vec![false; subscribers];
        let mut left = subscribers;
        let mut last = start;
        while left > 0 {
            let (i, k, at) = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .map_err(|_| format!("revocation {n}: {left} subscribers never got it"))?;
            if k == want && !seen[i] {
                seen[i] = true;
                left -= 1;
                last = last.max(at);
            }
        }
        lat.push(last.duration_since(start).as_secs_f64() * 1e3);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "feed delivery, {subscribers} subscribers, {revocations} revocations: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (from the revoke call until every subscriber had the event)",
        pct(0.5),
        pct(0.99),
        lat[lat.len() - 1]
    );
    Ok(())
}

fn verify_bench(iterations: u32) {
    use mandate_core::credential::{self, AccessClaims, Actor, Confirmation};
    use mandate_core::keys::BrokerKeys;
    let keys = BrokerKeys::generate(&mut OsRng);
    let run_key = SigningKey::generate(Alg::EdDSA, &mut OsRng);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (iss, aud, uri) = (
        "http://127.0.0.1:8407",
        "https://crm.example",
        "https://crm.example/contacts",
    );
    let claims = AccessClaims {
        iss: iss.into(),
        aud: aud.into(),
        sub: "alice@example.com".into(),
        act: Actor {
            sub: "spiffe://mandate.local/tenant/t/agent/a/run/r".into(),
            act: None,
        },
        client_id: "spiffe://mandate.local/tenant/t/agent/a".into(),
        scope: "read".into(),
        jti: "cred_1".into(),
        iat: now,
        exp: now + 300,
        cnf: Some(Confirmation { jkt: run_key.kid() }),
        tenant: "t".into(),
        run: "r".into(),
        agent: "a".into(),
        task: "bench".into(),
        grant: None,
        path_prefix: None,
        authorization_details: None,
        approval: None,
        approvals: vec![],
        blocks: vec![],
    };
    let Ok(token) = credential::sign(&keys.jwt_eddsa, &claims) else {
        return;
    };
    let ath = b64(&mandate_core::mandate::token_digest(&token));
    let header = json!({"typ": "dpop+jwt", "jwk": run_key.public().to_json()});
    let proofs: Vec<String> = (0..iterations)
        .map(|i| {
            run_key.sign_jws(
                &header,
                &json!({"jti": format!("p{i}"), "htm": "GET", "htu": uri, "iat": now, "ath": ath}),
            )
        })
        .collect();
    let mut verifier = mandate_verify::Verifier::new(iss, aud);
    verifier.set_jwks(&keys.jwks());
    for i in 0..1000 {
        verifier.revoke(&format!("cred:other-{i}"));
    }
    let start = Instant::now();
    for p in &proofs {
        let r = verifier.verify(
            &mandate_verify::Request {
                credential: &token,
                proof: Some(p),
                method: "GET",
                uri,
            },
            now,
        );
        assert!(r.is_ok(), "{r:?}");
    }
    let full = start.elapsed().as_secs_f64() / f64::from(iterations) * 1e6;
    // Baseline: the two signature verifications the check cannot avoid.
    let (a, b) = (keys.jwt_eddsa.public(), run_key.public());
    let msg1 = vec![1u8; token.len()];
    let msg2 = vec![2u8; proofs[0].len()];
    let s1 = keys.jwt_eddsa.sign(&msg1);
    let s2 = run_key.sign(&msg2);
    let start = Instant::now();
    for _ in 0..iterations {
        assert!(a.verify("b", Alg::EdDSA, &msg1, &s1).is_ok());
        assert!(b.verify("b", Alg::EdDSA, &msg2, &s2).is_ok());
    }
    let raw = start.elapsed().as_secs_f64() / f64::from(iterations) * 1e6;
    println!(
        "W2 mandate-verify (credential + DPoP proof + revocation lookup): {full:.1} us/op; raw Ed25519 verify x2: {raw:.1} us/op; ratio {:.2}x",
        full / raw
    );
}

/// Mean µs per call of `f` over `n` calls.
fn per_op(n: u32, mut f: impl FnMut(u32)) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        f(i);
    }
    start.elapsed().as_secs_f64() / f64::from(n) * 1e6
}

fn attenuated_bench(iterations: u32) -> Result<(), String> {
    use mandate_core::attenuation::{Narrowing, attenuate};
    use mandate_core::capability::CapabilitySet;
    use mandate_core::dpop::{ProofExpectations, verify_proof};
    use mandate_core::mandate::{self, MandateClaims};
    let e = |e: mandate_core::Error| e.to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let root = mandate::root_keypair(&SigningKey::generate(Alg::EdDSA, &mut OsRng)).map_err(e)?;
    let run_key = SigningKey::generate(Alg::EdDSA, &mut OsRng);
    let claims = MandateClaims {
        issuer: "http://127.0.0.1:8407".into(),
        tenant: "bench".into(),
        agent: "planner".into(),
        agent_id: "spiffe://mandate.local/tenant/bench/agent/planner".into(),
        run: "run_1".into(),
        run_id: "spiffe://mandate.local/tenant/bench/agent/planner/run/run_1".into(),
        principal: Some("alice@example.com".into()),
        grant: Some("grt_1".into()),
        task: "bench".into(),
        capabilities: CapabilitySet::parse(&["crm:*", "github:read", "mail:send"]).map_err(e)?,
        cnf_jkt: run_key.kid(),
        run_jkt: run_key.kid(),
        issued_at: now,
        expires_at: now + 900,
        ancestors: vec![],
        hops: vec![],
        resource_prefix: None,
    };
    let plain = mandate::mint(&root, &claims, &mut OsRng).map_err(e)?;
    // Three hops: run key → k1 → k2 → k3, each narrowing.
    let keys: Vec<SigningKey> = (0..3)
        .map(|_| SigningKey::generate(Alg::EdDSA, &mut OsRng))
        .collect();
    let mut token = plain.clone();
    let mut holder = &run_key;
    for (i, next) in keys.iter().enumerate() {
        let n = Narrowing {
            capabilities: Some(
                CapabilitySet::parse(
                    &[
                        ["crm:*", "github:read"],
                        ["crm:read", "github:read"],
                        ["crm:read", "crm:read"],
                    ][i],
                )
                .map_err(e)?,
            ),
            not_after: Some(now + 600 - 60 * i as u64),
            next_holder: Some(next.kid()),
            ..Default::default()
        };
        token = attenuate(&token, holder, &n).map_err(e)?;
        holder = next;
    }
    let uri = "http://127.0.0.1:8407/oauth/token";
    let proofs = |k: &SigningKey| -> Vec<String> {
        let header = json!({"typ": "dpop+jwt", "jwk": k.public().to_json()});
        (0..iterations)
            .map(|i| {
                k.sign_jws(
                    &header,
                    &json!({"jti": format!("p{i}"), "htm": "POST", "htu": uri, "iat": now}),
                )
            })
            .collect()
    };
    let (plain_proofs, hop_proofs) = (proofs(&run_key), proofs(holder));
    let check = |token: &str, proof: &str, authorize: bool| -> Result<(), String> {
        let (c, parsed) = mandate::verify_parsed(root.public(), token, now).map_err(e)?;
        verify_proof(
            proof,
            &ProofExpectations {
                method: "POST",
                uri,
                now,
                max_age: 60,
                max_skew: 5,
                jkt: Some(&c.cnf_jkt),
                access_token: None,
                known_key: None,
                nonces: None,
            },
        )
        .map_err(e)?;
        if authorize && !c.hops.is_empty() {
            mandate::authorize_parsed(&parsed, now, "crm", &["read".to_owned()], &[], None)
                .map_err(e)?;
        }
        Ok(())
    };
    check(&token, &hop_proofs[0], true)?;
    check(&plain, &plain_proofs[0], false)?;
    let run = |tok: &str, ps: &[String], authorize: bool| {
        per_op(iterations, |i| {
            let r = check(tok, &ps[i as usize], authorize);
            assert!(r.is_ok(), "{r:?}");
        })
    };
    let plain_us = run(&plain, &plain_proofs, false);
    let hops_us = run(&token, &hop_proofs, false);
    let hops_auth_us = run(&token, &hop_proofs, true);
    // Baseline: raw Ed25519 verification, once per signature in the token
    // and proof: plain = authority block + proof (2); 3 hops add a block
    // signature and a holder's external signature each (2 + 6 = 8).
    let k = SigningKey::generate(Alg::EdDSA, &mut OsRng);
    let (pk, msg) = (k.public(), vec![7u8; 200]);
    let sig = k.sign(&msg);
    let raw1 = per_op(iterations * 4, |_| {
        assert!(pk.verify("b", Alg::EdDSA, &msg, &sig).is_ok());
    });
    println!(
        "mandate bytes: plain {} B, with 3 hops {} B",
        plain.len(),
        token.len()
    );
    println!(
        "plain mandate + DPoP proof:        {plain_us:7.1} us/op; raw Ed25519 verify x2: {:6.1} us; ratio {:.2}x",
        raw1 * 2.0,
        plain_us / (raw1 * 2.0)
    );
    println!(
        "3-hop mandate + DPoP proof:        {hops_us:7.1} us/op; raw Ed25519 verify x8: {:6.1} us; ratio {:.2}x",
        raw1 * 8.0,
        hops_us / (raw1 * 8.0)
    );
    println!(
        "3-hop + the use's Datalog checks: {hops_auth_us:7.1} us/op; raw Ed25519 verify x8: {:6.1} us; ratio {:.2}x",
        raw1 * 8.0,
        hops_auth_us / (raw1 * 8.0)
    );
    Ok(())
}
