"""End-to-end: `mandate exec`, the proxy provider and a real third-party
client. The official `resend` Node SDK sends an email through the broker's
proxy to `resend-local` (an emulator of the Resend API) standing in for the
upstream; the SDK only ever sees a short-lived proxy credential.
"""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from test_story import BIN, ROOT, broker, free_port, http  # noqa: F401 (broker is a fixture)

NODE_DIR = os.environ.get("MANDATE_NODE_DIR", str(Path.home() / ".cache" / "mandate-node"))
HERE = Path(__file__).resolve().parent
REAL_KEY = "re_live_" + uuid.uuid4().hex


@pytest.fixture
def resend_local():
    starter = Path(NODE_DIR) / "node_modules" / "resend-local" / "dist" / "starter.js"
    if not starter.exists():
        pytest.fail(f"resend-local is not installed in {NODE_DIR}; scripts/test.sh installs it")
    port = free_port()
    proc = subprocess.Popen(["node", str(starter), "-p", str(port)], cwd=NODE_DIR,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/dashboard-api/emails", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("resend-local did not start")
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)


def setup(b, upstream):
    b.cli("tenant", "create", "acme")
    b.cli("principal", "create", "--tenant", "acme", "alice@example.com")
    b.cli("policy", "add", "--tenant", "acme", str(ROOT / "examples" / "policies" / "baseline.cedar"))
    b.cli("agent", "create", "--tenant", "acme", "mailer", "--owner", "team-growth",
          "--envelope", "resend:*")
    b.cli("tool", "create", "--tenant", "acme", "resend", "--provider", "proxy",
          "--action", "send", "--action", "read", "--label", "external_send",
          "--upstream", upstream,
          "--route", "POST /emails=send", "--route", "GET /emails/*=read",
          "--env", "RESEND_API_KEY={credential}", "--env", "RESEND_BASE_URL={proxy_url}")
    r = subprocess.run([BIN, "tool", "set-secret", "--tenant", "acme", "resend"], env=b.env,
                       input=REAL_KEY + "\n", capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert REAL_KEY not in r.stdout + r.stderr
    grant = json.loads(b.cli("--json", "grant", "create", "--tenant", "acme", "--principal",
                             "alice@example.com", "--agent", "mailer", "--cap", "resend:send",
                             "--task", "send the weekly report").stdout)
    return grant["id"]


def wait_file(p, proc, timeout=30):
    t = time.time()
    while not p.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"mandate exec ended ({proc.returncode}) before {p.name}: {err}{out}")
        assert time.time() - t < timeout, f"{p.name} did not appear"
        time.sleep(0.05)


