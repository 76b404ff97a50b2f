//! Checking the broker's webhooks (approval requests and decisions,
//! alerts): each POST is signed with RFC 9421 by one of the broker's
//! credential keys (`keyid` = its `kid` in the JWKS, `tag` =
//! `mandate-webhook`), covering the method, the target URI, the content
//! type and `Content-Digest` (RFC 9530), with `created`/`expires`/`nonce`.
//! A receiver (a chat bot, a pager) checks it before acting on the body.

use mandate_core::httpsig::{self, Message, Policy};
use mandate_core::jose::PublicJwk;
use serde_json::Value;

/// Verifies a webhook request as received at `url`; returns the parsed
/// body. Replay (the signature's nonce) is for the receiver to refuse if it
/// acts twice on the same event.
pub fn verify_webhook(
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
    jwks: &Value,
    now: u64,
) -> Result<Value, String> {
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| format!("the `{n}` header is missing"))
    };
    let input = get("signature-input")?;
    let sig = get("signature")?;
    let (found, _, _) = httpsig::select(
        &Message::request("POST", url, headers.to_vec()),
        input,
        sig,
        Some("mandate"),
    )
    .map_err(|e| e.to_string())?;
    if found.tag.as_deref() != Some("mandate-webhook") {
        return Err("not a Mandate webhook signature (tag)".into());
    }
    let kid = found.keyid.ok_or("the signature names no key")?;
    let key = jwks["keys"]
        .as_array()
        .and_then(|ks| ks.iter().find(|k| k["kid"] == kid.as_str()))
        .ok_or_else(|| format!("key `{kid}` is not in the broker's JWKS; fetch it again"))?;
    let key = PublicJwk::from_json(key).map_err(|e| e.to_string())?;
    httpsig::verify_request(
        &Message::request("POST", url, headers.to_vec()),
        input,
        sig,
        Some("mandate"),
        &key,
        &Policy {
            now,
            skew: 30,
            max_lifetime: 600,
            required: &["@method", "@target-uri", "content-type", "content-digest"],
        },
    )
    .map_err(|e| e.to_string())?;
    httpsig::check_content_digest(get("content-digest")?, body).map_err(|e| e.to_string())?;
    serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))
}
