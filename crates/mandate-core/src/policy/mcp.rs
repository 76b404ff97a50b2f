//! MCP calls behind the gateway (issue 13): each tenant's schema gains one
//! action per enabled MCP tool, typed from its `inputSchema`, so a policy
//! reading `context.arguments.amount` is validated in strict mode against
//! the tool it names; and a call is one Cedar request for that action with
//! the exchange's context plus `arguments`.

use super::exchange::ErrorText;
use super::*;
use crate::mcp::schema::{ArgType, Record};
use serde_json::{Map, Value};

/// One MCP call action a tenant's schema declares.
#[derive(Debug, Clone)]
pub struct CallAction {
    /// `"<tool>:<mcp tool>"` ([`crate::mcp::call_action`]).
    pub id: String,
    /// Its arguments' type.
    pub arguments: Record,
}

/// A tenant's schema: the shipped one plus its MCP call actions.
#[derive(Clone)]
pub struct TenantSchema(Schema);

impl std::fmt::Debug for TenantSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TenantSchema")
    }
}

/// The members of `ExchangeContext` in the shipped schema (one source).
fn exchange_context_members() -> Result<&'static str> {
    let start = "type ExchangeContext = {";
    let i = SCHEMA_SRC
        .find(start)
        .ok_or_else(|| Error::Policy("the shipped schema has no ExchangeContext".into()))?;
    let rest = &SCHEMA_SRC[i + start.len()..];
    let j = rest
        .find("\n  };")
        .ok_or_else(|| Error::Policy("ExchangeContext does not end".into()))?;
    Ok(&rest[..j])
}

impl Engine {
    /// The schema of a tenant with these MCP call actions.
    pub fn tenant_schema(&self, calls: &[CallAction]) -> Result<TenantSchema> {
        if calls.is_empty() {
            return Ok(TenantSchema(self.schema.clone()));
        }
        let members = exchange_context_members()?;
        let mut extra = String::new();
        for (i, c) in calls.iter().enumerate() {
            // Ids are `<slug>:<a-z0-9._->` (checked at registration), so
            // they need no escaping inside quotes; say so loudly if not.
            if c.id.contains(['"', '\\']) {
                return Err(Error::Policy(format!(
                    "MCP action id `{}` cannot be declared",
                    c.id
                )));
            }
            extra.push_str(&format!(
                "  type McpCall{i} = {{{members}\n    arguments: {},\n  }};\n  action \"{}\" in [mcp_call] appliesTo {{ principal: [Run], resource: [Tool], context: McpCall{i} }};\n",
                c.arguments.cedar(),
                c.id
            ));
        }
        let end = SCHEMA_SRC
            .rfind('}')
            .ok_or_else(|| Error::Policy("the shipped schema does not end".into()))?;
        let src = format!("{}{extra}{}", &SCHEMA_SRC[..end], &SCHEMA_SRC[end..]);
        let (schema, _warnings) = Schema::from_cedarschema_str(&src).map_err(|e| {
            Error::Policy(format!("the tenant's MCP tools make no valid schema: {e}"))
        })?;
        Ok(TenantSchema(schema))
    }

    /// [`Engine::parse_policies`] against a tenant's schema.
    pub fn parse_policies_in(
        &self,
        schema: &TenantSchema,
        name: &str,
        src: &str,
    ) -> std::result::Result<Vec<StoredPolicy>, Vec<PolicyProblem>> {
        self.parse_policies_with(&schema.0, name, src)
    }

    /// The stored policies that a tenant's schema refuses (after its MCP
    /// tools changed), each with why.
    pub fn invalid_under(
        &self,
        schema: &TenantSchema,
        stored: &[StoredPolicy],
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for p in stored {
            let set = match PolicySet::from_str(&p.text) {
                Ok(s) => s,
                Err(e) => {
                    out.push((p.id.clone(), e.to_string()));
                    continue;
                }
            };
            let r = Validator::new(schema.0.clone()).validate(&set, ValidationMode::Strict);
            if let Some(e) = r.validation_errors().next() {
                out.push((p.id.clone(), e.to_string()));
            }
        }
        out
    }

