//! The `jwt` provider: a signed JWT (RFC 9068 profile, DPoP-bound) the tool
//! verifies itself, offline, with the broker's JWKS.

use mandate_core::tooling::ProviderKind;

use super::{BoxFuture, Credential, Issue, IssueFailure, Provider, Settings};
use crate::state::AppState;

/// RFC 8693 §3 issued token type.
pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

/// See the module documentation.
pub(super) struct Jwt;

impl Provider for Jwt {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Jwt
    }

    fn audience(
        &self,
        _: &AppState,
        _: &str,
        _: &str,
        given: Option<&str>,
    ) -> Result<String, String> {
        given.map(str::to_owned).ok_or_else(|| {
            "a `jwt` tool needs an `audience`: the URI its credentials are for".into()
        })
    }

    fn validate(&self, settings: &Settings<'_>) -> Result<(), String> {
        settings.only(self.kind())
    }

    fn audience_unique(&self) -> bool {
        true
    }

    fn issue<'a>(
        &'a self,
        s: &'a AppState,
        x: Issue<'a>,
    ) -> BoxFuture<'a, Result<Credential, IssueFailure>> {
        Box::pin(async move {
            Ok(Credential {
                access_token: super::sign(s, x.tool, x.claims)?.into(),
                issued_token_type: TOKEN_TYPE_ACCESS,
                token_type: "DPoP",
                extra: Vec::new(),
            })
        })
    }
}
