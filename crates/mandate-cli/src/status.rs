//! `mandate status` (is the broker there, which version, who am I, what
//! each tenant holds) and `mandate doctor` (what would go wrong, and the
//! command that fixes it).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::Ctx;
use crate::client::{CliError, Exit};
use crate::output::{cell, print_table};

/// How far the local clock may be from the broker's before proofs fail:
/// the broker accepts proofs dated 5 s ahead (`--dpop-skew`).
const SKEW_WARN_SECS: i64 = 5;

fn local_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The broker's `/v1/status` and what this CLI adds to it.
fn gather(x: &Ctx) -> Result<Value, CliError> {
    let v = x.client().get("/v1/status")?;
    let skew = local_now() - v["time"].as_i64().unwrap_or(0);
    Ok(json!({
        "url": x.url,
        "cli_version": env!("CARGO_PKG_VERSION"),
        "credential": {"kind": "admin", "file": x.token_file},
        "clock_skew_secs": skew,
        "broker": v,
    }))
}

/// `mandate status`.
pub(crate) fn status(x: &Ctx) -> Result<(), CliError> {
    let v = gather(x)?;
    if x.json {
        crate::show(true, &v, &[]);
        return Ok(());
    }
    let b = &v["broker"];
    println!(
        "broker       {} (version {}; this CLI {})",
        cell(&v["url"]),
        cell(&b["version"]),
        cell(&v["cli_version"])
    );
    println!("issuer       {}", cell(&b["issuer"]));
    println!("credential   admin ({})", cell(&v["credential"]["file"]));
    println!(
        "clock        {} s from the broker's",
        cell(&v["clock_skew_secs"])
    );
    if b["kill_switch_at"].as_u64().unwrap_or(0) > 0 {
        println!(
            "kill switch  used at {}",
            crate::output::time_s(b["kill_switch_at"].as_u64().unwrap_or(0))
        );
    }
    println!(
        "revocations  {}; suspended runs {}",
        cell(&b["revocation_seq"]),
        cell(&b["suspended_runs"])
    );
    println!();
    print_table(
        &b["tenants"],
        &[
            "name",
            "principals",
            "agents",
            "tools",
            "grants",
            "policy_sets",
            "tools_without_secret",
        ],
    );
    Ok(())
}

/// One finding of `mandate doctor`.
struct Finding {
    check: String,
    level: &'static str,
    detail: String,
    fix: Option<String>,
}

fn ok(check: impl Into<String>, detail: impl Into<String>) -> Finding {
    Finding {
        check: check.into(),
        level: "ok",
        detail: detail.into(),
        fix: None,
    }
}

fn bad(
    level: &'static str,
    check: impl Into<String>,
    detail: impl Into<String>,
    fix: impl Into<String>,
) -> Finding {
    Finding {
        check: check.into(),
        level,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// A secret file must be readable by its owner only.
fn file_mode(f: &Path, what: &str) -> Option<Finding> {
    let m = std::fs::metadata(f).ok()?;
    let mode = m.permissions().mode() & 0o777;
    let check = format!("{what} {}", f.display());
    Some(if mode & 0o077 != 0 {
        bad(
            "fail",
            check,
            format!("mode {mode:o}: others can read it"),
            format!("chmod 600 {}", f.display()),
        )
    } else {
        ok(check, format!("mode {mode:o}"))
    })
}

/// The secret files this CLI and a broker on this machine keep, and those named.
fn files(x: &Ctx, named: &[PathBuf]) -> Vec<Finding> {
    let dir = crate::config_dir();
    let mut out = Vec::new();
    match &x.token_file {
        Some(f) if f.exists() => out.extend(file_mode(f, "admin credential")),
        Some(f) => out.push(bad(
            "fail",
            "admin credential",
            format!("{} does not exist", f.display()),
            "start the broker once (it writes one), pass --token-file, or `mandate config set token_file FILE`; lost it? `mandate serve --new-admin-token`",
        )),
        None => {}
    }
    out.extend(file_mode(&dir.join("master.key"), "master key"));
    out.extend(file_mode(&dir.join("cli.json"), "profiles"));
    if let Ok(rd) = std::fs::read_dir(&dir) {
        let mut extra: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "jwk" || e == "token"))
            .filter(|p| Some(p) != x.token_file.as_ref())
            .collect();
        extra.sort();
        out.extend(
            extra
                .iter()
                .filter_map(|p| file_mode(p, "key or credential")),
        );
    }
    for f in named {
        match file_mode(f, "key file") {
            Some(found) => out.push(found),
            None => out.push(bad(
                "fail",
                format!("key file {}", f.display()),
                "cannot be read",
                "check the path",
            )),
        }
    }
    out
}

