//! HTTP routes. [`oauth`] holds the standard endpoints an agent and a tool
//! talk to; [`admin`] the registration, run, revocation and audit API.

pub mod admin;
pub mod attach;
pub mod feed;
pub mod inspect;
pub mod mcp;
pub mod oauth;
pub mod openapi;
pub mod proxy;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::routing::{any, get, post, put};
use rand_core::{OsRng, RngCore};

use crate::error::{ApiError, Code, err};
use crate::state::AppState;

/// Shared state as the handlers see it.
pub type S = Arc<AppState>;

/// The whole API.
pub fn router(state: S) -> Router {
    let max = state.config.max_body;
    Router::new()
        .route(
            "/.well-known/oauth-authorization-server",
            get(oauth::metadata),
        )
        .route("/jwks.json", get(oauth::jwks))
        .route("/oauth/token", post(oauth::token))
        .route("/oauth/introspect", post(oauth::introspect))
        .route("/oauth/revoke", post(oauth::revoke))
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi::document))
        .route(
            "/v1/tenants",
            post(admin::create_tenant).get(admin::list_tenants),
        )
        .route(
            "/v1/tenants/{tenant}/principals",
            post(admin::create_principal).get(admin::list_principals),
        )
        .route(
            "/v1/tenants/{tenant}/agents",
            post(admin::create_agent).get(admin::list_agents),
        )
        .route(
            "/v1/tenants/{tenant}/tools",
            post(admin::create_tool).get(admin::list_tools),
        )
        .route(
            "/v1/tenants/{tenant}/agents/{name}",
            put(admin::replace_agent),
        )
        .route(
            "/v1/tenants/{tenant}/tools/{name}",
            put(admin::replace_tool),
        )
        .route(
            "/v1/tenants/{tenant}/grants",
            post(admin::create_grant).get(admin::list_grants),
        )
        .route("/v1/tenants/{tenant}/policies", get(admin::list_policies))
        .route(
            "/v1/tenants/{tenant}/policies/{name}",
            put(admin::put_policies).delete(admin::delete_policies),
        )
        .route("/v1/runs", post(admin::start_run).get(admin::list_runs))
        .route(
            "/v1/tenants/{tenant}/agents/{agent}/join-tokens",
            post(admin::create_join_token),
        )
        .route("/v1/runs/{id}/end", post(admin::end_run))
        .route("/v1/runs/{id}/evals", post(admin::report_eval))
        .route("/v1/runs/{id}/suspend", post(admin::suspend_run))
        .route("/v1/runs/{id}/resume", post(admin::resume_run))
        .route(
            "/v1/tenants/{tenant}/principals/{principal}/approver-tokens",
            post(admin::create_approver_token),
        )
        .route("/v1/approvals", get(admin::list_approvals))
        .route("/v1/approvals/{id}", get(admin::show_approval))
        .route("/v1/approvals/{id}/approve", post(admin::approve))
        .route("/v1/approvals/{id}/deny", post(admin::deny))
        .route("/v1/runs/delegate", post(admin::delegate))
        .route("/v1/runs/attach", post(attach::attach))
        .route(
            "/v1/revocations",
            post(admin::revoke).get(admin::list_revocations),
        )
        .route("/v1/revocations/log", get(feed::log))
        .route("/v1/feed-tokens", post(feed::create_feed_token))
        .route("/v1/revocations/feed", get(feed::feed))
        .route("/v1/tokens/inspect", post(inspect::inspect))
        .route("/v1/audit", get(admin::audit_query))
        .route("/v1/status", get(admin::status))
        .route(
            "/v1/audit/verify",
            get(admin::audit_verify).post(admin::audit_verify_with),
        )
        .route("/v1/audit/checkpoint", get(admin::audit_checkpoint))
        .route(
            "/v1/tenants/{tenant}/tools/{name}/secret",
            put(admin::set_tool_secret),
        )
        .route(
            "/v1/tenants/{tenant}/tools/{name}/sync",
            post(admin::sync_tool),
        )
        .route(
            "/mcp/{tool}",
            post(mcp::post)
                .get(mcp::other)
                .delete(mcp::other)
                .layer(DefaultBodyLimit::max(mcp::MAX_BODY)),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp/{tool}",
            get(mcp::resource_metadata),
        )
        .route("/proxy/{tool}", any(proxy::forward))
        .route("/proxy/{tool}/{*rest}", any(proxy::forward))
        .fallback(|| async {
            err(
                Code::NotFound,
                "no such endpoint; see /.well-known/oauth-authorization-server and the README",
            )
        })
        .layer(DefaultBodyLimit::max(max))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            crate::refusals::audit_unauthenticated,
        ))
        .with_state(state)
}

/// Where a request came from, for the services' audit events.
pub fn origin(addr: SocketAddr, headers: &HeaderMap) -> crate::origin::Origin {
    crate::origin::Origin {
        client: addr,
        correlation_id: correlation_id(headers),
    }
}

/// The request body, or an RFC-shaped refusal (413 when over the limit).
pub fn body(b: Result<Bytes, BytesRejection>, max: usize) -> Result<Bytes, ApiError> {
    b.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            err(
                Code::TooLarge,
                format!("the request body is larger than {max} bytes"),
            )
        } else {
            err(
                Code::InvalidRequest,
                format!("could not read the request body: {}", e.body_text()),
            )
        }
    })
}

