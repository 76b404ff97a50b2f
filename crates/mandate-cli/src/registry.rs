//! What an admin registers: tenants, principals, agents, tools, grants,
//! policies, feed credentials.

use serde_json::{Value, json};

use crate::Ctx;
use crate::args::*;
use crate::client::{CliError, enc};
use crate::parse_duration;

/// `mandate tenant ...`.
pub(crate) fn tenant(cmd: TenantCmd, x: &Ctx) -> Result<(), CliError> {
    let c = || x.client();
    match cmd {
        TenantCmd::Create { name, description } => {
            let v = c().post(
                "/v1/tenants",
                &json!({"name": name, "description": description}),
            )?;
            x.show(&v, &["name", "description"]);
        }
        TenantCmd::List => x.show(&c().get("/v1/tenants")?, &["name", "description"]),
        TenantCmd::Show { name } => show_one(x, "/v1/tenants", "name", &name, "tenant")?,
    }
    Ok(())
}

/// `mandate principal ...`.
pub(crate) fn principal(cmd: PrincipalCmd, x: &Ctx) -> Result<(), CliError> {
    let c = || x.client();
    match cmd {
        PrincipalCmd::Create {
            tenant,
            id,
            name,
            groups,
        } => {
            let v = c().post(
                &format!("/v1/tenants/{}/principals", enc(&tenant)),
                &json!({"id": id, "display_name": name, "groups": groups}),
            )?;
            x.show(&v, &["tenant", "id", "display_name", "groups"]);
        }
        PrincipalCmd::ApproverToken {
            tenant,
            id,
            out,
            ttl,
        } => {
            let ttl = ttl.as_deref().map(parse_duration).transpose()?;
            let out = crate::output::OutFile::reserve(out.as_deref())?;
            let v = c().post(
                &format!(
                    "/v1/tenants/{}/principals/{}/approver-tokens",
                    enc(&tenant),
                    enc(&id)
                ),
                &json!({"ttl_secs": ttl}),
            )?;
            emit_token(
                x,
                &v,
                out,
                &["id", "tenant", "principal", "expires_at", "token"],
            )?;
        }
        PrincipalCmd::List { tenant } => x.show(
            &c().get(&format!("/v1/tenants/{}/principals", enc(&tenant)))?,
            &["id", "display_name"],
        ),
        PrincipalCmd::Show { tenant, id } => show_one(
            x,
            &format!("/v1/tenants/{}/principals", enc(&tenant)),
            "id",
            &id,
            "principal",
        )?,
    }
    Ok(())
}

/// `mandate agent ...`.
pub(crate) fn agent(cmd: AgentCmd, x: &Ctx) -> Result<(), CliError> {
    let c = || x.client();
    match cmd {
        AgentCmd::Create(a) => {
            let Some(owner) = a.owner else {
                return Err(CliError::new(
                    "an agent needs --owner: the person or team accountable for it",
                )
                .exit(crate::client::Exit::Usage));
            };
            if a.envelope.is_empty() {
                return Err(
                    CliError::new("an agent needs at least one --envelope capability")
                        .exit(crate::client::Exit::Usage),
                );
            }
            let v = c().post(
                &format!("/v1/tenants/{}/agents", enc(&a.tenant)),
                &json!({"name": a.name, "owner": owner, "purpose": a.purpose.unwrap_or_default(), "envelope": a.envelope}),
            )?;
            x.show(&v, &["name", "owner", "spiffe_id", "envelope"]);
        }
        AgentCmd::Update(a) => {
            let path = format!("/v1/tenants/{}/agents", enc(&a.tenant));
            let mut body = as_registration(registered(x, &path, "name", &a.name, "agent")?);
            if let Some(o) = a.owner {
                body["owner"] = json!(o);
            }
            if let Some(p) = a.purpose {
                body["purpose"] = json!(p);
            }
            if !a.envelope.is_empty() {
                body["envelope"] = json!(a.envelope);
            }
            let v = c().put_json(&format!("{path}/{}", enc(&a.name)), &body)?;
            x.show(&v, &["name", "owner", "spiffe_id", "envelope"]);
        }
        AgentCmd::List { tenant } => x.show(
            &c().get(&format!("/v1/tenants/{}/agents", enc(&tenant)))?,
            &["name", "owner", "purpose", "envelope"],
        ),
        AgentCmd::Show { tenant, name } => show_one(
            x,
            &format!("/v1/tenants/{}/agents", enc(&tenant)),
            "name",
            &name,
            "agent",
        )?,
        AgentCmd::JoinToken {
            tenant,
            name,
            ttl,
            principal,
            grant,
            out,
        } => {
            let ttl = parse_duration(&ttl)?;
            let out = crate::output::OutFile::reserve(out.as_deref())?;
            let v = c().post(
                &format!(
                    "/v1/tenants/{}/agents/{}/join-tokens",
                    enc(&tenant),
                    enc(&name)
                ),
                &json!({"ttl_secs": ttl, "principal": principal, "grant": grant}),
            )?;
            emit_token(x, &v, out, &["id", "agent", "expires_at", "token"])?;
        }
    }
    Ok(())
}

