"""The run key of the standalone mode, and the DPoP proofs it makes.

Under `mandate exec` the key lives in the wrapper and Python never sees it;
this module is for runtimes that hold their own key. The private key stays
in memory unless `to_pem()` is asked for.

DPoP proofs: RFC 9449 §4.2 (header `typ` `dpop+jwt`, `alg`, `jwk`; claims
`jti`, `htm`, `htu`, `iat`, `ath` for a resource request, `nonce` when the
server gave one). Thumbprints: RFC 7638.
"""
from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from typing import Any, Dict, Optional
from urllib.parse import urlsplit, urlunsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ALGS = ("EdDSA", "ES256")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def htu(url: str) -> str:
    """The `htu` of a proof for `url`: without query and fragment (RFC 9449 §4.2)."""
    u = urlsplit(url)
    host = u.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    netloc = host if u.port is None else f"{host}:{u.port}"  # never the userinfo
    return urlunsplit((u.scheme, netloc, u.path or "/", "", ""))


def ath(access_token: str) -> str:
    """The `ath` claim: base64url SHA-256 of the access token (RFC 9449 §4.2)."""
    return b64url(hashlib.sha256(access_token.encode("ascii")).digest())


class RunKey:
    """An Ed25519 (`EdDSA`) or P-256 (`ES256`) key pair."""

    def __init__(self, private: Any, alg: str):
        if alg not in ALGS:
            raise ValueError(f"alg must be one of {ALGS}")
        self._private = private
        self.alg = alg

    @classmethod
    def generate(cls, alg: str = "EdDSA") -> "RunKey":
        if alg == "EdDSA":
            return cls(ed25519.Ed25519PrivateKey.generate(), alg)
        if alg == "ES256":
            return cls(ec.generate_private_key(ec.SECP256R1()), alg)
        raise ValueError(f"alg must be one of {ALGS}")

    @classmethod
    def from_pem(cls, pem: bytes, password: Optional[bytes] = None) -> "RunKey":
        key = serialization.load_pem_private_key(pem, password=password)
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return cls(key, "EdDSA")
        if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            return cls(key, "ES256")
        raise ValueError("a run key is Ed25519 or P-256")

    def to_pem(self, password: Optional[bytes] = None) -> bytes:
        """The private key as PKCS#8 PEM (encrypted when `password` is given):
        only when asked, e.g. to keep a long-lived runtime's key."""
        enc = (serialization.BestAvailableEncryption(password) if password
               else serialization.NoEncryption())
        return self._private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)

    @property
    def jwk(self) -> Dict[str, str]:
        """The public key as a JWK (RFC 7517)."""
        pub = self._private.public_key()
        if self.alg == "EdDSA":
            raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
        n = pub.public_numbers()
        return {"kty": "EC", "crv": "P-256", "x": b64url(n.x.to_bytes(32, "big")),
                "y": b64url(n.y.to_bytes(32, "big"))}

    @property
    def thumbprint(self) -> str:
        """RFC 7638 SHA-256 thumbprint (what `cnf.jkt` and attenuation's `to` name)."""
        members = {k: v for k, v in self.jwk.items() if k in ("crv", "kty", "x", "y")}
        canonical = json.dumps(members, sort_keys=True, separators=(",", ":"))
        return b64url(hashlib.sha256(canonical.encode()).digest())

    def sign(self, data: bytes) -> bytes:
        """A JWS signature: Ed25519, or ES256's r || s (RFC 7518 §3.4)."""
        if self.alg == "EdDSA":
            return self._private.sign(data)
        r, s = decode_dss_signature(self._private.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def proof(self, method: str, url: str, access_token: Optional[str] = None,
              nonce: Optional[str] = None, now: Optional[int] = None) -> str:
        """A DPoP proof for one request (RFC 9449 §4.2); fresh `jti` each time."""
        header = {"typ": "dpop+jwt", "alg": self.alg, "jwk": self.jwk}
        claims: Dict[str, Any] = {"jti": b64url(secrets.token_bytes(16)), "htm": method.upper(),
                                  "htu": htu(url), "iat": int(time.time() if now is None else now)}
        if access_token is not None:
            claims["ath"] = ath(access_token)
        if nonce is not None:
            claims["nonce"] = nonce
        signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
                         + b64url(json.dumps(claims, separators=(",", ":")).encode()))
        return signing_input + "." + b64url(self.sign(signing_input.encode("ascii")))

    def __repr__(self) -> str:
        return f"RunKey(alg={self.alg!r}, thumbprint={self.thumbprint!r})"