def test_resend_sdk_sends_through_exec_and_the_proxy(broker, resend_local, tmp_path):
    grant = setup(broker, resend_local)
    work = tmp_path / "work"
    work.mkdir()
    subject = "weekly report " + uuid.uuid4().hex[:8]
    # On the agent host: a one-time join token, not the admin credential.
    join = tmp_path / "join.token"
    broker.cli("agent", "join-token", "--tenant", "acme", "mailer", "--principal", "alice@example.com",
               "--grant", grant, "--ttl", "5m", "--out", str(join))
    assert oct(join.stat().st_mode & 0o777) == "0o600"
    env = dict(broker.env, MANDATE_NODE_DIR=NODE_DIR, MANDATE_JOIN_TOKEN_FILE=str(join))
    env["MANDATE_ADMIN_TOKEN_FILE"] = str(tmp_path / "no-admin-credential-here")
    proc = subprocess.Popen(
        [BIN, "exec", "--tenant", "acme", "--agent", "mailer", "--on-behalf-of", "alice@example.com",
         "--grant", grant, "--tool", "resend", "--", "node", str(HERE / "send_email.mjs"), str(work), subject],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_file(work / "pid", proc)
    pid = int((work / "pid").read_text())
    child_env = dict(
        kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv
    )
    cmdline = Path(f"/proc/{pid}/cmdline").read_text()
    # The child has a proxy credential and the proxy URL, never the key,
    # the admin credential's path, the mandate or the run key.
    assert REAL_KEY not in "".join(child_env.values()) + cmdline
    assert child_env["RESEND_BASE_URL"] == f"{broker.url}/proxy/resend"
    assert child_env["RESEND_API_KEY"].count(".") == 2
    assert "MANDATE_ADMIN_TOKEN_FILE" not in child_env
    assert "MANDATE_JOIN_TOKEN_FILE" not in child_env
    sock = Path(child_env["MANDATE_AGENT_SOCK"])
    assert oct(sock.stat().st_mode & 0o777) == "0o600"
    assert oct(sock.parent.stat().st_mode & 0o777) == "0o700"
    run_id = child_env["MANDATE_RUN"]

    (work / "go").write_text("1")
    wait_file(work / "sent", proc)
    # The email arrived at the upstream.
    _, emails = http("GET", resend_local + "/dashboard-api/emails")
    assert any(e["subject"] == subject for e in emails["emails"]), emails
    # The trail shows the call, by whom, for whom.
    trail = json.loads(broker.cli("--json", "audit", "--run", run_id).stdout)
    calls = [e for e in trail if e["event_type"] == "proxy.call"]
    assert calls and calls[0]["decision"] == "allow"
    assert calls[0]["agent"] == "mailer" and calls[0]["principal"] == "alice@example.com"
    assert calls[0]["details"]["path"] == "/emails"
    assert REAL_KEY not in json.dumps(trail)

    # Revoke the run: the same call is refused by the proxy at once.
    broker.cli("revoke", "--run", run_id)
    (work / "again").write_text("1")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 7, err  # the child's exit code passes through
    assert REAL_KEY not in out + err
    result = json.loads((work / "out.json").read_text())
    assert result["first"]["error"] is None, result["first"]
    assert result["second"]["data"] is None
    assert "revoked" in json.dumps(result["second"]["error"]), result["second"]
    # The agent socket: identity, a credential for the run's actions, a proof; refusals.
    ident = result["identity"]["body"]
    assert ident["run"] == run_id and ident["principal"] == "alice@example.com"
    assert "mandate" not in json.dumps(ident).lower().replace("mandate.local", "")
    assert result["credential"]["status"] == 200
    assert result["credential"]["body"]["token_type"] == "Bearer"
    assert result["proof"]["body"]["dpop"].count(".") == 2
    assert result["bad"]["status"] == 403
    assert "delete" in result["bad"]["body"]["error_description"]
    assert result["badProof"]["status"] == 400
    assert "upper-case HTTP method" in result["badProof"]["body"]["error_description"]
    assert result["badBody"]["status"] == 400
    assert "unknown field" in result["badBody"]["body"]["error_description"]
    # The socket hands a narrowed mandate to a sub-agent's key, signed by the run key.
    sub = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    assert result["attenuated"]["status"] == 200, result["attenuated"]
    assert result["attenuated"]["body"]["holder"] == sub
    seen = json.loads(broker.cli("--json", "token", "inspect", result["attenuated"]["body"]["mandate"],
                                 check=False).stdout)
    assert seen["kind"] == "mandate" and seen["attenuations"] == 1 and seen["key_binding"]["jkt"] == sub
    assert seen["chain"][-1]["name"] == "summarizer" and seen["chain"][-1]["capabilities"] == ["resend:send"]
    assert seen["chain"][-1]["signed_by"] == result["attenuated"]["body"]["signed_by"]
    assert "revoked" in seen["reason"]  # the run has ended since
    assert result["badAttenuate"]["status"] == 400
    assert "thumbprint" in result["badAttenuate"]["body"]["error_description"]
    # The run ended when the child exited.
    runs = json.loads(broker.cli("--json", "run", "list", "--tenant", "acme").stdout)
    assert [r for r in runs if r["id"] == run_id][0]["ended_ms"] is not None
    # The join token is spent.
    r = subprocess.run([BIN, "exec", "--tenant", "acme", "--agent", "mailer", "--on-behalf-of",
                        "alice@example.com", "--grant", grant, "--", "true"],
                       env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "already used" in r.stderr, r.stderr


def test_exec_forwards_signals_and_ends_the_run(broker, resend_local, tmp_path):
    grant = setup(broker, resend_local)
    env = dict(broker.env)
    env["MANDATE_ADMIN_TOKEN_FILE"] = str(broker.dir / "config" / "admin.token")
    marker = tmp_path / "trapped"
    script = f"trap 'echo term > {marker}; exit 42' TERM; while true; do sleep 0.1; done"
    proc = subprocess.Popen(
        [BIN, "exec", "--tenant", "acme", "--agent", "mailer", "--on-behalf-of", "alice@example.com",
         "--grant", grant, "--tool", "resend", "--", "sh", "-c", script],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert marker.read_text().strip() == "term", err
    assert proc.returncode == 42, err
    runs = json.loads(broker.cli("--json", "run", "list", "--tenant", "acme").stdout)
    assert all(r["ended_ms"] is not None for r in runs), runs


def test_exec_refuses_unknown_tools_and_missing_commands(broker, resend_local):
    grant = setup(broker, resend_local)
    r = broker.cli("exec", "--tenant", "acme", "--agent", "mailer", "--on-behalf-of", "alice@example.com",
                   "--grant", grant, "--tool", "nope", "--", "true", check=False)
    assert r.returncode != 0 and "tool `nope` not found" in r.stderr
    r = broker.cli("exec", "--tenant", "acme", "--agent", "mailer", check=False)
    assert r.returncode != 0 and "COMMAND" in r.stderr.upper()
    r = broker.cli("exec", "--tenant", "acme", "--agent", "ghost", "--", "true", check=False)
    assert r.returncode != 0 and "agent `ghost` not found" in r.stderr


def test_kill_switch_asks_before_it_revokes_everything(broker):
    broker.cli("tenant", "create", "acme")
    r = broker.cli("revoke", "--everything", check=False)
    assert r.returncode != 0 and "--yes" in r.stderr
    _, log = http("GET", broker.url + "/v1/revocations/log?after=0",
                  headers={"Authorization": "Bearer " + broker.admin})
    assert log["revocations"] == []
    r = broker.cli("revoke", "--tenant", "acme", "--all")
    assert "revoked tenant:acme" in r.stdout
    r = broker.cli("--json", "revoke", "--everything", "--yes", "--reason", "incident 7")
    assert json.loads(r.stdout)["revoked"].startswith("everything:")
    trail = json.loads(broker.cli("--json", "audit", "--type", "revoke").stdout)
    assert any(e["reason"] == "incident 7" for e in trail)


def test_a_child_that_kills_the_wrapper_loses_the_run(broker, resend_local, tmp_path):
    """Issue 10, H4 and H5: the child cannot have the socket sign proofs for
    the broker, and killing the wrapper (kill -9) ends the run at the broker
    within the grace period (10 s)."""
    grant = setup(broker, resend_local)
    join = tmp_path / "join.token"
    broker.cli("agent", "join-token", "--tenant", "acme", "mailer", "--principal", "alice@example.com",
               "--grant", grant, "--out", str(join))
    env = dict(broker.env, MANDATE_JOIN_TOKEN_FILE=str(join))
    proc = subprocess.Popen(
        [BIN, "exec", "--tenant", "acme", "--agent", "mailer", "--on-behalf-of", "alice@example.com",
         "--grant", grant, "--tool", "resend", "--",
         sys.executable, str(HERE / "kill_wrapper.py"), str(tmp_path), broker.url],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    out_, err = proc.communicate(timeout=60)
    killed = time.time()
    assert proc.returncode == -signal.SIGKILL, err
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["wrapper"] == proc.pid
    # Nothing of the join token reaches the child: not its path, its value, or a descriptor.
    token = join.read_text().strip()
    seen = json.dumps([out["argv"], out["env"], out["fds"]])
    assert str(join) not in seen and token not in seen
    assert not any("socket:" in t or "token" in t for t in out["fds"].values()), out["fds"]
    # H4: no proof for the broker's own endpoints, however the URL is spelled.
    assert out["token_proof"]["status"] == 403, out
    assert "broker itself" in out["token_proof"]["body"]["error_description"]
    assert out["attach_proof"]["status"] == 403, out
    assert out["unparsable_proof"]["status"] == 400, out
    assert out["tool_proof"]["status"] == 200, out
    if out["euid"] != 0:
        # A same-user, non-root child cannot read the non-dumpable wrapper's /proc files.
        assert out["environ"] == "PermissionError" and out["mem"] == "PermissionError", out
    assert out["credential"]["status"] == 200, out
    cred = out["credential"]["body"]["access_token"]
    # Asked again, the held credential; asked `fresh`, a new one.
    assert out["held"]["body"]["access_token"] == cred, out["held"]
    assert out["fresh"]["status"] == 200 and out["fresh"]["body"]["access_token"] != cred, out["fresh"]
    run_id = json.loads(broker.cli("--json", "run", "list", "--tenant", "acme").stdout)[0]["id"]

    # H5: nobody ended the run, yet the broker does once the wrapper's attachment is gone.
    def active():
        _, v = http("POST", broker.url + "/oauth/introspect",
                    data=urllib.parse.urlencode({"token": cred}).encode(),
                    headers={"Authorization": "Bearer " + broker.admin,
                             "Content-Type": "application/x-www-form-urlencoded"})
        return v["active"]

    while active():
        assert time.time() - killed < 20, "the run outlived its killed wrapper"
        time.sleep(0.5)
    runs = json.loads(broker.cli("--json", "run", "list", "--tenant", "acme").stdout)
    assert [r for r in runs if r["id"] == run_id][0]["ended_ms"] is not None
    trail = json.loads(broker.cli("--json", "audit", "--run", run_id, "--type", "run.end").stdout)
    assert [e["reason"] for e in trail] == ["exec wrapper detached"], trail
