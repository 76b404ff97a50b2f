//! The `proxy` provider: a credential good only at the broker's injecting
//! proxy for this tool (its audience is the proxy URL). It goes where an API
//! key goes, through SDKs that cannot make DPoP proofs: a bearer token for
//! minutes, until the run ends; a client that signed its exchange (RFC
//! 9421) gets a bound one and must sign each call at the proxy too.

use mandate_core::model::Tool;
use mandate_core::tooling::ProviderKind;
use serde_json::{Value, json};

use super::{BoxFuture, Credential, Issue, IssueFailure, Pop, Provider, Settings};
use crate::state::AppState;

/// See the module documentation.
pub(super) struct Proxy;

impl Provider for Proxy {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Proxy
    }

    fn audience(
        &self,
        s: &AppState,
        _: &str,
        name: &str,
        given: Option<&str>,
    ) -> Result<String, String> {
        match given {
            Some(_) => {
                Err("a `proxy` tool's audience is set by the broker; leave `audience` out".into())
            }
            None => Ok(super::proxy_url(s, name)),
        }
    }

    fn validate(&self, settings: &Settings<'_>) -> Result<(), String> {
        settings.only(self.kind())?;
        match settings.proxy {
            Some(p) => p.validate(settings.actions).map_err(|e| e.to_string()),
            None => Err(
                "a `proxy` tool needs `proxy`: its upstream, routes and how to inject the key"
                    .into(),
            ),
        }
    }

    fn holds_secret(&self) -> bool {
        true
    }

    fn check_secret(&self, _: &Tool, _: &str) -> Result<(), String> {
        Ok(())
    }

    fn binds(&self, _: &Tool, pop: Pop) -> bool {
        pop == Pop::MessageSignature
    }

    fn issue<'a>(
        &'a self,
        s: &'a AppState,
        x: Issue<'a>,
    ) -> BoxFuture<'a, Result<Credential, IssueFailure>> {
        Box::pin(async move {
            let url = super::proxy_url(s, &x.tool.name);
            super::broker_bearer(s, &x, ("proxy_url", url), "Bearer")
        })
    }

    fn describe(&self, s: &AppState, tool: &Tool) -> Value {
        json!({"proxy_url": super::proxy_url(s, &tool.name)})
    }
}
