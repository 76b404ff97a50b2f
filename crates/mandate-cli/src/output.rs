//! Readable tables.

use serde_json::Value;

/// A JSON value as one table cell.
pub(crate) fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
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
                .map(str::to_owned)
                .or_else(|| {
                    e["credential_id"]
                        .as_str()
                        .map(|c| format!("credential {c}"))
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
        format!("does NOT verify: {}", v["reason"].as_str().unwrap_or("?"))
    };
    println!("{} — {verdict}", cell(&v["kind"]));
    let hops = v["chain"].as_array().cloned().unwrap_or_default();
    for (i, h) in hops.iter().enumerate() {
        let mut extra = String::new();
        if let Some(n) = h["name"].as_str() {
            extra.push_str(&format!(" ({n})"));
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
            extra.push_str(&format!(" [signed by key {k}]"));
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
        println!("{:<13}jkt {k}", "bound to");
    }
}
