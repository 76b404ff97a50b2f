"""Plain HTTP (stdlib only): to the broker, and to the `mandate exec` socket."""
from __future__ import annotations

import http.client
import json
import socket
import ssl
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional
from urllib.parse import urlsplit

from .errors import Unavailable

#: Most bytes of an answer read (the broker's answers are small).
MAX_ANSWER = 1 << 20


@dataclass
class Answer:
    status: int
    headers: Dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or None


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except OSError:
            s.close()
            raise
        self.sock = s


def _exchange(conn: http.client.HTTPConnection, method: str, path: str,
              headers: Mapping[str, str], data: Optional[bytes]) -> Answer:
    try:
        conn.request(method, path, body=data, headers=dict(headers))
        r = conn.getresponse()
        raw = r.read(MAX_ANSWER + 1)
        if len(raw) > MAX_ANSWER:
            raise Unavailable("server_error", "the answer is too large")
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        return Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, body)
    except (OSError, http.client.HTTPException) as e:
        raise Unavailable("temporarily_unavailable", f"cannot reach {conn.host}: {e.__class__.__name__}") from None
    except (ValueError, UnicodeError):
        # e.g. a header value with a line break: its message would quote
        # the value, which may be a secret.
        raise Unavailable("invalid_request", "a request header or body could not be sent as is") from None
    finally:
        conn.close()


def unix(sock_path: str, method: str, path: str, body: Optional[Any] = None,
         timeout: float = 30.0) -> Answer:
    """A JSON request to the `mandate exec` socket."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    try:
        conn = _UnixConnection(sock_path, timeout)
    except OSError as e:
        raise Unavailable("temporarily_unavailable", f"cannot reach the agent socket: {e}") from None
    return _exchange(conn, method, path, headers, data)


def request(url: str, method: str, headers: Mapping[str, str], data: Optional[bytes],
            timeout: float = 30.0) -> Answer:
    """A request to the broker at `url` (http or https)."""
    u = urlsplit(url)
    if u.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            u.hostname or "", u.port, timeout=timeout, context=ssl.create_default_context())
    elif u.scheme == "http":
        conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=timeout)
    else:
        raise ValueError("the broker's URL is http(s)")
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    return _exchange(conn, method, path, headers, data)
