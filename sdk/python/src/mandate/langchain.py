"""A LangChain tool guarded by Mandate: each invocation gets a credential
for its Mandate tool and action first (details from its arguments); a
refusal is the tool's output, so the model reads why (`handle_tool_error`).

    from mandate.langchain import mandate_tool

    @mandate_tool(m, "bank", "transfer", details=lambda amount, **_: {"amount": amount, "currency": "EUR"})
    def transfer(amount: int, to: str) -> str:
        \"\"\"Transfer `amount` cents to `to`.\"\"\"
        cred = mandate.current_credential()
        ...

`transfer` is a `langchain_core.tools.StructuredTool` (name, description and
argument schema from the function, as `@tool` makes them).
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Optional

from .client import Mandate
from .errors import MandateError
from .guard import Details, guard


def mandate_tool(mandate: Mandate, tool: str, action: str, *, details: Details = None,
                 wait: Optional[float] = None, **tool_kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
    """Decorator: a `StructuredTool` whose calls are guarded by Mandate."""
    from langchain_core.tools import StructuredTool, ToolException

    def decorate(fn: Callable[..., Any]) -> Any:
        guarded = guard(mandate, tool, action, details=details, wait=wait)(fn)
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def coroutine(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await guarded(*args, **kwargs)
                except MandateError as e:
                    raise ToolException(f"Refused by Mandate ({e.code}): {e.description}") from None
            made = {"coroutine": coroutine}
        else:
            @functools.wraps(fn)
            def func(*args: Any, **kwargs: Any) -> Any:
                try:
                    return guarded(*args, **kwargs)
                except MandateError as e:
                    raise ToolException(f"Refused by Mandate ({e.code}): {e.description}") from None
            made = {"func": func}
        tool_kwargs.setdefault("handle_tool_error", True)
        return StructuredTool.from_function(**made, **tool_kwargs)

    return decorate