/// What the broker's status says is missing.
fn broker(v: &Value) -> Vec<Finding> {
    let mut out = Vec::new();
    let skew = v["clock_skew_secs"].as_i64().unwrap_or(0);
    out.push(if skew.abs() > SKEW_WARN_SECS {
        bad("warn", "clock", format!("{skew} s from the broker's"), "synchronise the clocks (NTP): proofs dated ahead of the broker by more than 5 s are refused")
    } else {
        ok("clock", format!("{skew} s from the broker's"))
    });
    let b = &v["broker"];
    if b["version"] != v["cli_version"] {
        out.push(bad(
            "warn",
            "version",
            format!(
                "broker {}, CLI {}",
                cell(&b["version"]),
                cell(&v["cli_version"])
            ),
            "use the same version of both",
        ));
    }
    let tenants = b["tenants"].as_array().cloned().unwrap_or_default();
    if tenants.is_empty() {
        out.push(bad(
            "warn",
            "tenants",
            "none yet",
            "mandate tenant create NAME",
        ));
    }
    for t in &tenants {
        let name = cell(&t["name"]);
        out.push(if t["policy_sets"].as_u64() == Some(0) {
            bad(
                "fail",
                format!("tenant {name}: policies"),
                "none: every exchange is refused",
                format!("mandate policy add --tenant {name} examples/policies/baseline.cedar"),
            )
        } else {
            ok(
                format!("tenant {name}: policies"),
                format!("{} set(s)", cell(&t["policy_sets"])),
            )
        });
        for tool in t["tools_without_secret"].as_array().into_iter().flatten() {
            let tool = cell(tool);
            out.push(bad(
                "fail",
                format!("tenant {name}: tool {tool}"),
                "its provider needs a secret and has none: every exchange is refused",
                format!("mandate tool set-secret --tenant {name} {tool}"),
            ));
        }
    }
    out
}

/// `mandate doctor`.
pub(crate) fn doctor(x: &Ctx, key_files: &[PathBuf]) -> Result<(), CliError> {
    let mut found = files(x, key_files);
    match gather(x) {
        Ok(v) => {
            found.push(ok("broker", format!("{} answers; the admin credential is accepted", x.url)));
            found.extend(broker(&v));
        }
        Err(e) => found.push(bad("fail", "broker", e.msg, "start it (`mandate serve`), or point at it: --url, MANDATE_URL or `mandate config set url URL`")),
    }
    let rows: Vec<Value> = found
        .iter()
        .map(|f| json!({"check": f.check, "level": f.level, "detail": f.detail, "fix": f.fix}))
        .collect();
    if x.json {
        crate::show(true, &json!(rows), &[]);
    } else {
        // Lines, not a table: a fix is a command to copy whole.
        for f in &found {
            println!(
                "{:<5} {}: {}",
                f.level,
                crate::output::safe(&f.check),
                crate::output::safe(&f.detail)
            );
            if let Some(fix) = &f.fix {
                println!("      fix: {}", crate::output::safe(fix));
            }
        }
    }
    let failed = found.iter().filter(|f| f.level == "fail").count();
    if failed > 0 {
        return Err(CliError::new(format!(
            "{failed} problem(s) found; each row says how to fix it"
        ))
        .exit(Exit::Failure));
    }
    Ok(())
}
