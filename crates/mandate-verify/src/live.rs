//! A [`Verifier`] kept current: the broker's metadata (RFC 8414) and JWKS
//! fetched at start and again when a credential names an unknown `kid` (at
//! most once per [`JWKS_MIN_INTERVAL`]), and revocations followed on the
//! broker's feed (`GET /v1/revocations/feed`, Server-Sent Events, resumed
//! with `Last-Event-ID`). While the stream is down the log
//! (`/v1/revocations/log?after=N`) is polled, so a reconnect misses nothing.
//!
//! Events are checked before they are applied: the `id` must be a sequence
//! number above the last one applied and equal the event's own `seq`, and the
//! revoked id must be one the broker issues (`cred:`, `run:`, `agent:`,
//! `principal:`, `grant:`, `tenant:`, `block:`, `everything:`); anything else is
//! ignored and counted ([`Live::ignored_events`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::{Identity, Request, Verifier, VerifyError};

/// Shortest time between two JWKS fetches caused by unknown `kid`s.
pub const JWKS_MIN_INTERVAL: Duration = Duration::from_secs(5);
/// A feed silent for this long is reconnected (the broker sends a comment every 15 s).
pub const FEED_IDLE: Duration = Duration::from_secs(45);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
use mandate_core::revocation::KINDS;

/// Where the broker is, and how to read its feed.
#[derive(Clone)]
pub struct LiveConfig {
    /// The broker's URL (its issuer).
    pub broker: String,
    /// This tool's audience URI.
    pub audience: String,
    /// A feed credential (`mandate feed-token create`).
    pub feed_token: String,
}

impl std::fmt::Debug for LiveConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveConfig")
            .field("broker", &self.broker)
            .field("audience", &self.audience)
            .field("feed_token", &"[redacted]")
            .finish()
    }
}

/// Talking to the broker failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("broker: {0}")]
pub struct LiveError(pub String);

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// A verifier that keeps itself current. Cheap to share (`Arc`).
pub struct Live {
    verifier: RwLock<Verifier>,
    client: HttpClient,
    broker: String,
    jwks_uri: String,
    feed_token: String,
    seq: AtomicU64,
    streaming: AtomicBool,
    ignored: AtomicU64,
    last_jwks: Mutex<Option<Instant>>,
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

async fn get_json(c: &HttpClient, url: &str, bearer: Option<&str>) -> Result<Value, LiveError> {
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
    let body = tokio::time::timeout(REQUEST_TIMEOUT, resp.into_body().collect())
        .await
        .map_err(|_| LiveError(format!("{url}: body not received within 10 s")))?
        .map_err(|e| LiveError(format!("{url}: {e}")))?
        .to_bytes();
    let v: Value = serde_json::from_slice(&body)
        .map_err(|_| LiveError(format!("{url}: answered {status} without JSON")))?;
    if !status.is_success() {
        return Err(LiveError(format!(
            "{url}: {status}: {}",
            v["error_description"].as_str().unwrap_or("")
        )));
    }
    Ok(v)
}

impl Live {
    /// Fetches the broker's metadata, JWKS and revocation log, then follows
    /// the feed in a background task (needs a Tokio runtime).
    pub async fn start(cfg: LiveConfig) -> Result<Arc<Live>, LiveError> {
        let client = client();
        let broker = cfg.broker.trim_end_matches('/').to_owned();
        let meta = get_json(
            &client,
            &format!("{broker}/.well-known/oauth-authorization-server"),
            None,
        )
        .await?;
        let issuer = meta["issuer"]
            .as_str()
            .ok_or_else(|| LiveError("the metadata has no `issuer`".into()))?;
        let jwks_uri = meta["jwks_uri"]
            .as_str()
            .ok_or_else(|| LiveError("the metadata has no `jwks_uri`".into()))?
            .to_owned();
        let mut v = Verifier::new(issuer, &cfg.audience);
        let jwks = get_json(&client, &jwks_uri, None).await?;
        if v.set_jwks(&jwks) == 0 {
            return Err(LiveError("the JWKS holds no usable key".into()));
        }
        let live = Arc::new(Live {
            verifier: RwLock::new(v),
            client,
            broker,
            jwks_uri,
            feed_token: cfg.feed_token,
            seq: AtomicU64::new(0),
            streaming: AtomicBool::new(false),
            ignored: AtomicU64::new(0),
            // The first unknown kid may refetch at once; later ones are rate-limited.
            last_jwks: Mutex::new(None),
        });
        live.catch_up().await?;
        tokio::spawn(Arc::clone(&live).follow());
        Ok(live)
    }

