"""Running blocking calls and sleeping from async code, under asyncio or
trio (anyio, which the MCP SDK uses, when it is installed)."""
from __future__ import annotations

import asyncio
from typing import Any, Callable

try:
    import anyio
except ImportError:  # pragma: no cover - anyio is optional
    anyio = None  # type: ignore[assignment]


async def to_thread(fn: Callable[..., Any], *args: Any) -> Any:
    if anyio is not None:
        return await anyio.to_thread.run_sync(fn, *args)
    return await asyncio.to_thread(fn, *args)


async def sleep(seconds: float) -> None:
    if anyio is not None:
        await anyio.sleep(seconds)
    else:
        await asyncio.sleep(seconds)
