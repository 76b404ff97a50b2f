//! Verbs that need no broker: holder keys and offline attenuation.

use std::path::{Path, PathBuf};

use clap::Args;
use mandate_core::attenuation::{Narrowing, attenuate};
use mandate_core::capability::CapabilitySet;
use mandate_core::jose::{Alg, PublicJwk};
use mandate_core::keys::SigningKey;
use serde_json::{Value, json};

use crate::client::CliError;

/// `mandate key generate`.
#[derive(Args)]
pub(crate) struct KeyGenerate {
    /// Algorithm: EdDSA (Ed25519) or ES256 (P-256).
    #[arg(long, default_value = "EdDSA")]
    alg: String,
    /// Write the private key (a JWK) to this new file, mode 0600.
    #[arg(long)]
    out: PathBuf,
}

/// `mandate key sign-request`.
#[derive(Args)]
pub(crate) struct SignRequest {
    /// The private key (JWK file) to sign with.
    #[arg(long)]
    key_file: PathBuf,
    /// HTTP method.
    #[arg(long, default_value = "POST")]
    method: String,
    /// The absolute URL the request goes to.
    #[arg(long)]
    url: String,
    /// A header the request will carry, `Name: value` (repeat); those named
    /// here are covered by the signature.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// The request body, from this file (covered through Content-Digest).
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// Seconds the signature stays valid.
    #[arg(long, default_value_t = 30)]
    ttl: u64,
}

/// `mandate token attenuate`.
#[derive(Args)]
pub(crate) struct Attenuate {
    /// The mandate to narrow, or `-` to read it from standard input.
    mandate: String,
    /// The private key (JWK file) of whoever holds the mandate now: the run's
    /// key, or the key the last block handed it to.
    #[arg(long)]
    key_file: PathBuf,
    /// Hand the mandate to this key: a JWK file (public or private), or an
    /// RFC 7638 thumbprint. Only that key can use the result.
    #[arg(long)]
    to: Option<String>,
    /// A label for the next holder, shown in the audit trail and by inspect.
    #[arg(long, requires = "to")]
    to_name: Option<String>,
    /// Keep only these capabilities (`tool:action`; repeat).
    #[arg(long = "only", value_name = "TOOL:ACTION")]
    only: Vec<String>,
    /// Expire sooner: e.g. 5m, 1h.
    #[arg(long)]
    ttl: Option<String>,
    /// At most this many credential exchanges with the result (counted by the broker).
    #[arg(long)]
    uses: Option<u64>,
    /// Credentials reach only paths under this prefix (e.g. /repos/acme/).
    #[arg(long)]
    path_prefix: Option<String>,
}

fn read_text(what: &str, path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path)
        .map_err(|e| CliError::new(format!("cannot read {what} {}: {e}", path.display())))
}

pub(crate) fn read_key(path: &Path) -> Result<SigningKey, CliError> {
    let text = mandate_core::secret::Secret::new(read_text("key file", path)?);
    SigningKey::from_private_jwk(text.expose()).map_err(|e| {
        CliError::new(format!(
            "{}: {e}; make one with `mandate key generate --out FILE`",
            path.display()
        ))
    })
}

pub(crate) fn key_generate(a: KeyGenerate) -> Result<Value, CliError> {
    let alg = Alg::parse("--alg", &a.alg)
        .map_err(|e| CliError::new(format!("{e}; use EdDSA or ES256")))?;
    let key = SigningKey::generate(alg, &mut rand_core::OsRng);
    let mut text = key.to_private_jwk().expose().to_vec();
    text.push(b'\n');
    crate::output::write_new_private(&a.out, mandate_core::secret::Secret::new(text).expose())?;
    Ok(json!({"file": a.out, "alg": alg.as_str(), "jkt": key.kid(), "jwk": key.public().to_json()}))
}

/// Signs a request (RFC 9421) and returns the headers to add.
pub(crate) fn sign_request(a: SignRequest, now: u64) -> Result<Value, CliError> {
    let key = read_key(&a.key_file)?;
    let mut headers: Vec<(String, String)> = Vec::new();
    for h in &a.headers {
        let (n, v) = h
            .split_once(':')
            .ok_or_else(|| CliError::new(format!("--header `{h}`: use `Name: value`")))?;
        headers.push((n.to_owned(), v.trim().to_owned()));
    }
    let body = match &a.body_file {
        Some(f) => Some(read_text("body file", f)?),
        None => None,
    };
    let added = sign_headers(
        &key,
        &a.method,
        &a.url,
        headers,
        body.as_deref(),
        now,
        a.ttl,
    )?;
    let map: serde_json::Map<String, Value> = added
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    Ok(Value::Object(map))
}