    /// Verifies a request; an unknown `kid` refreshes the JWKS once first
    /// (the broker rotated its keys).
    pub async fn verify(&self, req: &Request<'_>, now: u64) -> Result<Identity, VerifyError> {
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

    async fn refresh_jwks(&self) -> bool {
        {
            let mut last = self.last_jwks.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < JWKS_MIN_INTERVAL) {
                return false;
            }
            *last = Some(Instant::now());
        }
        match get_json(&self.client, &self.jwks_uri, None).await {
            Ok(jwks) => {
                let mut v = self.verifier.write().unwrap_or_else(|p| p.into_inner());
                v.set_jwks(&jwks) > 0
            }
            Err(_) => false,
        }
    }

    /// Applies one revocation if it is the next one and well formed.
    fn apply(&self, seq: u64, key: &str) -> bool {
        let ok = seq > self.position()
            && key.len() <= 512
            && !key.chars().any(char::is_control)
            && KINDS
                .iter()
                .any(|k| key.starts_with(k) && key.len() > k.len());
        if !ok {
            self.ignored.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.verifier
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .revoke(key);
        self.seq.store(seq, Ordering::Release);
        true
    }

    fn apply_json(&self, r: &Value, id: Option<u64>) -> bool {
        match (r["seq"].as_u64(), r["key"].as_str()) {
            (Some(seq), Some(key)) if id.is_none_or(|i| i == seq) => self.apply(seq, key),
            _ => {
                self.ignored.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Reads the log from the current position to its end.
    async fn catch_up(&self) -> Result<(), LiveError> {
        loop {
            let url = format!(
                "{}/v1/revocations/log?after={}&limit=1000",
                self.broker,
                self.position()
            );
            let v = get_json(&self.client, &url, Some(&self.feed_token)).await?;
            let page = v["revocations"].as_array().cloned().unwrap_or_default();
            if page.is_empty() {
                return Ok(());
            }
            let before = self.position();
            for r in &page {
                self.apply_json(r, None);
            }
            if self.position() == before {
                return Ok(());
            }
        }
    }

    async fn follow(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let connected_at = Instant::now();
            let _ = self.stream().await;
            self.streaming.store(false, Ordering::Relaxed);
            if connected_at.elapsed() > Duration::from_secs(5) {
                backoff = Duration::from_millis(100);
            }
            // Nothing is missed while the stream is down: the log is read.
            let _ = self.catch_up().await;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
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
            return Err(LiveError(format!("the feed answered {}", resp.status())));
        }
        self.streaming.store(true, Ordering::Relaxed);
        let mut body = resp.into_body();
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
                self.dispatch(&block);
            }
        }
    }

    /// One SSE event block (WHATWG HTML §9.2.6): `id`, `event`, `data` lines.
    fn dispatch(&self, block: &str) {
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
            return; // a keep-alive
        }
        let id = id.and_then(|i| i.parse::<u64>().ok());
        match (kind, id, serde_json::from_str::<Value>(&data)) {
            ("revocation", Some(id), Ok(v)) => {
                self.apply_json(&v, Some(id));
            }
            _ => {
                self.ignored.fetch_add(1, Ordering::Relaxed);
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
            seq: AtomicU64::new(0),
            streaming: AtomicBool::new(false),
            ignored: AtomicU64::new(0),
            last_jwks: Mutex::new(None),
        }
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
