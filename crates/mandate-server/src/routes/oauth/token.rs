//! RFC 8693 token exchange: parse the request, ask the exchange service
//! ([`crate::exchange`]), render its outcome.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::require_form_content_type;
use crate::error::{ApiError, Code, err};
use crate::exchange::{self, ExchangeRequest, Outcome, PendingApproval, Proof};
use crate::form::Form;
use crate::routes::{S, body, correlation_id};

/// `POST /oauth/token`: a mandate and a proof of possession in, a credential out.
pub async fn token(
    State(s): State<S>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let now = s.now_secs();
    let mut resp = match parse(&s, addr, headers, raw) {
        Err(e) => e
            .unauthenticated(mandate_core::audit::EventType::TokenExchange)
            .into_response(),
        Ok(req) => render(exchange::exchange(&s, req, now).await, now),
    };
    // RFC 9449 §8.1, §8.2: every answer carries the nonce to use next
    // (required with `--dpop-nonce`, and after a restart for older proofs).
    s.add_dpop_nonce(&mut resp);
    resp
}

fn parse(
    s: &S,
    addr: SocketAddr,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<ExchangeRequest, ApiError> {
    let raw = body(raw, s.config.max_body)?;
    require_form_content_type(&headers)?;
    let form = Form::parse(&raw)?;
    let correlation = correlation_id(&headers);
    let proof = proof(headers, raw);
    ExchangeRequest::from_form(&form, proof, addr, correlation)
}

/// The proof of possession the request carries: one, of either kind.
fn proof(headers: HeaderMap, body: Bytes) -> Result<Proof, ApiError> {
    match (
        single_header(&headers, "dpop")?,
        crate::pop::httpsig::present(&headers),
    ) {
        (Some(p), false) => Ok(Proof::Dpop(p.to_owned())),
        (None, true) => Ok(Proof::MessageSignature { headers, body }),
        (None, false) => Err(err(
            Code::InvalidDpopProof,
            "a proof of possession is required: prove the key that holds the mandate with a DPoP proof (RFC 9449) in the `DPoP` header, or an HTTP message signature (RFC 9421) with `Signature-Input`, `Signature` and `Signature-Key`",
        )),
        (Some(_), true) => Err(err(
            Code::InvalidRequest,
            "send one proof of possession: DPoP or an HTTP message signature, not both",
        )),
    }
}

fn single_header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    let mut it = headers.get_all(name).iter();
    let first = it.next();
    if it.next().is_some() {
        return Err(err(
            Code::InvalidDpopProof,
            format!("send exactly one `{name}` header"),
        ));
    }
    first
        .map(|v| {
            v.to_str().map_err(|_| {
                err(
                    Code::InvalidDpopProof,
                    format!("the `{name}` header is not ASCII"),
                )
            })
        })
        .transpose()
}

fn render(outcome: Outcome, now: u64) -> Response {
    match outcome {
        Outcome::Issued(i) => {
            let c = &i.credential;
            let mut body = json!({
                "access_token": c.access_token.as_str(),
                "issued_token_type": c.issued_token_type,
                "token_type": c.token_type,
                "expires_in": i.claims.exp.saturating_sub(now),
                "scope": i.claims.scope,
                "credential_id": i.claims.jti,
            });
            for (k, v) in &c.extra {
                body[*k] = v.clone();
            }
            no_store(Json(body).into_response())
        }
        Outcome::ApprovalRequested { approvals, message }
        | Outcome::Waiting { approvals, message } => pending(&message, &approvals, now),
        Outcome::Denied(d) => d.error.into_response(),
    }
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// RFC 8628 §3.5-style `authorization_pending`, with the approvals to poll
/// (`approval_id` names the first; `approvals` all, each with its approvers).
fn pending(message: &str, all: &[PendingApproval], now: u64) -> Response {
    let code = Code::AuthorizationPending;
    let mut body = json!({"error": code.as_str(), "error_description": message,
        "interval": INTERVAL});
    if let Some(a) = all.first() {
        let mut approvers: Vec<&String> = all.iter().flat_map(|a| &a.approvers).collect();
        approvers.sort();
        approvers.dedup();
        body["approval_id"] = json!(a.id);
        let soonest = all.iter().map(|a| a.expires_at).min().unwrap_or(now);
        body["expires_in"] = json!(soonest.saturating_sub(now));
        body["approvers"] = json!(approvers);
        body["approvals"] = json!(
            all.iter()
                .map(|a| json!({"id": a.id, "policies": a.policies,
                    "approvers": a.approvers, "status": a.status}))
                .collect::<Vec<_>>()
        );
    }
    no_store((code.status(), Json(body)).into_response())
}

/// Seconds between polls while approvals wait (RFC 8628 §3.5 `interval`).
const INTERVAL: u64 = 5;
