//! What an audit event records (its type) and how it was decided: enums,
//! stored and hashed as the same strings they always were. A name this
//! version does not know (written by a newer broker) is kept as `Other`, so
//! a trail stays readable and verifiable.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! kinds {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $s:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
            /// A name this version does not know (kept as read).
            Other(String),
        }

        impl Default for $name {
            fn default() -> Self {
                Self::Other(String::new())
            }
        }

        impl $name {
            /// The stored name.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $s,)*
                    Self::Other(s) => s,
                }
            }

            /// The kind a stored name means.
            pub fn parse(s: &str) -> Self {
                match s {
                    $($s => Self::$variant,)*
                    other => Self::Other(other.to_owned()),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Ok(Self::parse(&s))
            }
        }
    };
}

kinds! {
    /// The type of an audit event.
    EventType {
        /// The broker's first start.
        BrokerInit = "broker.init",
        /// Signing keys rotated (`--rotate-keys`).
        KeysRotate = "keys.rotate",
        /// An admin credential made.
        AdminTokenCreate = "admin_token.create",
        /// An admin credential revoked (`mandate serve --new-admin-token`).
        AdminTokenRevoke = "admin_token.revoke",
        /// An admin credential refused (throttled).
        AdminAuth = "admin.auth",
        /// A connection refused by the listener's bounds (throttled).
        ConnectionRefuse = "connection.refuse",
        /// Refusals of many clients, counted together.
        RefusalsOther = "refusals.other",
        /// Audit events up to a point were not anchored by a checkpoint.
        AuditCheckpointMissing = "audit.checkpoint.missing",
        /// The trail was verified.
        AuditVerify = "audit.verify",
        /// A tenant registered.
        TenantCreate = "tenant.create",
        /// A principal registered.
        PrincipalCreate = "principal.create",
        /// An agent registered.
        AgentCreate = "agent.create",
        /// An agent's registration replaced.
        AgentUpdate = "agent.update",
        /// A tool registered.
        ToolCreate = "tool.create",
        /// A tool's registration replaced.
        ToolUpdate = "tool.update",
        /// An `mcp` tool's tools read from its MCP server and pinned.
        ToolSync = "tool.sync",
        /// A tool's upstream secret set.
        ToolSecretSet = "tool.secret.set",
        /// A grant given.
        GrantCreate = "grant.create",
        /// A policy set added or replaced.
        PolicyPut = "policy.put",
        /// A policy set removed.
        PolicyDelete = "policy.delete",
        /// An approver credential made.
        ApproverTokenCreate = "approver_token.create",
        /// A feed-reader credential made.
        FeedTokenCreate = "feed_token.create",
        /// A join token made.
        JoinTokenCreate = "join_token.create",
        /// A join token used.
        JoinTokenUse = "join_token.use",
        /// A run started.
        RunStart = "run.start",
        /// A run delegated to a sub-agent.
        RunDelegate = "run.delegate",
        /// A run tied to a connection.
        RunAttach = "run.attach",
        /// A run ended.
        RunEnd = "run.end",
        /// An eval result recorded for a run.
        RunEval = "run.eval",
        /// A run suspended (anomaly response).
        RunSuspend = "run.suspend",
        /// A suspended run resumed.
        RunResume = "run.resume",
        /// A token exchange decided.
        TokenExchange = "token.exchange",
        /// An allowed exchange whose credential was not returned.
        TokenWithheld = "token.withheld",
        /// A recorded credential the provider could not make.
        TokenFailed = "token.failed",
        /// Humans asked to approve.
        ApprovalRequest = "approval.request",
        /// An approver decided.
        ApprovalDecide = "approval.decide",
        /// A revocation.
        Revoke = "revoke",
        /// A call at the proxy decided.
        ProxyCall = "proxy.call",
        /// A proxied call's outcome.
        ProxyResult = "proxy.result",
        /// A message at the MCP gateway decided (durable before the MCP server sees it).
        McpCall = "mcp.call",
        /// The outcome of a `tools/call` the gateway forwarded.
        McpResult = "mcp.result",
        /// A database role dropped.
        LeaseDrop = "lease.drop",
        /// A database role that could not be dropped.
        LeaseStuck = "lease.stuck",
        /// A webhook could not be delivered.
        WebhookFailed = "webhook.failed",
        /// An anomaly: a run's request rate spiked.
        AlertRateSpike = "alert.rate_spike",
        /// An anomaly: a burst of denials.
        AlertDenialBurst = "alert.denial_burst",
        /// An anomaly: an agent used a tool for the first time.
        AlertNewTool = "alert.new_tool",
    }
}

kinds! {
    /// How an event was decided.
    Decision {
        /// Allowed.
        Allow = "allow",
        /// Refused.
        Deny = "deny",
        /// Waits for humans.
        Pending = "pending",
        /// An admin change or a fact, done.
        Ok = "ok",
        /// Failed on the broker's side.
        Error = "error",
        /// An approver approved.
        Approve = "approve",
        /// An alert that suspended its run.
        Suspend = "suspend",
        /// An eval failed.
        Fail = "fail",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_keep_their_stored_names_and_unknown_ones_survive() {
        for t in [
            "token.exchange",
            "tool.secret.set",
            "revoke",
            "audit.checkpoint.missing",
        ] {
            assert_eq!(EventType::parse(t).as_str(), t);
            assert!(!matches!(EventType::parse(t), EventType::Other(_)));
        }
        let json = serde_json::to_string(&EventType::ProxyCall).unwrap_or_default();
        assert_eq!(json, "\"proxy.call\"");
        let later: EventType = serde_json::from_str("\"from.the.future\"").unwrap_or_default();
        assert_eq!(later, EventType::Other("from.the.future".into()));
        assert_eq!(later.as_str(), "from.the.future");
        assert_eq!(Decision::parse("deny"), Decision::Deny);
    }
}
