"""A credential per tool call: `guard` makes a function ask Mandate before
each call, for one Mandate tool and action, with RFC 9396 details taken from
the call's own arguments; inside, `current_credential()` is that call's.

    @guard(m, "bank", "transfer", details=lambda amount, currency, **_: {"amount": amount, "currency": currency})
    def transfer(amount: int, currency: str, to: str) -> str:
        cred = current_credential()       # for exactly this transfer
        ...

A refusal raises before the function runs (`Denied`, `Revoked`,
`ApprovalPending`; with `wait=` seconds an approval is waited for). The
function keeps its name, docstring and signature, so frameworks that read
them (LangChain, the OpenAI Agents SDK) see the same tool; see
`mandate.langchain` and `mandate.openai_agents`.
"""
from __future__ import annotations

import contextvars
import functools
import inspect
from typing import Any, Callable, Mapping, Optional, TypeVar, Union

from .client import Credential, Mandate

F = TypeVar("F", bound=Callable[..., Any])
Details = Union[Mapping[str, Any], Callable[..., Optional[Mapping[str, Any]]], None]

_current: contextvars.ContextVar[Optional[Credential]] = contextvars.ContextVar("mandate_credential", default=None)


def current_credential() -> Credential:
    """The credential of the guarded call running now."""
    c = _current.get()
    if c is None:
        raise RuntimeError("no Mandate credential here: call current_credential() inside a function "
                           "decorated with mandate.guard")
    return c


def _details_of(details: Details, sig: inspect.Signature, args: Any, kwargs: Any) -> Optional[Mapping[str, Any]]:
    if details is None:
        return None
    if not callable(details):
        return dict(details)
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    out = details(**bound.arguments)
    return None if out is None else dict(out)


def guard(mandate: Mandate, tool: str, action: str, *, details: Details = None,
          wait: Optional[float] = None) -> Callable[[F], F]:
    """Decorates a function (sync or async) so each call first gets a
    credential for `tool:action`; `details` (a mapping, or a function of the
    call's arguments by name) are this call's RFC 9396 details."""

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn)
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                cred = await mandate.acredential(tool, [action], details=_details_of(details, sig, args, kwargs),
                                                 wait=wait)
                token = _current.set(cred)
                try:
                    return await fn(*args, **kwargs)
                finally:
                    _current.reset(token)
            return run_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            cred = mandate.credential(tool, [action], details=_details_of(details, sig, args, kwargs), wait=wait)
            token = _current.set(cred)
            try:
                return fn(*args, **kwargs)
            finally:
                _current.reset(token)
        return run  # type: ignore[return-value]

    return decorate
