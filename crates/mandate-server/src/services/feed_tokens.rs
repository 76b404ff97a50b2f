//! Feed-reader credentials (`POST /v1/feed-tokens`): they read the
//! revocation log and feed, nothing else, for a tool's verifiers. Shown
//! once, stored hashed, audited.

use mandate_core::model::AdminToken;
use mandate_store::{Entry, Mutation};

use crate::error::ApiError;
use crate::origin::Origin;
use crate::state::AppState;

/// Prefix of feed-reader credentials.
pub const FEED_TOKEN_PREFIX: &str = "mandate_feed_";

/// A feed credential: reads the revocation log and feed, nothing else.
#[derive(Clone)]
pub struct FeedCredential {
    /// Its id (`feed_...`): `cred:<id>` revokes it.
    pub id: String,
    /// SHA-256 of the token.
    pub hash: Vec<u8>,
    /// The tenant it is limited to (`None`: every tenant).
    pub tenant: Option<String>,
    /// Expiry (seconds; 0 = never, for credentials made before expiries).
    pub expires_at: u64,
}

impl FeedCredential {
    /// From its stored record.
    pub fn from_record(t: &AdminToken) -> Self {
        Self {
            id: t.id.clone(),
            hash: t.hash.clone(),
            tenant: t.tenant.clone(),
            expires_at: t.expires_at,
        }
    }
}

/// A new feed credential, shown once.
pub struct NewFeedCredential {
    /// Its id (`feed_...`): `cred:<id>` revokes it.
    pub id: String,
    /// The credential itself.
    pub token: String,
    /// Its expiry (seconds).
    pub expires_at: u64,
}

impl std::fmt::Debug for NewFeedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewFeedCredential")
            .field("id", &self.id)
            .field("token", &"[redacted]")
            .finish()
    }
}

/// Makes a feed credential for `tenant` (every tenant: `None`) that lives
/// `ttl` seconds; its event is durable before it is handed out.
pub async fn create(
    s: &AppState,
    tenant: Option<String>,
    ttl: u64,
    origin: &Origin,
) -> Result<NewFeedCredential, ApiError> {
    let expires_at = s.now_secs() + ttl;
    let secret = mandate_core::secret::Secret::random(&mut rand_core::OsRng, 32);
    let token = format!(
        "{}{}",
        FEED_TOKEN_PREFIX,
        mandate_core::jose::b64(secret.expose())
    );
    let id = format!(
        "{}{}",
        crate::boot::FEED_ID_PREFIX,
        &mandate_core::ids::random_id(&mut rand_core::OsRng, "")[..12]
    );
    let hash = crate::boot::token_hash(&token);
    let ev = mandate_core::audit::EventBody {
        time_ms: s.now_ms(),
        event_type: mandate_core::audit::EventType::FeedTokenCreate,
        decision: mandate_core::audit::Decision::Ok,
        tenant: tenant.clone(),
        actor: Some("admin".into()),
        credential_id: Some(id.clone()),
        correlation_id: Some(origin.correlation_id.clone()),
        client_addr: origin.client_addr(),
        ..Default::default()
    };
    s.commit(Entry {
        mutation: Some(Mutation::PutAdminToken(AdminToken {
            id: id.clone(),
            hash: hash.clone(),
            created_ms: s.now_ms(),
            tenant: tenant.clone(),
            expires_at,
        })),
        events: vec![ev],
    })
    .await?;
    s.feed_credentials
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .push(FeedCredential {
            id: id.clone(),
            hash,
            tenant: tenant.clone(),
            expires_at,
        });
    Ok(NewFeedCredential {
        id,
        token,
        expires_at,
    })
}