/// Parses a JSON body into `T` with an error a human can act on.
pub fn json_body<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, ApiError> {
    // An object, never an array read field by field into a struct (serde
    // accepts both for a struct: a body must name what it sets).
    if b.iter().find(|c| !c.is_ascii_whitespace()) != Some(&b'{') {
        return Err(err(
            Code::InvalidRequest,
            "the JSON body must be an object (`{...}`)",
        ));
    }
    serde_json::from_slice(b).map_err(|e| {
        err(
            Code::InvalidRequest,
            format!("the JSON body is not valid: {e}"),
        )
    })
}

/// An admin request (extractor): it carried a valid admin credential.
/// Refusals are audited through the per-client throttle (`admin.auth`).
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl axum::extract::FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        require_admin(state, &parts.headers).map(|()| Admin)
    }
}

/// A query string (extractor) parsed into `T`, which refuses unknown
/// parameters (`#[serde(deny_unknown_fields)]`): a malformed, repeated or
/// unknown parameter is refused with a JSON `invalid_request` error that
/// names it, like every other error of the API.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, ApiError> {
        query_of(&parts.uri).map(QueryParams)
    }
}

/// The query string of `uri` parsed into `T`, as [`QueryParams`] does: for
/// handlers that must authenticate the caller first (an unauthenticated
/// caller learns nothing about the parameters, and is throttled).
pub fn query_of<T: serde::de::DeserializeOwned>(uri: &axum::http::Uri) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| {
            err(
                Code::InvalidRequest,
                format!("the query string is refused: {}", e.body_text()),
            )
        })
}

/// A JSON request body (extractor): bounded by `max_body`, parsed into `T`
/// with an error a human can act on.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let raw = <Bytes as axum::extract::FromRequest<S>>::from_request(req, state).await;
        json_body(&body(raw, state.config.max_body)?).map(JsonBody)
    }
}

/// Checks the admin bearer credential (constant-time against each stored hash).
pub fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    admin_credential(state, headers)
        .map_err(|e| e.unauthenticated(mandate_core::audit::EventType::AdminAuth))
}

fn admin_credential(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| err(Code::Unauthorized, "this endpoint needs an admin credential: send `Authorization: Bearer <token>` (the broker wrote one to its admin token file on first start)"))?;
    let token = auth
        .strip_prefix("Bearer ")
        .ok_or_else(|| {
            err(
                Code::Unauthorized,
                "use the Bearer scheme: `Authorization: Bearer <admin token>`",
            )
        })?
        .trim();
    let hash = crate::boot::token_hash(token);
    let mut ok = false;
    for h in state
        .admin_hashes
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        ok |= mandate_core::secret::ct_eq(h, &hash);
    }
    if ok {
        Ok(())
    } else if token.starts_with("mandate_admin_") {
        Err(err(
            Code::Unauthorized,
            "the admin credential is not valid for this broker",
        ))
    } else {
        Err(err(
            Code::Forbidden,
            "this credential is not an admin credential; admin endpoints need the broker's admin token",
        ))
    }
}

/// Who reads the revocation log or feed: the admin, or a feed credential
/// (valid, unexpired, not revoked).
pub fn require_feed_reader(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<feed::FeedReader, ApiError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match token {
        Some(t) if t.starts_with(crate::services::feed_tokens::FEED_TOKEN_PREFIX) => {
            let hash = crate::boot::token_hash(t);
            let mut found = None;
            for c in state
                .feed_credentials
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
            {
                if mandate_core::secret::ct_eq(&c.hash, &hash) {
                    found = Some(c.clone());
                }
            }
            let c = found.ok_or_else(|| {
                err(
                    Code::Unauthorized,
                    "the feed credential is not valid for this broker",
                )
                .unauthenticated(mandate_core::audit::EventType::AdminAuth)
            })?;
            let reader = feed::FeedReader::Feed(c);
            reader.still_valid(state, state.now_secs())?;
            Ok(reader)
        }
        _ => require_admin(state, headers)
            .map(|_| feed::FeedReader::Admin)
            .map_err(|mut e| {
                if e.code == Code::Unauthorized && token.is_none() {
                    e.description = "the revocation feed needs a feed credential (`mandate feed-token create`) or the admin credential: send `Authorization: Bearer <token>`".into();
                }
                e
            }),
    }
}

/// The trace id of a W3C `traceparent` header (Trace Context §3.2), or a fresh one.
pub fn correlation_id(headers: &HeaderMap) -> String {
    if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        let parts: Vec<&str> = tp.trim().split('-').collect();
        if parts.len() >= 4
            && parts[0].len() == 2
            && parts[0] != "ff"
            && parts[1].len() == 32
            && parts[1]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            && parts[1] != "00000000000000000000000000000000"
            && parts[2].len() == 16
        {
            return parts[1].to_owned();
        }
    }
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    mandate_core::ids::hex(&b)
}

/// The client address as text.
pub fn client(addr: Option<SocketAddr>) -> Option<String> {
    addr.map(|a| a.ip().to_string())
}

/// Liveness: `ok`, or 503 once the store's sync failed (no write succeeds
/// until the broker is restarted, so a load balancer should stop sending).
async fn healthz(
    axum::extract::State(s): axum::extract::State<Arc<AppState>>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    if s.writer.failed() {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "the store's sync failed: restart the broker",
        )
            .into_response()
    } else {
        match s.config.clock.behind_ms() / 1000 {
            0 => "ok".into_response(),
            n => format!(
                "ok; the system clock went back and is {n} s behind the broker's time, which holds until the clock catches up (check the clock's synchronisation)"
            )
            .into_response(),
        }
    }
}
