"""Offline attenuation with the real binary: a run's key (made by joserfc, an
independent JOSE library) narrows the mandate with `mandate token attenuate`
and hands it to a sub-agent's key made by `mandate key generate`; only that
key can use it, it can do less, its use limit holds, `token inspect` shows
every hop, and bad input is refused with a reason."""

import json

from joserfc.jwk import ECKey, OKPKey

from test_story import broker, exchange, register, start_run  # noqa: F401 (broker is a fixture)


def test_attenuate_hand_on_and_inspect(broker, tmp_path):
    grant = register(broker, "acme")
    run_key = ECKey.generate_key("P-256")
    run = start_run(broker, "acme", grant, run_key)
    run_file = tmp_path / "run.jwk"
    run_file.write_text(json.dumps(run_key.as_dict(private=True)))

    made = json.loads(broker.cli("--json", "key", "generate", "--out", str(tmp_path / "sub.jwk")).stdout)
    assert (tmp_path / "sub.jwk").stat().st_mode & 0o777 == 0o600
    sub_key = OKPKey.import_key(json.loads((tmp_path / "sub.jwk").read_text()))
    assert sub_key.thumbprint() == made["jkt"]

    out = json.loads(broker.cli("--json", "token", "attenuate", run["mandate"], "--key-file", str(run_file),
                                "--to", str(tmp_path / "sub.jwk"), "--to-name", "summarizer",
                                "--only", "crm:read", "--uses", "1", "--ttl", "5m").stdout)
    assert out["holder"] == made["jkt"] and out["signed_by"] == run_key.thumbprint()
    narrowed = out["mandate"]

    # Only the named key can use it, once.
    s, v = exchange(broker, narrowed, run_key, "ES256", "https://crm.acme.example", "read")
    assert s == 400 and v["error"] == "invalid_dpop_proof", v
    s, v = exchange(broker, narrowed, sub_key, "EdDSA", "https://crm.acme.example", "read")
    assert s == 200, v
    s, v = exchange(broker, narrowed, sub_key, "EdDSA", "https://crm.acme.example", "read")
    assert s == 400 and "uses" in v["error_description"], v

    # Inspect shows broker → agent → run → the holder, by name, with what it narrowed.
    human = broker.cli("token", "inspect", narrowed).stdout
    assert "summarizer" in human and "holder" in human and "uses ≤ 1" in human, human
    j = json.loads(broker.cli("--json", "token", "inspect", narrowed).stdout)
    assert j["attenuations"] == 1 and j["key_binding"]["jkt"] == made["jkt"]
    assert j["chain"][-1]["signed_by"] == run_key.thumbprint()
    assert j["chain"][-1]["capabilities"] == ["crm:read"]

    # Read from standard input too.
    r = broker.cli("token", "attenuate", "-", "--key-file", str(tmp_path / "sub.jwk"), "--only", "crm:read",
                   check=False)
    assert r.returncode != 0  # empty standard input is not a mandate


def test_attenuate_refuses_bad_input(broker, tmp_path):
    grant = register(broker, "acme")
    key = OKPKey.generate_key("Ed25519")
    run = start_run(broker, "acme", grant, key)
    kf = tmp_path / "run.jwk"
    kf.write_text(json.dumps(key.as_dict(private=True)))
    pub = tmp_path / "pub.jwk"
    pub.write_text(json.dumps(key.as_dict(private=False)))
    cases = [
        (["--key-file", str(tmp_path / "missing.jwk")], "cannot read key file"),
        (["--key-file", str(pub)], "no private key"),
        (["--key-file", str(kf), "--uses", "0"], "at least 1"),
        (["--key-file", str(kf), "--to", "nonsense"], "thumbprint"),
        (["--key-file", str(kf), "--only", "crm"], "tool:action"),
        (["--key-file", str(kf), "--path-prefix", "relative"], "must start with `/`"),
        (["--key-file", str(kf), "--ttl", "5 parsecs"], "unknown unit"),
    ]
    for args, needle in cases:
        r = broker.cli("token", "attenuate", run["mandate"], *args, check=False)
        assert r.returncode != 0 and needle in r.stderr, (args, r.stderr)
    r = broker.cli("token", "attenuate", "garbage", "--key-file", str(kf), check=False)
    assert r.returncode != 0 and "mandate" in r.stderr, r.stderr
    r = broker.cli("key", "generate", "--out", str(kf), check=False)
    assert r.returncode != 0 and "cannot create" in r.stderr  # never overwrites a key
    r = broker.cli("key", "generate", "--alg", "RS256", "--out", str(tmp_path / "x"), check=False)
    assert r.returncode != 0 and "EdDSA or ES256" in r.stderr