/// The headers that sign a request with `key` (RFC 9421, as the broker
/// requires: the method, the target URI, each of `headers`, Content-Digest
/// (RFC 9530) when there is a body, and Signature-Key; `created`,
/// `expires` after `ttl` seconds and a fresh `nonce`): Content-Digest,
/// Signature-Key, Signature-Input and Signature, in that order.
pub(crate) fn sign_headers(
    key: &SigningKey,
    method: &str,
    url: &str,
    headers: Vec<(String, String)>,
    body: Option<&[u8]>,
    now: u64,
    ttl: u64,
) -> Result<Vec<(String, String)>, CliError> {
    use mandate_core::httpsig;
    let method = method.to_ascii_uppercase();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(CliError::new("--url must be an absolute http(s) URL"));
    }
    let mut components = vec!["@method".to_owned(), "@target-uri".to_owned()];
    let mut signed: Vec<(String, String)> = Vec::new();
    for (n, v) in headers {
        let n = n.trim().to_ascii_lowercase();
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(CliError::new(format!("--header `{n}`: not a header name")));
        }
        if !components.contains(&n) {
            components.push(n.clone());
        }
        signed.push((n, v));
    }
    let mut added: Vec<(String, String)> = Vec::new();
    if let Some(body) = body {
        let d = httpsig::content_digest(body);
        signed.push(("content-digest".into(), d.clone()));
        added.push(("Content-Digest".into(), d));
        components.push("content-digest".into());
    }
    let sk = httpsig::signature_key_field("sig1", &key.public());
    signed.push(("signature-key".into(), sk.clone()));
    added.push(("Signature-Key".into(), sk));
    components.push("signature-key".into());
    let nonce = mandate_core::jose::b64(
        mandate_core::secret::Secret::random(&mut rand_core::OsRng, 16).expose(),
    );
    let refs: Vec<&str> = components.iter().map(String::as_str).collect();
    let kid = key.kid();
    let (input, sig) = httpsig::sign(
        &httpsig::Message::request(&method, url, signed),
        key,
        &httpsig::SignParams {
            label: "sig1",
            components: &refs,
            created: now,
            expires: Some(now + ttl),
            nonce: Some(&nonce),
            keyid: Some(&kid),
            include_alg: true,
            tag: None,
        },
    )
    .map_err(|e| CliError::new(e.to_string()))?;
    added.push(("Signature-Input".into(), input));
    added.push(("Signature".into(), sig));
    Ok(added)
}

/// The next holder: a thumbprint as given, or the thumbprint of a JWK file.
fn next_holder(to: &str) -> Result<String, CliError> {
    let p = Path::new(to);
    if !p.exists() {
        return Ok(to.to_owned());
    }
    let text = mandate_core::secret::Secret::new(read_text("key file", p)?);
    public_jwk(text.expose())
        .map(|k| k.thumbprint())
        .map_err(|e| CliError::new(format!("{to}: {e}")))
}

/// The public half of a JWK, public or private (a private key's `d` is
/// read here and goes nowhere else).
pub(crate) fn public_jwk(text: &[u8]) -> Result<PublicJwk, String> {
    let v: Value = serde_json::from_slice(text).map_err(|_| "not a JSON Web Key".to_owned())?;
    if v.get("d").is_some() {
        return SigningKey::from_private_jwk(text)
            .map(|k| k.public())
            .map_err(|e| e.to_string());
    }
    PublicJwk::from_json(&v).map_err(|e| e.to_string())
}

pub(crate) fn attenuate_cmd(a: Attenuate, now: u64) -> Result<Value, CliError> {
    let token = if a.mandate == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t).map_err(|e| {
            CliError::new(format!("cannot read the mandate from standard input: {e}"))
        })?;
        t.trim().to_owned()
    } else {
        a.mandate.clone()
    };
    let key = read_key(&a.key_file)?;
    let capabilities = if a.only.is_empty() {
        None
    } else {
        Some(CapabilitySet::parse(&a.only).map_err(|e| CliError::new(format!("--only: {e}")))?)
    };
    let not_after = match &a.ttl {
        Some(t) => Some(now + crate::parse_duration(t)?),
        None => None,
    };
    let n = Narrowing {
        capabilities,
        not_after,
        max_uses: a.uses,
        resource_prefix: a.path_prefix.clone(),
        next_holder: a.to.as_deref().map(next_holder).transpose()?,
        next_holder_name: a.to_name,
    };
    let out = attenuate(&token, &key, &n).map_err(|e| CliError::new(e.to_string()))?;
    Ok(json!({
        "mandate": out, "signed_by": key.kid(),
        "holder": n.next_holder.clone().unwrap_or_else(|| key.kid()),
        "narrowing": n,
    }))
}
