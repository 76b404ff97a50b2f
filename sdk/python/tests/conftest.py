"""The SDK's tests run against the real broker binary (`MANDATE_BIN`), with
the fixtures of the end-to-end suite: a broker on loopback and an MCP server
written with the official Python MCP SDK."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from test_mcp import setup_gateway, upstream  # noqa: E402,F401 (fixtures)
from test_story import BIN, broker, nonce_broker  # noqa: E402,F401 (fixtures)
