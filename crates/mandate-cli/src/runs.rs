//! Runs and their tokens: start, list, end, evaluate, suspend; `exec`;
//! keys and offline attenuation; revocation.

use serde_json::{Value, json};

use crate::Ctx;
use crate::args::*;
use crate::client::{CliError, Client, Exit, enc};
use crate::{exec, offline, output};

/// `mandate run ...`.
pub(crate) fn run(cmd: RunCmd, x: &Ctx) -> Result<(), CliError> {
    let c = || x.client();
    let j = x.json;
    match cmd {
        RunCmd::Eval {
            id,
            name,
            pass,
            fail: _,
            score,
        } => {
            let v = c().post(
                &format!("/v1/runs/{}/evals", enc(&id)),
                &json!({"name": name, "passed": pass, "score": score}),
            )?;
            x.show(&v, &["run", "eval", "passed"]);
        }
        RunCmd::Suspend { id, reason } => {
            let v = c().post(
                &format!("/v1/runs/{}/suspend", enc(&id)),
                &json!({"reason": reason}),
            )?;
            x.show(&v, &["run", "suspended"]);
        }
        RunCmd::Resume { id } => {
            let v = c().post(&format!("/v1/runs/{}/resume", enc(&id)), &json!({}))?;
            x.show(&v, &["run", "suspended"]);
        }
        RunCmd::Start {
            tenant,
            agent,
            principal,
            grant,
            task,
            ttl,
            jwk,
            out,
        } => {
            // A private JWK file (`mandate key generate`) may be named: only
            // its public half is sent.
            let inline = jwk.trim_start().starts_with('{');
            let text = mandate_core::secret::Secret::new(if inline {
                jwk.into_bytes()
            } else {
                std::fs::read(&jwk)
                    .map_err(|e| CliError::new(format!("cannot read JWK file {jwk}: {e}")))?
            });
            if inline
                && serde_json::from_slice::<Value>(text.expose())
                    .is_ok_and(|v| v.get("d").is_some())
            {
                return Err(CliError::new(
                    "--jwk: this JSON holds a private key (`d`), now in your shell history and the process list; give the key's file instead (`mandate key generate --out run.jwk`, then --jwk run.jwk), and make a new key",
                )
                .exit(Exit::Usage));
            }
            let jwk = crate::offline::public_jwk(text.expose())
                .map_err(|e| CliError::new(format!("--jwk: {e}")).exit(Exit::Usage))?
                .to_json();
            if x.quiet && out.is_none() {
                return Err(CliError::new(
                    "-q prints only the run id: give --out FILE for the mandate, or it would be lost",
                )
                .exit(Exit::Usage));
            }
            let file = output::OutFile::reserve(out.as_deref())?;
            let v = c().post(
                "/v1/runs",
                &json!({"tenant": tenant, "agent": agent, "principal": principal, "grant": grant,
                        "task": task, "ttl_secs": ttl, "jwk": jwk}),
            )?;
            let mut v = v;
            for w in v["warnings"].as_array().into_iter().flatten() {
                eprintln!("warning: {}", output::cell(w));
            }
            if let Some(file) = file {
                let m = v["mandate"]
                    .as_str()
                    .filter(|m| !m.is_empty())
                    .ok_or_else(|| {
                        CliError::new("the broker's answer holds no mandate: is --url the broker?")
                    })?;
                let path = file.path().display().to_string();
                file.fill(format!("{m}\n").as_bytes())?;
                v["mandate"] = json!(format!("(written to {path})"));
            }
            if j || x.quiet {
                x.show(&v, &[]);
            } else {
                println!("run        {}", v["run"].as_str().unwrap_or(""));
                println!("identity   {}", v["run_id"].as_str().unwrap_or(""));
                println!(
                    "expires at {}",
                    output::time_s(v["expires_at"].as_u64().unwrap_or(0))
                );
                println!("capabilities {}", output::cell(&v["capabilities"]));
                match &out {
                    Some(p) => println!("mandate    written to {}", p.display()),
                    None => println!(
                        "mandate (give it only to the run; it is bound to the run's key):\n{}",
                        v["mandate"].as_str().unwrap_or("")
                    ),
                }
            }
        }
        RunCmd::List { tenant, agent } => {
            let mut q = String::from("/v1/runs?limit=100");
            if let Some(t) = tenant {
                q.push_str(&format!("&tenant={}", enc(&t)));
            }
            if let Some(a) = agent {
                q.push_str(&format!("&agent={}", enc(&a)));
            }
            x.show(
                &c().get(&q)?,
                &[
                    "id",
                    "status",
                    "tenant",
                    "agent",
                    "principal",
                    "task",
                    "expires_at",
                    "ended_ms",
                    "revoked_by",
                ],
            );
        }
        RunCmd::End { id } => {
            let v = c().post(&format!("/v1/runs/{}/end", enc(&id)), &json!({}))?;
            if j {
                x.show(&v, &[]);
            } else {
                println!("run {id} ended; its mandate and credentials are refused from now on");
            }
        }
    }
    Ok(())
}

