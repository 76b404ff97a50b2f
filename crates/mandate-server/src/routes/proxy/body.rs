//! Request bodies at the proxy: read only when they must be judged
//! (method overrides, the amount of a money-moving call), and the spent set
//! of single-use credentials rebuilt from the trail.

use super::*;

/// A request body: streaming still, or already read (bounded).
pub(super) enum Inbound {
    Streaming(Body),
    Read(Bytes),
}

pub(super) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|_| {
            err(
                Code::TooLarge,
                format!("the request body is larger than {limit} bytes"),
            )
        })
}

/// Checks what the body says where the route table cannot see it: a
/// method override in a form, JSON or multipart body, and the amount of a
/// money-moving call (then spends the single-use credential). Bodies that
/// need neither stream through unread.
pub(super) async fn inspect(
    s: &S,
    parts: &Parts,
    plan: &Plan,
    body: Inbound,
    now: u64,
    ev: &mut EventBody,
) -> Result<Inbound, ApiError> {
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let kind = BodyKind::of(content_type);
    let bytes = match body {
        Inbound::Streaming(b) if !kind.is_inspected() && plan.amount.is_none() => {
            return Ok(Inbound::Streaming(b));
        }
        Inbound::Streaming(b) => read_body(b, s.config.proxy_max_body).await?,
        Inbound::Read(b) => b,
    };
    forwarding::check_body_overrides(kind, &bytes).map_err(|r| {
        ev.reason = Some(format!("request shape: {r}"));
        err(Code::InvalidRequest, r.0)
    })?;
    if let Some(a) = &plan.amount {
        check_amount(s, a, kind, &bytes, parts.uri.query(), now, ev)?;
    }
    Ok(Inbound::Read(bytes))
}

/// The amount the request moves is at most what the credential declared,
/// and the credential has not moved money before (it is spent now).
pub(super) fn check_amount(
    s: &S,
    a: &AmountPlan,
    kind: BodyKind,
    body: &[u8],
    query: Option<&str>,
    now: u64,
    ev: &mut EventBody,
) -> Result<(), ApiError> {
    let declared = a.declared;
    let sent = forwarding::amount_in(&a.at, kind, body, query).map_err(|p| {
        ev.reason = Some(format!("amount: {p}"));
        err(
            Code::Forbidden,
            format!("{p}; this credential is for one call moving at most {declared} (minor units)"),
        )
    })?;
    merge(
        &mut ev.details,
        json!({"amount_declared": declared, "amount_sent": sent}),
    );
    if sent > declared {
        ev.reason = Some(format!("amount {sent} over the declared {declared}"));
        return Err(err(
            Code::Forbidden,
            format!(
                "the request moves {sent}, more than the {declared} this credential was issued for (authorization_details, minor units); ask for a credential declaring this amount"
            ),
        ));
    }
    let spent = s
        .proxy_spent
        .lock()
        .map_err(|_| err(Code::ServerError, "the spent-credential set is unavailable"))?
        .spend(&a.jti, a.until, now);
    match spent {
        Ok(()) => {
            merge(&mut ev.details, json!({"single_use_until": a.until}));
            Ok(())
        }
        Err(SpendRefused::Spent) => {
            ev.reason = Some("single-use amount credential used again".into());
            Err(err(
                Code::Forbidden,
                "this credential was issued for an amount and is good for one call, which it has made; ask for a new one for the next call",
            ))
        }
        Err(SpendRefused::Full) => {
            ev.reason = Some("spent-credential set full".into());
            Err(err(
                Code::Unavailable,
                "the proxy is tracking too many single-use credentials right now; retry in a minute",
            ))
        }
    }
}
