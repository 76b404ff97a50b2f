//! `mandate token exchange`: what an agent's runtime does at each tool
//! call, from the command line. The mandate and the run's key (a JWK file)
//! go in; a credential for one tool and its actions comes out. The CLI
//! makes the proof of possession itself: a DPoP proof (RFC 9449, retried
//! once with the broker's nonce, §8) or, with `--sign`, an RFC 9421
//! signature. A request that waits for a human is polled with `--wait`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use mandate_core::keys::SigningKey;
use serde_json::{Value, json};

use crate::client::{CliError, Exit};
use crate::exec::now;
use crate::offline::{read_key, sign_headers};

/// `mandate token exchange`.
#[derive(Args)]
#[command(after_help = "Examples:
  mandate token exchange --mandate-file run.mandate --key-file run.jwk --tool crm --action read
  CRED=$(mandate token exchange --mandate-file run.mandate --key-file run.jwk --tool crm --action read)
  mandate token exchange --mandate-file run.mandate --key-file run.jwk --tool payments \\
      --action pay --amount 25000 --currency EUR --target 'invoice 9' --wait 10m

Prints the credential (the access token) on standard output, or the broker's whole answer with --json.
Exit codes: 4 refused (the reason on standard error), 6 waiting for a human's approval (the
approval id on standard error; repeat the same request, or use --wait), 5 broker unreachable.")]
pub(crate) struct ExchangeArgs {
    /// The mandate, or `-` to read it from standard input (or use --mandate-file).
    #[arg(
        required_unless_present = "mandate_file",
        conflicts_with = "mandate_file"
    )]
    mandate: Option<String>,
    /// Read the mandate from this file (keeps it out of the process list).
    #[arg(long, value_name = "FILE")]
    mandate_file: Option<PathBuf>,
    /// The private key (JWK file) the mandate is bound to: the run's key,
    /// or the key an attenuated mandate was handed to.
    #[arg(long, value_name = "FILE")]
    key_file: PathBuf,
    /// The tool the credential is for (its registered name).
    #[arg(long)]
    tool: String,
    /// An action on the tool (repeat for several).
    #[arg(long = "action", required = true)]
    actions: Vec<String>,
    /// Declare the amount this request moves, in minor units (RFC 9396
    /// `authorization_details`; policies and approvals judge it).
    #[arg(long)]
    amount: Option<i64>,
    /// The amount's currency (ISO 4217, e.g. EUR).
    #[arg(long, requires = "amount")]
    currency: Option<String>,
    /// Declare the request's target: a recipient, account or environment.
    #[arg(long)]
    target: Option<String>,
    /// Declare what the request is for, in words.
    #[arg(long)]
    description: Option<String>,
    /// Prove the key with an RFC 9421 signature instead of DPoP.
    #[arg(long)]
    sign: bool,
    /// When a human must approve, wait up to this long (e.g. 10m), asking
    /// again at the interval the broker gives.
    #[arg(long, value_parser = crate::when::secs, value_name = "DURATION")]
    wait: Option<u64>,
}

/// Runs `mandate token exchange`; returns the broker's answer.
pub(crate) fn exchange(a: ExchangeArgs, url: &str) -> Result<Value, CliError> {
    let mandate = read_mandate(&a)?;
    let key = read_key(&a.key_file)?;
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let endpoint = token_endpoint(&http, url)?;
    let form = form(&a, &mandate);
    let deadline = a.wait.map(|w| Instant::now() + Duration::from_secs(w));
    let mut announced = false;
    loop {
        let (status, v) = post(&http, &endpoint, &form, &key, a.sign)?;
        if status == 200 {
            if v["access_token"].as_str().is_none_or(str::is_empty) {
                return Err(CliError::new(format!(
                    "{endpoint} answered 200 without an access token: is it the broker's token endpoint?"
                )));
            }
            return Ok(v);
        }
        let code = v["error"].as_str().unwrap_or("error").to_owned();
        let desc = v["error_description"].as_str().unwrap_or("no reason given");
        let pending = code == "authorization_pending" || code == "slow_down";
        match deadline {
            Some(d) if pending && Instant::now() < d => {
                let every = v["interval"].as_u64().unwrap_or(5).clamp(1, 60);
                if !announced {
                    crate::output::write_stderr(format_args!(
                        "waiting for approval {} (a human decides with `mandate approvals approve`); asking again every {every} s\n",
                        crate::output::cell(&v["approval_id"])
                    ));
                    announced = true;
                }
                std::thread::sleep(
                    Duration::from_secs(every).min(d.saturating_duration_since(Instant::now())),
                );
            }
            _ => {
                let mut msg = format!("the broker refused ({status} {code}): {desc}");
                if v["approval_id"].is_string() {
                    msg.push_str(&format!(
                        "\napproval {}: once a human approves it, repeat this exact request (or add --wait 10m)",
                        crate::output::cell(&v["approval_id"])
                    ));
                }
                return Err(CliError::new(msg).exit(CliError::exit_of(status, &code)));
            }
        }
    }
}