    /// The entities of a call question: an exchange's `entities` plus the
    /// call action `call` in `mcp_call` (worth caching per run, tool and call).
    pub fn call_entities(&self, entities: &Entities, call: &str) -> Result<Entities> {
        let group = self.action_uid(crate::mcp::CALL_GROUP);
        entities
            .clone()
            .add_entities(
                [
                    Entity::new_no_attrs(self.action_uid(call), [group.clone()].into()),
                    Entity::new_no_attrs(group, Default::default()),
                ],
                None,
            )
            .map_err(|e| Error::Policy(format!("could not build policy entities: {e}")))
    }

    fn action_uid(&self, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(self.exchange.type_name().clone(), EntityId::new(id))
    }

    /// Decides one MCP call: action `call` (`"<tool>:<mcp tool>"`, in
    /// `mcp_call`) with the exchange's context for `f.actions[0]` (the MCP
    /// tool's name) plus `arguments` (already checked against `ty`).
    pub fn decide_call(
        &self,
        policies: &TenantPolicies,
        f: &ExchangeFacts<'_>,
        entities: &Entities,
        call: &str,
        arguments: &Map<String, Value>,
        ty: &Record,
    ) -> Result<Verdict> {
        let Some(action) = f.actions.first() else {
            return Err(Error::Policy("an MCP call names its tool".into()));
        };
        if policies.is_empty() {
            return self.decide_with(policies, f, entities);
        }
        let pairs = self.context_pairs(f, action)?;
        let with_action = self.call_entities(entities, call)?;
        self.call_verdict(policies, f, &with_action, (call, arguments, ty), pairs)
    }

    /// Both questions of one MCP call, over one context: the exchange's
    /// for the MCP tool `f.actions[0]` (with `entities`), then, unless that
    /// refused without an `@approval` policy to lift it, the call action's
    /// (with `call_entities`, from [`Engine::call_entities`]).
    pub fn decide_mcp_call(
        &self,
        policies: &TenantPolicies,
        f: &ExchangeFacts<'_>,
        (entities, call_entities): (&Entities, &Entities),
        (call, arguments, ty): (&str, &Map<String, Value>, &Record),
    ) -> Result<CallVerdicts> {
        let Some(action) = f.actions.first() else {
            return Err(Error::Policy("an MCP call names its tool".into()));
        };
        if policies.is_empty() {
            let v = self.decide_with(policies, f, entities)?;
            return Ok(CallVerdicts {
                exchange: v,
                call: None,
            });
        }
        let pairs = self.context_pairs(f, action)?;
        let exchange = match self.exchange_action(policies, f, entities, action, pairs.clone())? {
            Ok(reasons) => Verdict {
                allowed: true,
                policies: reasons,
                reason: None,
                approval: None,
            },
            Err(refused) => refused,
        };
        if !exchange.allowed && exchange.approval.is_none() {
            return Ok(CallVerdicts {
                exchange,
                call: None,
            });
        }
        let call = self.call_verdict(policies, f, call_entities, (call, arguments, ty), pairs)?;
        Ok(CallVerdicts {
            exchange,
            call: Some(call),
        })
    }

    fn call_verdict(
        &self,
        policies: &TenantPolicies,
        f: &ExchangeFacts<'_>,
        call_entities: &Entities,
        (call, arguments, ty): (&str, &Map<String, Value>, &Record),
        mut pairs: Vec<(String, RestrictedExpression)>,
    ) -> Result<Verdict> {
        pairs.push(("arguments".to_owned(), record_expr(ty, arguments)?));
        let context = Context::from_pairs(pairs)
            .map_err(|e| Error::Policy(format!("could not build policy context: {e}")))?;
        let request = Request::new(
            self.uid(&self.types.run, f.run),
            self.action_uid(call),
            self.uid(&self.types.tool, f.tool),
            context,
            None,
        )
        .map_err(|e| Error::Policy(format!("could not build policy request: {e}")))?;
        Ok(
            match self.judge(
                &request,
                (&policies.set, &policies.set),
                call_entities,
                f,
                call,
                ErrorText::Withheld,
            ) {
                Ok(reasons) => Verdict {
                    allowed: true,
                    policies: reasons,
                    reason: None,
                    approval: None,
                },
                Err(refused) => refused,
            },
        )
    }
}