/// `mandate tool ...`.
pub(crate) fn tool(cmd: ToolCmd, x: &Ctx) -> Result<(), CliError> {
    let c = || x.client();
    match cmd {
        ToolCmd::Create(spec) => {
            let (tenant, name) = (spec.tenant.clone(), spec.name.clone());
            if spec.actions.is_empty() {
                return Err(CliError::new("a tool needs at least one --action")
                    .exit(crate::client::Exit::Usage));
            }
            let body = tool_body(spec, None)?;
            let v = c().post(&format!("/v1/tenants/{}/tools", enc(&tenant)), &body)?;
            x.show(&v, TOOL_COLS);
            if v["secret_set"] == false && !x.quiet {
                eprintln!(
                    "note: this tool's provider needs a secret before any exchange succeeds: mandate tool set-secret --tenant {tenant} {name}"
                );
            }
        }
        ToolCmd::Update(spec) => {
            let (tenant, name) = (spec.tenant.clone(), spec.name.clone());
            let current = registered(
                x,
                &format!("/v1/tenants/{}/tools", enc(&tenant)),
                "name",
                &name,
                "tool",
            )?;
            let body = tool_body(spec, Some(as_registration(current)))?;
            let v = c().put_json(
                &format!("/v1/tenants/{}/tools/{}", enc(&tenant), enc(&name)),
                &body,
            )?;
            x.show(&v, TOOL_COLS);
        }
        ToolCmd::SetSecret { tenant, name, file } => {
            let secret = match file {
                Some(f) => std::fs::read_to_string(&f)
                    .map_err(|e| CliError::new(format!("cannot read {}: {e}", f.display())))?,
                None => {
                    use std::io::{IsTerminal, Read};
                    if std::io::stdin().is_terminal() {
                        crate::prompt::secret_line(
                            "paste the secret and press Enter (it is not shown; Ctrl-C cancels; a secret of several lines: --file or a pipe):",
                        )?
                    } else {
                        let mut s = String::new();
                        std::io::stdin()
                            .read_to_string(&mut s)
                            .map_err(|e| CliError::new(format!("cannot read stdin: {e}")))?;
                        s
                    }
                }
            };
            let v = c().put_text(
                &format!("/v1/tenants/{}/tools/{}/secret", enc(&tenant), enc(&name)),
                &secret,
            )?;
            x.show(&v, &["tenant", "tool", "secret_set"]);
        }
        ToolCmd::Sync {
            tenant,
            name,
            accept_changes,
        } => {
            let v = c().post(
                &format!(
                    "/v1/tenants/{}/tools/{}/sync{}",
                    enc(&tenant),
                    enc(&name),
                    if accept_changes {
                        "?accept_changes=true"
                    } else {
                        ""
                    }
                ),
                &json!({}),
            )?;
            if x.json {
                x.show(&v, &[]);
            } else {
                let tools = v["tools"].as_array().cloned().unwrap_or_default();
                println!("{} MCP tools pinned for `{name}`:", tools.len());
                for t in &tools {
                    let state = if t["enabled"] == true {
                        "enabled"
                    } else if t["enableable"] == true {
                        "not enabled (add it with --action)"
                    } else {
                        "cannot be enabled (its name is not an action name)"
                    };
                    let unmodelled = t["unmodelled"].as_array().map_or(0, Vec::len);
                    let note = if unmodelled > 0 {
                        format!("; {unmodelled} argument(s) no policy can read")
                    } else {
                        String::new()
                    };
                    println!("  {:<32} {state}{note}", t["name"].as_str().unwrap_or(""));
                }
            }
        }
        ToolCmd::List { tenant } => x.show(
            &c().get(&format!("/v1/tenants/{}/tools", enc(&tenant)))?,
            TOOL_COLS,
        ),
        ToolCmd::Show { tenant, name } => show_one(
            x,
            &format!("/v1/tenants/{}/tools", enc(&tenant)),
            "name",
            &name,
            "tool",
        )?,
    }
    Ok(())
}

