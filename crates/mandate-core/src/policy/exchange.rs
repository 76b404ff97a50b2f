//! Deciding an exchange (or a call at the proxy): Cedar over the facts;
//! an error denies; `@approval` policies name who may lift a refusal.

use super::*;

impl Engine {
    /// Decides an exchange: every requested action must be permitted.
    pub fn decide(&self, policies: &TenantPolicies, f: &ExchangeFacts<'_>) -> Result<Verdict> {
        self.decide_with(policies, f, &self.entities(f)?)
    }

    /// [`Engine::decide`] with entities the caller built (and perhaps cached)
    /// with [`Engine::entities`] for the same facts.
    pub fn decide_with(
        &self,
        policies: &TenantPolicies,
        f: &ExchangeFacts<'_>,
        entities: &Entities,
    ) -> Result<Verdict> {
        if policies.is_empty() {
            return Ok(Verdict {
                allowed: false,
                policies: vec![],
                reason: Some(format!(
                    "tenant `{}` has no policies, so nothing is permitted; load one with `mandate policy add`",
                    f.tenant
                )),
                approval: None,
            });
        }
        let mut decided_by = Vec::new();
        for action in f.actions {
            let pairs = self.context_pairs(f, action)?;
            match self.exchange_action(policies, f, entities, action, pairs)? {
                Err(refused) => return Ok(refused),
                Ok(reasons) => {
                    for r in reasons {
                        if !decided_by.contains(&r) {
                            decided_by.push(r);
                        }
                    }
                }
            }
        }
        Ok(Verdict {
            allowed: true,
            policies: decided_by,
            reason: None,
            approval: None,
        })
    }

    /// The exchange question for one of `f`'s actions, with its context
    /// `pairs` ([`Engine::context_pairs`]): the deciding policies, or the
    /// refusal.
    pub(super) fn exchange_action(
        &self,
        policies: &TenantPolicies,
        f: &ExchangeFacts<'_>,
        entities: &Entities,
        action: &str,
        pairs: Vec<(String, RestrictedExpression)>,
    ) -> Result<std::result::Result<Vec<String>, Verdict>> {
        let context = Context::from_pairs(pairs)
            .map_err(|e| Error::Policy(format!("could not build policy context: {e}")))?;
        // Not re-validated against the schema per request: policies were
        // validated when loaded, and `request_matches_the_schema` checks
        // that this code builds requests of the schema's shape.
        let request = Request::new(
            self.uid(&self.types.run, f.run),
            self.exchange.clone(),
            self.uid(&self.types.tool, f.tool),
            context,
            self.validate_requests.then_some(&self.schema),
        )
        .map_err(|e| Error::Policy(format!("could not build policy request: {e}")))?;
        // Only the policies that can apply to this tool and action
        // (`slice`: the others cannot be satisfied, nor fail, here).
        let sliced = policies.slices.slice(f.tool, action);
        let set = sliced.as_deref().unwrap_or(&policies.set);
        Ok(self.judge(
            &request,
            (set, &policies.set),
            entities,
            f,
            action,
            ErrorText::Shown,
        ))
    }

    /// The context every exchange question has, for `action`.
    pub(super) fn context_pairs(
        &self,
        f: &ExchangeFacts<'_>,
        action: &str,
    ) -> Result<Vec<(String, RestrictedExpression)>> {
        let str_ = |v: &str| RestrictedExpression::new_string(v.to_owned());
        let strings = |v: &[String]| {
            RestrictedExpression::new_set(
                v.iter()
                    .map(|a| RestrictedExpression::new_string(a.clone())),
            )
        };
        let mut pairs = vec![
            ("tenant".to_owned(), str_(f.tenant)),
            (
                "time".to_owned(),
                RestrictedExpression::new_long(i64::try_from(f.now).unwrap_or(i64::MAX)),
            ),
            ("action".to_owned(), str_(action)),
            ("actions".to_owned(), strings(f.actions)),
            ("tool_labels".to_owned(), strings(f.tool_labels)),
            (
                "on_behalf".to_owned(),
                RestrictedExpression::new_bool(f.principal.is_some()),
            ),
            ("task".to_owned(), str_(f.task)),
            (
                "depth".to_owned(),
                RestrictedExpression::new_long(f.depth as i64),
            ),
            (
                "hops".to_owned(),
                RestrictedExpression::new_long(f.hops as i64),
            ),
            (
                "approved".to_owned(),
                RestrictedExpression::new_bool(f.approved),
            ),
            (
                "hour_utc".to_owned(),
                RestrictedExpression::new_long(((f.now / 3600) % 24) as i64),
            ),
            (
                "weekday_utc".to_owned(),
                // 1970-01-01 was a Thursday (3 with Monday = 0).
                RestrictedExpression::new_long(((f.now / 86_400 + 3) % 7) as i64),
            ),
            ("history".to_owned(), history_record(f.history, action)?),
        ];
        if let Some(a) = f.details.amount {
            pairs.push(("amount".to_owned(), RestrictedExpression::new_long(a)));
        }
        if let Some(c) = &f.details.currency {
            pairs.push(("currency".to_owned(), str_(c)));
        }
        if let Some(t) = &f.details.target {
            pairs.push(("target".to_owned(), str_(t)));
        }
        if let Some(p) = f.principal {
            pairs.push((
                "principal".to_owned(),
                RestrictedExpression::new_entity_uid(self.uid(&self.types.principal, p)),
            ));
        }
        if let Some(g) = f.grant {
            pairs.push(("grant".to_owned(), str_(g)));
        }
        Ok(pairs)
    }

