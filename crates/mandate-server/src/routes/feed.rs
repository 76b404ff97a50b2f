//! The revocation feed: the append-only, sequence-numbered log of
//! revocations (DESIGN "revocation as data"). A verifier polls
//! `GET /v1/revocations/log?after=N` or subscribes to
//! `GET /v1/revocations/feed` (Server-Sent Events, `id` = sequence number);
//! on reconnect it sends `Last-Event-ID` and gets everything it missed, then
//! live events. Reading needs the admin credential or a feed credential
//! (`POST /v1/feed-tokens`): one limited to a tenant reads that tenant's
//! revocations and the kill switch, and sees the others' only as
//! placeholders (`{"seq": N, "redacted": true}`, so sequence numbers stay
//! contiguous); no feed credential reads the free-text reasons. A feed
//! credential expires, and an open feed ends when it expires or is revoked.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use mandate_core::model::Revocation;

use super::{Admin, S, query_of, require_feed_reader};
use crate::error::{ApiError, Code, err};
use crate::services::feed_tokens::FeedCredential;
use crate::state::AppState;

/// A feed credential's life when none is asked for (90 days).
pub const FEED_DEFAULT_TTL: u64 = 90 * 86_400;

/// The longest a feed credential may live (one year).
pub const FEED_MAX_TTL: u64 = 365 * 86_400;

/// How often an open feed checks that its credential is still good.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(15);

/// Who reads the log or the feed.
#[derive(Clone)]
pub enum FeedReader {
    /// The admin: everything, reasons too.
    Admin,
    /// A feed credential.
    Feed(FeedCredential),
}

impl FeedReader {
    /// Refuses a feed credential that has expired or been revoked (by id or
    /// with its tenant). The kill switch spares it: verifiers learn of the
    /// kill switch through the feed.
    pub fn still_valid(&self, state: &AppState, now: u64) -> Result<(), ApiError> {
        let FeedReader::Feed(c) = self else {
            return Ok(());
        };
        if c.expires_at != 0 && c.expires_at <= now {
            return Err(err(
                Code::Unauthorized,
                "the feed credential has expired; ask an admin for a new one (`mandate feed-token create`)",
            ));
        }
        let mut keys = vec![format!("cred:{}", c.id)];
        keys.extend(c.tenant.iter().map(|t| format!("tenant:{t}")));
        if let Some(k) = state.reg().first_revoked(&keys) {
            return Err(err(
                Code::Unauthorized,
                format!(
                    "the feed credential has been revoked ({}); ask an admin for a new one",
                    mandate_core::revocation::kind(k)
                ),
            ));
        }
        Ok(())
    }

    /// What this reader sees of `r`.
    pub fn view(&self, r: &Revocation) -> Value {
        match self {
            FeedReader::Admin => json!(r),
            FeedReader::Feed(c) => {
                let visible = match (&c.tenant, &r.tenant) {
                    (None, _) | (_, None) => true,
                    (Some(mine), Some(theirs)) => mine == theirs,
                };
                if visible {
                    json!({"seq": r.seq, "key": r.key, "time_ms": r.time_ms, "until": r.until})
                } else {
                    json!({"seq": r.seq, "redacted": true})
                }
            }
        }
    }
}

/// Query of the feed endpoints.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
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
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let reader = require_feed_reader(&s, &headers)?;
    let q: FeedQuery = query_of(&uri)?;
    let (after, limit) = (
        q.after.unwrap_or(0),
        q.limit.unwrap_or(PAGE).clamp(1, 10 * PAGE),
    );
    let head = head_at_least(&s, after).await;
    if after > head {
        return Ok(position_ahead(after, head));
    }
    let store = Arc::clone(&s.store);
    let items = tokio::task::spawn_blocking(move || store.revocations_after(after, limit))
        .await
        .map_err(|_| err(Code::ServerError, "could not read the revocation log"))??;
    // The log may hold what this broker has not heard of yet (another
    // broker's revocation, a moment ago): the head is never behind it.
    let head = items.last().map_or(head, |r| head.max(r.seq));
    let items: Vec<Value> = items.iter().map(|r| reader.view(r)).collect();
    Ok(Json(json!({"head": head, "revocations": items})).into_response())
}