/// The verdicts on one MCP call ([`Engine::decide_mcp_call`]).
#[derive(Debug, Clone)]
pub struct CallVerdicts {
    /// The exchange question's, for the MCP tool.
    pub exchange: Verdict,
    /// The call action's, unless the exchange question refused for good.
    pub call: Option<Verdict>,
}

/// Checked arguments as a Cedar record (types were checked against `ty`).
fn record_expr(ty: &Record, m: &Map<String, Value>) -> Result<RestrictedExpression> {
    let mut pairs = Vec::with_capacity(m.len());
    for (k, v) in m {
        let Some(a) = ty.attrs.get(k) else { continue };
        pairs.push((k.clone(), value_expr(&a.ty, v)?));
    }
    RestrictedExpression::new_record(pairs)
        .map_err(|e| Error::Policy(format!("could not build the call's arguments: {e}")))
}

fn value_expr(ty: &ArgType, v: &Value) -> Result<RestrictedExpression> {
    let mismatch = || Error::Policy("an argument does not have its checked type".into());
    Ok(match (ty, v) {
        (ArgType::String, Value::String(s)) => RestrictedExpression::new_string(s.clone()),
        (ArgType::Long, Value::Number(n)) => {
            RestrictedExpression::new_long(n.as_i64().ok_or_else(mismatch)?)
        }
        (ArgType::Bool, Value::Bool(b)) => RestrictedExpression::new_bool(*b),
        (ArgType::Set(t), Value::Array(items)) => RestrictedExpression::new_set(
            items
                .iter()
                .map(|x| value_expr(t, x))
                .collect::<Result<Vec<_>>>()?,
        ),
        (ArgType::Record(r), Value::Object(o)) => record_expr(r, o)?,
        _ => return Err(mismatch()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::schema::arguments_type;
    use serde_json::json;

    use super::super::fixtures::{NO_DETAILS, NO_HISTORY};

    fn facts(actions: &[String]) -> ExchangeFacts<'_> {
        ExchangeFacts {
            tenant: "acme",
            now: 1_800_000_000,
            agent: "bot",
            agent_owner: "alice",
            agent_purpose: "pays",
            run: "run_1",
            task: "t",
            principal: None,
            grant: None,
            tool: "pay",
            tool_audience: "https://broker.example/mcp/pay",
            tool_labels: &[],
            tool_risk: "low",
            tool_provider: "mcp",
            actions,
            depth: 0,
            hops: 0,
            approved: false,
            details: &NO_DETAILS,
            history: &NO_HISTORY,
        }
    }

    fn pay_type() -> Record {
        arguments_type(&json!({"type": "object", "properties": {
            "amount": {"type": "integer"}, "currency": {"type": "string"},
            "memo": {"anyOf": [{"type": "string"}, {"type": "null"}]}
        }, "required": ["amount", "currency"]}))
        .unwrap()
    }

    fn schema(e: &Engine) -> TenantSchema {
        e.tenant_schema(&[
            CallAction {
                id: "pay:transfer".into(),
                arguments: pay_type(),
            },
            CallAction {
                id: "pay:balance".into(),
                arguments: Record::default(),
            },
        ])
        .unwrap()
    }

    const POLICIES: &str = r#"
        @id("calls") permit (principal, action in Mandate::Action::"mcp_call", resource);
        @id("small") forbid (principal, action == Mandate::Action::"pay:transfer", resource)
        unless { context.arguments.amount <= 100 && context.arguments.currency == "EUR" };
        @id("memo") forbid (principal, action == Mandate::Action::"pay:transfer", resource)
        when { context.arguments has memo && context.arguments.memo like "*secret*" };
    "#;

    #[test]
    fn argument_policies_validate_against_the_tenant_schema_only() {
        let e = Engine::new().unwrap();
        let s = schema(&e);
        assert_eq!(e.parse_policies_in(&s, "p", POLICIES).unwrap().len(), 3);
        // The shipped schema alone knows no such action.
        assert!(e.parse_policies("p", POLICIES).is_err());
        // The group alone validates in any tenant.
        let group = r#"permit (principal, action in Mandate::Action::"mcp_call", resource);"#;
        assert!(e.parse_policies("p", group).is_ok());
        // Typos, wrong types and optional members read without `has` are refused.
        for bad in [
            r#"forbid (principal, action == Mandate::Action::"pay:transfer", resource) when { context.arguments.amout > 1 };"#,
            r#"forbid (principal, action == Mandate::Action::"pay:transfer", resource) when { context.arguments.currency > 1 };"#,
            r#"forbid (principal, action == Mandate::Action::"pay:transfer", resource) when { context.arguments.memo == "x" };"#,
            r#"forbid (principal, action == Mandate::Action::"pay:trnasfer", resource);"#,
            r#"forbid (principal, action in Mandate::Action::"mcp_call", resource) when { context.arguments.amount > 1 };"#,
        ] {
            assert!(e.parse_policies_in(&s, "p", bad).is_err(), "{bad}");
        }
        // Stored policies a changed tool would break are named.
        let stored = e.parse_policies_in(&s, "p", POLICIES).unwrap();
        let narrower = e
            .tenant_schema(&[CallAction {
                id: "pay:transfer".into(),
                arguments: Record::default(),
            }])
            .unwrap();
        let broken: Vec<String> = e
            .invalid_under(&narrower, &stored)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        // (`memo` is read behind `has`: on a record without it the test is
        // false, which Cedar's validator accepts.)
        assert_eq!(broken, ["p/small"]);
        assert!(e.invalid_under(&s, &stored).is_empty());
    }

    #[test]
    fn calls_are_decided_on_their_arguments() {
        let e = Engine::new_validating().unwrap();
        let s = schema(&e);
        let p = e
            .compile(&e.parse_policies_in(&s, "p", POLICIES).unwrap())
            .unwrap();
        let actions = vec!["transfer".to_owned()];
        let f = facts(&actions);
        let entities = e.entities(&f).unwrap();
        let ty = pay_type();
        let decide = |args: serde_json::Value| {
            let m = args.as_object().unwrap().clone();
            e.decide_call(&p, &f, &entities, "pay:transfer", &m, &ty)
                .unwrap()
        };
        let v = decide(json!({"amount": 50, "currency": "EUR"}));
        assert!(v.allowed, "{v:?}");
        assert_eq!(v.policies, ["p/calls"]);
        let v = decide(json!({"amount": 500, "currency": "EUR"}));
        assert!(!v.allowed);
        assert_eq!(v.policies, ["p/small"]);
        assert!(v.reason.unwrap().contains("pay:transfer"));
        assert!(!decide(json!({"amount": 5, "currency": "USD"})).allowed);
        let v = decide(json!({"amount": 5, "currency": "EUR", "memo": "a secret plan"}));
        assert_eq!(v.policies, ["p/memo"]);
        assert!(decide(json!({"amount": 5, "currency": "EUR", "memo": "lunch"})).allowed);
        // Without a permit for calls, nothing is permitted.
        let only_forbid = e
            .compile(
                &e.parse_policies_in(
                    &s,
                    "q",
                    r#"forbid (principal, action == Mandate::Action::"pay:balance", resource);"#,
                )
                .unwrap(),
            )
            .unwrap();
        let m = json!({"amount": 5, "currency": "EUR"})
            .as_object()
            .unwrap()
            .clone();
        let v = e
            .decide_call(&only_forbid, &f, &entities, "pay:transfer", &m, &ty)
            .unwrap();
        assert!(!v.allowed && v.policies.is_empty());
    }

    #[test]
    fn both_questions_of_a_call_are_asked_over_one_context() {
        let e = Engine::new_validating().unwrap();
        let s = schema(&e);
        let with_exchange = |extra: &str| {
            let src = format!(
                "{POLICIES}\n@id(\"ex\") permit (principal, action == Mandate::Action::\"exchange\", resource);\n{extra}"
            );
            e.compile(&e.parse_policies_in(&s, "p", &src).unwrap())
                .unwrap()
        };
        let actions = vec!["transfer".to_owned()];
        let f = facts(&actions);
        let entities = e.entities(&f).unwrap();
        let call_entities = e.call_entities(&entities, "pay:transfer").unwrap();
        let ty = pay_type();
        let ask = |p: &TenantPolicies, args: serde_json::Value| {
            let m = args.as_object().unwrap().clone();
            e.decide_mcp_call(
                p,
                &f,
                (&entities, &call_entities),
                ("pay:transfer", &m, &ty),
            )
            .unwrap()
        };
        let p = with_exchange("");
        let v = ask(&p, json!({"amount": 50, "currency": "EUR"}));
        assert!(
            v.exchange.allowed && v.call.as_ref().unwrap().allowed,
            "{v:?}"
        );
        assert_eq!(v.exchange.policies, ["p/ex"]);
        // The call question alone refuses on the arguments.
        let v = ask(&p, json!({"amount": 500, "currency": "EUR"}));
        assert!(v.exchange.allowed);
        assert_eq!(v.call.unwrap().policies, ["p/small"]);
        // The exchange question refuses for good: the call is not asked.
        let p = with_exchange(
            r#"@id("late") forbid (principal, action == Mandate::Action::"exchange", resource) when { context.action == "transfer" };"#,
        );
        let v = ask(&p, json!({"amount": 5, "currency": "EUR"}));
        assert!(!v.exchange.allowed && v.call.is_none());
        assert_eq!(v.exchange.policies, ["p/late"]);
        // An `@approval` refusal of the exchange leaves the call question asked.
        let p = with_exchange(
            r#"@id("ask") @approval("principal") forbid (principal, action == Mandate::Action::"exchange", resource) when { context.action == "transfer" && !context.approved };"#,
        );
        let v = ask(&p, json!({"amount": 500, "currency": "EUR"}));
        assert!(!v.exchange.allowed && v.exchange.approval.is_some());
        assert!(!v.call.unwrap().allowed);
    }

    #[test]
    fn a_policy_that_errors_denies_without_quoting_the_arguments() {
        let e = Engine::new_validating().unwrap();
        let s = schema(&e);
        let src = r#"@id("calls") permit (principal, action in Mandate::Action::"mcp_call", resource);
@id("scaled") forbid (principal, action == Mandate::Action::"pay:transfer", resource)
when { context.arguments.amount * 1000000 > 5 };"#;
        let p = e
            .compile(&e.parse_policies_in(&s, "p", src).unwrap())
            .unwrap();
        let actions = vec!["transfer".to_owned()];
        let f = facts(&actions);
        let entities = e.entities(&f).unwrap();
        let m = json!({"amount": 9_007_199_254_740_991_i64, "currency": "EUR"})
            .as_object()
            .unwrap()
            .clone();
        let v = e
            .decide_call(&p, &f, &entities, "pay:transfer", &m, &pay_type())
            .unwrap();
        assert!(!v.allowed, "an overflow must deny");
        assert_eq!(v.policies, ["p/scaled"]);
        let reason = v.reason.unwrap();
        assert!(reason.contains("failed to evaluate"), "{reason}");
        assert!(!reason.contains("9007199254740991"), "{reason}");
    }

    const EXAMPLE: &str = include_str!("../../../../examples/policies/mcp-arguments.cedar");

    /// `examples/policies/mcp-arguments.cedar`, call by call, with the
    /// arguments an attacker would try.
    #[test]
    fn the_example_argument_policies_hold() {
        let e = Engine::new_validating().unwrap();
        let obj = |props: serde_json::Value, req: &[&str]| {
            arguments_type(&json!({"type": "object", "properties": props, "required": req}))
                .unwrap()
        };
        let s_ = json!({"type": "string"});
        let tools = [
            (
                "payments:pay",
                obj(
                    json!({"amount": {"type": "integer"}, "currency": s_}),
                    &["amount", "currency"],
                ),
            ),
            (
                "github:create_issue",
                obj(json!({"repo": s_, "title": s_}), &["repo", "title"]),
            ),
            ("files:read_file", obj(json!({"path": s_}), &["path"])),
            (
                "mail:send_email",
                obj(
                    json!({"to": s_, "subject": s_, "body": s_}),
                    &["to", "subject", "body"],
                ),
            ),
        ];
        let schema = e
            .tenant_schema(
                &tools
                    .iter()
                    .map(|(id, ty)| CallAction {
                        id: (*id).into(),
                        arguments: ty.clone(),
                    })
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        let p = e
            .compile(&e.parse_policies_in(&schema, "ex", EXAMPLE).unwrap())
            .unwrap();
        let decide = |call: &str, args: serde_json::Value| {
            let name = call.split_once(':').unwrap().1.to_owned();
            let actions = vec![name];
            let f = facts(&actions);
            let entities = e.entities(&f).unwrap();
            let ty = &tools.iter().find(|(id, _)| *id == call).unwrap().1;
            let v = e
                .decide_call(&p, &f, &entities, call, args.as_object().unwrap(), ty)
                .unwrap();
            (v.allowed, v.policies)
        };
        let pay = |amount: i64, currency: &str| {
            decide(
                "payments:pay",
                json!({"amount": amount, "currency": currency}),
            )
        };
        assert!(pay(10_000, "EUR").0);
        for (a, c) in [
            (10_001, "EUR"),
            (0, "EUR"),
            (-500, "EUR"),
            (5, "eur"),
            (5, "EUR "),
        ] {
            assert_eq!(
                pay(a, c),
                (false, vec!["ex/amount-ceiling".to_owned()]),
                "{a} {c}"
            );
        }
        let repo = |r: &str| decide("github:create_issue", json!({"repo": r, "title": "t"})).0;
        assert!(repo("acme/api"));
        for r in [
            "acme/api/../../globex/x",
            "acme/API",
            "globex/api",
            "acme/apis",
            "",
        ] {
            assert!(!repo(r), "{r}");
        }
        let path = |p: &str| decide("files:read_file", json!({"path": p})).0;
        assert!(path("/srv/reports/2026/q3.csv"));
        for x in [
            "/srv/reports/../secrets/key",
            "/srv/reports-old/q3.csv",
            "/srv/reports",
            "//srv/reports/x",
            "/srv/reports//etc/passwd",
            "srv/reports/x",
            "/etc/passwd",
        ] {
            assert!(!path(x), "{x}");
        }
        let mail = |to: &str| {
            decide(
                "mail:send_email",
                json!({"to": to, "subject": "s", "body": "b"}),
            )
            .0
        };
        assert!(mail("bob@example.com"));
        for to in [
            "eve@evil.test,bob@example.com",
            "eve@evil.test <x@example.com",
            "eve@evil.test;x@example.com",
            "eve@evil.example.com",
            "@example.com",
            "eve@evil.test@example.com",
            "bob@example.com.evil.test",
            "BOB@EXAMPLE.COM",
        ] {
            assert!(!mail(to), "{to}");
        }
    }
}
