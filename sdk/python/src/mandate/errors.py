"""What can go wrong, as exceptions a caller can catch by kind.

Every exception carries the broker's (or the `mandate exec` wrapper's) OAuth
error code and its description, which says what to do. None ever carries a
token, a mandate or a key.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence


class MandateError(Exception):
    """A refusal or failure: `code` (OAuth error code, e.g. `access_denied`)
    and `description` (the broker's words: why, and what to do)."""

    def __init__(self, code: str, description: str, status: Optional[int] = None):
        super().__init__(f"{code}: {description}" if description else code)
        self.code = code
        self.description = description
        self.status = status


class NotUnderExec(MandateError):
    """`Mandate.from_env()` outside `mandate exec` (no `MANDATE_AGENT_SOCK`)."""


class Unavailable(MandateError):
    """The broker (or the wrapper's socket) cannot be reached, is
    temporarily unavailable or asks to slow down (`slow_down`), or answered
    something malformed; nothing was issued. Retry later."""


class Denied(MandateError):
    """Policy, the grant or the agent's envelope does not allow this
    (`access_denied`, `invalid_scope`, `invalid_target`)."""


class Revoked(MandateError):
    """The run (or its agent, principal, grant, tenant) was revoked, or the
    kill switch was pulled: no credential will come; end the work."""


class Expired(MandateError):
    """The run's mandate (or the approval named) expired: start a new run."""


class ApprovalPending(MandateError):
    """A human must approve this request first (or the run is suspended).
    Ask again after `interval` seconds (or pass `wait=` to wait for it)."""

    def __init__(self, body: Mapping[str, Any], status: Optional[int] = None):
        super().__init__("authorization_pending", str(body.get("error_description", "")), status)
        interval = body.get("interval")
        # At least a second: a broker saying 0 is not polled in a hot loop.
        ok = isinstance(interval, (int, float)) and not isinstance(interval, bool) and math.isfinite(interval)
        self.interval: int = min(max(1, int(interval)), 300) if ok else 5
        left = body.get("expires_in")
        self.expires_in: Optional[int] = left if isinstance(left, int) and not isinstance(left, bool) else None
        approvers = body.get("approvers")
        self.approvers: Sequence[Any] = list(approvers) if isinstance(approvers, list) else []
        approval = body.get("approval_id")
        self.approval_id = approval if isinstance(approval, str) else None


class ApprovalTimeout(ApprovalPending):
    """`wait=` seconds passed and no human approved."""


def from_answer(status: int, body: Any) -> MandateError:
    """The exception for a refusal `body` (`{"error", "error_description"}`)."""
    if not isinstance(body, dict):
        return Unavailable("server_error", f"unexpected answer (HTTP {status})", status)
    code = str(body.get("error") or "server_error")
    description = str(body.get("error_description") or "")
    if code == "authorization_pending":
        return ApprovalPending(body, status)
    if code == "invalid_grant":
        if "revoked" in description:
            return Revoked(code, description, status)
        if "expired" in description:
            return Expired(code, description, status)
    if code == "expired_token":
        return Expired(code, description, status)
    if code in ("access_denied", "invalid_scope", "invalid_target"):
        return Denied(code, description, status)
    if code in ("temporarily_unavailable", "slow_down") or status == 429 or status >= 500:
        return Unavailable(code, description, status)
    return MandateError(code, description, status)
