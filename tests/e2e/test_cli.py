"""The CLI on a real terminal (a pseudo-terminal here), as an operator types."""
import os
import pty  # noqa: F401 (os.openpty needs the pty support it documents)
import select
import subprocess
import time

from test_story import BIN, broker  # noqa: F401 (broker is a fixture)


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
