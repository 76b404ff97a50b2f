//! A [`Verifier`] kept current: the broker's metadata (RFC 8414) and JWKS
//! fetched at start and again when a credential names an unknown `kid` (at
//! most once per [`JWKS_MIN_INTERVAL`]), and revocations followed on the
//! broker's feed (`GET /v1/revocations/feed`, Server-Sent Events, resumed
//! with `Last-Event-ID`). While the stream is down the log
//! (`/v1/revocations/log?after=N`) is polled, so a reconnect misses nothing.
//!
//! Against a broker or network that lies or loses its memory:
//!
//! - events are applied only in order: an event must be the next sequence
//!   number (`position + 1`), its `id` must equal its own `seq`, and the
//!   revoked id must be one the broker issues (`cred:`, `run:`, `agent:`,
//!   `principal:`, `grant:`, `tenant:`, `block:`, `everything:`); anything
//!   else is ignored and counted ([`Live::ignored_events`]), and a gap makes
//!   the verifier read the log from its position;
//! - before reading the log on from its position, the verifier checks that
//!   the log still holds, at that position, the entry it applied there; if
//!   not, or if the broker says the position is past its head (a restore
//!   from a backup), it reads the whole log again from 0, keeping what it
//!   has (revocations are only ever added);
//! - answers are bounded ([`METADATA_LIMIT`], [`LOG_PAGE_LIMIT`],
//!   [`crate::MAX_JWKS_KEYS`]);
//! - a plain `http://` broker is refused unless it is on this host
//!   (loopback) or [`LiveConfig::allow_http`] is set;
//! - it fails closed: past [`LiveConfig::max_staleness`] without being
//!   brought up to date, [`Live::verify`] refuses with
//!   [`VerifyError::Stale`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::StatusCode;
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::{Identity, MAX_JWKS_KEYS, Request, Verifier, VerifyError};

/// Shortest time between two JWKS fetches caused by unknown `kid`s.
pub const JWKS_MIN_INTERVAL: Duration = Duration::from_secs(5);
/// A feed silent for this long is reconnected (the broker sends a comment every 15 s).
pub const FEED_IDLE: Duration = Duration::from_secs(45);
/// Default [`LiveConfig::max_staleness`]: 20 of the broker's 15 s keep-alives.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(300);
/// The most a metadata or JWKS answer may weigh.
pub const METADATA_LIMIT: usize = 1 << 20;
/// The most one page of the revocation log may weigh.
pub const LOG_PAGE_LIMIT: usize = 4 << 20;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const LOG_PAGE: u32 = 1000;

/// Where the broker is, and how to read its feed.
#[derive(Clone)]
pub struct LiveConfig {
    /// The broker's URL (its issuer). `https://`, or `http://` on this host.
    pub broker: String,
    /// This tool's audience URI.
    pub audience: String,
    /// A feed credential (`mandate feed-token create`).
    pub feed_token: String,
    /// How long the revocations may go without being brought up to date
    /// (a log read or a feed message, keep-alives included) before
    /// [`Live::verify`] refuses every credential: it fails closed.
    /// Default [`DEFAULT_MAX_STALENESS`]; keep it well above 15 s.
    pub max_staleness: Duration,
    /// Accept a plain `http://` broker on another host (the feed
    /// credential and the revocations then travel in clear). Off by default.
    pub allow_http: bool,
    /// Where the middleware takes the time from ([`Live::now`]); the
    /// system clock by default, a manual one in tests.
    pub clock: std::sync::Arc<dyn mandate_core::clock::Clock>,
}

impl LiveConfig {
    /// A configuration with the defaults (5 minutes of staleness, `https://` only).
    pub fn new(broker: &str, audience: &str, feed_token: &str) -> Self {
        Self {
            broker: broker.to_owned(),
            audience: audience.to_owned(),
            feed_token: feed_token.to_owned(),
            max_staleness: DEFAULT_MAX_STALENESS,
            allow_http: false,
            clock: std::sync::Arc::new(mandate_core::clock::SystemClock),
        }
    }
}

