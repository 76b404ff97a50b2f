"""The MCP gateway in front of a stdio MCP server the broker starts itself:
the server (official Python SDK, `tests/e2e/mcp/stdio_server.py`) reads its
API key from its environment; the agent (official Python SDK client) talks
to the gateway over streamable HTTP and never sees the key.

The command is the operator's (`mandate serve --mcp-stdio-config`); a
registration names it.
"""
import hashlib
import json
import os
import sys
import time

import pytest
from mcp.shared.exceptions import MCPError

from test_mcp import HERE, raw, start_run, text_of, with_client
from test_story import ROOT, start_broker

KEY = "stdio-key-41c2e8-only-in-the-child"


@pytest.fixture
def stdio_broker(tmp_path):
    servers = tmp_path / "stdio.json"
    servers.write_text(json.dumps({
        "demo": {"command": [sys.executable, str(HERE / "mcp" / "stdio_server.py")],
                 "secret_env": "DEMO_API_KEY", "tenants": ["acme"], "max_processes": 4},
        "banner": {"command": [sys.executable, str(HERE / "mcp" / "stdio_server.py"), "--banner"]},
    }))
    b = start_broker(tmp_path, "--mcp-stdio-config", str(servers))
    yield b
    b.proc.terminate()
    b.proc.wait(timeout=10)


