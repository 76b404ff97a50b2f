//! Readable tables. Nothing the broker returns reaches the terminal raw:
//! every cell and line is passed through `audit::escape_controls`, so text
//! a caller once sent (an audit reason, a task) cannot forge lines or send
//! escape sequences to the operator's terminal.

use mandate_core::audit::{escape_controls, is_unsafe_char};
use serde_json::Value;

use crate::client::CliError;

/// Writes `text` to a new file at `path`, readable by its owner only
/// (0600); an existing file is never overwritten.
pub(crate) fn write_new_private(path: &std::path::Path, text: &[u8]) -> Result<(), CliError> {
    OutFile::create(path)?.fill(text)
}

/// A new owner-only (0600) file made *before* the broker is asked for what
/// goes in it, so that a name already taken fails before a credential or
/// run exists that would then be lost. Removed again if never filled.
pub(crate) struct OutFile {
    path: std::path::PathBuf,
    file: Option<std::fs::File>,
}

impl OutFile {
    /// Creates the file (never an existing one, never through a symlink).
    pub(crate) fn create(path: &std::path::Path) -> Result<Self, CliError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| CliError::new(format!("cannot create {}: {e}", path.display())))?;
        Ok(Self {
            path: path.to_owned(),
            file: Some(file),
        })
    }

    /// [`OutFile::create`] when a path is given.
    pub(crate) fn reserve(path: Option<&std::path::Path>) -> Result<Option<Self>, CliError> {
        path.map(Self::create).transpose()
    }

    /// Where it is.
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Writes `text` and keeps the file.
    pub(crate) fn fill(mut self, text: &[u8]) -> Result<(), CliError> {
        use std::io::Write as _;
        let mut f = self
            .file
            .take()
            .ok_or_else(|| CliError::new("file already written"))?;
        f.write_all(text).and_then(|()| f.sync_all()).map_err(|e| {
            CliError::new(format!(
                "cannot write {}: {e}; what the broker made for it is lost: revoke it (`mandate revoke`) and ask again",
                self.path.display()
            ))
        })
    }
}

impl Drop for OutFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes to standard output; when the reader has gone (a closed pipe:
/// `mandate audit | head -1`), ends the process quietly with 141, the
/// status of a program ended by SIGPIPE (never 0: `mandate audit verify |
/// head -1` must not pass for a verified trail). Any other failure (a full
/// disk) is said on standard error and ends the process with failure.
pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        write_stderr(format_args!("error: cannot write the output: {e}\n"));
        std::process::exit(1);
    }
}

/// Writes to standard error; what it cannot take is dropped.
pub(crate) fn write_stderr(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// A JSON value as one table cell, control characters escaped.
pub(crate) fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => escape_controls(s).into_owned(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => escape_controls(&other.to_string()).into_owned(),
    }
}