impl std::fmt::Debug for LiveConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveConfig")
            .field("broker", &self.broker)
            .field("audience", &self.audience)
            .field("feed_token", &"[redacted]")
            .field("max_staleness", &self.max_staleness)
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

/// Talking to the broker failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("broker: {0}")]
pub struct LiveError(pub String);

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The last revocation applied: its sequence number and key.
#[derive(Debug, Default)]
struct Cursor {
    seq: u64,
    key: String,
}

/// When the revocations were last known current, and the last failure since.
#[derive(Debug)]
struct SyncState {
    at: Instant,
    last_error: Option<String>,
}

/// What one feed event did.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Applied,
    KeepAlive,
    /// A sequence number beyond the next one: read the log.
    Gap,
    Ignored,
}

/// One page of the log, or the broker saying our position is past its head.
enum Page {
    Items { head: u64, items: Vec<Value> },
    Ahead,
}

/// A verifier that keeps itself current. Cheap to share (`Arc`).
pub struct Live {
    verifier: RwLock<Verifier>,
    client: HttpClient,
    broker: String,
    jwks_uri: String,
    feed_token: String,
    cursor: Mutex<Cursor>,
    seq: AtomicU64,
    streaming: AtomicBool,
    ignored: AtomicU64,
    last_jwks: Mutex<Option<Instant>>,
    max_staleness: Duration,
    sync: Mutex<SyncState>,
    clock: std::sync::Arc<dyn mandate_core::clock::Clock>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("broker", &self.broker)
            .field("position", &self.position())
            .field("streaming", &self.is_streaming())
            .finish()
    }
}

fn client() -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(REQUEST_TIMEOUT));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(https)
}

/// `https://`, or `http://` to this host (127.0.0.0/8, `::1`, `localhost`)
/// or with `allow_http`.
fn check_url(url: &str, allow_http: bool) -> Result<(), LiveError> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| LiveError(format!("`{url}` is not a URL: {e}")))?;
    let host = uri.host().unwrap_or("");
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(()),
        Some("http") if allow_http || is_loopback(host) => Ok(()),
        Some("http") => Err(LiveError(format!(
            "`{url}`: a broker on another host must be reached over https (or set `allow_http`)"
        ))),
        _ => Err(LiveError(format!("`{url}` is not an https URL"))),
    }
}

use mandate_core::client::is_loopback_host as is_loopback;

/// GET `url`: the status and the JSON body, read up to `limit` bytes.
async fn fetch(
    c: &HttpClient,
    url: &str,
    bearer: Option<&str>,
    limit: usize,
) -> Result<(StatusCode, Value), LiveError> {
    let mut b = hyper::Request::get(url);
    if let Some(t) = bearer {
        b = b.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = b
        .body(Empty::new())
        .map_err(|e| LiveError(format!("{url}: {e}")))?;
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, c.request(req))
        .await
        .map_err(|_| LiveError(format!("{url}: no answer within 10 s")))?
        .map_err(|e| LiveError(format!("{url}: {e}")))?;
    let status = resp.status();
    let body = tokio::time::timeout(
        REQUEST_TIMEOUT,
        Limited::new(resp.into_body(), limit).collect(),
    )
    .await
    .map_err(|_| LiveError(format!("{url}: body not received within 10 s")))?
    .map_err(|e| {
        if e.is::<http_body_util::LengthLimitError>() {
            LiveError(format!("{url}: answer larger than {limit} bytes"))
        } else {
            LiveError(format!("{url}: {e}"))
        }
    })?
    .to_bytes();
    let v: Value = serde_json::from_slice(&body)
        .map_err(|_| LiveError(format!("{url}: answered {status} without JSON")))?;
    Ok((status, v))
}