def setup(b, tmp_path):
    b.cli("tenant", "create", "acme")
    b.cli("tenant", "create", "other")
    b.cli("principal", "create", "--tenant", "acme", "alice@example.com")
    b.cli("agent", "create", "--tenant", "acme", "ledger-bot", "--owner", "team-finance", "--purpose", "reads ledgers",
          "--envelope", "ledger:*")
    tools = ["whoami", "lookup", "leak", "crash"]
    # A registration names an operator's command; it cannot bring its own.
    nope = b.cli("tool", "create", "--tenant", "acme", "x", "--provider", "mcp", "--stdio", "sh", "--action", "a",
                 check=False)
    assert nope.returncode != 0 and "demo" in nope.stderr, nope.stderr
    other = b.cli("tool", "create", "--tenant", "other", "x", "--provider", "mcp", "--stdio", "demo", "--action", "a",
                  check=False)
    assert other.returncode != 0 and "not allowed tenant" in other.stderr, other.stderr
    b.cli("tool", "create", "--tenant", "acme", "ledger", "--provider", "mcp", "--stdio", "demo",
          *[x for t in tools for x in ("--action", t)])
    secret = tmp_path / "key.txt"
    secret.write_text(KEY)
    b.cli("tool", "set-secret", "--tenant", "acme", "ledger", "--file", str(secret))
    synced = b.cli("tool", "sync", "--tenant", "acme", "ledger").stdout
    assert "lookup" in synced, synced
    # A server that writes anything but JSON-RPC on stdout is stopped, with a clear error.
    b.cli("tool", "create", "--tenant", "acme", "noisy", "--provider", "mcp", "--stdio", "banner", "--action", "whoami")
    noisy = b.cli("tool", "sync", "--tenant", "acme", "noisy", check=False)
    assert noisy.returncode != 0 and "broke the protocol" in noisy.stderr, noisy.stderr
    policy = tmp_path / "ledger.cedar"
    policy.write_text("""
@id("calls") permit (principal, action in Mandate::Action::"mcp_call", resource);
@id("acme-accounts") forbid (principal, action == Mandate::Action::"ledger:lookup", resource)
unless { context.arguments.account like "acme-*" };
""")
    b.cli("policy", "add", "--tenant", "acme", str(ROOT / "examples" / "policies" / "baseline.cedar"))
    b.cli("policy", "add", "--tenant", "acme", "--name", "ledger", str(policy))
    gateway = f"{b.url}/mcp/ledger"
    run, tok = start_run(b, "ledger-bot", [f"ledger:{t}" for t in tools], gateway, " ".join(tools),
                         task="reconcile")
    return gateway, tok["access_token"], run


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie the broker has not reaped yet counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def gone(pid, seconds=5):
    """Whether `pid` is gone within `seconds` (a process is stopped by its
    supervisor task, just after the change that stops it)."""
    for _ in range(int(seconds * 10)):
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_a_stdio_server_started_by_the_broker_behind_the_gateway(stdio_broker, tmp_path):
    b = stdio_broker
    gateway, token, run = setup(b, tmp_path)

    async def session(client):
        listed = sorted(t.name for t in (await client.list_tools()).tools)
        who = json.loads(text_of(await client.call_tool("whoami", {})))
        ok = await client.call_tool("lookup", {"account": "acme-7"})
        refused = await client.call_tool("lookup", {"account": "globex-1"})
        leaked = await client.call_tool("leak", {})
        errors = {}
        for name in ["crash"]:
            try:
                await client.call_tool(name, {})
                errors[name] = None
            except MCPError as e:
                errors[name] = e.error.code
        again = json.loads(text_of(await client.call_tool("whoami", {})))
        return listed, who, ok, refused, leaked, errors, again

    listed, who, ok, refused, leaked, errors, again = with_client(gateway, token, session)
    assert listed == ["crash", "leak", "lookup", "whoami"]
    # The child holds the key, from the environment the broker gave it, and
    # nothing of the broker's own environment.
    assert who["key_sha256"] == hashlib.sha256(KEY.encode()).hexdigest()
    assert "DEMO_API_KEY" in who["env"] and not [k for k in who["env"] if k.startswith("MANDATE")], who["env"]
    # It knows on whose behalf it was called: the human and the run.
    assert who["caller"]["sub"] == "alice@example.com" and who["caller"]["run"] == run["run"], who["caller"]
    assert who["caller"]["agent"] == "ledger-bot"
    assert not ok.is_error and "acme-7" in text_of(ok)
    assert refused.is_error and "acme-accounts" in text_of(refused)
    # The key never comes back to the agent.
    assert KEY not in text_of(leaked) and "[REDACTED]" in text_of(leaked)
    # A server that dies mid-call: a clear error, and the next call gets a new process.
    assert errors == {"crash": -31011}, errors
    assert again["pid"] != who["pid"] and gone(who["pid"])
    events = json.loads(b.cli("--json", "audit", "--run", run["run"], "--limit", "100").stdout)
    events = events.get("events", events) if isinstance(events, dict) else events
    statuses = [e["details"]["status"] for e in events if e["event_type"] == "mcp.result"]
    assert statuses.count("upstream_failed") == 1 and "ok" in statuses, statuses
    assert KEY not in json.dumps(events)
    # A suspended run's calls, and its tools/list, wait (-31001) and reach nothing.
    b.cli("run", "suspend", run["run"], "--reason", "looks odd")
    for method, params in [("tools/list", {}), ("tools/call", {"name": "whoami", "arguments": {}})]:
        status, answer = raw(gateway, token, {"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        assert status == 200 and answer["error"]["code"] == -31001, answer
        assert answer["error"]["data"]["suspended"] is True
    b.cli("run", "resume", run["run"])
    status, answer = raw(gateway, token, {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}})
    assert status == 200 and len(answer["result"]["tools"]) == 4, answer
    # Revoking the run stops its process.
    b.cli("revoke", "--run", run["run"])
    assert gone(again["pid"])
    status, _ = raw(gateway, token, {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                     "params": {"name": "whoami", "arguments": {}}})
    assert status == 401
    assert b.cli("audit", "verify").returncode == 0


def test_one_process_per_run_however_many_first_calls_and_it_goes_with_the_agent(stdio_broker, tmp_path):
    b = stdio_broker
    gateway, token, run = setup(b, tmp_path)

    async def parallel(client):
        import anyio
        out = []

        async def one():
            out.append(json.loads(text_of(await client.call_tool("whoami", {})))["pid"])

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(one)
        return out

    pids = with_client(gateway, token, parallel)
    # Eight concurrent first calls of one run: one process started (max_processes is 4).
    assert len(pids) == 8 and len(set(pids)) == 1, pids
    pid = pids[0]
    # A new key: the process holding the old one stops at once, the next call gets the new key.
    rotated = tmp_path / "key2.txt"
    rotated.write_text(KEY + "-rotated")
    b.cli("tool", "set-secret", "--tenant", "acme", "ledger", "--file", str(rotated))
    assert gone(pid)
    who = with_client(gateway, token, lambda c: c.call_tool("whoami", {}))
    who = json.loads(text_of(who))
    assert who["key_sha256"] == hashlib.sha256((KEY + "-rotated").encode()).hexdigest()
    # Revoking the agent (not the run) stops the run's process too.
    b.cli("revoke", "--agent", "ledger-bot", "--tenant", "acme")
    assert gone(who["pid"])