/// `mandate exec`.
pub(crate) fn exec(a: ExecCli, x: &Ctx) -> Result<(), CliError> {
    // Before any credential is read, and before the child exists.
    exec::harden()?;
    let starter = match &a.join_token_file {
        Some(f) => {
            let t = std::fs::read_to_string(f)
                .map_err(|e| CliError::new(format!("cannot read {}: {e}", f.display())))?;
            Client::with_token(x.url.clone(), t.trim().to_owned())
        }
        None if !x.token_file.as_ref().is_some_and(|f| f.exists()) => {
            return Err(CliError::new(format!(
                "`mandate exec` starts a run, which needs a one-time join token on an agent host: an admin makes one with `mandate agent join-token --tenant {t} {a} --out join.token` (add --principal and --grant to act for someone), and you pass --join-token-file join.token (or MANDATE_JOIN_TOKEN_FILE); it is read once and may be deleted after. (On the admin's own machine, the admin credential file works too; none was found.)",
                t = a.tenant,
                a = a.agent
            ))
            .exit(Exit::Usage));
        }
        None => x.client(),
    };
    let code = exec::exec(
        starter,
        &x.url,
        exec::ExecArgs {
            tenant: a.tenant,
            agent: a.agent,
            principal: a.on_behalf_of,
            grant: a.grant,
            task: a.task,
            tools: a.tools,
            delegate_to: a.delegate_to,
            ttl: a.ttl,
            quiet: a.quiet,
            command: a.command,
        },
    )?;
    std::process::exit(i32::from(code));
}

/// `mandate key ...`.
pub(crate) fn key(cmd: KeyCmd, x: &Ctx) -> Result<(), CliError> {
    let j = x.json;
    match cmd {
        KeyCmd::SignRequest(a) => {
            let v = offline::sign_request(a, exec::now())?;
            if j {
                x.show(&v, &[]);
            } else if let Some(o) = v.as_object() {
                for (k, v) in o {
                    println!("{k}: {}", v.as_str().unwrap_or_default());
                }
            }
        }
        KeyCmd::Generate(a) => {
            let v = offline::key_generate(a)?;
            x.show(&v, &["file", "alg", "jkt"]);
        }
    }
    Ok(())
}

/// `mandate token ...`.
pub(crate) fn token(cmd: TokenCmd, x: &Ctx) -> Result<(), CliError> {
    let c = || x.client();
    let j = x.json;
    match cmd {
        TokenCmd::Exchange(a) => {
            let v = crate::exchange::exchange(a, &x.url)?;
            if j {
                x.show(&v, &[]);
            } else {
                println!("{}", v["access_token"].as_str().unwrap_or_default());
                crate::output::write_stderr(format_args!(
                    "a {} credential for {}, expires in {} s\n",
                    output::cell(&v["token_type"]),
                    output::cell(&v["scope"]),
                    output::cell(&v["expires_in"]),
                ));
            }
        }
        TokenCmd::Attenuate(a) => {
            let v = offline::attenuate_cmd(a, exec::now())?;
            if j {
                x.show(&v, &[]);
            } else {
                println!("{}", v["mandate"].as_str().unwrap_or_default());
            }
        }
        TokenCmd::Inspect { token } => {
            let token = if token == "-" {
                let mut t = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut t).map_err(|e| {
                    CliError::new(format!("cannot read the token from standard input: {e}"))
                })?;
                t.trim().to_owned()
            } else {
                token
            };
            let v = c().post("/v1/tokens/inspect", &json!({"token": token}))?;
            if j {
                x.show(&v, &[]);
            } else {
                output::print_inspection(&v);
            }
            if !v["verifies"].as_bool().unwrap_or(false) {
                return Err(CliError::new(format!(
                    "the token does not verify: {}",
                    v["reason"].as_str().unwrap_or("unknown reason")
                )));
            }
        }
    }
    Ok(())
}