/// GET `url`, which must answer 2xx with JSON of at most `limit` bytes.
async fn get_json(
    c: &HttpClient,
    url: &str,
    bearer: Option<&str>,
    limit: usize,
) -> Result<Value, LiveError> {
    let (status, v) = fetch(c, url, bearer, limit).await?;
    if !status.is_success() {
        return Err(LiveError(format!(
            "{url}: {status}: {}",
            v["error_description"].as_str().unwrap_or("")
        )));
    }
    Ok(v)
}

/// A JWKS of at most [`MAX_JWKS_KEYS`] keys.
async fn get_jwks(c: &HttpClient, url: &str) -> Result<Value, LiveError> {
    let jwks = get_json(c, url, None, METADATA_LIMIT).await?;
    let n = jwks["keys"].as_array().map_or(0, Vec::len);
    if n > MAX_JWKS_KEYS {
        return Err(LiveError(format!(
            "{url}: {n} keys, more than the {MAX_JWKS_KEYS} a broker publishes"
        )));
    }
    Ok(jwks)
}

fn auth_refused(status: StatusCode) -> bool {
    status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN
}

impl Live {
    /// Fetches the broker's metadata, JWKS and revocation log, then follows
    /// the feed in a background task (needs a Tokio runtime).
    pub async fn start(cfg: LiveConfig) -> Result<Arc<Live>, LiveError> {
        check_url(&cfg.broker, cfg.allow_http)?;
        let client = client();
        let broker = cfg.broker.trim_end_matches('/').to_owned();
        let meta = get_json(
            &client,
            &format!("{broker}/.well-known/oauth-authorization-server"),
            None,
            METADATA_LIMIT,
        )
        .await?;
        let issuer = meta["issuer"]
            .as_str()
            .ok_or_else(|| LiveError("the metadata has no `issuer`".into()))?;
        let jwks_uri = meta["jwks_uri"]
            .as_str()
            .ok_or_else(|| LiveError("the metadata has no `jwks_uri`".into()))?
            .to_owned();
        check_url(&jwks_uri, cfg.allow_http)?;
        let mut v = Verifier::new(issuer, &cfg.audience);
        if v.set_jwks(&get_jwks(&client, &jwks_uri).await?) == 0 {
            return Err(LiveError("the JWKS holds no usable key".into()));
        }
        let live = Arc::new(Live {
            verifier: RwLock::new(v),
            client,
            broker,
            jwks_uri,
            feed_token: cfg.feed_token,
            cursor: Mutex::default(),
            seq: AtomicU64::new(0),
            streaming: AtomicBool::new(false),
            ignored: AtomicU64::new(0),
            // The first unknown kid may refetch at once; later ones are rate-limited.
            last_jwks: Mutex::new(None),
            max_staleness: cfg.max_staleness,
            sync: Mutex::new(SyncState {
                at: Instant::now(),
                last_error: None,
            }),
            clock: cfg.clock,
        });
        live.catch_up().await?;
        tokio::spawn(Arc::clone(&live).follow());
        Ok(live)
    }

    /// Now (seconds since the Unix epoch), from the configured clock.
    pub fn now(&self) -> u64 {
        self.clock.now_secs()
    }

    /// Verifies a request; an unknown `kid` refreshes the JWKS once first
    /// (the broker rotated its keys). Refuses everything while the
    /// revocations are stale ([`LiveConfig::max_staleness`]).
    pub async fn verify(&self, req: &Request<'_>, now: u64) -> Result<Identity, VerifyError> {
        self.fresh()?;
        let first = self.read().verify(req, now);
        match first {
            Err(VerifyError::UnknownKey(_)) if self.refresh_jwks().await => {
                self.read().verify(req, now)
            }
            other => other,
        }
    }