/// Text for the terminal: each line's control characters escaped (line
/// breaks the CLI itself put there are kept).
pub(crate) fn safe(text: &str) -> String {
    text.split('\n')
        .map(|l| escape_controls(l).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Pretty JSON with every character that is unsafe on a terminal written
/// as a JSON escape (`serde_json` escapes C0 controls but not DEL, C1
/// controls or bidirectional overrides). Still valid JSON, same value.
pub(crate) fn json_text(v: &Value) -> String {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        // Outside strings only ASCII whitespace appears; inside, serde_json
        // already escaped newlines and tabs, so these are all inside strings.
        if is_unsafe_char(c) && !matches!(c, '\n' | ' ') {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// A cell, with `*_at` (seconds) and `*_ms` (milliseconds) columns shown as UTC times.
fn timed_cell(col: &str, v: &Value) -> String {
    match v.as_u64() {
        Some(n) if col.ends_with("_at") => time_s(n),
        Some(n) if col.ends_with("_ms") => time_s(n / 1000),
        _ => cell(v),
    }
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SSZ` (UTC).
pub(crate) fn time_s(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Prints the id of each object (or of the one object): its `id`, else
/// its `run`, else its `name`, else its `key` (a revoked id).
pub(crate) fn print_ids(v: &Value) {
    let one = |o: &Value| {
        ["id", "run", "name", "key"]
            .iter()
            .find_map(|k| o.get(*k).and_then(Value::as_str))
            .map(|id| println!("{}", escape_controls(id)))
    };
    match v {
        Value::Array(a) => a.iter().for_each(|o| {
            one(o);
        }),
        o => {
            one(o);
        }
    }
}

/// Prints one object as `field  value` lines, times as UTC times, lists
/// and objects as compact JSON.
pub(crate) fn print_record(v: &Value) {
    let Some(o) = v.as_object() else {
        println!("{}", cell(v));
        return;
    };
    let width = o.keys().map(String::len).max().unwrap_or(0);
    for (k, val) in o {
        let shown = match val {
            Value::Object(_) => escape_controls(&val.to_string()).into_owned(),
            _ => timed_cell(k, val),
        };
        println!("{k:<width$}  {shown}");
    }
}

/// Prints objects (or one object) as a table with `cols`.
pub(crate) fn print_table(v: &Value, cols: &[&str]) {
    let rows: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    if rows.is_empty() {
        println!("(none)");
        return;
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cols.iter().map(|c| timed_cell(c, &r[*c])).collect())
        .collect();
    print_rows(cols, &cells);
}

fn print_rows(cols: &[&str], cells: &[Vec<String>]) {
    let mut w: Vec<usize> = cols.iter().map(|c| c.len()).collect();
    for r in cells {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count().min(60));
        }
    }
    let line = |r: Vec<String>| {
        let parts: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let c: String = if c.chars().count() > 60 {
                    c.chars().take(59).chain(['…']).collect()
                } else {
                    c.clone()
                };
                format!("{c:<width$}", width = w[i])
            })
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(cols.iter().map(|c| c.to_uppercase()).collect());
    for r in cells {
        line(r.clone());
    }
}

/// Prints audit events.
pub(crate) fn print_audit(v: &Value) {
    let cols = [
        "seq",
        "time",
        "type",
        "decision",
        "tenant",
        "agent",
        "run",
        "principal",
        "tool",
        "actions",
        "detail",
    ];
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let detail = e["reason"]
                .as_str()
                .map(|r| escape_controls(r).into_owned())
                .or_else(|| {
                    e["credential_id"]
                        .as_str()
                        .map(|c| format!("credential {}", escape_controls(c)))
                })
                .unwrap_or_else(|| cell(&e["policies"]));
            vec![
                cell(&e["seq"]),
                time_s(e["time_ms"].as_u64().unwrap_or(0) / 1000),
                cell(&e["event_type"]),
                cell(&e["decision"]),
                cell(&e["tenant"]),
                cell(&e["agent"]),
                cell(&e["run"]),
                cell(&e["principal"]),
                cell(&e["tool"]),
                cell(&e["actions"]),
                detail,
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("(no events)");
    } else {
        print_rows(&cols, &rows);
    }
}

/// Prints a token inspection as a small tree.
pub(crate) fn print_inspection(v: &Value) {
    let verdict = if v["verifies"].as_bool().unwrap_or(false) {
        "verifies now".to_owned()
    } else {
        format!("does NOT verify: {}", cell(&v["reason"]))
    };
    println!("{} — {verdict}", cell(&v["kind"]));
    let hops = v["chain"].as_array().cloned().unwrap_or_default();
    for (i, h) in hops.iter().enumerate() {
        let mut extra = String::new();
        if let Some(n) = h["name"].as_str() {
            extra.push_str(&format!(" ({})", escape_controls(n)));
        }
        for (label, key) in [
            ("only", "capabilities"),
            ("uses ≤", "max_uses"),
            ("paths", "path_prefix"),
        ] {
            if !h[key].is_null() {
                extra.push_str(&format!(" {label} {}", cell(&h[key])));
            }
        }
        if let Some(t) = h["not_after"].as_u64() {
            extra.push_str(&format!(" until {}", time_s(t)));
        }
        if let Some(k) = h["signed_by"].as_str() {
            extra.push_str(&format!(" [signed by key {}]", escape_controls(k)));
        }
        println!(
            "{}{:<8} {}{extra}",
            "  ".repeat(i + 1),
            cell(&h["hop"]),
            cell(&h["id"])
        );
    }
    for (label, key) in [
        ("principal", "principal"),
        ("grant", "grant"),
        ("tenant", "tenant"),
        ("task", "task"),
        ("tool", "tool"),
        ("actions", "actions"),
        ("capabilities", "capabilities"),
        ("paths", "path_prefix"),
        ("credential", "jti"),
    ] {
        if !v[key].is_null() {
            println!("{label:<13}{}", cell(&v[key]));
        }
    }
    if let Some(t) = v["expires_at"].as_u64() {
        println!("{:<13}{}", "expires", time_s(t));
    }
    if let Some(k) = v["key_binding"]["jkt"].as_str() {
        println!("{:<13}jkt {}", "bound to", escape_controls(k));
    }
}

/// Prints what `audit verify` checked and found.
pub(crate) fn print_verify(v: &Value) {
    let head = v["head"]["seq"].as_u64().unwrap_or(0);
    let bad = &v["first_bad"];
    let after = v["after"].as_u64();
    if bad.is_null() {
        match after {
            Some(a) if head == a => {
                println!("audit trail intact after the checkpoint (event {a}): no event since")
            }
            Some(a) => println!(
                "audit trail intact after the checkpoint: events {}..={head} verified, following on from event {a}",
                a + 1
            ),
            None if head == 0 => println!("audit trail empty: nothing to verify"),
            None => println!("audit trail intact: events 1..={head} verified"),
        }
    } else {
        let column = bad["column"]
            .as_str()
            .map(|c| format!(", column `{c}`"))
            .unwrap_or_default();
        println!(
            "audit trail BROKEN at event {}{}: {}",
            cell(&bad["seq"]),
            escape_controls(&column),
            cell(&bad["reason"])
        );
        println!("  events before it verified: {}", cell(&v["verified"]));
    }
    match after {
        Some(a) => println!(
            "  checked: the hash chain after event {a} (incremental: events up to it were not read; a whole `mandate audit verify` reads them), and every stored column ({}) against the hashed event",
            cell(&v["columns"])
        ),
        None => println!(
            "  checked: the hash chain from event 1, and every stored column ({}) against the hashed event",
            cell(&v["columns"])
        ),
    }
    let cps = v["checkpoints"].as_array().cloned().unwrap_or_default();
    if cps.is_empty() {
        println!(
            "  no signed checkpoint was checked: a cut of the last events, or a rewrite with every later hash recomputed, would not show"
        );
    }
    for c in &cps {
        println!(
            "  {} checkpoint: event {} of {}, signed by key {}: {}",
            cell(&c["source"]),
            cell(&c["seq"]),
            time_s(c["time_ms"].as_u64().unwrap_or(0) / 1000),
            cell(&c["kid"]),
            if c["matched"].as_bool().unwrap_or(false) {
                "the trail reaches it with the same hash"
            } else {
                "NOT matched"
            }
        );
    }
    if let Some(from) = v["unanchored"]["from"].as_u64() {
        println!(
            "  events {from}..={} are newer than every checkpoint checked: a cut of them would not show (keep copies: `mandate audit checkpoint`)",
            cell(&v["unanchored"]["to"])
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells_and_json_never_carry_control_characters() {
        let evil = "x\u{1b}[2J\nforged\u{9b}31m\u{202e}";
        let c = cell(&json!(evil));
        assert!(!c.chars().any(is_unsafe_char), "{c}");
        assert_eq!(c, "x\\x1b[2J\\nforged\\x9b31m\\u{202e}");
        assert_eq!(cell(&json!([evil])), c);
        let j = json_text(&json!({"reason": evil}));
        assert!(!j.chars().any(|ch| is_unsafe_char(ch) && ch != '\n'), "{j}");
        let back: Value = serde_json::from_str(&j).unwrap_or_default();
        assert_eq!(back["reason"], evil);
        assert_eq!(safe("line one\nline \u{1b}two"), "line one\nline \\x1btwo");
    }
}
