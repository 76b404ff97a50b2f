//! Loading policies: Cedar text checked against the schema (and bounded
//! before it is parsed), compiled per tenant.

use super::*;

impl Engine {
    /// Parses the shipped schema.
    pub fn new() -> Result<Self> {
        let (schema, _warnings) = Schema::from_cedarschema_str(SCHEMA_SRC)
            .map_err(|e| Error::Policy(format!("shipped schema does not parse: {e}")))?;
        let exchange = EntityUid::from_str(r#"Mandate::Action::"exchange""#)
            .map_err(|e| Error::Policy(e.to_string()))?;
        let delegate = EntityUid::from_str(r#"Mandate::Action::"delegate""#)
            .map_err(|e| Error::Policy(e.to_string()))?;
        let ty = |n: &str| EntityTypeName::from_str(n).map_err(|e| Error::Policy(e.to_string()));
        Ok(Self {
            schema,
            authorizer: Authorizer::new(),
            exchange,
            delegate,
            types: Types {
                tenant: ty("Mandate::Tenant")?,
                principal: ty("Mandate::Principal")?,
                agent: ty("Mandate::Agent")?,
                run: ty("Mandate::Run")?,
                tool: ty("Mandate::Tool")?,
            },
            validate_requests: false,
        })
    }

    /// An engine that also validates every entity and request against the
    /// schema (slower; for tests and debugging).
    pub fn new_validating() -> Result<Self> {
        Ok(Self {
            validate_requests: true,
            ..Self::new()?
        })
    }

    /// Parses and validates a policy file. Policies are named
    /// `<name>/<@id annotation>` or `<name>/<index>`.
    pub fn parse_policies(
        &self,
        name: &str,
        src: &str,
    ) -> std::result::Result<Vec<StoredPolicy>, Vec<PolicyProblem>> {
        self.parse_policies_with(&self.schema, name, src)
    }

    /// [`Engine::parse_policies`] against `schema`.
    pub(super) fn parse_policies_with(
        &self,
        schema: &Schema,
        name: &str,
        src: &str,
    ) -> std::result::Result<Vec<StoredPolicy>, Vec<PolicyProblem>> {
        // Bounded before Cedar's (recursive) parser sees it.
        crate::policy_limits::check_policy_text(src).map_err(|p| vec![p])?;
        let parsed = PolicySet::from_str(src).map_err(|errs| {
            errs.iter()
                .map(|e| problems(src, e, e.to_string()))
                .collect::<Vec<_>>()
        })?;
        let result = Validator::new(schema.clone()).validate(&parsed, ValidationMode::Strict);
        let errs: Vec<PolicyProblem> = result
            .validation_errors()
            .map(|e| problems(src, e, e.to_string()))
            .collect();
        if !errs.is_empty() {
            return Err(errs);
        }
        for p in parsed.policies() {
            if let Some(v) = p.annotation("approval") {
                let message = if p.effect() != cedar_policy::Effect::Forbid {
                    Some("`@approval` goes on a `forbid` policy (what a human may lift), with `unless { context.approved }`".to_owned())
                } else {
                    parse_approvers(v).err()
                };
                if let Some(message) = message {
                    let (line, column) = src
                        .find("@approval")
                        .map(|o| line_col(src, o))
                        .unwrap_or((1, 1));
                    return Err(vec![PolicyProblem {
                        line,
                        column,
                        message,
                    }]);
                }
            }
        }
        let mut out = Vec::new();
        let mut policies: Vec<&Policy> = parsed.policies().collect();
        policies.sort_by_key(|p| {
            p.id()
                .to_string()
                .trim_start_matches("policy")
                .parse::<usize>()
                .unwrap_or(usize::MAX)
        });
        for (i, p) in policies.into_iter().enumerate() {
            let local = p
                .annotation("id")
                .map(str::to_owned)
                .unwrap_or_else(|| i.to_string());
            out.push(StoredPolicy {
                id: format!("{name}/{local}"),
                text: p.to_string(),
            });
        }
        let mut ids: Vec<&str> = out.iter().map(|p| p.id.as_str()).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(vec![PolicyProblem {
                line: 1,
                column: 1,
                message: "two policies share one `@id`".into(),
            }]);
        }
        Ok(out)
    }

    /// Compiles a tenant's stored policies.
    pub fn compile(&self, stored: &[StoredPolicy]) -> Result<TenantPolicies> {
        let mut set = PolicySet::new();
        let mut reached = Vec::with_capacity(stored.len());
        for p in stored {
            crate::policy_limits::check_policy_text(&p.text)
                .map_err(|e| Error::Policy(format!("stored policy `{}` is too deep: {e}", p.id)))?;
            let id = PolicyId::new(&p.id);
            let policy = Policy::parse(Some(id), &p.text).map_err(|e| {
                Error::Policy(format!("stored policy `{}` does not parse: {e}", p.id))
            })?;
            reached.push((policy.clone(), slice::Reach::of(&policy)));
            set.add(policy)
                .map_err(|e| Error::Policy(format!("stored policy `{}`: {e}", p.id)))?;
        }
        Ok(TenantPolicies {
            set,
            count: stored.len(),
            slices: std::sync::Arc::new(slice::Slices::new(reached)),
        })
    }
}
