//! Policy: Cedar (<https://docs.cedarpolicy.com>) decides every exchange.
//!
//! The schema ships with Mandate (`schema/mandate.cedarschema`); policies are
//! validated against it in strict mode when loaded, and a refusal names the
//! line and column. Each requested action is one Cedar request with
//! `principal` = the run (a member of its agent), `action` =
//! `Mandate::Action::"exchange"`, `resource` = the tool, and the context
//! documented in the schema.

use std::str::FromStr;

use std::collections::{HashMap, HashSet};

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy,
    PolicyId, PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;

use crate::UnixTime;
use crate::error::{Error, Result};

/// Cedar entities of one exchange (see [`Engine::entities`]).
pub use cedar_policy::Entities as PolicyEntities;

/// The schema text shipped with Mandate.
pub const SCHEMA_SRC: &str = include_str!("../../../schema/mandate.cedarschema");

/// Longest policy file accepted.
pub const MAX_POLICY_LEN: usize = 64 * 1024;

/// A policy that failed to load, with where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let upto = &src[..offset.min(src.len())];
    let line = upto.matches('\n').count() + 1;
    let col = upto
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

fn problems(src: &str, d: &dyn Diagnostic, message: String) -> PolicyProblem {
    let offset = d
        .labels()
        .and_then(|mut l| l.next())
        .map(|l| l.offset())
        .unwrap_or(0);
    let (line, column) = line_col(src, offset);
    let mut message = message;
    if let Some(help) = d.help() {
        message.push_str(&format!(" ({help})"));
    }
    PolicyProblem {
        line,
        column,
        message,
    }
}

/// The policy engine: the parsed schema and a validator.
pub struct Engine {
    schema: Schema,
    authorizer: Authorizer,
    exchange: EntityUid,
    delegate: EntityUid,
    types: Types,
    validate_requests: bool,
}

struct Types {
    tenant: EntityTypeName,
    principal: EntityTypeName,
    agent: EntityTypeName,
    run: EntityTypeName,
    tool: EntityTypeName,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("policy::Engine")
    }
}

/// A tenant's compiled policies.
#[derive(Debug, Clone, Default)]
pub struct TenantPolicies {
    set: PolicySet,
    count: usize,
}

impl TenantPolicies {
    /// Number of policies.
    pub fn len(&self) -> usize {
        self.count
    }
    /// True when there are none (every exchange is then denied).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// One policy as stored: its id and its source text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPolicy {
    /// `<set name>/<@id or index>`.
    pub id: String,
    /// The policy's Cedar text.
    pub text: String,
}

/// Everything the policy needs to know about one exchange.
#[derive(Debug, Clone)]
pub struct ExchangeFacts<'a> {
    /// Tenant.
    pub tenant: &'a str,
    /// Time of the request.
    pub now: UnixTime,
    /// Agent name, owner, purpose.
    pub agent: &'a str,
    /// Agent owner.
    pub agent_owner: &'a str,
    /// Agent purpose.
    pub agent_purpose: &'a str,
    /// Run id.
    pub run: &'a str,
    /// Task.
    pub task: &'a str,
    /// Principal, when acting on someone's behalf.
    pub principal: Option<&'a str>,
    /// Grant, when acting under one.
    pub grant: Option<&'a str>,
    /// Tool name.
    pub tool: &'a str,
    /// Tool audience.
    pub tool_audience: &'a str,
    /// Tool labels.
    pub tool_labels: &'a [String],
    /// Tool risk.
    pub tool_risk: &'a str,
    /// Tool provider.
    pub tool_provider: &'a str,
    /// Requested actions.
    pub actions: &'a [String],
    /// Delegation depth of the run (0 for a top-level run).
    pub depth: usize,
    /// Offline attenuation blocks on the mandate.
    pub hops: usize,
    /// Whether a human approved exactly this request.
    pub approved: bool,
    /// What the agent declared about the request.
    pub details: &'a Details,
    /// What the run has done so far.
    pub history: &'a History,
}

