//! The revocation feed: the append-only, sequence-numbered log of
//! revocations (DESIGN "revocation as data"). A verifier polls
//! `GET /v1/revocations/log?after=N` or subscribes to
//! `GET /v1/revocations/feed` (Server-Sent Events, `id` = sequence number);
//! on reconnect it sends `Last-Event-ID` and gets everything it missed, then
//! live events. Reading needs the admin credential until verifier
//! credentials exist.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use mandate_store::Revocation;

use super::{S, require_admin, require_feed_reader};
use crate::error::{ApiError, Code, err};

/// Query of the feed endpoints.
#[derive(Deserialize)]
pub struct FeedQuery {
    after: Option<u64>,
    limit: Option<u32>,
}

/// Page size when catching up from the store.
const PAGE: u32 = 1000;

/// A resume point past the log's head: the reader saw a log this broker no
/// longer has (it was restored from a backup, or is another broker). Said
/// out loud (409 `position_ahead` with the head), never answered with
/// silence, so the reader can read the log again from the start.
fn position_ahead(after: u64, head: u64) -> Response {
    (
        StatusCode::CONFLICT,
        Json(json!({
            "error": "position_ahead",
            "error_description": format!(
                "position {after} is past the end of this broker's revocation log ({head}); the log was restored or replaced: read it again from 0"
            ),
            "head": head,
        })),
    )
        .into_response()
}

/// `GET /v1/revocations/log?after=N&limit=M`: revocations after `N`, oldest
/// first, and the log's `head`; 409 `position_ahead` if `N` is past the head.
pub async fn log(
    State(s): State<S>,
    headers: HeaderMap,
    Query(q): Query<FeedQuery>,
) -> Result<Response, ApiError> {
    require_feed_reader(&s, &headers)?;
    let (after, limit) = (
        q.after.unwrap_or(0),
        q.limit.unwrap_or(PAGE).clamp(1, 10 * PAGE),
    );
    let head = s.reg().revocation_seq;
    if after > head {
        return Ok(position_ahead(after, head));
    }
    let store = Arc::clone(&s.store);
    let items = tokio::task::spawn_blocking(move || store.revocations_after(after, limit))
        .await
        .map_err(|_| err(Code::ServerError, "could not read the revocation log"))??;
    Ok(Json(json!({"head": head, "revocations": items})).into_response())
}

fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    err(
                        Code::InvalidRequest,
                        "`Last-Event-ID` must be a revocation sequence number",
                    )
                })
        })
        .transpose()
}

struct Follow {
    s: S,
    last: u64,
    rx: tokio::sync::broadcast::Receiver<Revocation>,
    backlog: VecDeque<Revocation>,
    catch_up: bool,
    /// Whether the end of the catch-up was announced.
    announced: bool,
}

fn event(r: &Revocation) -> Event {
    Event::default()
        .id(r.seq.to_string())
        .event("revocation")
        .json_data(r)
        .unwrap_or_else(|_| Event::default().comment("unencodable revocation"))
}

/// `GET /v1/revocations/feed`: Server-Sent Events from `Last-Event-ID` (or
/// `?after=N`, default 0), then live; 409 `position_ahead` if that is past
/// the log's head.
pub async fn feed(
    State(s): State<S>,
    headers: HeaderMap,
    Query(q): Query<FeedQuery>,
) -> Result<Response, ApiError> {
    require_feed_reader(&s, &headers)?;
    let after = last_event_id(&headers)?.or(q.after).unwrap_or(0);
    let head = s.reg().revocation_seq;
    if after > head {
        return Ok(position_ahead(after, head));
    }
    // Subscribe before reading the log, so nothing falls between the two.
    let rx = s.revocations.subscribe();
    let st = Follow {
        s,
        last: after,
        rx,
        backlog: VecDeque::new(),
        catch_up: true,
        announced: false,
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(r) = st.backlog.pop_front() {
                if r.seq <= st.last {
                    continue;
                }
                st.last = r.seq;
                return Some((Ok::<_, Infallible>(event(&r)), st));
            }
            if st.catch_up {
                let store = Arc::clone(&st.s.store);
                let last = st.last;
                match tokio::task::spawn_blocking(move || store.revocations_after(last, PAGE)).await
                {
                    Ok(Ok(page)) => {
                        st.catch_up = page.len() == PAGE as usize;
                        st.backlog.extend(page);
                        continue;
                    }
                    // End the stream; the client reconnects with Last-Event-ID.
                    _ => return None,
                }
            }
            if !st.announced {
                // A comment once the reader has everything so far: it is
                // current from now on (and after each keep-alive).
                st.announced = true;
                return Some((Ok(Event::default().comment("caught up")), st));
            }
            match st.rx.recv().await {
                Ok(r) if r.seq == st.last + 1 => st.backlog.push_back(r),
                Ok(r) if r.seq > st.last => st.catch_up = true,
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => st.catch_up = true,
                Err(RecvError::Closed) => return None,
            }
        }
    });
    // A comment every 15 s (axum's default): verifiers take it as proof
    // that they are up to date.
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// `POST /v1/feed-tokens`: a credential that can read the revocation log and
/// feed, and nothing else, for a tool's verifiers. Shown once; stored hashed.
pub async fn create_feed_token(
    State(s): State<S>,
    axum::extract::ConnectInfo(addr): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
) -> Result<(axum::http::StatusCode, axum::Json<serde_json::Value>), ApiError> {
    require_admin(&s, &headers)?;
    let secret = mandate_core::secret::Secret::random(&mut rand_core::OsRng, 32);
    let token = format!(
        "{}{}",
        super::FEED_TOKEN_PREFIX,
        mandate_core::jose::b64(secret.expose())
    );
    let id = format!(
        "{}{}",
        crate::boot::FEED_ID_PREFIX,
        &mandate_core::ids::random_id(&mut rand_core::OsRng, "")[..12]
    );
    let hash = crate::boot::token_hash(&token);
    let ev = mandate_core::audit::EventBody {
        time_ms: crate::now_ms(),
        event_type: "feed_token.create".into(),
        decision: "ok".into(),
        actor: Some("admin".into()),
        credential_id: Some(id.clone()),
        correlation_id: Some(super::correlation_id(&headers)),
        client_addr: super::client(Some(addr)),
        ..Default::default()
    };
    s.commit(mandate_store::Entry {
        mutation: Some(mandate_store::Mutation::PutAdminToken(
            mandate_store::AdminToken {
                id: id.clone(),
                hash: hash.clone(),
                created_ms: crate::now_ms(),
            },
        )),
        events: vec![ev],
    })
    .await?;
    s.feed_hashes
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .push((id.clone(), hash));
    Ok((
        axum::http::StatusCode::CREATED,
        axum::Json(serde_json::json!({"id": id, "token": token})),
    ))
}
