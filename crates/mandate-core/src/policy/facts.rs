//! The facts policies see: the request, the run, its history, declared
//! details (RFC 9396), and the Cedar entities built from them.

use super::*;

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

impl Engine {
    pub(super) fn uid(&self, ty: &EntityTypeName, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
    }

    pub(super) fn entity(
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
}