/// What an agent declares about a request (RFC 9396 `authorization_details`,
/// type `mandate`): policies may require and judge it; approvals bind it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Details {
    /// Amount in minor units.
    pub amount: Option<i64>,
    /// Currency (ISO 4217).
    pub currency: Option<String>,
    /// A target: recipient, account, environment.
    pub target: Option<String>,
}

impl Details {
    /// Parses RFC 9396 `authorization_details` (§2): a JSON array with one
    /// object of type `mandate` (`amount` integer minor units from 0 to
    /// [`MAX_AMOUNT`], `currency` ISO 4217, `target` and `description` text
    /// up to 256 characters). Returns the facts and the object as sent
    /// (what approvals bind), or why it is refused.
    pub fn parse(raw: &str) -> std::result::Result<(Details, serde_json::Value), String> {
        use serde_json::Value;
        if raw.len() > 4096 {
            return Err("longer than 4096 bytes".into());
        }
        let v: Value = serde_json::from_str(raw).map_err(|_| "not JSON".to_owned())?;
        let one = "must be an array of exactly one object";
        let [obj] = v.as_array().map(Vec::as_slice).unwrap_or_default() else {
            return Err(one.into());
        };
        let o = obj.as_object().ok_or_else(|| one.to_owned())?;
        if o.get("type").and_then(Value::as_str) != Some("mandate") {
            return Err("the object's `type` must be `mandate`".into());
        }
        let mut d = Details::default();
        for (k, val) in o {
            match (k.as_str(), val) {
                ("type", _) => {}
                ("amount", Value::Number(n)) => {
                    d.amount = Some(
                        n.as_i64()
                            .filter(|a| (0..=MAX_AMOUNT).contains(a))
                            .ok_or_else(|| {
                                format!(
                                    "`amount` is an integer in minor units from 0 to {MAX_AMOUNT}"
                                )
                            })?,
                    );
                }
                ("currency", Value::String(c))
                    if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) =>
                {
                    d.currency = Some(c.clone());
                }
                ("target", Value::String(t)) | ("description", Value::String(t))
                    if t.len() <= 256 && !t.chars().any(char::is_control) =>
                {
                    if k == "target" {
                        d.target = Some(t.clone());
                    }
                }
                (k, _) => {
                    return Err(format!(
                        "field `{}` is unknown or mistyped (amount: integer, currency: ISO 4217 code, target and description: text)",
                        crate::audit::escape_controls(&k.chars().take(40).collect::<String>())
                    ));
                }
            }
        }
        Ok((d, obj.clone()))
    }
}

/// Largest declared amount, in minor units (10^15: ten trillion in a
/// currency with cents): far above any real payment, far below overflow.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000_000;

/// Largest sum of the amounts a run may declare (10^18 minor units): a run
/// that would pass it is refused, so totals never saturate or overflow
/// (`history.amount_total + context.amount` always fits a Cedar long).
pub const MAX_AMOUNT_TOTAL: i64 = 1_000_000_000_000_000_000;

/// Whether a run that declared `total` so far may declare `amount` more:
/// the new total, or why not.
pub fn add_amount(total: i64, amount: i64) -> std::result::Result<i64, String> {
    if !(0..=MAX_AMOUNT).contains(&amount) {
        return Err(format!(
            "a declared amount must be between 0 and {MAX_AMOUNT} minor units"
        ));
    }
    match total.checked_add(amount) {
        Some(t) if (0..=MAX_AMOUNT_TOTAL).contains(&t) => Ok(t),
        _ => Err(format!(
            "the run's declared amounts would exceed {MAX_AMOUNT_TOTAL} minor units; start a new run"
        )),
    }
}

impl Details {
    /// The details a credential was issued for (its `authorization_details`).
    pub fn from_json(v: &serde_json::Value) -> Self {
        Details {
            amount: v.get("amount").and_then(serde_json::Value::as_i64),
            currency: v
                .get("currency")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned),
            target: v
                .get("target")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned),
        }
    }
}

