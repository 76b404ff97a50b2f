//! Credential providers: how a tool's credentials are made. Each kind
//! ([`ProviderKind`]) is one implementation of [`Provider`] in its own file;
//! the exchange service, registration, the exec socket and `tools list`
//! only ever talk to the trait. Adding a provider is a new file here, a
//! variant of [`ProviderKind`] and a line in [`of`].

mod jwt;
pub use jwt::TOKEN_TYPE_ACCESS;
pub use postgres::TOKEN_TYPE_POSTGRES;
mod mcp;
mod postgres;
mod proxy;

use std::future::Future;
use std::pin::Pin;

use mandate_core::credential::AccessClaims;
use mandate_core::model::{Lease, Tool};
use mandate_core::tooling::{PostgresSpec, ProviderKind, ProxySpec};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::state::AppState;

/// The provider of `kind` (the one registration line per provider).
pub fn of(kind: ProviderKind) -> &'static dyn Provider {
    match kind {
        ProviderKind::Jwt => &jwt::Jwt,
        ProviderKind::Proxy => &proxy::Proxy,
        ProviderKind::Postgres => &postgres::Postgres,
        ProviderKind::Mcp => &mcp::Mcp,
    }
}

/// A future a provider returns (the trait is used as `dyn`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How an exchange proved possession of the run's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pop {
    /// A DPoP proof (RFC 9449).
    Dpop,
    /// An HTTP message signature (RFC 9421).
    MessageSignature,
}

impl Pop {
    /// The name in the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            Pop::Dpop => "dpop",
            Pop::MessageSignature => "httpsig",
        }
    }
}

/// A registration's provider settings, to check.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    /// The tool's actions.
    pub actions: &'a [String],
    /// `proxy` settings, if given.
    pub proxy: Option<&'a ProxySpec>,
    /// `postgres` settings, if given.
    pub postgres: Option<&'a PostgresSpec>,
    /// `mcp` settings, if given.
    pub mcp: Option<&'a mandate_core::mcp::McpSpec>,
    /// The tenant registering it.
    pub tenant: &'a str,
    /// The stdio MCP servers the broker's operator allows.
    pub stdio: &'a crate::mcp_client::stdio::Commands,
}

impl Settings<'_> {
    /// The kinds whose settings were given.
    fn given(&self) -> Vec<ProviderKind> {
        let mut v = Vec::new();
        if self.proxy.is_some() {
            v.push(ProviderKind::Proxy);
        }
        if self.postgres.is_some() {
            v.push(ProviderKind::Postgres);
        }
        if self.mcp.is_some() {
            v.push(ProviderKind::Mcp);
        }
        v
    }

    /// Refuses settings of any provider other than `kind`.
    pub fn only(&self, kind: ProviderKind) -> Result<(), String> {
        match self.given().into_iter().find(|k| *k != kind) {
            Some(_) => Err(format!(
                "a `{kind}` tool takes only its own provider's settings"
            )),
            None => Ok(()),
        }
    }
}

/// What a provider needs, decided before policy runs, to make a credential
/// for these actions (the `postgres` provider: the roles they map to).
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// Database roles the credential joins.
    pub roles: Vec<String>,
}

/// What is made durable with the issuance event, before the credential exists.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// A lease the broker must end later (a database role).
    pub lease: Option<Lease>,
    /// What the audit event says about it.
    pub details: Value,
}

