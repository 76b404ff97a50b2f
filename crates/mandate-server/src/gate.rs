//! Bounds on the work a presented mandate can make the broker do
//! (issue 10, item 1). Verifying a mandate never cached before costs
//! signature checks and a small Datalog run; it is done:
//!
//! - off the async workers (`spawn_blocking`), so a slow verification never
//!   stalls other requests;
//! - at most [`MAX_CONCURRENT`] at a time across the broker, and at most
//!   [`MAX_PER_CLIENT`] at a time per client address;
//! - once per token: successes are cached until the mandate expires (in
//!   [`crate::state::VerifiedCache`]), failures here by digest for
//!   [`FAILURE_TTL`] seconds (bounded), so a refused token costs a hash
//!   lookup on every later try.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use mandate_core::mandate::{self, MandateClaims};

use crate::error::{ApiError, Code, err};
use crate::state::AppState;

/// Verifications running at once, broker-wide.
pub const MAX_CONCURRENT: usize = 4;
/// Verifications running at once for one client address.
pub const MAX_PER_CLIENT: u32 = 2;
/// How long a refused token's refusal is remembered (seconds).
pub const FAILURE_TTL: u64 = 600;
/// Refusals remembered at most.
const FAILURE_CAP: usize = 50_000;
/// Client addresses tracked at most.
const CLIENTS_CAP: usize = 10_000;

/// How long a request waits for its client's turn before it is refused.
const CLIENT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The limits, and the refusals remembered.
#[derive(Debug)]
pub struct MandateGate {
    slots: Arc<tokio::sync::Semaphore>,
    clients: Mutex<HashMap<IpAddr, Arc<tokio::sync::Semaphore>>>,
    failed: Mutex<HashMap<[u8; 32], (u64, mandate_core::Error)>>,
}

impl Default for MandateGate {
    fn default() -> Self {
        Self {
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT)),
            clients: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
        }
    }
}

impl MandateGate {
    fn remembered_failure(&self, digest: &[u8; 32], now: u64) -> Option<mandate_core::Error> {
        let m = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        m.get(digest)
            .filter(|(until, _)| *until >= now)
            .map(|(_, e)| e.clone())
    }

    fn remember_failure(&self, digest: [u8; 32], e: mandate_core::Error, now: u64) {
        let mut m = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= FAILURE_CAP {
            m.retain(|_, (until, _)| *until >= now);
            if m.len() >= FAILURE_CAP {
                m.clear();
            }
        }
        m.insert(digest, (now + FAILURE_TTL, e));
    }

    /// The client's own semaphore (at most [`MAX_PER_CLIENT`] at once).
    fn client(&self, ip: IpAddr) -> Result<Arc<tokio::sync::Semaphore>, ApiError> {
        let mut m = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= CLIENTS_CAP && !m.contains_key(&ip) {
            // Forget the clients with nothing in flight.
            m.retain(|_, sem| Arc::strong_count(sem) > 1);
            if m.len() >= CLIENTS_CAP {
                return Err(busy());
            }
        }
        Ok(Arc::clone(m.entry(ip).or_insert_with(|| {
            Arc::new(tokio::sync::Semaphore::new(MAX_PER_CLIENT as usize))
        })))
    }
}

fn busy() -> ApiError {
    err(
        Code::Unavailable,
        "too many mandate verifications in flight from this client; retry in a moment",
    )
}

/// A mandate error as the API states it.
pub fn refusal(e: &mandate_core::Error) -> ApiError {
    err(Code::InvalidGrant, e.to_string())
}

/// Verifies a presented mandate within the bounds above: from the caches
/// when it was seen before, otherwise on a blocking thread.
pub async fn verify_mandate(
    s: &Arc<AppState>,
    token: &str,
    now: u64,
    client: IpAddr,
) -> Result<Arc<MandateClaims>, ApiError> {
    let digest = mandate::token_digest(token);
    if let Some(c) = s.cached_mandate(&digest, now) {
        return Ok(c);
    }
    if let Some(e) = s.gate.remembered_failure(&digest, now) {
        return Err(refusal(&e));
    }
    if token.len() > mandate::MAX_MANDATE_LEN {
        return Err(refusal(&mandate_core::Error::Malformed {
            what: "mandate",
            reason: format!("longer than {} bytes", mandate::MAX_MANDATE_LEN),
        }));
    }
    // One client waits for its own turn (a short while), then for the
    // broker's: a client cannot take every verification slot.
    let mine = s.gate.client(client)?;
    let _client = tokio::time::timeout(CLIENT_WAIT, mine.acquire_owned())
        .await
        .map_err(|_| busy())?
        .map_err(|_| busy())?;
    let _slot = Arc::clone(&s.gate.slots)
        .acquire_owned()
        .await
        .map_err(|_| busy())?;
    // Verified by another request while this one waited?
    if let Some(c) = s.cached_mandate(&digest, now) {
        return Ok(c);
    }
    if let Some(e) = s.gate.remembered_failure(&digest, now) {
        return Err(refusal(&e));
    }
    let state = Arc::clone(s);
    let owned = token.to_owned();
    let result = tokio::task::spawn_blocking(move || state.verify_mandate(&owned, now))
        .await
        .map_err(|_| err(Code::ServerError, "mandate verification failed"))?;
    result.map_err(|e| {
        s.gate.remember_failure(digest, e.clone(), now);
        refusal(&e)
    })
}
