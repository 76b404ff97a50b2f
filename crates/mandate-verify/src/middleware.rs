//! An axum (tower) middleware for tool servers: every request must carry a
//! Mandate credential (`Authorization: DPoP <credential>`) and its DPoP proof
//! (`DPoP: <proof>`); the verified [`Identity`] (agent, run, principal,
//! tenant, scopes, actor chain) goes into the request's extensions.
//!
//! ```no_run
//! # async fn f(live: std::sync::Arc<mandate_verify::live::Live>) {
//! use axum::{Extension, Router, middleware, routing::get};
//! use mandate_verify::{Identity, middleware::{MandateAuth, require_mandate}};
//! let auth = MandateAuth::new(live, "https://crm.example.com");
//! let app: Router = Router::new()
//!     .route("/contacts", get(|Extension(who): Extension<Identity>| async move { who.agent }))
//!     .layer(middleware::from_fn_with_state(auth, require_mandate));
//! # }
//! ```

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::live::Live;
use crate::{Request as Presented, VerifyError};

/// What the middleware needs: the live verifier and the tool's public base
/// URL (what agents put in the proof's `htu`; a proxy in front may change
/// the Host the server sees, so it is configured, not guessed).
#[derive(Clone, Debug)]
pub struct MandateAuth {
    live: Arc<Live>,
    public_base: String,
}

impl MandateAuth {
    /// A middleware state for `live`, with the tool's public base URL.
    pub fn new(live: Arc<Live>, public_base: &str) -> Self {
        Self {
            live,
            public_base: public_base.trim_end_matches('/').to_owned(),
        }
    }
}

/// RFC 9449 §7.1: `WWW-Authenticate: DPoP error="invalid_token", ...`.
fn refuse(e: &VerifyError) -> Response {
    let (status, code) = match e {
        VerifyError::Proof(_) => (StatusCode::UNAUTHORIZED, "invalid_dpop_proof"),
        // RFC 6750 §3.1: a valid credential used beyond its reach.
        VerifyError::OutsidePath { .. } => (StatusCode::FORBIDDEN, "insufficient_scope"),
        // Not the caller's fault: the tool cannot tell what is revoked.
        VerifyError::Stale(_) => (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
        _ => (StatusCode::UNAUTHORIZED, "invalid_token"),
    };
    let desc = e.to_string().replace('"', "'");
    let mut r = (
        status,
        axum::Json(serde_json::json!({"error": code, "error_description": desc})),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "DPoP algs=\"EdDSA ES256\", error=\"{code}\", error_description=\"{desc}\""
    )) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// The middleware: verify, then hand on with the [`crate::Identity`] in the extensions.
pub async fn require_mandate(
    State(auth): State<MandateAuth>,
    mut req: Request,
    next: Next,
) -> Response {
    // Read the headers in a block: a borrow of the request must not live
    // across an await (the body is not `Sync`).
    let (authz, proof) = {
        let headers = req.headers();
        let one = |name: header::HeaderName| -> Result<Option<String>, VerifyError> {
            let mut it = headers.get_all(&name).iter();
            let first = it.next();
            if it.next().is_some() {
                return Err(VerifyError::Malformed(format!(
                    "send the `{name}` header once"
                )));
            }
            Ok(first.and_then(|v| v.to_str().ok()).map(str::to_owned))
        };
        match (
            one(header::AUTHORIZATION),
            one(header::HeaderName::from_static("dpop")),
        ) {
            (Ok(a), Ok(p)) => (a, p),
            (Err(e), _) | (_, Err(e)) => return refuse(&e),
        }
    };
    let Some(credential) = authz.as_deref().and_then(|a| {
        let (scheme, rest) = a.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("DPoP")
            .then(|| rest.trim().to_owned())
    }) else {
        return refuse(&VerifyError::Malformed(
            "send `Authorization: DPoP <credential>` and a `DPoP` proof header".into(),
        ));
    };
    let uri = format!("{}{}", auth.public_base, req.uri().path());
    let method = req.method().as_str().to_owned();
    let presented = Presented {
        credential: &credential,
        proof: proof.as_deref(),
        method: &method,
        uri: &uri,
    };
    match auth.live.verify(&presented, auth.live.now()).await {
        Ok(identity) => {
            req.extensions_mut().insert(identity);
            next.run(req).await
        }
        Err(e) => refuse(&e),
    }
}