    /// One Cedar request over `set`: the deciding policies when it is
    /// permitted, the refusal otherwise (an evaluation error refuses).
    /// `all` is the tenant's whole set (for `@approval` annotations).
    pub(super) fn judge(
        &self,
        request: &Request,
        (set, all): (&PolicySet, &PolicySet),
        entities: &Entities,
        f: &ExchangeFacts<'_>,
        action: &str,
        errors_text: ErrorText,
    ) -> std::result::Result<Vec<String>, Verdict> {
        let resp = self.authorizer.is_authorized(request, set, entities);
        let reasons: Vec<String> = resp
            .diagnostics()
            .reason()
            .map(|id| id.to_string())
            .collect();
        let errors: Vec<String> = resp.diagnostics().errors().map(|e| e.to_string()).collect();
        // Cedar skips a policy whose evaluation errors (an overflow, a
        // missing attribute): a `forbid` that errors would not refuse.
        // Any error denies (fail closed), whatever the decision.
        if !errors.is_empty() {
            let policies = errors_policies(&resp);
            let detail = match errors_text {
                ErrorText::Shown => errors.join("; "),
                ErrorText::Withheld => format!(
                    "policy {} (the evaluator's message may quote argument values, which are never recorded)",
                    quoted(&policies)
                ),
            };
            return Err(Verdict {
                allowed: false,
                policies,
                reason: Some(format!(
                    "action `{action}` on tool `{}` is denied because a policy failed to evaluate (policies that error deny): {detail}",
                    f.tool,
                )),
                approval: None,
            });
        }
        if resp.decision() == Decision::Deny {
            let reason = if !reasons.is_empty() {
                format!(
                    "action `{action}` on tool `{}` is forbidden by policy {}",
                    f.tool,
                    quoted(&reasons)
                )
            } else {
                format!(
                    "no policy of tenant `{}` permits action `{action}` on tool `{}` for agent `{}`; an admin must add a permit policy",
                    f.tenant, f.tool, f.agent
                )
            };
            let approval = approval_need(all, &reasons);
            return Err(Verdict {
                allowed: false,
                policies: reasons,
                reason: Some(reason),
                approval,
            });
        }
        Ok(reasons)
    }
}

/// Whether a refusal's reason quotes the evaluator's errors, which can
/// quote the values a policy computed on (an overflow names its operands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ErrorText {
    /// The exchange's context holds nothing secret: quote the errors.
    Shown,
    /// An MCP call's arguments are never recorded: name the policies only.
    Withheld,
}

/// The `history` record of the context, for `action`.
pub(super) fn history_record(h: &History, action: &str) -> Result<RestrictedExpression> {
    let long = |v: u64| RestrictedExpression::new_long(i64::try_from(v).unwrap_or(i64::MAX));
    let set = |v: &[String]| {
        RestrictedExpression::new_set(
            v.iter()
                .map(|x| RestrictedExpression::new_string(x.clone())),
        )
    };
    let action_n = h
        .action_exchanges
        .iter()
        .find(|(a, _)| a == action)
        .map(|(_, n)| *n)
        .unwrap_or(0);
    RestrictedExpression::new_record([
        ("exchanges".to_owned(), long(h.exchanges)),
        ("tool_exchanges".to_owned(), long(h.tool_exchanges)),
        ("action_exchanges".to_owned(), long(action_n)),
        ("labels_touched".to_owned(), set(&h.labels_touched)),
        (
            "amount_total".to_owned(),
            RestrictedExpression::new_long(h.amount_total),
        ),
        ("elapsed".to_owned(), long(h.elapsed)),
        (
            "tool_used_before".to_owned(),
            RestrictedExpression::new_bool(h.tool_used_before),
        ),
        ("rate_1m".to_owned(), long(h.rate_1m)),
        ("denials_1m".to_owned(), long(h.denials_1m)),
        ("evals_passed".to_owned(), set(&h.evals_passed)),
    ])
    .map_err(|e| Error::Policy(format!("could not build the run history: {e}")))
}

/// The ids of the policies that failed to evaluate.
/// Policy ids as the refusals name them: `` `a`, `b` ``.
pub(super) fn quoted(ids: &[String]) -> String {
    ids.iter()
        .map(|r| format!("`{r}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn errors_policies(resp: &cedar_policy::Response) -> Vec<String> {
    let mut v: Vec<String> = resp
        .diagnostics()
        .errors()
        .map(|e| match e {
            cedar_policy::AuthorizationError::PolicyEvaluationError(p) => p.policy_id().to_string(),
        })
        .collect();
    v.dedup();
    v
}

/// When every deciding policy carries `@approval`, who may lift the
/// refusal: each policy by its own approvers.
pub(super) fn approval_need(set: &PolicySet, reasons: &[String]) -> Option<ApprovalNeed> {
    if reasons.is_empty() {
        return None;
    }
    let mut each = Vec::with_capacity(reasons.len());
    for r in reasons {
        let p = set.policy(&PolicyId::new(r))?;
        each.push(PolicyApprovers {
            policy: r.clone(),
            approvers: parse_approvers(p.annotation("approval")?).ok()?,
        });
    }
    each.sort_by(|a, b| a.policy.cmp(&b.policy));
    each.dedup_by(|a, b| a.policy == b.policy);
    Some(ApprovalNeed { each })
}
