"""The TypeScript SDK's tests: an agent process (agent.mjs, Node) using the
package, driven against the real broker binary with the fixtures of the
end-to-end suite and the Python SDK's suite (same tenant, same checks)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "sdk" / "python" / "tests"))

from test_mcp import upstream  # noqa: E402,F401 (fixtures)
from test_sdk import redirector  # noqa: E402,F401 (fixtures)
from test_story import broker, nonce_broker  # noqa: E402,F401 (fixtures)
