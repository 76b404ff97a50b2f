//! Untrusted text in audit events: bounded, with control characters escaped.
//!
//! Reasons and details often quote what a caller sent (a `grant_type`, a
//! tool name, a path). Stored raw, a newline forges a line in a log viewer
//! and an escape sequence rewrites an operator's terminal. So every text of
//! an event is passed through [`sanitize`] before it is committed, and the
//! CLI passes what it prints through [`escape_controls`].

use std::borrow::Cow;

use serde_json::Value;

use super::EventBody;

/// Longest text kept in one field of an event, in bytes (after escaping);
/// the rest is cut and the cut is said.
pub const MAX_TEXT: usize = 1024;

/// Whether `c` must not reach a terminal or a log line as is: C0 and C1
/// controls and DEL, line and paragraph separators, and the invisible and
/// bidirectional formatting characters that reorder or hide text.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
        )
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
        c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
    }
}

/// `s` with every unsafe character (see [`is_unsafe_char`]) written as an
/// escape (`\n`, `\x1b`, `\u{202e}`); borrowed when there is none.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe_char(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s` escaped (see [`escape_controls`]) and cut to at most [`MAX_TEXT`]
/// bytes, plus a note saying how much was cut. Escapes are never split.
pub fn sanitize(s: &str) -> Cow<'_, str> {
    if s.len() <= MAX_TEXT && !s.chars().any(is_unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len().min(MAX_TEXT) + 32);
    for (i, c) in s.char_indices() {
        let before = out.len();
        if is_unsafe_char(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
        if out.len() > MAX_TEXT {
            out.truncate(before);
            out.push_str(&format!("… ({} more bytes cut)", s.len() - i));
            break;
        }
    }
    Cow::Owned(out)
}

fn clean(s: &mut String) {
    if let Cow::Owned(o) = sanitize(s) {
        *s = o;
    }
}

fn clean_opt(s: &mut Option<String>) {
    if let Some(s) = s {
        clean(s);
    }
}

fn clean_value(v: &mut Value) {
    match v {
        Value::String(s) => clean(s),
        Value::Array(a) => a.iter_mut().for_each(clean_value),
        Value::Object(o) => {
            let dirty = o.keys().any(|k| matches!(sanitize(k), Cow::Owned(_)));
            if dirty {
                let old = std::mem::take(o);
                for (k, v) in old {
                    o.insert(sanitize(&k).into_owned(), v);
                }
            }
            o.values_mut().for_each(clean_value);
        }
        _ => {}
    }
}

/// Applies [`sanitize`] to every text of an event: each string field, each
/// action and policy id, and every string (and object key) in `details`.
/// The broker calls it on every event before it is committed, so no caller
/// can forget it.
pub fn sanitize_event(body: &mut EventBody) {
    let EventBody {
        time_ms: _,
        event_type,
        decision,
        reason,
        tenant,
        agent,
        run,
        principal,
        task,
        tool,
        actions,
        policies,
        credential_id,
        credential_exp: _,
        correlation_id,
        client_addr,
        actor,
        details,
    } = body;
    if let super::EventType::Other(t) = event_type {
        clean(t);
    }
    if let super::Decision::Other(d) = decision {
        clean(d);
    }
    for s in [
        reason,
        tenant,
        agent,
        run,
        principal,
        task,
        tool,
        credential_id,
        correlation_id,
        client_addr,
        actor,
    ] {
        clean_opt(s);
    }
    actions
        .iter_mut()
        .chain(policies.iter_mut())
        .for_each(clean);
    clean_value(details);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_plain_text_is_borrowed() {
        assert!(matches!(
            sanitize("grant type `x` is bad"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            sanitize("\u{1b}[2J\nline\r\t\u{7f}\u{9b}x"),
            "\\x1b[2J\\nline\\r\\t\\x7f\\x9bx"
        );
        assert_eq!(
            escape_controls("a\u{202e}b\u{2028}"),
            "a\\u{202e}b\\u{2028}"
        );
        assert_eq!(escape_controls("été ✓"), "été ✓");
    }

    #[test]
    fn long_text_is_cut_without_splitting_an_escape() {
        let s = format!("{}\u{1b}{}", "a".repeat(MAX_TEXT - 2), "b".repeat(5000));
        let out = sanitize(&s);
        assert!(out.len() <= MAX_TEXT + 40, "{}", out.len());
        assert!(out.ends_with("more bytes cut)"));
        assert!(!out.contains('\u{1b}'));
        // The escape did not fit whole, so it was left out, not halved.
        assert!(!out.contains("\\x"));
        let multibyte = "é".repeat(2 * MAX_TEXT);
        assert!(sanitize(&multibyte).len() <= MAX_TEXT + 40);
    }

    #[test]
    fn every_text_of_an_event_is_cleaned() {
        let bad = "x\u{1b}]0;pwned\u{7}\n";
        let mut ev = EventBody {
            event_type: crate::audit::EventType::Other(bad.into()),
            decision: crate::audit::Decision::Deny,
            reason: Some(bad.into()),
            tool: Some(bad.into()),
            actions: vec![bad.into()],
            details: serde_json::json!({"path": bad, bad: [bad, 1]}),
            ..Default::default()
        };
        sanitize_event(&mut ev);
        let text = serde_json::to_string(&ev).unwrap_or_default();
        // serde_json writes a raw ESC, BEL or newline as \u001b, \u0007, \n.
        assert!(!text.contains("\\u00"), "{text}");
        // Every `\n` in the JSON is an escaped backslash and an `n`.
        assert_eq!(
            text.matches(r"\n").count(),
            text.matches(r"\\n").count(),
            "{text}"
        );
        assert_eq!(ev.reason.as_deref(), Some("x\\x1b]0;pwned\\x07\\n"));
        assert_eq!(ev.details["path"], "x\\x1b]0;pwned\\x07\\n");
        assert!(ev.details.get("x\\x1b]0;pwned\\x07\\n").is_some());
    }
}