/// A run's history as policy sees it (see `RunHistory` in the schema).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Credentials the run got so far.
    pub exchanges: u64,
    /// ... for this tool.
    pub tool_exchanges: u64,
    /// ... per action of this tool.
    pub action_exchanges: Vec<(String, u64)>,
    /// Labels of tools it got credentials for.
    pub labels_touched: Vec<String>,
    /// Sum of declared amounts.
    pub amount_total: i64,
    /// Seconds since the run started.
    pub elapsed: u64,
    /// The agent got a credential for this tool before.
    pub tool_used_before: bool,
    /// Exchange requests in the last 60 s.
    pub rate_1m: u64,
    /// Denied ones among them.
    pub denials_1m: u64,
    /// Eval gates reported passing.
    pub evals_passed: Vec<String>,
}

/// Why a refusal can be lifted by humans: the deciding policies all carry
/// `@approval("principal" | "group:<name>", ...)`. Each refusing policy
/// must be lifted by its own approvers (separation of duties: a payment
/// that is also a production deploy needs finance *and* the principal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalNeed {
    /// Each refusing policy and who may lift it, in policy id order.
    pub each: Vec<PolicyApprovers>,
}

/// One refusing `@approval` policy and who may lift it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyApprovers {
    /// The policy id.
    pub policy: String,
    /// `principal` or `group:<name>` entries: any one of them may decide.
    pub approvers: Vec<String>,
}

impl ApprovalNeed {
    /// The policies that asked.
    pub fn policies(&self) -> Vec<String> {
        self.each.iter().map(|p| p.policy.clone()).collect()
    }
}

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

/// The decision for one exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// True when every requested action is permitted.
    pub allowed: bool,
    /// Policies that decided (the permits that allowed, or the forbids that refused).
    pub policies: Vec<String>,
    /// When refused: which action, and why, in words a human can act on.
    pub reason: Option<String>,
    /// When refused only by `@approval` policies: who can lift it.
    pub approval: Option<ApprovalNeed>,
}

