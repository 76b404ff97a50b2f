"""What can go wrong, as exceptions a caller can catch by kind.

Every exception carries the broker's (or the `mandate exec` wrapper's) OAuth
error code and its description, which says what to do. None ever carries a
token, a mandate or a key.
"""
from __future__ import annotations

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
    """The broker (or the wrapper's socket) cannot be reached or is
    temporarily unavailable; nothing was issued. Retry later."""


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
        self.approval_id: Optional[str] = body.get("approval_id")
        interval = body.get("interval")
        # At least a second: a broker saying 0 is not polled in a hot loop.
        self.interval: int = max(1, int(interval)) if isinstance(interval, (int, float)) else 5
        self.expires_in: Optional[int] = body.get("expires_in")
        self.approvers: Sequence[Any] = body.get("approvers") or []


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
    if code == "temporarily_unavailable" or status >= 500:
        return Unavailable(code, description, status)
    return MandateError(code, description, status)