/// A credential as the token endpoint returns it (RFC 8693 §2.2.1).
pub struct Credential {
    /// `access_token`.
    pub access_token: zeroize::Zeroizing<String>,
    /// `issued_token_type`.
    pub issued_token_type: &'static str,
    /// `token_type`.
    pub token_type: &'static str,
    /// More members of the answer (`proxy_url`).
    pub extra: Vec<(&'static str, Value)>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("issued_token_type", &self.issued_token_type)
            .field("access_token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// What a provider issues from.
pub struct Issue<'a> {
    /// The credential's claims (already recorded).
    pub claims: &'a AccessClaims,
    /// The tool.
    pub tool: &'a Tool,
    /// What [`Provider::prepare`] decided.
    pub prepared: &'a Prepared,
    /// What [`Provider::record`] made durable.
    pub recorded: &'a Recorded,
}

/// A provider could not make the credential (after its event was recorded).
#[derive(Debug)]
pub struct IssueFailure {
    /// True when the tool's settings refuse it (not worth retrying).
    pub refused: bool,
    /// What happened and what to do.
    pub message: String,
}

/// One kind of credential provider.
pub trait Provider: Send + Sync {
    /// Its kind.
    fn kind(&self) -> ProviderKind;

    /// The audience of a new tool named `name`: the registration's
    /// (`given`), or one the broker sets.
    fn audience(
        &self,
        s: &AppState,
        tenant: &str,
        name: &str,
        given: Option<&str>,
    ) -> Result<String, String>;

    /// Checks a registration's settings for this provider.
    fn validate(&self, settings: &Settings<'_>) -> Result<(), String>;

    /// Whether a tool's audience must be unique across the broker (tools
    /// verify `iss` and `aud` themselves).
    fn audience_unique(&self) -> bool {
        false
    }

    /// Checks an upstream secret an admin sets; `Err` names why it is
    /// refused (a provider that holds none refuses every secret).
    fn check_secret(&self, tool: &Tool, secret: &str) -> Result<(), String> {
        let _ = secret;
        Err(format!(
            "tool `{}` uses the `{}` provider, which holds no upstream secret",
            tool.name,
            self.kind()
        ))
    }

    /// Whether the admin sets an upstream secret for its tools.
    fn holds_secret(&self) -> bool {
        false
    }

    /// What the asked actions need of the tool, or a refusal.
    fn prepare(&self, tool: &Tool, actions: &[String]) -> Result<Prepared, ApiError> {
        let _ = (tool, actions);
        Ok(Prepared::default())
    }

    /// Refuses an exchange whose proof of the run's key (`pop`) cannot make
    /// a credential the tool takes; asked before anything is spent
    /// (approvals, attenuation uses, policy history).
    fn check_pop(&self, tool: &Tool, pop: Option<Pop>) -> Result<(), ApiError> {
        let _ = (tool, pop);
        Ok(())
    }

    /// Whether the credential is bound to the run's key (`cnf`), given the
    /// tool and how the exchange proved it.
    fn binds(&self, tool: &Tool, pop: Pop) -> bool {
        let _ = (tool, pop);
        true
    }

    /// What is made durable with the issuance event.
    fn record(&self, claims: &AccessClaims, tool: &Tool, prepared: &Prepared) -> Recorded {
        let _ = (claims, tool, prepared);
        Recorded::default()
    }

    /// Makes the credential, once its event is durable.
    fn issue<'a>(
        &'a self,
        s: &'a AppState,
        x: Issue<'a>,
    ) -> BoxFuture<'a, Result<Credential, IssueFailure>>;

    /// What the exec socket and `tools list` show of a tool beyond its name,
    /// audience and actions.
    fn describe(&self, s: &AppState, tool: &Tool) -> Value {
        let _ = (s, tool);
        json!({})
    }
}

/// Signs `claims` with the tool's algorithm.
fn sign(s: &AppState, tool: &Tool, claims: &AccessClaims) -> Result<String, IssueFailure> {
    s.keyset()
        .signer(tool.alg)
        .sign(claims)
        .map_err(|e| IssueFailure {
            refused: false,
            message: format!("the credential could not be signed: {e}"),
        })
}

/// A bearer JWT good only at the broker's own endpoint for the tool (the
/// proxy's or the MCP gateway's), named in the answer as `url_member`.
fn broker_bearer(
    s: &AppState,
    x: &Issue<'_>,
    (url_member, url): (&'static str, String),
    token_type: &'static str,
) -> Result<Credential, IssueFailure> {
    Ok(Credential {
        access_token: sign(s, x.tool, x.claims)?.into(),
        issued_token_type: jwt::TOKEN_TYPE_ACCESS,
        token_type,
        extra: vec![(url_member, serde_json::json!(url))],
    })
}

/// The broker's MCP gateway URL for a tool (its credentials' audience, and
/// the RFC 8707 resource an MCP client names).
pub fn mcp_url(s: &AppState, tool: &str) -> String {
    format!("{}/mcp/{tool}", s.config.issuer.trim_end_matches('/'))
}

/// The broker's proxy URL for a tool.
pub fn proxy_url(s: &AppState, tool: &str) -> String {
    format!("{}/proxy/{tool}", s.config.issuer.trim_end_matches('/'))
}
