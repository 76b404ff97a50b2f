"""Run by `mandate exec` in the end-to-end test of issue 10 (H4, H5): a
hostile child. It takes a credential from the agent socket, asks for DPoP
proofs for the broker's own endpoints, tries the wrapper's /proc files, then
kills the wrapper with SIGKILL. Results go to <dir>/out.json."""
import http.client
import json
import os
import signal
import socket
import sys


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("agent", timeout=30)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def sock(method, path, body=None):
    c = UnixConnection(os.environ["MANDATE_AGENT_SOCK"])
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"content-type": "application/json"})
    r = c.getresponse()
    out = {"status": r.status, "body": json.loads(r.read() or b"null")}
    c.close()
    return out


def try_read(path):
    try:
        with open(path, "rb") as f:
            f.read(64)
        return "read"
    except OSError as e:
        return type(e).__name__


def main():
    out_dir, broker = sys.argv[1], sys.argv[2]
    port = broker.rsplit(":", 1)[1]
    ppid = os.getppid()
    out = {"wrapper": ppid, "euid": os.geteuid(), "argv": sys.argv, "env": dict(os.environ)}
    fd_dir = "/proc/self/fd"
    out["fds"] = {}
    for fd in os.listdir(fd_dir):
        try:
            out["fds"][fd] = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            pass  # the listing's own descriptor, closed by now
    out["credential"] = sock("POST", "/v1/credentials", {"tool": "resend"})
    out["held"] = sock("POST", "/v1/credentials", {"tool": "resend"})
    out["fresh"] = sock("POST", "/v1/credentials", {"tool": "resend", "fresh": True})
    out["token_proof"] = sock("POST", "/v1/dpop", {"method": "POST", "url": broker + "/oauth/token"})
    out["attach_proof"] = sock("POST", "/v1/dpop", {
        "method": "POST", "url": f"http://127.0.0.1:{port}/v1/runs/attach?x=1#y"})
    out["unparsable_proof"] = sock("POST", "/v1/dpop", {"method": "POST", "url": "http://u@127.0.0.1/x"})
    out["tool_proof"] = sock("POST", "/v1/dpop", {"method": "GET", "url": "https://tool.example/x"})
    out["environ"] = try_read(f"/proc/{ppid}/environ")
    out["mem"] = try_read(f"/proc/{ppid}/mem")
    with open(os.path.join(out_dir, "out.json"), "w") as f:
        json.dump(out, f)
    os.kill(ppid, signal.SIGKILL)


main()