/// The mandate from the argument, standard input or a file.
fn read_mandate(a: &ExchangeArgs) -> Result<String, CliError> {
    let text = match (&a.mandate, &a.mandate_file) {
        (_, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| CliError::new(format!("cannot read {}: {e}", f.display())))?,
        (Some(m), None) if m == "-" => {
            let mut t = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut t).map_err(|e| {
                CliError::new(format!("cannot read the mandate from standard input: {e}"))
            })?;
            t
        }
        (Some(m), None) => m.clone(),
        (None, None) => String::new(),
    };
    let m = text.trim();
    if m.is_empty() {
        return Err(CliError::new("the mandate is empty").exit(Exit::Usage));
    }
    Ok(m.to_owned())
}

/// The broker's token endpoint, from its RFC 8414 metadata (the URL proofs
/// must name, which may differ from --url behind a proxy).
fn token_endpoint(http: &ureq::Agent, url: &str) -> Result<String, CliError> {
    let base = url.trim_end_matches('/');
    let meta = format!("{base}/.well-known/oauth-authorization-server");
    let unreachable = |e: String| {
        CliError::new(format!(
            "cannot reach the broker at {base}: {e}; is `mandate serve` running? (set --url or MANDATE_URL)"
        ))
        .exit(Exit::Unavailable)
    };
    let mut r = http
        .get(&meta)
        .call()
        .map_err(|e| unreachable(e.to_string()))?;
    let v: Value = r
        .body_mut()
        .read_json()
        .map_err(|e| unreachable(format!("its metadata is not JSON ({e})")))?;
    v["token_endpoint"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| unreachable("its metadata names no token_endpoint".into()))
}

/// The RFC 8693 form, with the declared RFC 9396 details if any.
fn form(a: &ExchangeArgs, mandate: &str) -> String {
    let mut form = mandate_core::client::exchange_form(mandate, &a.tool, &a.actions.join(" "));
    let mut d = json!({"type": "mandate"});
    if let Some(x) = a.amount {
        d["amount"] = json!(x);
    }
    for (k, v) in [
        ("currency", &a.currency),
        ("target", &a.target),
        ("description", &a.description),
    ] {
        if let Some(v) = v {
            d[k] = json!(v);
        }
    }
    if d.as_object().is_some_and(|o| o.len() > 1) {
        form.push_str("&authorization_details=");
        form.push_str(&mandate_core::client::form_encode(&json!([d]).to_string()));
    }
    form
}

/// One POST of the form with a fresh proof; a DPoP nonce asked for is
/// taken and the request made again once (RFC 9449 §8).
fn post(
    http: &ureq::Agent,
    endpoint: &str,
    form: &str,
    key: &SigningKey,
    sign: bool,
) -> Result<(u16, Value), CliError> {
    let mut nonce: Option<String> = None;
    for _ in 0..2 {
        let mut req = http
            .post(endpoint)
            .header("Content-Type", "application/x-www-form-urlencoded");
        if sign {
            let ct = (
                "content-type".to_owned(),
                "application/x-www-form-urlencoded".to_owned(),
            );
            for (n, v) in sign_headers(
                key,
                "POST",
                endpoint,
                vec![ct],
                Some(form.as_bytes()),
                now(),
                30,
            )? {
                req = req.header(n.as_str(), v.as_str());
            }
        } else {
            let proof = mandate_core::client::dpop_proof(
                key,
                "POST",
                endpoint,
                now(),
                &mandate_core::jose::b64(
                    mandate_core::secret::Secret::random(&mut rand_core::OsRng, 16).expose(),
                ),
                nonce.as_deref(),
                None,
            );
            req = req.header("DPoP", proof.as_str());
        }
        let mut r = req.send(form).map_err(|e| {
            CliError::new(format!("cannot reach the broker at {endpoint}: {e}"))
                .exit(Exit::Unavailable)
        })?;
        let status = r.status().as_u16();
        let asked = r
            .headers()
            .get("dpop-nonce")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let v: Value = r.body_mut().read_json().unwrap_or(Value::Null);
        if v["error"] == "use_dpop_nonce" && !sign && nonce.is_none() && asked.is_some() {
            nonce = asked;
            continue;
        }
        return Ok((status, v));
    }
    Err(CliError::new("the broker kept asking for a new DPoP nonce"))
}