/// The registration body `tool create` and `tool update` send: `base` (the
/// tool as registered, for an update; nothing for a create, where the
/// broker fills its defaults) with what the flags give set over it.
fn tool_body(spec: crate::args::ToolSpec, base: Option<Value>) -> Result<Value, CliError> {
    let crate::args::ToolSpec {
        tenant: _,
        name,
        audience,
        provider,
        config,
        upstream,
        stdio,
        mint_audience,
        dpop,
        routes,
        inject_header,
        inject_format,
        timeout_ms,
        pg_host,
        pg_port,
        pg_database,
        pg_roles,
        env,
        actions,
        labels,
        risk,
        max_ttl,
        alg,
    } = spec;
    let mut body = base.unwrap_or_else(|| json!({}));
    body["name"] = json!(name);
    let lists = [("actions", actions), ("labels", labels)];
    for (k, v) in lists {
        if !v.is_empty() {
            body[k] = json!(v);
        }
    }
    let given = [
        ("audience", audience.map(Value::from)),
        ("provider", provider.map(Value::from)),
        ("risk", risk.map(Value::from)),
        ("max_ttl_secs", max_ttl.map(Value::from)),
        ("alg", alg.map(Value::from)),
    ];
    for (k, v) in given {
        if let Some(v) = v {
            body[k] = v;
        }
    }
    let is_mcp = body["provider"] == "mcp";
    if is_mcp {
        if !routes.is_empty() {
            return Err(CliError::new(
                "--route is for `proxy` tools; an `mcp` tool's actions are its MCP tool names (--action)",
            ));
        }
        let mut mcp = body.get("mcp").cloned().unwrap_or_else(|| json!({}));
        if let Some(u) = upstream {
            mcp["upstream"] = json!(u);
            if let Some(o) = mcp.as_object_mut() {
                o.remove("stdio");
            }
        }
        if let Some(n) = stdio {
            mcp["stdio"] = json!(n);
            if let Some(o) = mcp.as_object_mut() {
                o.remove("upstream");
            }
        }
        if let Some(t) = timeout_ms {
            mcp["timeout_ms"] = json!(t);
        }
        if let Some(a) = mint_audience {
            mcp["mint"] = json!({"audience": a});
        }
        if let Some(d) = dpop {
            mcp["dpop"] = json!(d);
        }
        if inject_header.is_some() || inject_format.is_some() {
            let inject = &mut mcp["inject"];
            let header = inject_header.or_else(|| inject["header"].as_str().map(str::to_owned));
            let format = inject_format.or_else(|| inject["format"].as_str().map(str::to_owned));
            *inject = json!({"header": header.unwrap_or_else(|| "Authorization".into()),
                "format": format.unwrap_or_else(|| "Bearer {secret}".into())});
        }
        if mcp.as_object().is_some_and(|o| !o.is_empty()) {
            body["mcp"] = mcp;
        }
    } else if stdio.is_some() || mint_audience.is_some() || dpop.is_some() {
        return Err(CliError::new(
            "--stdio, --mint-audience and --dpop are for `mcp` tools (--provider mcp)",
        ));
    } else if upstream.is_some()
        || !routes.is_empty()
        || inject_header.is_some()
        || inject_format.is_some()
        || timeout_ms.is_some()
    {
        let mut proxy = body.get("proxy").cloned().unwrap_or_else(|| json!({}));
        if let Some(u) = upstream {
            proxy["upstream"] = json!(u);
        }
        if !routes.is_empty() {
            let routes = routes
                .iter()
                .map(|r| parse_route(r))
                .collect::<Result<Vec<_>, _>>()?;
            proxy["routes"] = json!(routes);
        }
        if let Some(t) = timeout_ms {
            proxy["timeout_ms"] = json!(t);
        }
        let inject = &mut proxy["inject"];
        let header = inject_header.or_else(|| inject["header"].as_str().map(str::to_owned));
        let format = inject_format.or_else(|| inject["format"].as_str().map(str::to_owned));
        *inject = json!({"header": header.unwrap_or_else(|| "Authorization".into()),
            "format": format.unwrap_or_else(|| "Bearer {secret}".into())});
        body["proxy"] = proxy;
    }
    if pg_database.is_some() || pg_host.is_some() || pg_port.is_some() || !pg_roles.is_empty() {
        let mut pg = body.get("postgres").cloned().unwrap_or_else(|| json!({}));
        if let Some(db) = pg_database {
            pg["database"] = json!(db);
        }
        let host = pg_host.or_else(|| pg["host"].as_str().map(str::to_owned));
        pg["host"] = json!(host.unwrap_or_else(|| "127.0.0.1".into()));
        pg["port"] = json!(
            pg_port
                .or_else(|| pg["port"].as_u64().and_then(|p| u16::try_from(p).ok()))
                .unwrap_or(5432)
        );
        if !pg_roles.is_empty() {
            let mut roles = serde_json::Map::new();
            for r in &pg_roles {
                let (a, role) = r.split_once('=').ok_or_else(|| {
                    CliError::new(format!("--pg-role `{r}`: write it as action=role"))
                })?;
                roles.insert(a.to_owned(), json!(role));
            }
            pg["roles"] = json!(roles);
        }
        body["postgres"] = pg;
    }
    if !env.is_empty() {
        let vars = env
            .iter()
            .map(|e| {
                e.split_once('=')
                    .map(|(n, v)| json!({"name": n, "value": v}))
                    .ok_or_else(|| CliError::new(format!("--env `{e}`: write it as NAME=template")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        body["env"] = json!(vars);
    }
    if let Some(f) = config {
        let text = std::fs::read_to_string(&f)
            .map_err(|e| CliError::new(format!("cannot read {}: {e}", f.display())))?;
        let extra: Value = serde_json::from_str(&text)
            .map_err(|e| CliError::new(format!("{} is not JSON: {e}", f.display())))?;
        let Value::Object(extra) = extra else {
            return Err(CliError::new(format!(
                "{} must hold a JSON object",
                f.display()
            )));
        };
        for (k, v) in extra {
            body[k] = v;
        }
    }
    if let Some(o) = body.as_object_mut() {
        o.retain(|_, v| !v.is_null());
    }
    Ok(body)
}

/// `mandate grant ...`.
pub(crate) fn grant(cmd: GrantCmd, x: &Ctx) -> Result<(), CliError> {
    let c = || x.client();
    match cmd {
        GrantCmd::Create {
            tenant,
            principal,
            agent,
            caps,
            task,
            expires_in,
        } => {
            let v = c().post(
                &format!("/v1/tenants/{}/grants", enc(&tenant)),
                &json!({"principal": principal, "agent": agent, "capabilities": caps, "task": task, "expires_in_secs": expires_in}),
            )?;
            x.show(&v, GRANT_COLS);
        }
        GrantCmd::List { tenant } => x.show(
            &c().get(&format!("/v1/tenants/{}/grants", enc(&tenant)))?,
            GRANT_COLS,
        ),
        GrantCmd::Show { tenant, id } => show_one(
            x,
            &format!("/v1/tenants/{}/grants", enc(&tenant)),
            "id",
            &id,
            "grant",
        )?,
    }
    Ok(())
}

/// `mandate policy ...`.
pub(crate) fn policy(cmd: PolicyCmd, x: &Ctx) -> Result<(), CliError> {
    let c = || x.client();
    let j = x.json;
    match cmd {
        PolicyCmd::Add { tenant, file, name } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| CliError::new(format!("cannot read {}: {e}", file.display())))?;
            let name = name.unwrap_or_else(|| {
                file.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            let v = c().put_text(
                &format!("/v1/tenants/{}/policies/{}", enc(&tenant), enc(&name)),
                &text,
            )?;
            if j {
                x.show(&v, &[]);
            } else {
                let ids: Vec<&str> = v["policies"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|p| p["id"].as_str()).collect())
                    .unwrap_or_default();
                println!(
                    "loaded policy set `{name}` into tenant `{tenant}`: {}",
                    ids.join(", ")
                );
            }
        }
        PolicyCmd::List { tenant } => {
            let v = c().get(&format!("/v1/tenants/{}/policies", enc(&tenant)))?;
            if j {
                x.show(&v, &[]);
            } else {
                for set in v.as_array().into_iter().flatten() {
                    for p in set["policies"].as_array().into_iter().flatten() {
                        println!(
                            "// {}\n{}\n",
                            p["id"].as_str().unwrap_or(""),
                            p["text"].as_str().unwrap_or("")
                        );
                    }
                }
            }
        }
        PolicyCmd::Remove { tenant, name } => {
            c().delete(&format!(
                "/v1/tenants/{}/policies/{}",
                enc(&tenant),
                enc(&name)
            ))?;
            if j {
                x.show(
                    &json!({"tenant": tenant, "name": name, "removed": true}),
                    &[],
                );
            } else {
                println!("removed policy set `{name}` from tenant `{tenant}`");
            }
        }
    }
    Ok(())
}

/// `mandate feed-token ...`.
pub(crate) fn feed_token(cmd: FeedTokenCmd, x: &Ctx) -> Result<(), CliError> {
    let c = || x.client();
    match cmd {
        FeedTokenCmd::Create { out, tenant, ttl } => {
            let ttl = ttl.as_deref().map(parse_duration).transpose()?;
            let out = crate::output::OutFile::reserve(out.as_deref())?;
            let v = c().post(
                "/v1/feed-tokens",
                &json!({"tenant": tenant, "ttl_secs": ttl}),
            )?;
            emit_token(x, &v, out, &["id", "tenant", "expires_at", "token"])?;
        }
    }
    Ok(())
}

pub(crate) const TOOL_COLS: &[&str] = &[
    "name",
    "provider",
    "audience",
    "actions",
    "labels",
    "risk",
    "max_ttl_secs",
    "secret_set",
];

pub(crate) const GRANT_COLS: &[&str] = &[
    "id",
    "principal",
    "agent",
    "capabilities",
    "task",
    "expires_at",
];

/// Prints a newly made credential, or writes it to a new 0600 file.
pub(crate) fn emit_token(
    x: &Ctx,
    v: &Value,
    out: Option<crate::output::OutFile>,
    cols: &[&str],
) -> Result<(), CliError> {
    let token = v["token"].as_str().unwrap_or_default();
    match out {
        Some(file) => {
            let path = file.path().display().to_string();
            file.fill(format!("{token}\n").as_bytes())?;
            let mut shown = v.clone();
            shown["token"] = json!(format!("(written to {path})"));
            x.show(&shown, cols);
        }
        None if x.json => x.show(v, &[]),
        None => println!("{token}"),
    }
    Ok(())
}

/// `POST /emails=send` → a route; `POST /payments=pay amount=json:/amount`
/// (or `amount=form:amount`) names where the request carries its amount.
pub(crate) fn parse_route(r: &str) -> Result<Value, CliError> {
    let bad = || {
        CliError::new(format!(
            "--route `{r}`: write it as `METHOD /path=action`, optionally followed by ` amount=json:/pointer` or ` amount=form:field`"
        ))
    };
    let (route, amount) = match r.split_once(" amount=") {
        Some((route, at)) => {
            let at = match at.trim().split_once(':') {
                Some(("json", p)) => json!({"json": p}),
                Some(("form", f)) => json!({"form": f}),
                _ => return Err(bad()),
            };
            (route, Some(at))
        }
        None => (r, None),
    };
    let (lhs, action) = route.rsplit_once('=').ok_or_else(bad)?;
    let (method, path) = lhs.trim().split_once(' ').ok_or_else(bad)?;
    let mut v = json!({"method": method.trim(), "path": path.trim(), "action": action.trim()});
    if let Some(at) = amount {
        v["amount"] = at;
    }
    Ok(v)
}

/// The one record of `list` whose `field` is `value` (not found: exit 3).
fn registered(
    x: &Ctx,
    list: &str,
    field: &str,
    value: &str,
    what: &str,
) -> Result<Value, CliError> {
    let all = x.client().get(list)?;
    all.as_array()
        .into_iter()
        .flatten()
        .find(|r| r[field].as_str() == Some(value))
        .cloned()
        .ok_or_else(|| {
            CliError::new(format!(
                "no {what} `{value}` (list them with `mandate {what} list`)"
            ))
            .exit(crate::client::Exit::NotFound)
        })
}

/// A registration as shown, as a replacement sends it: without what the
/// broker sets (tenant, times, `secret_set`, a broker-set audience, the
/// SPIFFE id).
fn as_registration(mut v: Value) -> Value {
    let broker_set_audience = v["provider"].as_str().is_some_and(|p| p != "jwt");
    if let Some(o) = v.as_object_mut() {
        for k in ["tenant", "created_ms", "secret_set", "spiffe_id"] {
            o.remove(k);
        }
        if broker_set_audience {
            o.remove("audience");
        }
    }
    v
}

/// Shows the one record of `list` whose `field` is `value`, every field
/// (JSON with --json, one `field  value` line each otherwise); not found
/// is exit 3.
fn show_one(x: &Ctx, list: &str, field: &str, value: &str, what: &str) -> Result<(), CliError> {
    let one = registered(x, list, field, value, what)?;
    if x.json || x.quiet {
        x.show(&one, &[]);
    } else {
        crate::output::print_record(&one);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_with_and_without_an_amount() {
        assert_eq!(
            parse_route("POST /emails=send").unwrap(),
            json!({"method": "POST", "path": "/emails", "action": "send"})
        );
        assert_eq!(
            parse_route("POST /payments=pay amount=json:/amount").unwrap(),
            json!({"method": "POST", "path": "/payments", "action": "pay", "amount": {"json": "/amount"}})
        );
        assert_eq!(
            parse_route("POST /v1/charges=pay amount=form:amount").unwrap()["amount"],
            json!({"form": "amount"})
        );
        assert!(parse_route("POST /payments=pay amount=header:x").is_err());
        assert!(parse_route("POST/payments").is_err());
    }
}
