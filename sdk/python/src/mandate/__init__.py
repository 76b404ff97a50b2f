"""Mandate for Python agents: a short-lived credential per tool, from the
Mandate broker, with DPoP proofs, approvals and renewal handled.

    from mandate import Mandate
    m = Mandate.from_env()                      # under `mandate exec`
    cred = m.credential("payments", ["pay"])    # cached, renewed at 2/3 of life

See docs/sdk-python.md.
"""
from .client import Credential, Mandate
from .errors import (ApprovalPending, ApprovalTimeout, Denied, Expired, MandateError, NotUnderExec, Revoked,
                     Unavailable)
from .guard import current_credential, guard
from .keys import RunKey

__all__ = ["ApprovalPending", "ApprovalTimeout", "Credential", "Denied", "Expired", "Mandate", "MandateError",
           "NotUnderExec", "Revoked", "RunKey", "Unavailable", "current_credential", "guard"]
__version__ = "0.1.0"