/// Checks an `@approval` annotation's value: `principal` and/or
/// `group:<name>`, comma-separated.
pub fn parse_approvers(v: &str) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::new();
    for a in v.split(',').map(str::trim) {
        match a.strip_prefix("group:") {
            Some(g) if crate::ids::check_slug("group", g).is_ok() => out.push(a.to_owned()),
            None if a == "principal" => out.push(a.to_owned()),
            _ => {
                return Err(format!(
                    "`@approval(\"{v}\")`: name `principal` and/or `group:<name>`, comma-separated"
                ));
            }
        }
    }
    Ok(out)
}

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
        // Bounded before Cedar's (recursive) parser sees it.
        crate::policy_limits::check_policy_text(src).map_err(|p| vec![p])?;
        let parsed = PolicySet::from_str(src).map_err(|errs| {
            errs.iter()
                .map(|e| problems(src, e, e.to_string()))
                .collect::<Vec<_>>()
        })?;
        let result = Validator::new(self.schema.clone()).validate(&parsed, ValidationMode::Strict);
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
        for p in stored {
            crate::policy_limits::check_policy_text(&p.text)
                .map_err(|e| Error::Policy(format!("stored policy `{}` is too deep: {e}", p.id)))?;
            let id = PolicyId::new(&p.id);
            let policy = Policy::parse(Some(id), &p.text).map_err(|e| {
                Error::Policy(format!("stored policy `{}` does not parse: {e}", p.id))
            })?;
            set.add(policy)
                .map_err(|e| Error::Policy(format!("stored policy `{}`: {e}", p.id)))?;
        }
        Ok(TenantPolicies {
            set,
            count: stored.len(),
        })
    }

    fn uid(&self, ty: &EntityTypeName, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
    }

    fn entity(
        uid: EntityUid,
        attrs: Vec<(&str, RestrictedExpression)>,
        parent: Option<EntityUid>,
    ) -> Result<Entity> {
        Entity::new(
            uid,
            attrs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect::<HashMap<_, _>>(),
            parent.into_iter().collect::<HashSet<_>>(),
        )
        .map_err(|e| Error::Policy(format!("could not build policy entities: {e}")))
    }

    // Built with Cedar's Rust API rather than its JSON form: the JSON parser
    // dominated the exchange's profile (see BENCHMARKS.md).
    /// The entities of an exchange (tenant, agent, run, tool, principal).
    /// They depend only on the run, the tool and their registrations, so a
    /// caller may keep them and pass them to [`Engine::decide_with`].
    pub fn entities(&self, f: &ExchangeFacts<'_>) -> Result<Entities> {
        let str_ = |v: &str| RestrictedExpression::new_string(v.to_owned());
        let set = |v: &[String]| {
            RestrictedExpression::new_set(
                v.iter()
                    .map(|x| RestrictedExpression::new_string(x.clone())),
            )
        };
        let tenant = self.uid(&self.types.tenant, f.tenant);
        let agent = self.uid(&self.types.agent, f.agent);
        let mut list = vec![
            Self::entity(tenant.clone(), vec![], None)?,
            Self::entity(
                agent.clone(),
                vec![
                    ("tenant", str_(f.tenant)),
                    ("owner", str_(f.agent_owner)),
                    ("purpose", str_(f.agent_purpose)),
                ],
                Some(tenant.clone()),
            )?,
            Self::entity(
                self.uid(&self.types.run, f.run),
                vec![
                    ("tenant", str_(f.tenant)),
                    ("agent", str_(f.agent)),
                    ("task", str_(f.task)),
                ],
                Some(agent),
            )?,
            Self::entity(
                self.uid(&self.types.tool, f.tool),
                vec![
                    ("tenant", str_(f.tenant)),
                    ("audience", str_(f.tool_audience)),
                    ("labels", set(f.tool_labels)),
                    ("risk", str_(f.tool_risk)),
                    ("provider", str_(f.tool_provider)),
                ],
                Some(tenant.clone()),
            )?,
        ];
        if let Some(p) = f.principal {
            list.push(Self::entity(
                self.uid(&self.types.principal, p),
                vec![("tenant", str_(f.tenant))],
                Some(tenant),
            )?);
        }
        Entities::from_entities(list, self.validate_requests.then_some(&self.schema))
            .map_err(|e| Error::Policy(format!("could not build policy entities: {e}")))
    }

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
        let principal = self.uid(&self.types.run, f.run);
        let resource = self.uid(&self.types.tool, f.tool);
        let str_ = |v: &str| RestrictedExpression::new_string(v.to_owned());
        let strings = |v: &[String]| {
            RestrictedExpression::new_set(
                v.iter()
                    .map(|a| RestrictedExpression::new_string(a.clone())),
            )
        };
        let mut decided_by = Vec::new();
        for action in f.actions {
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
            let context = Context::from_pairs(pairs)
                .map_err(|e| Error::Policy(format!("could not build policy context: {e}")))?;
            // Not re-validated against the schema per request: policies were
            // validated when loaded, and `request_matches_the_schema` checks
            // that this code builds requests of the schema's shape.
            let request = Request::new(
                principal.clone(),
                self.exchange.clone(),
                resource.clone(),
                context,
                self.validate_requests.then_some(&self.schema),
            )
            .map_err(|e| Error::Policy(format!("could not build policy request: {e}")))?;
            let resp = self
                .authorizer
                .is_authorized(&request, &policies.set, entities);
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
                return Ok(Verdict {
                    allowed: false,
                    policies: errors_policies(&resp),
                    reason: Some(format!(
                        "action `{action}` on tool `{}` is denied because a policy failed to evaluate (policies that error deny): {}",
                        f.tool,
                        errors.join("; ")
                    )),
                    approval: None,
                });
            }
            if resp.decision() == Decision::Deny {
                let reason = if !reasons.is_empty() {
                    format!(
                        "action `{action}` on tool `{}` is forbidden by policy {}",
                        f.tool,
                        reasons
                            .iter()
                            .map(|r| format!("`{r}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                } else {
                    format!(
                        "no policy of tenant `{}` permits action `{action}` on tool `{}` for agent `{}`; an admin must add a permit policy",
                        f.tenant, f.tool, f.agent
                    )
                };
                let approval = approval_need(&policies.set, &reasons);
                return Ok(Verdict {
                    allowed: false,
                    policies: reasons,
                    reason: Some(reason),
                    approval,
                });
            }
            for r in reasons {
                if !decided_by.contains(&r) {
                    decided_by.push(r);
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
                reasons
                    .iter()
                    .map(|r| format!("`{r}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
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

/// The `history` record of the context, for `action`.
fn history_record(h: &History, action: &str) -> Result<RestrictedExpression> {
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
fn errors_policies(resp: &cedar_policy::Response) -> Vec<String> {
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
fn approval_need(set: &PolicySet, reasons: &[String]) -> Option<ApprovalNeed> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const BASELINE: &str = include_str!("../../../examples/policies/baseline.cedar");
    static NO_DETAILS: Details = Details {
        amount: None,
        currency: None,
        target: None,
    };
    static NO_HISTORY: History = History {
        exchanges: 0,
        tool_exchanges: 0,
        action_exchanges: Vec::new(),
        labels_touched: Vec::new(),
        amount_total: 0,
        elapsed: 0,
        tool_used_before: false,
        rate_1m: 0,
        denials_1m: 0,
        evals_passed: Vec::new(),
    };

    fn facts<'a>(
        labels: &'a [String],
        actions: &'a [String],
        risk: &'a str,
        principal: Option<&'a str>,
    ) -> ExchangeFacts<'a> {
        ExchangeFacts {
            tenant: "acme",
            now: 1_800_000_000,
            agent: "bot",
            agent_owner: "alice",
            agent_purpose: "triage",
            run: "run_1",
            task: "t",
            principal,
            grant: principal.map(|_| "grt_1"),
            tool: "crm",
            tool_audience: "https://crm.example",
            tool_labels: labels,
            tool_risk: risk,
            tool_provider: "jwt",
            actions,
            depth: 0,
            hops: 0,
            approved: false,
            details: &NO_DETAILS,
            history: &NO_HISTORY,
        }
    }

    #[test]
    fn delegation_bounds_come_from_policy() {
        let e = Engine::new_validating().unwrap();
        let p = e
            .compile(&e.parse_policies("baseline", BASELINE).unwrap())
            .unwrap();
        let caps = vec!["crm:read".to_owned()];
        let f = |depth, children| DelegationFacts {
            tenant: "acme",
            now: 1_800_000_000,
            parent_run: "run_1",
            parent_agent: "planner",
            parent_agent_owner: "ops",
            parent_agent_purpose: "plans",
            parent_task: "plan",
            child_agent: "researcher",
            child_agent_owner: "ops",
            child_agent_purpose: "reads",
            task: "read",
            principal: Some("alice"),
            depth,
            children,
            capabilities: &caps,
        };
        let v = e.decide_delegation(&p, &f(1, 0)).unwrap();
        assert!(v.allowed, "{v:?}");
        assert_eq!(v.policies, ["baseline/delegate-within-bounds"]);
        let v = e.decide_delegation(&p, &f(4, 0)).unwrap();
        assert!(!v.allowed && v.reason.unwrap().contains("depth 4"));
        assert!(!e.decide_delegation(&p, &f(1, 8)).unwrap().allowed);
        // A tenant rule: researchers never delegate further than depth 1,
        // and no child may hold a write capability.
        let extra = r#"
            @id("shallow") forbid (principal, action == Mandate::Action::"delegate", resource)
            when { context.depth > 1 };
            @id("read-only-children") forbid (principal, action == Mandate::Action::"delegate", resource)
            when { context.capabilities.contains("crm:write") };
        "#;
        let mut all = e.parse_policies("baseline", BASELINE).unwrap();
        all.extend(e.parse_policies("t", extra).unwrap());
        let p2 = e.compile(&all).unwrap();
        let v = e.decide_delegation(&p2, &f(2, 0)).unwrap();
        assert_eq!(v.policies, ["t/shallow"]);
        let w = vec!["crm:write".to_owned()];
        let v = e
            .decide_delegation(
                &p2,
                &DelegationFacts {
                    capabilities: &w,
                    ..f(1, 0)
                },
            )
            .unwrap();
        assert_eq!(v.policies, ["t/read-only-children"]);
        // Same-agent delegation (a run delegating to its own agent) works.
        let v = e
            .decide_delegation(
                &p,
                &DelegationFacts {
                    child_agent: "planner",
                    ..f(1, 0)
                },
            )
            .unwrap();
        assert!(v.allowed);
    }

    #[test]
    fn baseline_permits_and_forbid_names_itself() {
        let e = Engine::new().unwrap();
        let p = e
            .compile(&e.parse_policies("baseline", BASELINE).unwrap())
            .unwrap();
        let labels = vec!["pii".to_string()];
        let actions = vec!["read".to_string()];
        let v = e
            .decide(&p, &facts(&labels, &actions, "low", Some("alice")))
            .unwrap();
        assert!(v.allowed, "{v:?}");
        assert_eq!(v.policies, vec!["baseline/allow-registered-tools"]);
        let v = e
            .decide(&p, &facts(&labels, &actions, "critical", None))
            .unwrap();
        assert!(!v.allowed);
        assert_eq!(
            v.policies,
            vec!["baseline/no-critical-tools-without-a-principal"]
        );
        assert!(v.reason.unwrap().contains("forbidden by policy"));
    }

    #[test]
    fn request_matches_the_schema() {
        let e = Engine::new_validating().unwrap();
        let p = e
            .compile(&e.parse_policies("baseline", BASELINE).unwrap())
            .unwrap();
        let labels = vec!["pii".to_string(), "money".to_string()];
        let actions = vec!["read".to_string(), "write".to_string()];
        for principal in [Some("alice@example.com"), None] {
            let v = e
                .decide(&p, &facts(&labels, &actions, "high", principal))
                .unwrap();
            assert!(v.allowed, "{v:?}");
        }
    }

    #[test]
    fn no_policies_deny_with_a_hint() {
        let e = Engine::new().unwrap();
        let v = e
            .decide(
                &TenantPolicies::default(),
                &facts(&[], &["read".into()], "low", None),
            )
            .unwrap();
        assert!(!v.allowed);
        assert!(v.reason.unwrap().contains("mandate policy add"));
    }

    #[test]
    fn policies_can_use_labels_and_agent_membership() {
        let e = Engine::new().unwrap();
        let src = r#"
            permit (principal in Mandate::Agent::"bot", action == Mandate::Action::"exchange", resource)
            when { !(context.tool_labels.contains("money")) && context.action == "read" };
        "#;
        let p = e.compile(&e.parse_policies("p", src).unwrap()).unwrap();
        let read = vec!["read".to_string()];
        let write = vec!["read".to_string(), "write".to_string()];
        assert!(
            e.decide(&p, &facts(&[], &read, "low", None))
                .unwrap()
                .allowed
        );
        let v = e.decide(&p, &facts(&[], &write, "low", None)).unwrap();
        assert!(!v.allowed && v.reason.unwrap().contains("`write`"));
        let money = vec!["money".to_string()];
        assert!(
            !e.decide(&p, &facts(&money, &read, "low", None))
                .unwrap()
                .allowed
        );
    }

    #[test]
    fn invalid_policy_is_refused_with_line_and_column() {
        let e = Engine::new().unwrap();
        let syntax = "permit (principal, action, resource)\nwhen { context.tenant == };";
        let errs = e.parse_policies("bad", syntax).unwrap_err();
        assert_eq!(errs[0].line, 2, "{errs:?}");
        let unknown_attr = "permit (principal, action == Mandate::Action::\"exchange\", resource)\n  when { resource.colour == \"red\" };";
        let errs = e.parse_policies("bad", unknown_attr).unwrap_err();
        assert_eq!((errs[0].line, errs[0].column > 1), (2, true), "{errs:?}");
        assert!(errs[0].message.contains("colour"), "{errs:?}");
    }
}