/// The log's head as this broker knows it; if a reader is past it (it saw
/// another broker's revocation this one has not heard of yet), read the
/// store's log first ([`crate::follow::catch_up`]).
async fn head_at_least(s: &S, after: u64) -> u64 {
    let head = s.reg().revocation_seq;
    if after <= head {
        return head;
    }
    let st = Arc::clone(s);
    if let Ok(Err(e)) =
        tokio::task::spawn_blocking(move || crate::follow::catch_up_if_idle(&st)).await
    {
        tracing::warn!("cannot read the revocation log: {e}");
    }
    s.reg().revocation_seq
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
    reader: FeedReader,
    last: u64,
    rx: tokio::sync::broadcast::Receiver<Revocation>,
    backlog: VecDeque<Revocation>,
    catch_up: bool,
    /// Whether the end of the catch-up was announced.
    announced: bool,
}

fn event(reader: &FeedReader, r: &Revocation) -> Event {
    Event::default()
        .id(r.seq.to_string())
        .event("revocation")
        .json_data(reader.view(r))
        .unwrap_or_else(|_| Event::default().comment("unencodable revocation"))
}

/// `GET /v1/revocations/feed`: Server-Sent Events from `Last-Event-ID` (or
/// `?after=N`, default 0), then live; 409 `position_ahead` if that is past
/// the log's head.
pub async fn feed(
    State(s): State<S>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let reader = require_feed_reader(&s, &headers)?;
    let q: FeedQuery = query_of(&uri)?;
    let after = last_event_id(&headers)?.or(q.after).unwrap_or(0);
    let head = head_at_least(&s, after).await;
    if after > head {
        return Ok(position_ahead(after, head));
    }
    // Subscribe before reading the log, so nothing falls between the two.
    let rx = s.revocations.subscribe();
    let st = Follow {
        s,
        reader,
        last: after,
        rx,
        backlog: VecDeque::new(),
        catch_up: true,
        announced: false,
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            // A credential revoked or expired since it connected ends the feed.
            if st.reader.still_valid(&st.s, st.s.now_secs()).is_err() {
                return None;
            }
            if let Some(r) = st.backlog.pop_front() {
                if r.seq <= st.last {
                    continue;
                }
                st.last = r.seq;
                return Some((Ok::<_, Infallible>(event(&st.reader, &r)), st));
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
            match tokio::time::timeout(RECHECK, st.rx.recv()).await {
                Err(_) => {}
                Ok(Ok(r)) if r.seq == st.last + 1 => st.backlog.push_back(r),
                Ok(Ok(r)) if r.seq > st.last => st.catch_up = true,
                Ok(Ok(_)) => {}
                Ok(Err(RecvError::Lagged(_))) => st.catch_up = true,
                Ok(Err(RecvError::Closed)) => return None,
            }
        }
    });
    // A comment every 15 s (axum's default): verifiers take it as proof
    // that they are up to date.
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Body of `POST /v1/feed-tokens` (may be empty).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewFeedToken {
    /// Limit it to this tenant's revocations (and the kill switch).
    #[serde(default)]
    tenant: Option<String>,
    /// Seconds it lives (default [`FEED_DEFAULT_TTL`]).
    #[serde(default)]
    ttl_secs: Option<u64>,
}

/// `POST /v1/feed-tokens`: a credential that can read the revocation log and
/// feed, and nothing else, for a tool's verifiers. Shown once; stored hashed.
pub async fn create_feed_token(
    State(s): State<S>,
    _: Admin,
    axum::extract::ConnectInfo(addr): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    raw: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(axum::http::StatusCode, axum::Json<serde_json::Value>), ApiError> {
    let raw = super::body(raw, s.config.max_body)?;
    let req: NewFeedToken = if raw.iter().all(u8::is_ascii_whitespace) {
        NewFeedToken::default()
    } else {
        super::json_body(&raw)?
    };
    let ttl = req.ttl_secs.unwrap_or(FEED_DEFAULT_TTL);
    if ttl == 0 || ttl > FEED_MAX_TTL {
        return Err(err(
            Code::InvalidRequest,
            format!("`ttl_secs` must be from 1 to {FEED_MAX_TTL} (one year)"),
        ));
    }
    if let Some(t) = &req.tenant
        && !s.reg().tenants.contains_key(t)
    {
        return Err(err(
            Code::NotFound,
            format!(
                "tenant `{}` not found",
                t.chars().take(64).collect::<String>()
            ),
        ));
    }
    let origin = crate::origin::Origin {
        client: addr,
        correlation_id: super::correlation_id(&headers),
    };
    let made = crate::services::feed_tokens::create(&s, req.tenant.clone(), ttl, &origin).await?;
    let (id, token, expires_at) = (made.id, made.token, made.expires_at);
    Ok((
        axum::http::StatusCode::CREATED,
        axum::Json(
            serde_json::json!({"id": id, "token": token, "tenant": req.tenant, "expires_at": expires_at}),
        ),
    ))
}
