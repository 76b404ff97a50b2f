//! `mandate approvals ...` (deciding what waits for a human), and the run
//! controls of continuous authorization: eval gates, suspend, resume.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::{Value, json};

use crate::client::{CliError, Client, enc};
use crate::show;

/// `mandate approvals`.
#[derive(Subcommand)]
pub(crate) enum ApprovalsCmd {
    /// List approval requests: an approver sees those it may decide; the
    /// admin credential sees all.
    List {
        /// pending, approved, denied or used.
        #[arg(long)]
        status: Option<String>,
        /// Only this tenant (admin).
        #[arg(long, short = 't', env = "MANDATE_TENANT")]
        tenant: Option<String>,
        #[command(flatten)]
        who: As,
    },
    /// Show one request: who asks, for what tool and actions, with which
    /// declared details, under which policies, and its state.
    Show {
        id: String,
        #[command(flatten)]
        who: As,
    },
    /// Approve a request (approver credential only).
    Approve {
        id: String,
        /// Why, in words (recorded with the decision).
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        who: As,
    },
    /// Deny a request; a denial is final for that request.
    Deny {
        id: String,
        /// Why, in words (recorded with the decision).
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        who: As,
    },
}

/// Whose credential to use.
#[derive(clap::Args)]
pub(crate) struct As {
    /// Approver credential file (`mandate principal approver-token`); without
    /// it the admin credential is used, which can read but not decide.
    #[arg(long = "as", env = "MANDATE_APPROVER_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
}

impl As {
    fn client(&self, url: &str, admin: impl Fn() -> Client) -> Result<Client, CliError> {
        match &self.token_file {
            Some(f) => {
                let t = std::fs::read_to_string(f)
                    .map_err(|e| CliError::new(format!("cannot read {}: {e}", f.display())))?;
                Ok(Client::with_token(url.to_owned(), t.trim().to_owned()))
            }
            None => Ok(admin()),
        }
    }
}

fn print_approval(v: &Value) {
    let s = |k: &str| crate::output::cell(&v[k]);
    println!("{}  {}", s("id"), s("status"));
    println!(
        "  run        {} (agent {}, for {})",
        s("run"),
        s("agent"),
        s("principal")
    );
    println!(
        "  asks       {}:{}",
        s("tool"),
        v["actions"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "))
            .unwrap_or_default()
    );
    if !v["details"].is_null() {
        println!(
            "  details    {}",
            crate::output::safe(&v["details"].to_string())
        );
    }
    println!("  approvers  {}", crate::output::cell(&v["approvers"]));
    println!("  policies   {}", crate::output::cell(&v["policies"]));
    if let Some(by) = v["decided_by"].as_str() {
        println!(
            "  decided by {}{}",
            crate::output::safe(by),
            v["comment"]
                .as_str()
                .map(|c| format!(": {}", crate::output::safe(c)))
                .unwrap_or_default()
        );
    }
}

pub(crate) fn run(
    cmd: ApprovalsCmd,
    url: &str,
    admin: impl Fn() -> Client,
    j: bool,
) -> Result<(), CliError> {
    match cmd {
        ApprovalsCmd::List {
            status,
            tenant,
            who,
        } => {
            let mut q = String::from("/v1/approvals?limit=100");
            if let Some(s) = status {
                q.push_str(&format!("&status={}", enc(&s)));
            }
            if let Some(t) = tenant {
                q.push_str(&format!("&tenant={}", enc(&t)));
            }
            let v = who.client(url, admin)?.get(&q)?;
            show(
                j,
                &v,
                &[
                    "id",
                    "status",
                    "tenant",
                    "run",
                    "agent",
                    "principal",
                    "tool",
                    "actions",
                    "approvers",
                ],
            );
        }
        ApprovalsCmd::Show { id, who } => {
            let v = who
                .client(url, admin)?
                .get(&format!("/v1/approvals/{}", enc(&id)))?;
            if j {
                show(j, &v, &[]);
            } else {
                print_approval(&v);
            }
        }
        ApprovalsCmd::Approve { id, comment, who } | ApprovalsCmd::Deny { id, comment, who }
            if who.token_file.is_none() =>
        {
            let _ = (id, comment);
            return Err(CliError::new(
                "deciding needs an approver credential: pass --as FILE (made by `mandate principal approver-token`) or set MANDATE_APPROVER_TOKEN_FILE",
            ));
        }
        ApprovalsCmd::Approve { id, comment, who } => {
            let v = who.client(url, admin)?.post(
                &format!("/v1/approvals/{}/approve", enc(&id)),
                &json!({"comment": comment}),
            )?;
            if j {
                show(j, &v, &[]);
            } else {
                println!("approved {id}; the agent's retry of that request gets its credential");
            }
        }
        ApprovalsCmd::Deny { id, comment, who } => {
            let v = who.client(url, admin)?.post(
                &format!("/v1/approvals/{}/deny", enc(&id)),
                &json!({"comment": comment}),
            )?;
            if j {
                show(j, &v, &[]);
            } else {
                println!("denied {id}; that request is refused from now on");
            }
        }
    }
    Ok(())
}