/// `mandate revoke`.
pub(crate) fn revoke(r: RevokeArgs, x: &Ctx) -> Result<(), CliError> {
    let c = || x.client();
    let j = x.json;
    if let Some(RevokeSub::List { tenant, limit }) = r.list {
        return revoke_list(x, tenant.as_deref(), limit);
    }
    let body = if let Some(id) = r.credential {
        json!({"kind": "credential", "id": id, "tenant": r.tenant})
    } else if let Some(t) = r.token {
        json!({"kind": "credential", "token": t})
    } else if let Some(id) = r.run {
        json!({"kind": "run", "id": id})
    } else if let Some(id) = r.agent {
        let t = r
            .tenant
            .ok_or_else(|| CliError::new("--agent needs --tenant"))?;
        json!({"kind": "agent", "tenant": t, "id": id})
    } else if let Some(id) = r.principal {
        let t = r
            .tenant
            .ok_or_else(|| CliError::new("--principal needs --tenant"))?;
        json!({"kind": "principal", "tenant": t, "id": id})
    } else if let Some(id) = r.grant {
        json!({"kind": "grant", "id": id})
    } else if let Some(t) = r.tenant_only.or(if r.all { r.tenant } else { None }) {
        json!({"kind": "tenant", "id": t})
    } else if r.everything {
        if !r.yes {
            use std::io::{BufRead, IsTerminal, Write};
            if !std::io::stdin().is_terminal() {
                return Err(CliError::new(
                    "`--everything` revokes every credential of every tenant: add --yes to confirm",
                ));
            }
            eprint!(
                "This revokes every mandate and credential of every tenant. Type `everything` to confirm: "
            );
            let _ = std::io::stderr().flush();
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            if line.trim() != "everything" {
                return Err(CliError::new("not confirmed; nothing was revoked"));
            }
        }
        json!({"kind": "everything"})
    } else {
        return Err(CliError::new(
            "say what to revoke (see `mandate revoke --help`)",
        ));
    };
    let mut body = body;
    if let Some(reason) = r.reason {
        body["reason"] = json!(reason);
    }
    let v = c().post("/v1/revocations", &body)?;
    if j {
        x.show(&v, &[]);
    } else {
        println!(
            "revoked {}: refused from now on",
            v["revoked"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// `mandate revoke list`: the latest `limit` revocations of the log
/// (filtered to `tenant` and the kill switch), oldest first.
fn revoke_list(x: &Ctx, tenant: Option<&str>, limit: u32) -> Result<(), CliError> {
    let c = x.client();
    let mut upper = c.get("/v1/revocations/log?after=0&limit=1")?["head"]
        .as_u64()
        .unwrap_or(0);
    let limit = limit.clamp(1, 10_000) as usize;
    let keep = |r: &Value| match tenant {
        None => true,
        Some(t) => r["tenant"].as_str().is_none_or(|rt| rt == t),
    };
    // Pages back from the head until `limit` rows match (a tenant's may be
    // far behind the others').
    let mut rows: Vec<Value> = Vec::new();
    while upper > 0 && rows.len() < limit {
        let after = upper.saturating_sub(1000);
        let v = c.get(&format!("/v1/revocations/log?after={after}&limit=1000"))?;
        let mut page: Vec<Value> = v["revocations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| keep(r))
            .cloned()
            .collect();
        page.append(&mut rows);
        rows = page;
        upper = after;
    }
    let skip = rows.len().saturating_sub(limit);
    let rows: Vec<Value> = rows
        .into_iter()
        .skip(skip)
        .map(|mut r| {
            // Tables show times, never bare epoch numbers; 0 is "for ever".
            r["refused_until_at"] = match r["until"].as_u64() {
                Some(0) | None => json!("for ever"),
                Some(t) => json!(t),
            };
            r
        })
        .collect();
    x.show(
        &Value::Array(rows),
        &[
            "seq",
            "key",
            "tenant",
            "reason",
            "time_ms",
            "refused_until_at",
        ],
    );
    Ok(())
}
