//! Revocation of a credential, run, agent, principal or tenant, and the
//! kill switch (`POST /v1/revocations`): parse, [`crate::services::revocation`],
//! render; and the list of revoked ids.

use super::*;
use crate::services::revocation::{self, NewRevocation};

/// `POST /v1/revocations`.
pub async fn revoke(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<NewRevocation>,
) -> Result<Json<Value>, ApiError> {
    let r = revocation::revoke(&s, req, &origin(addr, &headers)).await?;
    Ok(Json(json!({"revoked": r.key, "seq": r.seq})))
}

/// `GET /v1/revocations`: the revoked ids in force (for operators).
pub async fn list_revocations(State(s): State<S>, _: Admin) -> Result<Json<Value>, ApiError> {
    let reg = s.reg();
    let mut keys: Vec<&String> = reg.revoked.iter().collect();
    keys.sort();
    Ok(Json(json!({"seq": reg.revocation_seq, "revoked": keys})))
}
