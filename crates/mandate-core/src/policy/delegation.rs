//! Deciding a delegation (Cedar action `delegate`).

use super::*;

/// Everything the policy needs to know about one delegation.
#[derive(Debug, Clone)]
pub struct DelegationFacts<'a> {
    /// Tenant.
    pub tenant: &'a str,
    /// Time of the request.
    pub now: UnixTime,
    /// The parent run, its agent, the agent's owner and purpose.
    pub parent_run: &'a str,
    /// The parent run's agent.
    pub parent_agent: &'a str,
    /// Its owner.
    pub parent_agent_owner: &'a str,
    /// Its purpose.
    pub parent_agent_purpose: &'a str,
    /// The parent run's task.
    pub parent_task: &'a str,
    /// The sub-agent, its owner and purpose.
    pub child_agent: &'a str,
    /// Its owner.
    pub child_agent_owner: &'a str,
    /// Its purpose.
    pub child_agent_purpose: &'a str,
    /// The child's task.
    pub task: &'a str,
    /// The principal, when the parent acts for one.
    pub principal: Option<&'a str>,
    /// The child's depth.
    pub depth: usize,
    /// Runs the parent already started.
    pub children: u64,
    /// The child's capabilities.
    pub capabilities: &'a [String],
}

impl Engine {
    /// Decides a delegation: may `parent_run` start a child run of
    /// `child_agent` with these capabilities at this depth?
    pub fn decide_delegation(
        &self,
        policies: &TenantPolicies,
        f: &DelegationFacts<'_>,
    ) -> Result<Verdict> {
        if policies.is_empty() {
            return Ok(Verdict {
                allowed: false,
                policies: vec![],
                reason: Some(format!(
                    "tenant `{}` has no policies, so no delegation is permitted",
                    f.tenant
                )),
                approval: None,
            });
        }
        let str_ = |v: &str| RestrictedExpression::new_string(v.to_owned());
        let tenant = self.uid(&self.types.tenant, f.tenant);
        let parent_agent = self.uid(&self.types.agent, f.parent_agent);
        let child_agent = self.uid(&self.types.agent, f.child_agent);
        let run = self.uid(&self.types.run, f.parent_run);
        let agent_attrs = |owner: &str, purpose: &str| {
            vec![
                ("tenant", str_(f.tenant)),
                ("owner", str_(owner)),
                ("purpose", str_(purpose)),
            ]
        };
        let mut list = vec![
            Self::entity(tenant.clone(), vec![], None)?,
            Self::entity(
                parent_agent.clone(),
                agent_attrs(f.parent_agent_owner, f.parent_agent_purpose),
                Some(tenant.clone()),
            )?,
            Self::entity(
                run.clone(),
                vec![
                    ("tenant", str_(f.tenant)),
                    ("agent", str_(f.parent_agent)),
                    ("task", str_(f.parent_task)),
                ],
                Some(parent_agent.clone()),
            )?,
        ];
        if child_agent != parent_agent {
            list.push(Self::entity(
                child_agent.clone(),
                agent_attrs(f.child_agent_owner, f.child_agent_purpose),
                Some(tenant.clone()),
            )?);
        }
        let mut pairs = vec![
            ("tenant".to_owned(), str_(f.tenant)),
            (
                "time".to_owned(),
                RestrictedExpression::new_long(i64::try_from(f.now).unwrap_or(i64::MAX)),
            ),
            (
                "depth".to_owned(),
                RestrictedExpression::new_long(f.depth as i64),
            ),
            (
                "children".to_owned(),
                RestrictedExpression::new_long(i64::try_from(f.children).unwrap_or(i64::MAX)),
            ),
            (
                "capabilities".to_owned(),
                RestrictedExpression::new_set(
                    f.capabilities
                        .iter()
                        .map(|c| RestrictedExpression::new_string(c.clone())),
                ),
            ),
            (
                "on_behalf".to_owned(),
                RestrictedExpression::new_bool(f.principal.is_some()),
            ),
            ("task".to_owned(), str_(f.task)),
        ];
        if let Some(p) = f.principal {
            let uid = self.uid(&self.types.principal, p);
            list.push(Self::entity(
                uid.clone(),
                vec![("tenant", str_(f.tenant))],
                Some(tenant),
            )?);
            pairs.push((
                "principal".to_owned(),
                RestrictedExpression::new_entity_uid(uid),
            ));
        }
        let entities =
            Entities::from_entities(list, self.validate_requests.then_some(&self.schema))
                .map_err(|e| Error::Policy(format!("could not build policy entities: {e}")))?;
        let context = Context::from_pairs(pairs)
            .map_err(|e| Error::Policy(format!("could not build policy context: {e}")))?;
        let request = Request::new(
            run,
            self.delegate.clone(),
            child_agent,
            context,
            self.validate_requests.then_some(&self.schema),
        )
        .map_err(|e| Error::Policy(format!("could not build policy request: {e}")))?;
        let resp = self
            .authorizer
            .is_authorized(&request, &policies.set, &entities);
        let reasons: Vec<String> = resp
            .diagnostics()
            .reason()
            .map(|id| id.to_string())
            .collect();
        let errors: Vec<String> = resp.diagnostics().errors().map(|e| e.to_string()).collect();
        if resp.decision() == Decision::Allow && errors.is_empty() {
            return Ok(Verdict {
                allowed: true,
                policies: reasons,
                reason: None,
                approval: None,
            });
        }
        let reason = if !errors.is_empty() {
            format!(
                "delegation denied because a policy failed to evaluate (policies that error deny): {}",
                errors.join("; ")
            )
        } else if !reasons.is_empty() {
            format!(
                "delegating to agent `{}` at depth {} is forbidden by policy {}",
                f.child_agent,
                f.depth,
                super::exchange::quoted(&reasons)
            )
        } else {
            format!(
                "no policy of tenant `{}` permits delegating to agent `{}` at depth {} after {} children (bounds come from `delegate` policies, e.g. the baseline's `delegate-within-bounds`)",
                f.tenant, f.child_agent, f.depth, f.children
            )
        };
        Ok(Verdict {
            allowed: false,
            policies: reasons,
            reason: Some(reason),
            approval: None,
        })
    }
}
