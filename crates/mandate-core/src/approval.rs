//! Human approvals of one exchange (CIBA-like, RFC 8628 §3.5 polling): their
//! states, and what the live approvals of a request mean for what policy
//! needs. Pure: the broker looks the approvals up and passes them in.

use serde::{Deserialize, Serialize};

use crate::policy::{ApprovalNeed, PolicyApprovers};

/// Where an approval request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalStatus {
    /// Waiting for an approver.
    Pending,
    /// An approver said yes; not yet spent.
    Approved,
    /// An approver said no: final for this request.
    Denied,
    /// Spent by the credential it allowed (never twice).
    Used,
}

impl ApprovalStatus {
    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Used => "used",
        }
    }

    /// Parses a wire or storage name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Approved, Self::Denied, Self::Used]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

impl std::fmt::Display for ApprovalStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the live approvals of a request mean for what policy needs.
#[derive(Debug, PartialEq, Eq)]
pub enum ApprovalState<A> {
    /// Every refusing policy was approved by its own approvers: these.
    Approved(Vec<A>),
    /// Some approver denied: final.
    Denied(A),
    /// Some policies still wait (`pending`), others were never asked (`missing`).
    Waiting {
        /// Asked, not decided.
        pending: Vec<A>,
        /// Never asked.
        missing: Vec<PolicyApprovers>,
    },
}

/// What [`approval_state`] needs to know of an approval.
pub trait ApprovalView {
    /// Its id.
    fn id(&self) -> &str;
    /// The policies that asked for it.
    fn policies(&self) -> &[String];
    /// Its status.
    fn status(&self) -> ApprovalStatus;
}

/// Matches each refusing policy with the newest live approval that asked
/// for it (AND: each policy needs its own). `live` is newest first.
pub fn approval_state<A: ApprovalView + Clone>(
    need: &ApprovalNeed,
    live: &[A],
) -> ApprovalState<A> {
    let mut approved: Vec<A> = Vec::new();
    let mut pending = Vec::new();
    let mut missing = Vec::new();
    for p in &need.each {
        match live.iter().find(|a| a.policies().contains(&p.policy)) {
            Some(a) if a.status() == ApprovalStatus::Denied => {
                return ApprovalState::Denied(a.clone());
            }
            Some(a) if a.status() == ApprovalStatus::Approved => approved.push(a.clone()),
            Some(a) => pending.push(a.clone()),
            None => missing.push(p.clone()),
        }
    }
    if pending.is_empty() && missing.is_empty() {
        approved.dedup_by(|a, b| a.id() == b.id());
        ApprovalState::Approved(approved)
    } else {
        ApprovalState::Waiting { pending, missing }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct A(&'static str, Vec<String>, ApprovalStatus);
    impl ApprovalView for A {
        fn id(&self) -> &str {
            self.0
        }
        fn policies(&self) -> &[String] {
            &self.1
        }
        fn status(&self) -> ApprovalStatus {
            self.2
        }
    }

    fn need(ps: &[&str]) -> ApprovalNeed {
        ApprovalNeed {
            each: ps
                .iter()
                .map(|p| PolicyApprovers {
                    policy: (*p).into(),
                    approvers: vec!["principal".into()],
                })
                .collect(),
        }
    }

    #[test]
    fn each_policy_needs_its_own_approval() {
        let a = A("apr_1", vec!["p1".into()], ApprovalStatus::Approved);
        match approval_state(&need(&["p1", "p2"]), std::slice::from_ref(&a)) {
            ApprovalState::Waiting { pending, missing } => {
                assert!(pending.is_empty());
                assert_eq!(missing.len(), 1);
                assert_eq!(missing[0].policy, "p2");
            }
            other => panic!("{other:?}"),
        }
        let both = A(
            "apr_2",
            vec!["p1".into(), "p2".into()],
            ApprovalStatus::Approved,
        );
        assert_eq!(
            approval_state(&need(&["p1", "p2"]), std::slice::from_ref(&both)),
            ApprovalState::Approved(vec![both.clone()])
        );
    }

    #[test]
    fn a_denial_is_final_and_the_newest_counts() {
        let denied = A("apr_new", vec!["p1".into()], ApprovalStatus::Denied);
        let old = A("apr_old", vec!["p1".into()], ApprovalStatus::Approved);
        assert_eq!(
            approval_state(&need(&["p1"]), &[denied.clone(), old]),
            ApprovalState::Denied(denied)
        );
    }

    #[test]
    fn statuses_round_trip() {
        for s in ["pending", "approved", "denied", "used"] {
            assert_eq!(ApprovalStatus::parse(s).map(|x| x.as_str()), Some(s));
        }
        assert_eq!(ApprovalStatus::parse("expired"), None);
    }
}
