//! Durations and instants on the command line: one format for every flag.
//! A duration is numbers with units (`90s`, `15m`, `1h30m`, `7d`); a bare
//! number is refused (`--since 1` meant one second without saying so:
//! issue 16). An instant is RFC 3339 (`2026-11-30T18:00:00Z`).

use crate::client::{CliError, Exit};

/// Seconds in `s`: one or more `<number><unit>` with units `s`, `m`, `h`
/// and `d` (`1h30m`). Refuses bare numbers, unknown units and overflow.
pub(crate) fn parse_duration(s: &str) -> Result<u64, CliError> {
    parse_secs(s).map_err(|e| e.exit(Exit::Usage))
}

fn parse_secs(s: &str) -> Result<u64, CliError> {
    let hint = "use a number and a unit: 30s, 15m, 24h, 7d (or 1h30m)";
    let t = s.trim();
    if t.is_empty() {
        return Err(CliError::new(format!("an empty duration: {hint}")));
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CliError::new(format!(
            "`{t}` has no unit: write {t}s, {t}m, {t}h or {t}d"
        )));
    }
    let mut rest = t;
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| CliError::new(format!("`{s}` is not a duration: {hint}")))?;
        let after = &rest[digits..];
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let mult = match &after[..unit_len] {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            u => {
                return Err(CliError::new(format!(
                    "`{s}` has an unknown unit `{u}`: {hint}"
                )));
            }
        };
        total = n
            .checked_mul(mult)
            .and_then(|x| total.checked_add(x))
            .filter(|x| *x <= 100 * 365 * 86_400)
            .ok_or_else(|| CliError::new(format!("`{s}` is longer than a hundred years")))?;
        rest = &after[unit_len..];
    }
    Ok(total)
}

/// A clap value parser for durations in seconds.
pub(crate) fn secs(s: &str) -> Result<u64, String> {
    parse_duration(s).map_err(|e| e.msg)
}

/// A proof window's part (`--dpop-max-age`, `--dpop-skew`): at most a day
/// ([`mandate_server::config::MAX_DPOP_SECS`]).
pub(crate) fn proof_secs(s: &str) -> Result<u64, String> {
    let v = secs(s)?;
    if v > mandate_server::config::MAX_DPOP_SECS {
        return Err(format!(
            "`{s}` is more than a day; DPoP proofs are meant to be fresh (the default age is 60s, the skew 5s)"
        ));
    }
    Ok(v)
}

/// Milliseconds since the epoch of `--since`: an RFC 3339 instant, or a
/// duration before `now_ms`.
pub(crate) fn since_ms(s: &str, now_ms: u64) -> Result<u64, CliError> {
    if s.contains('-') || s.contains('T') || s.contains(':') {
        let t = time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
            .map_err(|e| {
                CliError::new(format!(
                    "`{s}` is not an RFC 3339 time ({e}); write e.g. 2026-11-30T18:00:00Z, or a duration such as 15m"
                ))
                .exit(Exit::Usage)
            })?;
        let ms = t.unix_timestamp_nanos() / 1_000_000;
        return u64::try_from(ms).map_err(|_| CliError::new(format!("`{s}` is before 1970")));
    }
    parse_duration(s).map(|secs| now_ms.saturating_sub(secs.saturating_mul(1000)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_window_is_at_most_a_day() {
        assert_eq!(proof_secs("60s"), Ok(60));
        assert_eq!(proof_secs("1d"), Ok(86_400));
        let e = proof_secs("2d").unwrap_err();
        assert!(e.contains("more than a day"), "{e}");
    }

    #[test]
    fn durations_need_units_and_add_up() {
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert_eq!(parse_duration("15m").unwrap(), 900);
        assert_eq!(parse_duration("1h30m").unwrap(), 5400);
        assert_eq!(parse_duration("7d").unwrap(), 604_800);
        for (bad, why) in [
            ("1", "no unit: write 1s, 1m"),
            ("", "empty"),
            ("5 parsecs", "unknown unit"),
            ("5x", "unknown unit `x`"),
            ("m", "not a duration"),
            ("-5m", "not a duration"),
            ("99999999999999999999d", "not a duration"),
            ("9999999999999d", "hundred years"),
            ("36501d", "hundred years"),
        ] {
            let e = parse_duration(bad).unwrap_err().msg;
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn since_is_an_rfc_3339_time_or_a_duration_ago() {
        let now = 1_764_525_600_000; // 2025-11-30T18:00:00Z
        assert_eq!(since_ms("2025-11-30T18:00:00Z", 0).unwrap(), now);
        assert_eq!(since_ms("2025-11-30T19:00:00+01:00", 0).unwrap(), now);
        assert_eq!(since_ms("2025-11-30T18:00:00.250Z", 0).unwrap(), now + 250);
        assert_eq!(since_ms("1h", now).unwrap(), now - 3_600_000);
        assert!(since_ms("1", now).unwrap_err().msg.contains("no unit"));
        assert!(
            since_ms("2025-11-30", now)
                .unwrap_err()
                .msg
                .contains("RFC 3339")
        );
        assert!(
            since_ms("1960-01-01T00:00:00Z", now)
                .unwrap_err()
                .msg
                .contains("1970")
        );
    }
}
