"""An OpenAI Agents SDK function tool guarded by Mandate: each invocation
gets a credential for its Mandate tool and action first (details from its
arguments); a refusal goes back to the model as the tool's result, saying why.

    from mandate.openai_agents import mandate_function_tool

    @mandate_function_tool(m, "bank", "transfer", details=lambda amount, **_: {"amount": amount, "currency": "EUR"})
    def transfer(amount: int, to: str) -> str:
        \"\"\"Transfer `amount` cents to `to`.\"\"\"
        ...

The result is the SDK's own `FunctionTool` (`agents.function_tool`).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from .client import Mandate
from .errors import MandateError
from .guard import Details, guard


def _refusal_text(ctx: Any, error: Exception) -> str:
    if isinstance(error, MandateError):
        return f"Refused by Mandate ({error.code}): {error.description}"
    return f"An error occurred while running the tool: {error.__class__.__name__}"


def mandate_function_tool(mandate: Mandate, tool: str, action: str, *, details: Details = None,
                          wait: Optional[float] = None, **tool_kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
    """Decorator: `agents.function_tool` over a function guarded by Mandate."""
    from agents import function_tool

    def decorate(fn: Callable[..., Any]) -> Any:
        tool_kwargs.setdefault("failure_error_function", _refusal_text)
        return function_tool(guard(mandate, tool, action, details=details, wait=wait)(fn), **tool_kwargs)

    return decorate
