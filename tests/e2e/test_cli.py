"""The CLI on a real terminal (a pseudo-terminal here), as an operator types."""
import os
import pty  # noqa: F401 (os.openpty needs the pty support it documents)
import select
import subprocess
import time

from test_story import BIN, broker, nonce_broker  # noqa: F401 (fixtures)


def run_on_terminal(env, args, typed, timeout=30):
    """Runs `mandate args` with its standard streams on a new terminal,
    types `typed` once it prompts, and returns everything the terminal showed."""
    master, slave = os.openpty()
    proc = subprocess.Popen([BIN, *args], env=env, stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True)
    os.close(slave)
    shown = b""
    sent = False
    deadline = time.time() + timeout
    while time.time() < deadline:
        r, _, _ = select.select([master], [], [], 0.1)
        if r:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the terminal closed: the process ended
                break
            if not chunk:
                break
            shown += chunk
        if not sent and b"not shown" in shown:
            os.write(master, typed)
            sent = True
        if proc.poll() is not None and not r:
            break
    proc.wait(timeout=10)
    os.close(master)
    return proc.returncode, shown.decode(errors="replace")


def test_set_secret_on_a_terminal_does_not_echo_it(broker):
    b = broker
    b.cli("tenant", "create", "acme")
    b.cli("tool", "create", "--tenant", "acme", "mail", "--provider", "proxy",
          "--upstream", "http://127.0.0.1:9", "--route", "POST /emails=send", "--action", "send")
    code, shown = run_on_terminal(b.env, ["tool", "set-secret", "--tenant", "acme", "mail"],
                                  b"re_live_zq9x_4a2f\r")
    assert code == 0, shown
    assert "not shown" in shown
    assert "zq9x" not in shown and "4a2f" not in shown, shown
    tools = b.cli("--json", "tool", "list", "--tenant", "acme").stdout
    assert '"secret_set": true' in tools
    # Ctrl-C cancels and stores nothing; the terminal gets its echo back.
    b.cli("tool", "create", "--tenant", "acme", "other", "--provider", "proxy",
          "--upstream", "http://127.0.0.1:9", "--route", "POST /x=send", "--action", "send")
    code, shown = run_on_terminal(b.env, ["tool", "set-secret", "--tenant", "acme", "other"],
                                  b"half\x03")
    assert code != 0 and "cancelled" in shown, shown
    assert "half" not in shown


def cli_setup(b, tmp_path):
    """The approvals story's registrations, a run key made by the CLI, and a
    run started with that private key file (only its public half is sent)."""
    from test_approvals import setup
    grant = setup(b)
    import json
    key = tmp_path / "run.jwk"
    jkt = json.loads(b.cli("--json", "key", "generate", "--out", str(key)).stdout)["jkt"]
    mandate = tmp_path / "run.mandate"
    run = b.cli("-q", "run", "start", "--tenant", "acme", "--agent", "support-bot",
                "--principal", "alice@example.com", "--grant", grant,
                "--jwk", str(key), "--out", str(mandate)).stdout.strip()
    assert run.startswith("run_") and mandate.stat().st_mode & 0o777 == 0o600
    return key, mandate, run, jkt


def claims_of(b, token):
    from joserfc import jwt
    from joserfc.jwk import KeySet
    from test_story import http
    jwks = KeySet.import_key_set(http("GET", b.url + "/jwks.json")[1])
    return jwt.decode(token, jwks, algorithms=["EdDSA", "ES256"]).claims


def test_token_exchange_proves_the_key_with_dpop_nonces_or_rfc_9421(nonce_broker, tmp_path):
    """`mandate token exchange` against a broker that requires DPoP nonces
    (it retries with the nonce), and with --sign; the credential is bound to
    the key file's thumbprint, checked with joserfc."""
    b = nonce_broker
    key, mandate, run, jkt = cli_setup(b, tmp_path)
    for extra in ([], ["--sign"]):
        r = b.cli("token", "exchange", "--mandate-file", str(mandate), "--key-file", str(key),
                  "--tool", "pay", "--action", "transfer", "--amount", "900", "--currency", "EUR", *extra)
        token = r.stdout.strip()
        c = claims_of(b, token)
        assert c["run"] == run and c["scope"] == "transfer", c
        assert c["authorization_details"] == [{"type": "mandate", "amount": 900, "currency": "EUR"}]
        assert c["cnf"]["jkt"] == jkt, c
        assert "credential for transfer" in r.stderr, r.stderr
    # Another key cannot use the mandate.
    b.cli("key", "generate", "--out", str(tmp_path / "other.jwk"))
    r = b.cli("token", "exchange", "--mandate-file", str(mandate), "--key-file", str(tmp_path / "other.jwk"),
              "--tool", "pay", "--action", "transfer", check=False)
    assert r.returncode == 4 and "key" in r.stderr, r.stderr


def test_token_exchange_waits_for_a_human(broker, tmp_path):
    """A payment over the limit: exit 6 and the approval id; with --wait the
    CLI polls until finance approves, then prints the credential."""
    import re
    b = broker
    key, mandate, _, _ = cli_setup(b, tmp_path)
    args = [BIN, "token", "exchange", "--mandate-file", str(mandate), "--key-file", str(key),
            "--tool", "pay", "--action", "transfer", "--amount", "25000", "--currency", "EUR"]
    r = subprocess.run(args, env=b.env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 6, r.stderr
    approval = re.search(r"approval (apr_\w+)", r.stderr).group(1)
    waiting = subprocess.Popen([*args, "--wait", "60s"], env=b.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    assert waiting.poll() is None
    bob = tmp_path / "bob.token"
    b.cli("principal", "approver-token", "--tenant", "acme", "bob@example.com", "--out", str(bob))
    b.cli("approvals", "approve", approval, "--as", str(bob))
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 0, err
    assert "waiting for approval " + approval in err
    assert claims_of(b, out.strip())["approval"]["id"] == approval
