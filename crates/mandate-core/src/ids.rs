//! Names and identities: tenants, agents, tools, principals, runs, and their
//! SPIFFE-style URIs (<https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md>).

use rand_core::{CryptoRng, RngCore};

use crate::error::{Error, Result};

/// Checks a tenant, agent or tool name: 1–63 characters of `a-z 0-9 . _ -`,
/// starting with a letter or digit. These names appear in SPIFFE path
/// segments, so they must be valid there (SPIFFE-ID §2.2).
pub fn check_slug(what: &'static str, value: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            what,
            value: truncate(value),
            reason,
        })
    };
    if value.is_empty() || value.len() > 63 {
        return bad("must be 1 to 63 characters");
    }
    let first = value.as_bytes()[0];
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return bad("must start with a lower-case letter or a digit");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return bad("may only contain a-z, 0-9, `.`, `_` and `-`");
    }
    Ok(())
}

/// Checks a principal id (a human or upstream service, often an e-mail
/// address): 1–128 characters of `A-Z a-z 0-9 . _ - @ +`.
pub fn check_principal(value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@+".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            what: "principal",
            value: truncate(value),
            reason: "must be 1 to 128 characters of A-Z, a-z, 0-9, `.`, `_`, `-`, `@`, `+`",
        })
    }
}

/// Checks free text such as a task description or purpose: at most `max`
/// bytes, no control characters.
pub fn check_text(what: &'static str, value: &str, max: usize) -> Result<()> {
    if value.len() > max {
        return Err(Error::InvalidName {
            what,
            value: truncate(value),
            reason: "is too long",
        });
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(Error::InvalidName {
            what,
            value: truncate(value),
            reason: "must not contain control characters",
        });
    }
    Ok(())
}

fn truncate(v: &str) -> String {
    let mut s: String = v.chars().filter(|c| !c.is_control()).take(64).collect();
    if v.len() > s.len() {
        s.push('…');
    }
    s
}

/// A fresh random identifier: 128 bits as 32 lower-case hex digits, with a
/// short prefix naming its kind (`run_`, `grt_`, `evt_`, ...).
pub fn random_id(rng: &mut (impl RngCore + CryptoRng), prefix: &str) -> String {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    let mut s = String::with_capacity(prefix.len() + 32);
    s.push_str(prefix);
    s.push_str(&hex(&b));
    s
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// SPIFFE ID of an agent: `spiffe://<td>/tenant/<t>/agent/<name>`.
pub fn agent_spiffe_id(trust_domain: &str, tenant: &str, agent: &str) -> String {
    format!("spiffe://{trust_domain}/tenant/{tenant}/agent/{agent}")
}

/// SPIFFE ID of a run: the agent's ID followed by `/run/<id>`.
pub fn run_spiffe_id(trust_domain: &str, tenant: &str, agent: &str, run: &str) -> String {
    format!("spiffe://{trust_domain}/tenant/{tenant}/agent/{agent}/run/{run}")
}

/// Checks a SPIFFE trust domain name (SPIFFE-ID §2.1): lower-case letters,
/// digits, `.`, `-`, `_`; at most 255 characters.
pub fn check_trust_domain(td: &str) -> Result<()> {
    if !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        Ok(())
    } else {
        Err(Error::InvalidName {
            what: "trust domain",
            value: truncate(td),
            reason: "must be lower-case letters, digits, `.`, `-` or `_`",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_checked() {
        assert!(check_slug("agent", "triage-bot_2.v1").is_ok());
        for bad in ["", "Triage", "-x", "a b", "a/b", "a:b", &"x".repeat(64)] {
            assert!(check_slug("agent", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn principals_may_be_email_addresses() {
        assert!(check_principal("alice+ops@example.com").is_ok());
        assert!(check_principal("alice bob").is_err());
        assert!(check_principal("").is_err());
    }

    #[test]
    fn spiffe_ids_nest_runs_under_agents() {
        let a = agent_spiffe_id("mandate.local", "acme", "bot");
        let r = run_spiffe_id("mandate.local", "acme", "bot", "run_1");
        assert!(r.starts_with(&a));
        assert_eq!(r, "spiffe://mandate.local/tenant/acme/agent/bot/run/run_1");
    }
}