    /// The last revocation sequence number applied.
    pub fn position(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// When the revocations were last known to be current: the last
    /// complete read of the log, or the last message or keep-alive of the feed.
    pub fn last_synced(&self) -> Instant {
        self.sync_state().at
    }

    /// Whether the feed stream is connected now (else the log is polled).
    pub fn is_streaming(&self) -> bool {
        self.streaming.load(Ordering::Relaxed)
    }

    /// Events refused as not well formed, out of order or of an unknown kind.
    pub fn ignored_events(&self) -> u64 {
        self.ignored.load(Ordering::Relaxed)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Verifier> {
        self.verifier.read().unwrap_or_else(|p| p.into_inner())
    }

    fn sync_state(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.sync.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The revocations are current now.
    fn synced(&self) {
        let mut s = self.sync_state();
        s.at = Instant::now();
        s.last_error = None;
    }

    fn failed(&self, e: &LiveError) {
        self.sync_state().last_error = Some(e.0.clone());
    }

    /// Refuses when the revocations were last current too long ago.
    fn fresh(&self) -> Result<(), VerifyError> {
        let s = self.sync_state();
        let age = s.at.elapsed();
        if age <= self.max_staleness {
            return Ok(());
        }
        Err(VerifyError::Stale(format!(
            "last brought up to date {} s ago (at most {} s allowed); last error: {}",
            age.as_secs(),
            self.max_staleness.as_secs(),
            s.last_error.as_deref().unwrap_or("none"),
        )))
    }

    async fn refresh_jwks(&self) -> bool {
        {
            let mut last = self.last_jwks.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < JWKS_MIN_INTERVAL) {
                return false;
            }
            *last = Some(Instant::now());
        }
        match get_jwks(&self.client, &self.jwks_uri).await {
            Ok(jwks) => {
                let mut v = self.verifier.write().unwrap_or_else(|p| p.into_inner());
                v.set_jwks(&jwks) > 0
            }
            Err(_) => false,
        }
    }

    fn cursor(&self) -> std::sync::MutexGuard<'_, Cursor> {
        self.cursor.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one revocation if it is the next one and well formed.
    /// Applies entry `seq`: revokes `key`, or only moves on for a
    /// placeholder (`None`: another tenant's revocation, which a feed
    /// credential limited to a tenant sees as `{"seq": N, "redacted": true}`).
    fn apply(&self, seq: u64, key: Option<&str>) -> Outcome {
        let well_formed = key.is_none_or(|key| mandate_core::revocation::parse_id(key).is_some());
        let mut cursor = self.cursor();
        if !well_formed || seq <= cursor.seq {
            self.ignored.fetch_add(1, Ordering::Relaxed);
            return Outcome::Ignored;
        }
        if seq != cursor.seq + 1 {
            self.ignored.fetch_add(1, Ordering::Relaxed);
            return Outcome::Gap;
        }
        if let Some(key) = key {
            self.verifier
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .revoke(key);
        }
        *cursor = Cursor {
            seq,
            key: key.unwrap_or_default().to_owned(),
        };
        self.seq.store(seq, Ordering::Release);
        Outcome::Applied
    }

    fn apply_json(&self, r: &Value, id: Option<u64>) -> Outcome {
        let key = match r["redacted"] {
            Value::Bool(true) => Some(None),
            _ => r["key"].as_str().map(Some),
        };
        match (r["seq"].as_u64(), key) {
            (Some(seq), Some(key)) if id.is_none_or(|i| i == seq) => self.apply(seq, key),
            _ => {
                self.ignored.fetch_add(1, Ordering::Relaxed);
                Outcome::Ignored
            }
        }
    }

    /// Starts over from 0, keeping the revocations already known.
    fn rewind(&self, why: &str) {
        tracing::warn!(
            broker = %self.broker,
            position = self.position(),
            "the broker's revocation log {why}; reading it again from the start"
        );
        *self.cursor() = Cursor::default();
        self.seq.store(0, Ordering::Release);
    }

    /// One page of the log after `after`.
    async fn page(&self, after: u64, limit: u32) -> Result<Page, LiveError> {
        let url = format!(
            "{}/v1/revocations/log?after={after}&limit={limit}",
            self.broker
        );
        let (status, v) = fetch(&self.client, &url, Some(&self.feed_token), LOG_PAGE_LIMIT).await?;
        if status == StatusCode::CONFLICT && v["error"] == "position_ahead" {
            return Ok(Page::Ahead);
        }
        if !status.is_success() {
            let e = LiveError(format!(
                "{url}: {status}: {}",
                v["error_description"].as_str().unwrap_or("")
            ));
            self.refused(status, &e);
            return Err(e);
        }
        let head = v["head"]
            .as_u64()
            .ok_or_else(|| LiveError(format!("{url}: the answer has no `head`")))?;
        let items = match v {
            Value::Object(mut o) => match o.remove("revocations") {
                Some(Value::Array(a)) => a,
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        Ok(Page::Items { head, items })
    }

    /// A 401 or 403 never heals by itself (the feed credential was revoked
    /// or is wrong): said loudly.
    fn refused(&self, status: StatusCode, e: &LiveError) {
        if auth_refused(status) {
            tracing::error!(
                broker = %self.broker,
                "the broker refuses this verifier's feed credential ({e}); revocations are no longer followed and verification will fail closed: configure a valid feed credential"
            );
        }
    }

    /// Whether the log still holds, at our position, the entry we applied
    /// there (else the broker was restored or replaced).
    async fn same_log(&self) -> Result<bool, LiveError> {
        let (seq, key) = {
            let c = self.cursor();
            (c.seq, c.key.clone())
        };
        if seq == 0 {
            return Ok(true);
        }
        Ok(match self.page(seq - 1, 1).await? {
            Page::Ahead => false,
            Page::Items { head, items } => {
                head >= seq
                    && items.first().is_some_and(|r| {
                        r["seq"].as_u64() == Some(seq) && r["key"].as_str().unwrap_or("") == key
                    })
            }
        })
    }

    /// Reads the log from the current position to its head, from 0 if the
    /// log is not the one the position was read from.
    async fn catch_up(&self) -> Result<(), LiveError> {
        if !self.same_log().await? {
            self.rewind("no longer holds the entry at this verifier's position");
        }
        loop {
            let pos = self.position();
            let (head, items) = match self.page(pos, LOG_PAGE).await? {
                Page::Items { head, items } => (head, items),
                Page::Ahead => {
                    self.rewind("ends before this verifier's position");
                    continue;
                }
            };
            for r in &items {
                if self.apply_json(r, None) != Outcome::Applied {
                    return Err(LiveError(format!(
                        "the revocation log is not contiguous after {}",
                        self.position()
                    )));
                }
            }
            if items.is_empty() || self.position() >= head {
                self.synced();
                return Ok(());
            }
        }
    }

    async fn follow(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let connected_at = Instant::now();
            if let Err(e) = self.stream().await {
                self.failed(&e);
            }
            self.streaming.store(false, Ordering::Relaxed);
            if connected_at.elapsed() > Duration::from_secs(5) {
                backoff = Duration::from_millis(100);
            }
            // The stream resumes only after a complete read of the log: nothing
            // is missed while it is down, and a broker restored from a backup
            // meanwhile is noticed (`same_log`) before its events are applied.
            loop {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                match self.catch_up().await {
                    Ok(()) => break,
                    Err(e) => self.failed(&e),
                }
            }
        }
    }

    async fn stream(&self) -> Result<(), LiveError> {
        let req = hyper::Request::get(format!("{}/v1/revocations/feed", self.broker))
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", self.feed_token),
            )
            .header(hyper::header::ACCEPT, "text/event-stream")
            .header("last-event-id", self.position().to_string())
            .body(Empty::new())
            .map_err(|e| LiveError(e.to_string()))?;
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| LiveError("the feed did not answer".into()))?
            .map_err(|e| LiveError(e.to_string()))?;
        if !resp.status().is_success() {
            // 409 (position past the head): the log read that follows rewinds.
            let e = LiveError(format!("the feed answered {}", resp.status()));
            self.refused(resp.status(), &e);
            return Err(e);
        }
        self.streaming.store(true, Ordering::Relaxed);
        self.read_events(resp.into_body()).await
    }

    async fn read_events(&self, mut body: hyper::body::Incoming) -> Result<(), LiveError> {
        let mut buf = String::new();
        loop {
            let frame = match tokio::time::timeout(FEED_IDLE, body.frame()).await {
                Err(_) => return Err(LiveError("the feed went silent".into())),
                Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => return Err(LiveError(e.to_string())),
                Ok(Some(Ok(f))) => f,
            };
            if let Ok(data) = frame.into_data() {
                buf.push_str(&String::from_utf8_lossy(&data));
                if buf.len() > 1 << 20 {
                    return Err(LiveError("an event larger than 1 MiB".into()));
                }
            }
            while let Some(i) = buf.find("\n\n") {
                let block: String = buf.drain(..i + 2).collect();
                match self.dispatch(&block) {
                    Outcome::Applied | Outcome::KeepAlive => self.synced(),
                    Outcome::Gap => self.catch_up().await?,
                    Outcome::Ignored => {}
                }
            }
        }
    }

    /// One SSE event block (WHATWG HTML §9.2.6): `id`, `event`, `data` lines.
    fn dispatch(&self, block: &str) -> Outcome {
        let mut id = None;
        let mut data = String::new();
        let mut kind = "message";
        for line in block.lines() {
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = Some(value),
                "event" => kind = value,
                "data" => {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value);
                }
                _ => {}
            }
        }
        if data.is_empty() && id.is_none() {
            return Outcome::KeepAlive;
        }
        let id = id.and_then(|i| i.parse::<u64>().ok());
        match (kind, id, serde_json::from_str::<Value>(&data)) {
            ("revocation", Some(id), Ok(v)) => self.apply_json(&v, Some(id)),
            _ => {
                self.ignored.fetch_add(1, Ordering::Relaxed);
                Outcome::Ignored
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live() -> Live {
        Live {
            verifier: RwLock::new(Verifier::new("http://b", "https://t")),
            client: client(),
            broker: "http://b".into(),
            jwks_uri: "http://b/jwks.json".into(),
            feed_token: "t".into(),
            cursor: Mutex::default(),
            seq: AtomicU64::new(0),
            streaming: AtomicBool::new(false),
            ignored: AtomicU64::new(0),
            last_jwks: Mutex::new(None),
            clock: std::sync::Arc::new(mandate_core::clock::SystemClock),
            max_staleness: DEFAULT_MAX_STALENESS,
            sync: Mutex::new(SyncState {
                at: Instant::now(),
                last_error: None,
            }),
        }
    }

    #[tokio::test]
    async fn an_event_beyond_the_next_is_not_applied_and_asks_for_the_log() {
        let l = live();
        l.dispatch("id: 1\nevent: revocation\ndata: {\"seq\":1,\"key\":\"run:run_a\"}\n\n");
        // One forged event at the end of the sequence numbers must not make
        // the verifier skip every later revocation.
        let forged = "id: 18446744073709551615\nevent: revocation\ndata: {\"seq\":18446744073709551615,\"key\":\"run:run_x\"}\n\n";
        assert_eq!(l.dispatch(forged), Outcome::Gap);
        assert_eq!(
            l.dispatch("id: 3\nevent: revocation\ndata: {\"seq\":3,\"key\":\"run:run_c\"}\n\n"),
            Outcome::Gap
        );
        assert_eq!(l.position(), 1);
        assert_eq!(
            l.dispatch("id: 2\nevent: revocation\ndata: {\"seq\":2,\"key\":\"run:run_b\"}\n\n"),
            Outcome::Applied
        );
        assert_eq!(l.position(), 2);
        assert_eq!(l.dispatch(": keep-alive\n\n"), Outcome::KeepAlive);
    }

    #[tokio::test]
    async fn another_tenants_placeholder_moves_the_position_and_revokes_nothing() {
        let l = live();
        assert_eq!(
            l.dispatch("id: 1\nevent: revocation\ndata: {\"seq\":1,\"redacted\":true}\n\n"),
            Outcome::Applied
        );
        assert_eq!(
            l.dispatch("id: 2\nevent: revocation\ndata: {\"seq\":2,\"key\":\"run:run_b\"}\n\n"),
            Outcome::Applied
        );
        assert_eq!(l.position(), 2);
        // A placeholder without `redacted: true` and without a key is nothing.
        assert_eq!(
            l.dispatch("id: 3\nevent: revocation\ndata: {\"seq\":3}\n\n"),
            Outcome::Ignored
        );
        assert_eq!(l.position(), 2);
    }

    #[test]
    fn plain_http_is_for_this_host_only_unless_allowed() {
        for ok in [
            "https://broker.example",
            "http://127.0.0.1:8407",
            "http://127.9.9.9",
            "http://[::1]:8407/",
            "http://localhost:8407",
            "http://LOCALHOST",
        ] {
            assert!(check_url(ok, false).is_ok(), "{ok}");
        }
        for bad in [
            "http://broker.example",
            "http://10.0.0.1:8407",
            "http://[::2]",
            "http://localhost.evil.example",
            "ftp://broker.example",
            "broker.example",
        ] {
            assert!(check_url(bad, false).is_err(), "{bad}");
        }
        assert!(check_url("http://broker.example", true).is_ok());
    }

    #[test]
    fn stale_revocations_refuse_and_say_why() {
        let mut l = live();
        l.max_staleness = Duration::from_millis(1);
        l.failed(&LiveError("the feed answered 401 Unauthorized".into()));
        std::thread::sleep(Duration::from_millis(5));
        let e = l.fresh().unwrap_err();
        assert!(
            matches!(&e, VerifyError::Stale(m) if m.contains("401")),
            "{e}"
        );
        l.synced();
        l.max_staleness = DEFAULT_MAX_STALENESS;
        assert!(l.fresh().is_ok());
    }

    #[tokio::test]
    async fn forged_or_out_of_order_events_are_ignored() {
        let l = live();
        l.dispatch("id: 1\nevent: revocation\ndata: {\"seq\":1,\"key\":\"run:run_a\"}\n\n");
        assert_eq!(l.position(), 1);
        for forged in [
            // replayed (not above the position)
            "id: 1\nevent: revocation\ndata: {\"seq\":1,\"key\":\"run:run_b\"}\n\n",
            // id and seq disagree
            "id: 9\nevent: revocation\ndata: {\"seq\":2,\"key\":\"run:run_b\"}\n\n",
            // an id the broker never issues
            "id: 2\nevent: revocation\ndata: {\"seq\":2,\"key\":\"root:everything\"}\n\n",
            // not JSON, no id, another event type
            "id: 2\nevent: revocation\ndata: {not json\n\n",
            "event: revocation\ndata: {\"seq\":2,\"key\":\"run:run_b\"}\n\n",
            "id: 2\nevent: other\ndata: {\"seq\":2,\"key\":\"run:run_b\"}\n\n",
        ] {
            l.dispatch(forged);
        }
        assert_eq!(l.position(), 1);
        assert_eq!(l.ignored_events(), 6);
        l.dispatch(": keep-alive\n\n");
        assert_eq!(l.ignored_events(), 6);
        l.dispatch("id: 2\nevent: revocation\ndata: {\"seq\":2,\"key\":\"everything:100\"}\n\n");
        assert_eq!(l.position(), 2);
    }
}
