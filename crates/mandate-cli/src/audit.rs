//! `mandate audit`: the trail, its verification and checkpoints.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::Ctx;
use crate::args::*;
use crate::client::{CliError, Client, enc};
use crate::output::{self, print_audit};
use crate::show;

/// `mandate audit`.
pub(crate) fn audit(a: AuditArgs, x: &Ctx) -> Result<(), CliError> {
    let c = || x.client();
    let j = x.json;
    match a.verify {
        Some(AuditSub::Verify {
            checkpoint,
            incremental,
        }) => return audit_verify(&c(), j, checkpoint, incremental),
        Some(AuditSub::Checkpoint { out }) => {
            let v = c().get("/v1/audit/checkpoint")?;
            return emit_checkpoint(x, &v, out);
        }
        None => {}
    }
    let mut q = format!("/v1/audit?limit={}", a.limit);
    for (k, v) in [
        ("tenant", &a.tenant),
        ("agent", &a.agent),
        ("run", &a.run),
        ("principal", &a.principal),
        ("tool", &a.tool),
        ("decision", &a.decision),
        ("type", &a.event_type),
    ] {
        if let Some(v) = v {
            q.push_str(&format!("&{k}={}", enc(v)));
        }
    }
    if let Some(s) = &a.since {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        q.push_str(&format!("&since_ms={}", crate::when::since_ms(s, now)?));
    }
    if let Some(b) = a.before {
        q.push_str(&format!("&before_seq={b}"));
    }
    let v = c().get(&q)?;
    if j {
        x.show(&v, &[]);
    } else {
        print_audit(&v);
    }
    Ok(())
}

/// `mandate audit verify [--checkpoint FILE]`.
pub(crate) fn audit_verify(
    c: &Client,
    j: bool,
    checkpoint: Option<PathBuf>,
    incremental: bool,
) -> Result<(), CliError> {
    let v = match checkpoint {
        None => c.get("/v1/audit/verify")?,
        Some(f) => {
            let text = std::fs::read_to_string(&f)
                .map_err(|e| CliError::new(format!("cannot read {}: {e}", f.display())))?;
            // The JWS, or the JSON `mandate --json audit checkpoint` printed.
            let jws = match serde_json::from_str::<Value>(&text) {
                Ok(v) => v["checkpoint"].as_str().unwrap_or_default().to_owned(),
                Err(_) => text.trim().to_owned(),
            };
            c.post(
                "/v1/audit/verify",
                &json!({"checkpoint": jws, "incremental": incremental}),
            )?
        }
    };
    if j {
        show(j, &v, &[]);
    } else {
        output::print_verify(&v);
    }
    if v["ok"].as_bool() != Some(true) {
        return Err(CliError::new("the audit trail does not verify"));
    }
    Ok(())
}

/// Prints a checkpoint's JWS (or all of it with --json), or writes it to a new file.
pub(crate) fn emit_checkpoint(x: &Ctx, v: &Value, out: Option<PathBuf>) -> Result<(), CliError> {
    let jws = v["checkpoint"].as_str().unwrap_or_default();
    if let Some(e) = v["file_error"].as_str() {
        eprintln!("warning: {}", output::safe(e));
    }
    match out {
        Some(path) => {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| CliError::new(format!("cannot create {}: {e}", path.display())))?;
            writeln!(f, "{jws}")
                .map_err(|e| CliError::new(format!("cannot write {}: {e}", path.display())))?;
            eprintln!(
                "checkpoint of event {} written to {}",
                output::cell(&v["seq"]),
                path.display()
            );
        }
        None if x.json => x.show(v, &[]),
        None => println!("{}", output::safe(jws)),
    }
    Ok(())
}
