//! Token exchange over real HTTP: the happy path and every refusal the
//! foundation issue lists, each with the error and its reason.

mod common;

use common::*;
use mandate_core::credential;
use mandate_core::jose::{Alg, b64};
use mandate_core::keys::SigningKey;
use rand::rngs::OsRng;
use serde_json::{Value, json};

#[test]
fn exchange_issues_a_bound_credential_and_audits_it_first() {
    let b = Broker::start("happy");
    let grant = b.seed("acme");
    for alg in [Alg::EdDSA, Alg::ES256] {
        let (run, mandate, key) = b.start_run("acme", &grant, alg);
        let (s, v) = b.exchange(&mandate, &key, "crm", "read");
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["token_type"], "DPoP");
        assert_eq!(
            v["issued_token_type"],
            "urn:ietf:params:oauth:token-type:access_token"
        );
        assert_eq!(v["scope"], "read");
        let exp_in = v["expires_in"].as_u64().unwrap();
        assert!(exp_in > 0 && exp_in <= 300, "{exp_in}");
        let token = v["access_token"].as_str().unwrap();
        let c = credential::verify(&b.state.keyset().keys, &b.url, token, now(), false).unwrap();
        assert_eq!(c.aud, "https://crm.acme.example");
        assert_eq!(c.sub, "alice@example.com");
        assert!(
            c.act.sub.ends_with(&format!("/agent/triage/run/{run}")),
            "{}",
            c.act.sub
        );
        assert_eq!(
            c.client_id,
            "spiffe://mandate.local/tenant/acme/agent/triage"
        );
        assert_eq!(c.cnf.as_ref().unwrap().jkt, key.kid());
        assert_eq!(
            (c.tenant.as_str(), c.run.as_str(), c.task.as_str()),
            ("acme", run.as_str(), "triage tickets")
        );
        // The event was durable before the response: it is in the trail now.
        let events = b.audit(&format!("run={run}&type=token.exchange"));
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["decision"], "allow");
        assert_eq!(events[0]["credential_id"], c.jti.as_str());
        assert_eq!(events[0]["principal"], "alice@example.com");
        assert_eq!(
            events[0]["policies"],
            json!(["baseline/allow-registered-tools"])
        );
    }
    // The ES256 tool gets an ES256 credential.
    let (_, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
    let (s, v) = b.exchange(&mandate, &key, "https://github.acme.example", "read");
    assert_eq!(s, 200, "{v}");
    let header = v["access_token"]
        .as_str()
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_owned();
    let header: serde_json::Value =
        serde_json::from_slice(&mandate_core::jose::unb64("h", &header).unwrap()).unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "at+jwt");
}

#[test]
fn forged_mandate_is_refused() {
    let b = Broker::start("forged");
    let grant = b.seed("acme");
    let (_, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
    let mut bytes = mandate.into_bytes();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(bytes).unwrap();
    assert_refused(
        &b.exchange(&forged, &key, "crm", "read"),
        400,
        "invalid_grant",
        "mandate",
    );
    assert_refused(
        &b.exchange("garbage", &key, "crm", "read"),
        400,
        "invalid_grant",
        "malformed mandate",
    );
}

#[test]
fn mandate_from_another_broker_is_refused() {
    let ours = Broker::start("ours");
    let theirs = Broker::start("theirs");
    ours.seed("acme");
    let grant = theirs.seed("acme");
    let (_, mandate, key) = theirs.start_run("acme", &grant, Alg::EdDSA);
    assert_refused(
        &ours.exchange(&mandate, &key, "crm", "read"),
        400,
        "invalid_grant",
        "signature does not verify",
    );
}

#[test]
fn expired_mandate_is_refused() {
    let b = Broker::start("expired");
    let grant = b.seed("acme");
    let key = SigningKey::generate(Alg::EdDSA, &mut OsRng);
    let (s, v) = b.admin_post(
        "/v1/runs",
        json!({"tenant": "acme", "agent": "triage", "principal": "alice@example.com", "grant": grant,
               "ttl_secs": 1, "jwk": key.public().to_json()}),
    );
    assert_eq!(s, 201, "{v}");
    b.advance(2);
    let got = b.exchange(v["mandate"].as_str().unwrap(), &key, "crm", "read");
    assert_refused(&got, 400, "invalid_grant", "expired");
}

#[test]
fn revoked_run_agent_principal_grant_and_tenant_are_refused() {
    let b = Broker::start("revoked");
    let grant = b.seed("acme");
    let cases = [
        ("run", json!({"kind": "run"})),
        (
            "agent",
            json!({"kind": "agent", "tenant": "acme", "id": "triage"}),
        ),
    ];
    for (what, body) in cases {
        let (run, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
        assert_eq!(b.exchange(&mandate, &key, "crm", "read").0, 200);
        let mut body = body;
        if what == "run" {
            body["id"] = json!(run);
        }
        let (s, v) = b.admin_post("/v1/revocations", body);
        assert_eq!(s, 200, "{v}");
        assert_refused(
            &b.exchange(&mandate, &key, "crm", "read"),
            400,
            "invalid_grant",
            "revoked",
        );
    }
    // Agent revoked: new runs cannot start either.
    let key = SigningKey::generate(Alg::EdDSA, &mut OsRng);
    let got = b.admin_post(
        "/v1/runs",
        json!({"tenant": "acme", "agent": "triage", "principal": "alice@example.com", "grant": grant, "jwk": key.public().to_json()}),
    );
    assert_refused(&got, 403, "insufficient_scope", "agent:acme/triage");

    for (tenant, body) in [
        (
            "p",
            json!({"kind": "principal", "tenant": "p", "id": "alice@example.com"}),
        ),
        ("g", json!({"kind": "grant"})),
        ("t", json!({"kind": "tenant", "id": "t"})),
    ] {
        let grant = b.seed(tenant);
        let (_, mandate, key) = b.start_run(tenant, &grant, Alg::EdDSA);
        let mut body = body;
        if tenant == "g" {
            body["id"] = json!(grant);
        }
        assert_eq!(b.admin_post("/v1/revocations", body).0, 200);
        assert_refused(
            &b.exchange(&mandate, &key, "crm", "read"),
            400,
            "invalid_grant",
            "revoked",
        );
    }
}

#[test]
fn revoked_credential_is_inactive_at_introspection() {
    let b = Broker::start("introspect");
    let grant = b.seed("acme");
    let (_, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
    let token = b.exchange(&mandate, &key, "crm", "read").1["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let introspect = |t: &str| {
        read(
            Broker::agent()
                .post(format!("{}/oauth/introspect", b.url))
                .header("Authorization", &format!("Bearer {}", b.admin))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .send(format!("token={}", enc(t)))
                .unwrap(),
        )
    };
    let (s, v) = introspect(&token);
    assert_eq!((s, v["active"].clone()), (200, json!(true)), "{v}");
    assert_eq!(v["aud"], "https://crm.acme.example");
    // RFC 7009: the holder revokes it.
    let r = Broker::agent()
        .post(format!("{}/oauth/revoke", b.url))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(format!("token={}", enc(&token)))
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(introspect(&token).1, json!({"active": false}));
    // Garbage and `alg: none` forgeries are simply inactive.
    assert_eq!(introspect("not-a-token").1, json!({"active": false}));
    let parts: Vec<&str> = token.split('.').collect();
    let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"at+jwt"}"#), parts[1]);
    assert_eq!(introspect(&none).1, json!({"active": false}));
    let hs = format!(
        "{}.{}.{}",
        b64(br#"{"alg":"HS256","typ":"at+jwt"}"#),
        parts[1],
        parts[2]
    );
    assert_eq!(introspect(&hs).1, json!({"active": false}));
    // Introspection needs the admin credential.
    let r = Broker::agent()
        .post(format!("{}/oauth/introspect", b.url))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(format!("token={}", enc(&token)))
        .unwrap();
    assert_refused(&read(r), 401, "invalid_token", "admin credential");
    // The revocation endpoint accepts garbage with 200 (RFC 7009 §2.2).
    let r = Broker::agent()
        .post(format!("{}/oauth/revoke", b.url))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send("token=garbage")
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[test]
fn dpop_signed_by_the_wrong_key_is_refused() {
    let b = Broker::start("dpop-key");
    let grant = b.seed("acme");
    let (_, mandate, _key) = b.start_run("acme", &grant, Alg::EdDSA);
    let thief = SigningKey::generate(Alg::EdDSA, &mut OsRng);
    assert_refused(
        &b.exchange(&mandate, &thief, "crm", "read"),
        400,
        "invalid_dpop_proof",
        "cnf.jkt",
    );
}

#[test]
fn dpop_missing_or_duplicated_is_refused() {
    let b = Broker::start("dpop-missing");
    let grant = b.seed("acme");
    let (_, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
    assert_refused(
        &b.exchange_raw(&form(&mandate, "crm", "read"), None),
        400,
        "invalid_dpop_proof",
        "required",
    );
    let r = Broker::agent()
        .post(b.token_url())
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("DPoP", &b.proof(&key))
        .header("DPoP", &b.proof(&key))
        .send(form(&mandate, "crm", "read"))
        .unwrap();
    assert_refused(&read(r), 400, "invalid_dpop_proof", "exactly one");
}

#[test]
fn dpop_jti_replay_is_refused() {
    let b = Broker::start("dpop-replay");
    let grant = b.seed("acme");
    let (_, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
    let p = b.proof(&key);
    assert_eq!(
        b.exchange_raw(&form(&mandate, "crm", "read"), Some(&p)).0,
        200
    );
    assert_refused(
        &b.exchange_raw(&form(&mandate, "crm", "read"), Some(&p)),
        400,
        "invalid_dpop_proof",
        "already used",
    );
}

#[test]
fn dpop_htm_htu_and_time_mismatches_are_refused() {
    let b = Broker::start("dpop-claims");
    let grant = b.seed("acme");
    let (_, mandate, key) = b.start_run("acme", &grant, Alg::ES256);
    let f = form(&mandate, "crm", "read");
    let cases = [
        (
            json!({"jti": jti(), "htm": "GET", "htu": b.token_url(), "iat": now()}),
            "htm",
        ),
        (
            json!({"jti": jti(), "htm": "POST", "htu": "http://elsewhere.example/oauth/token", "iat": now()}),
            "htu",
        ),
        (
            json!({"jti": jti(), "htm": "POST", "htu": format!("{}/v1/runs", b.url), "iat": now()}),
            "htu",
        ),
        (
            json!({"jti": jti(), "htm": "POST", "htu": b.token_url(), "iat": now() - 600}),
            "old",
        ),
        (
            json!({"jti": jti(), "htm": "POST", "htu": b.token_url(), "iat": now() + 600}),
            "future",
        ),
        (
            json!({"htm": "POST", "htu": b.token_url(), "iat": now()}),
            "jti",
        ),
    ];
    for (claims, needle) in cases {
        assert_refused(
            &b.exchange_raw(&f, Some(&proof_with(&key, claims))),
            400,
            "invalid_dpop_proof",
            needle,
        );
    }
}

#[test]
fn dpop_alg_none_and_hs256_confusion_are_refused() {
    let b = Broker::start("dpop-alg");
    let grant = b.seed("acme");
    let (_, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
    let good = b.proof(&key);
    let parts: Vec<&str> = good.split('.').collect();
    let jwk = key.public().to_json();
    let none = format!(
        "{}.{}.",
        b64(json!({"typ": "dpop+jwt", "alg": "none", "jwk": jwk})
            .to_string()
            .as_bytes()),
        parts[1]
    );
    let f = form(&mandate, "crm", "read");
    assert_refused(
        &b.exchange_raw(&f, Some(&none)),
        400,
        "invalid_dpop_proof",
        "not accepted",
    );
    // HS256 "signed" with the public key bytes as the HMAC secret.
    let hs = format!(
        "{}.{}.{}",
        b64(json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": jwk})
            .to_string()
            .as_bytes()),
        parts[1],
        parts[2]
    );
    assert_refused(
        &b.exchange_raw(&f, Some(&hs)),
        400,
        "invalid_dpop_proof",
        "not accepted",
    );
    // A proof carrying a private key is refused.
    let mut leaky = jwk;
    leaky["d"] = json!(b64(key.to_secret().expose()));
    let p = key.sign_jws(
        &json!({"typ": "dpop+jwt", "jwk": leaky}),
        &json!({"jti": jti(), "htm": "POST", "htu": b.token_url(), "iat": now()}),
    );
    assert_refused(
        &b.exchange_raw(&f, Some(&p)),
        400,
        "invalid_dpop_proof",
        "private key",
    );
}

#[test]
fn wrong_tenant_is_refused_without_leaking_and_audited() {
    let b = Broker::start("tenant");
    let grant = b.seed("acme");
    b.seed("globex");
    let (run, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
    // globex's crm, by audience URI: refused exactly as an unknown tool would be.
    let got = b.exchange(&mandate, &key, "https://crm.globex.example", "read");
    assert_refused(&got, 400, "invalid_target", "no tool");
    // Word for word what a tool that exists nowhere gets: nothing reveals globex's tool.
    let unknown = b.exchange(&mandate, &key, "https://nowhere.example", "read");
    assert_eq!(
        got.1["error_description"]
            .as_str()
            .unwrap()
            .replace("https://crm.globex.example", "X"),
        unknown.1["error_description"]
            .as_str()
            .unwrap()
            .replace("https://nowhere.example", "X")
    );
    let ev = b.audit(&format!("run={run}&decision=deny"));
    assert_eq!(ev.len(), 2);
    assert!(
        ev[0]["reason"]
            .as_str()
            .unwrap()
            .contains("tenant mismatch"),
        "{}",
        ev[0]
    );
    assert_eq!(ev[1]["reason"], "unknown tool");
    // A run cannot name another tenant's grant.
    let key2 = SigningKey::generate(Alg::EdDSA, &mut OsRng);
    let got = b.admin_post(
        "/v1/runs",
        json!({"tenant": "globex", "agent": "triage", "principal": "alice@example.com", "grant": grant, "jwk": key2.public().to_json()}),
    );
    assert_refused(&got, 404, "not_found", "not found in tenant `globex`");
}

#[test]
fn action_not_granted_and_unknown_tool_or_action_are_refused() {
    let b = Broker::start("scope");
    let grant = b.seed("acme");
    let (_, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
    assert_refused(
        &b.exchange(&mandate, &key, "crm", "write"),
        400,
        "invalid_scope",
        "not granted",
    );
    assert_refused(
        &b.exchange(&mandate, &key, "crm", "read delete"),
        400,
        "invalid_scope",
        "has no action `delete`",
    );
    assert_refused(
        &b.exchange(&mandate, &key, "billing", "read"),
        400,
        "invalid_target",
        "no tool `billing`",
    );
    assert_refused(
        &b.exchange(&mandate, &key, "crm", "*"),
        400,
        "invalid_scope",
        "named actions",
    );
    assert_refused(
        &b.exchange(&mandate, &key, "crm", "READ!"),
        400,
        "invalid_scope",
        "action",
    );
}

#[test]
fn policy_denial_names_the_rule() {
    let b = Broker::start("policy");
    let grant = b.seed("acme");
    let forbid = r#"@id("no-pii-writes-or-reads-today")
forbid (principal, action == Mandate::Action::"exchange", resource)
when { context.tool_labels.contains("pii") };"#;
    assert_eq!(
        b.admin_put_text("/v1/tenants/acme/policies/guard", forbid)
            .0,
        200
    );
    let (run, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
    let got = b.exchange(&mandate, &key, "crm", "read");
    assert_refused(
        &got,
        403,
        "access_denied",
        "guard/no-pii-writes-or-reads-today",
    );
    let ev = b.audit(&format!("run={run}"));
    assert_eq!(
        ev.last().unwrap()["policies"],
        json!(["guard/no-pii-writes-or-reads-today"])
    );
    // github has no pii label: still allowed.
    assert_eq!(b.exchange(&mandate, &key, "github", "read").0, 200);
}

#[test]
fn invalid_policy_is_refused_with_line_and_column() {
    let b = Broker::start("policy-bad");
    b.seed("acme");
    let (s, v) = b.admin_put_text(
        "/v1/tenants/acme/policies/bad",
        "permit (principal, action, resource)\n  when { resource.colour == \"red\" };",
    );
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["problems"][0]["line"], 2);
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("line 2, column"),
        "{v}"
    );
}

#[test]
fn malformed_and_duplicated_form_fields_are_refused() {
    let b = Broker::start("form");
    let grant = b.seed("acme");
    let (_, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
    let good = form(&mandate, "crm", "read");
    let p = || Some(b.proof(&key));
    assert_refused(
        &b.exchange_raw(&format!("{good}&scope=write"), p().as_deref()),
        400,
        "invalid_request",
        "more than once",
    );
    assert_refused(
        &b.exchange_raw(
            &good.replace("token-exchange", "client_credentials"),
            p().as_deref(),
        ),
        400,
        "unsupported_grant_type",
        "token-exchange",
    );
    assert_refused(
        &b.exchange_raw(
            &good.replace("token-type%3Amandate", "token-type%3Ajwt"),
            p().as_deref(),
        ),
        400,
        "invalid_request",
        "subject_token_type",
    );
    assert_refused(
        &b.exchange_raw(
            &format!("{good}&audience2=x").replace(
                "audience=crm",
                "resource=https%3A%2F%2Fgithub.acme.example&audience=crm",
            ),
            p().as_deref(),
        ),
        400,
        "invalid_target",
        "different tools",
    );
    assert_refused(
        &b.exchange_raw("grant_type=%zz", p().as_deref()),
        400,
        "invalid_request",
        "percent-encoding",
    );
    assert_refused(
        &b.exchange_raw(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange",
            p().as_deref(),
        ),
        400,
        "invalid_request",
        "subject_token",
    );
    // JSON is not a form.
    let r = Broker::agent()
        .post(b.token_url())
        .header("DPoP", &b.proof(&key))
        .send_json(json!({"grant_type": "x"}))
        .unwrap();
    assert_refused(&read(r), 400, "invalid_request", "x-www-form-urlencoded");
}

#[test]
fn oversized_bodies_are_refused() {
    let b = Broker::start_with("big", |c| c.max_body = 16 * 1024);
    b.seed("acme");
    let big = "a=".to_owned() + &"x".repeat(20 * 1024);
    assert_refused(
        &b.exchange_raw(&big, None),
        413,
        "invalid_request",
        "larger than 16384 bytes",
    );
    let (s, v) = b.admin_post(
        "/v1/tenants",
        json!({"name": "x", "description": "y".repeat(20 * 1024)}),
    );
    assert_eq!(s, 413, "{v}");
}

#[test]
fn admin_endpoints_refuse_unauthenticated_and_non_admin_callers() {
    let b = Broker::start("authz");
    let grant = b.seed("acme");
    let (_, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
    let credential = b.exchange(&mandate, &key, "crm", "read").1["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let call = |auth: Option<String>| {
        let mut r = Broker::agent().post(format!("{}/v1/tenants", b.url));
        if let Some(a) = auth {
            r = r.header("Authorization", &a);
        }
        read(r.send_json(json!({"name": "evil"})).unwrap())
    };
    assert_refused(&call(None), 401, "invalid_token", "admin credential");
    assert_refused(
        &call(Some("Basic YWRtaW46YWRtaW4=".into())),
        401,
        "invalid_token",
        "Bearer",
    );
    assert_refused(
        &call(Some(format!("Bearer {credential}"))),
        403,
        "insufficient_scope",
        "not an admin credential",
    );
    assert_refused(
        &call(Some(format!("Bearer {mandate}"))),
        403,
        "insufficient_scope",
        "not an admin credential",
    );
    assert_refused(
        &call(Some("Bearer mandate_admin_guess".into())),
        401,
        "invalid_token",
        "not valid",
    );
    let (s, _) = b.admin_get("/v1/tenants");
    assert_eq!(s, 200);
    assert!(!b.state.reg().tenants.contains_key("evil"));
}

#[test]
fn registration_input_is_validated() {
    let b = Broker::start("reg");
    b.seed("acme");
    assert_refused(
        &b.admin_post("/v1/tenants", json!({"name": "Bad Name"})),
        400,
        "invalid_request",
        "tenant",
    );
    assert_refused(
        &b.admin_post("/v1/tenants", json!({"name": "acme"})),
        409,
        "conflict",
        "already exists",
    );
    assert_refused(
        &b.admin_post("/v1/tenants", json!({"name": "x", "colour": "red"})),
        400,
        "invalid_request",
        "colour",
    );
    assert_refused(
        &b.admin_post(
            "/v1/tenants/acme/agents",
            json!({"name": "a2", "owner": " ", "envelope": ["crm:read"]}),
        ),
        400,
        "invalid_request",
        "owner",
    );
    assert_refused(
        &b.admin_post(
            "/v1/tenants/acme/agents",
            json!({"name": "a2", "owner": "x", "envelope": ["crm"]}),
        ),
        400,
        "invalid_request",
        "tool:action",
    );
    assert_refused(
        &b.admin_post(
            "/v1/tenants/acme/tools",
            json!({"name": "t2", "audience": "not a uri", "actions": ["read"]}),
        ),
        400,
        "invalid_request",
        "absolute URI",
    );
    assert_refused(
        &b.admin_post(
            "/v1/tenants/acme/tools",
            json!({"name": "t2", "audience": "https://t2", "actions": ["read"], "alg": "HS256"}),
        ),
        400,
        "invalid_request",
        "HS256",
    );
    assert_refused(
        &b.admin_post("/v1/tenants/nope/agents", json!({})),
        404,
        "not_found",
        "tenant `nope`",
    );
    assert_refused(
        &b.admin_post("/v1/tenants/acme/grants", json!({"principal": "bob", "agent": "triage", "capabilities": ["crm:read"], "task": "x"})),
        404, "not_found", "principal `bob`",
    );
    // A grant that would give the run nothing it says is refused when made,
    // each problem named (issue 16), and no grant is stored.
    let grants = b
        .admin_get("/v1/tenants/acme/grants")
        .1
        .as_array()
        .unwrap()
        .len();
    let (s, v) = b.admin_post(
        "/v1/tenants/acme/grants",
        json!({"principal": "alice@example.com", "agent": "triage", "task": "x",
               "capabilities": ["crm:delete", "jira:read", "github:push", "crm:read"]}),
    );
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("invalid_request")),
        "{v}"
    );
    let why = v["error_description"].as_str().unwrap();
    for needle in [
        "`crm:delete`: tool `crm` has no action `delete` (its actions: read, write)",
        "`jira:read` is outside the agent's envelope",
        "`github:push` is outside the agent's envelope (crm:*, github:read)",
    ] {
        assert!(why.contains(needle), "{needle}: {why}");
    }
    assert!(!why.contains("`crm:read`"), "{why}");
    assert_eq!(
        b.admin_get("/v1/tenants/acme/grants")
            .1
            .as_array()
            .unwrap()
            .len(),
        grants
    );
    // A run key given with its private half is refused.
    let key = SigningKey::generate(Alg::EdDSA, &mut OsRng);
    let mut jwk = key.public().to_json();
    jwk["d"] = json!(b64(key.to_secret().expose()));
    assert_refused(
        &b.admin_post(
            "/v1/runs",
            json!({"tenant": "acme", "agent": "triage", "jwk": jwk}),
        ),
        400,
        "invalid_request",
        "private key",
    );
}

#[test]
fn capabilities_are_grant_meet_envelope() {
    let b = Broker::start("caps");
    let grant = b.seed("acme");
    let key = SigningKey::generate(Alg::EdDSA, &mut OsRng);
    let (s, v) = b.admin_post(
        "/v1/runs",
        json!({"tenant": "acme", "agent": "triage", "principal": "alice@example.com", "grant": grant, "jwk": key.public().to_json()}),
    );
    assert_eq!(s, 201);
    // grant: crm:read, github:* ; envelope: crm:*, github:read
    assert_eq!(v["capabilities"], json!(["crm:read", "github:read"]));
    let (_, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
    assert_refused(
        &b.exchange(&mandate, &key, "github", "push"),
        400,
        "invalid_scope",
        "not granted",
    );
}

#[test]
fn restart_keeps_keys_registrations_revocations_and_the_chain() {
    let dir = tempdir("restart");
    let listen: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let cfg = mandate_server::Config::new(listen, dir.join("data"), &dir.join("config"));
    let (kid, revoked) = {
        let s = mandate_server::boot::boot(cfg.clone()).unwrap();
        let kid = s.keyset().keys.jwt_eddsa.kid();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(s.commit(mandate_store::Entry {
            mutation: Some(mandate_store::Mutation::Revoke(
                mandate_core::model::Revocation {
                    seq: 0,
                    key: "agent:acme/x".into(),
                    reason: "test".into(),
                    time_ms: 1,
                    until: 0,
                    tenant: Some("acme".into()),
                },
            )),
            events: vec![],
        }))
        .unwrap();
        s.writer.shutdown();
        (kid, "agent:acme/x".to_owned())
    };
    let admin_before = std::fs::read_to_string(&cfg.admin_token_file).unwrap();
    let s = mandate_server::boot::boot(cfg.clone()).unwrap();
    assert_eq!(s.keyset().keys.jwt_eddsa.kid(), kid);
    assert!(s.reg().revoked.contains(&revoked));
    assert_eq!(
        std::fs::read_to_string(&cfg.admin_token_file).unwrap(),
        admin_before
    );
    assert!(s.store.audit_verify(vec![]).unwrap().first_break.is_none());
    s.writer.shutdown();
    drop(s);
    // The wrong master key is refused with a clear message.
    std::fs::remove_file(dir.join("config/master.key")).unwrap();
    let e = mandate_server::boot::boot(cfg.clone())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("master key file") && e.contains("missing"),
        "{e}"
    );
    let mut wrong = cfg;
    wrong.master_key = mandate_server::config::MasterKeySource::Env(
        mandate_core::secret::Secret::new(b64(&[9u8; 32]).into_bytes()),
    );
    let e = mandate_server::boot::boot(wrong).unwrap_err().to_string();
    assert!(e.contains("cannot decrypt the signing keys"), "{e}");
}

#[test]
fn master_key_file_with_loose_permissions_or_inside_data_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir("perms");
    let listen: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let cfg = mandate_server::Config::new(listen, dir.join("data"), &dir.join("config"));
    mandate_server::boot::boot(cfg.clone())
        .unwrap()
        .writer
        .shutdown();
    let key = dir.join("config/master.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = mandate_server::boot::boot(cfg).unwrap_err().to_string();
    assert!(e.contains("chmod 600"), "{e}");
    let mut inside = mandate_server::Config::new(listen, dir.join("data2"), &dir.join("data2"));
    inside.admin_token_file = dir.join("cfg2/admin.token");
    let e = mandate_server::boot::boot(inside).unwrap_err().to_string();
    assert!(e.contains("inside the data directory"), "{e}");
}

#[test]
fn traceparent_becomes_the_correlation_id() {
    let b = Broker::start("trace");
    let grant = b.seed("acme");
    let (run, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
    let r = Broker::agent()
        .post(b.token_url())
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("DPoP", &b.proof(&key))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .send(form(&mandate, "crm", "read"))
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let ev = b.audit(&format!("run={run}&type=token.exchange"));
    assert_eq!(ev[0]["correlation_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(ev[0]["client_addr"], "127.0.0.1");
}

#[test]
fn ended_run_is_refused_and_cannot_end_twice() {
    let b = Broker::start("end");
    let grant = b.seed("acme");
    let (run, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
    assert_eq!(b.exchange(&mandate, &key, "crm", "read").0, 200);
    let (s, v) = b.admin_post(&format!("/v1/runs/{run}/end"), json!({}));
    assert_eq!(s, 200, "{v}");
    assert_refused(
        &b.exchange(&mandate, &key, "crm", "read"),
        400,
        "invalid_grant",
        "revoked",
    );
    assert_refused(
        &b.admin_post(&format!("/v1/runs/{run}/end"), json!({})),
        409,
        "conflict",
        "already ended",
    );
    assert_refused(
        &b.admin_post("/v1/runs/run_nope/end", json!({})),
        404,
        "not_found",
        "run `run_nope`",
    );
    let (_, runs) = b.admin_get("/v1/runs?tenant=acme");
    assert!(runs[0]["ended_ms"].as_u64().is_some(), "{runs}");
    // Survives a restart: the revocation was committed with the end.
    assert!(
        b.state
            .store
            .load()
            .unwrap()
            .revocations
            .iter()
            .any(|r| r.key == format!("run:{run}"))
    );
}

#[test]
fn policy_change_takes_effect_at_once() {
    let b = Broker::start("policy-live");
    let grant = b.seed("acme");
    let (_, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
    assert_eq!(b.exchange(&mandate, &key, "crm", "read").0, 200);
    let forbid = "@id(\"freeze\")\nforbid (principal, action, resource);";
    assert_eq!(
        b.admin_put_text("/v1/tenants/acme/policies/freeze", forbid)
            .0,
        200
    );
    assert_refused(
        &b.exchange(&mandate, &key, "crm", "read"),
        403,
        "access_denied",
        "freeze/freeze",
    );
    let r = Broker::agent()
        .delete(format!("{}/v1/tenants/acme/policies/freeze", b.url))
        .header("Authorization", &format!("Bearer {}", b.admin))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(b.exchange(&mandate, &key, "crm", "read").0, 200);
    // Removing it again: nothing to remove.
    let r = Broker::agent()
        .delete(format!("{}/v1/tenants/acme/policies/freeze", b.url))
        .header("Authorization", &format!("Bearer {}", b.admin))
        .call()
        .unwrap();
    assert_refused(&read(r), 404, "not_found", "policy set `freeze`");
}

#[test]
fn secrets_and_data_are_private_on_disk() {
    use std::os::unix::fs::PermissionsExt;
    let b = Broker::start("modes");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&b.dir.join("config/admin.token")), 0o600);
    assert_eq!(mode(&b.dir.join("config/master.key")), 0o600);
    assert_eq!(mode(&b.dir.join("config")), 0o700);
    assert_eq!(mode(&b.dir.join("data")), 0o700);
    assert_eq!(mode(&b.dir.join("data/mandate.db")), 0o600);
    // The master key is not in the data directory, and no key material is stored in clear.
    let secret = b.state.keyset().keys.jwt_eddsa.to_secret();
    for f in ["mandate.db", "mandate.db-wal"] {
        let bytes = std::fs::read(b.dir.join("data").join(f)).unwrap_or_default();
        assert!(
            !bytes.windows(32).any(|w| w == secret.expose()),
            "{f} holds a key in clear"
        );
    }
    let wal = std::fs::read(b.dir.join("data/mandate.db-wal")).unwrap();
    assert!(
        wal.len() > 4096,
        "the check above must have read the keys' rows"
    );
}

#[test]
fn no_credential_is_returned_after_its_revocation_committed() {
    let b = std::sync::Arc::new(Broker::start("race"));
    let grant = b.seed("acme");
    let (run, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let (b, got, mandate, key) = (b.clone(), got.clone(), mandate.clone(), key.clone());
            std::thread::spawn(move || {
                for _ in 0..400 {
                    let (s, v) = b.exchange(&mandate, &key, "crm", "read");
                    if s != 200 {
                        assert_eq!(v["error"], "invalid_grant", "{v}");
                        return;
                    }
                    let c = credential::verify(
                        &b.state.keyset().keys,
                        &b.url,
                        v["access_token"].as_str().unwrap(),
                        now(),
                        false,
                    )
                    .unwrap();
                    got.lock().unwrap().push(c.jti);
                }
            })
        })
        .collect();
    while got.lock().unwrap().len() < 30 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(
        b.admin_post("/v1/revocations", json!({"kind": "run", "id": run}))
            .0,
        200
    );
    for t in threads {
        t.join().unwrap();
    }
    let events = b.audit(&format!("run={run}&limit=10000"));
    let revoked_at = events.iter().find(|e| e["event_type"] == "revoke").unwrap()["seq"]
        .as_u64()
        .unwrap();
    let got = got.lock().unwrap();
    for jti in got.iter() {
        let e = events
            .iter()
            .find(|e| e["credential_id"] == jti.as_str() && e["event_type"] == "token.exchange")
            .unwrap();
        assert!(
            e["seq"].as_u64().unwrap() < revoked_at,
            "credential {jti} was returned after the revocation"
        );
    }
}

#[test]
fn dpop_nonce_is_required_when_enabled_and_rotates() {
    let b = Broker::start_with("nonce", |c| {
        c.dpop_nonce = true;
        c.dpop_nonce_period = 2;
    });
    let grant = b.seed("acme");
    let (_, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
    let send = |proof: String| {
        let r = Broker::agent()
            .post(b.token_url())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("DPoP", &proof)
            .send(form(&mandate, "crm", "read"))
            .unwrap();
        let nonce = r
            .headers()
            .get("dpop-nonce")
            .map(|v| v.to_str().unwrap().to_owned());
        (read(r), nonce)
    };
    // No nonce: refused with `use_dpop_nonce` and told which one to use.
    let (got, nonce) = send(b.proof(&key));
    assert_refused(&got, 400, "use_dpop_nonce", "DPoP-Nonce");
    let nonce = nonce.expect("a DPoP-Nonce header");
    // With it: a credential, and the next nonce.
    let claims = |n: &str| json!({"jti": jti(), "htm": "POST", "htu": b.token_url(), "iat": now(), "nonce": n});
    let (got, next) = send(proof_with(&key, claims(&nonce)));
    assert_eq!(got.0, 200, "{}", got.1);
    assert!(next.is_some());
    // A made-up nonce is refused; one two periods old is stale.
    assert_refused(
        &send(proof_with(&key, claims("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"))).0,
        400,
        "use_dpop_nonce",
        "stale or not ours",
    );
    b.advance(5);
    assert_refused(
        &send(proof_with(&key, claims(&nonce))).0,
        400,
        "use_dpop_nonce",
        "stale or not ours",
    );
}

#[test]
fn dpop_clock_skew_is_configurable() {
    let b = Broker::start_with("skew", |c| {
        c.dpop_max_skew = 0;
        c.dpop_max_age = 10;
    });
    let grant = b.seed("acme");
    let (_, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
    let f = form(&mandate, "crm", "read");
    let at = |iat: u64| {
        proof_with(
            &key,
            json!({"jti": jti(), "htm": "POST", "htu": b.token_url(), "iat": iat}),
        )
    };
    assert_refused(
        &b.exchange_raw(&f, Some(&at(now() + 3))),
        400,
        "invalid_dpop_proof",
        "future",
    );
    assert_refused(
        &b.exchange_raw(&f, Some(&at(now() - 30))),
        400,
        "invalid_dpop_proof",
        "accepted for 10s",
    );
    assert_eq!(b.exchange_raw(&f, Some(&at(now()))).0, 200);
}

#[test]
fn token_inspect_shows_the_chain_and_why_it_fails() {
    let b = Broker::start("inspect");
    let grant = b.seed("acme");
    let (run, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
    let cred = b.exchange(&mandate, &key, "crm", "read").1["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let inspect = |t: &str| b.admin_post("/v1/tokens/inspect", json!({"token": t}));
    let (s, v) = inspect(&mandate);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["kind"].clone(), v["verifies"].clone()),
        (json!("mandate"), json!(true))
    );
    assert_eq!(
        v["chain"][2]["id"].as_str().unwrap(),
        format!("spiffe://mandate.local/tenant/acme/agent/triage/run/{run}")
    );
    assert_eq!(v["capabilities"], json!(["crm:read", "github:read"]));
    assert_eq!(v["key_binding"]["jkt"], key.kid().as_str());
    let (_, v) = inspect(&cred);
    assert_eq!(
        (v["kind"].clone(), v["verifies"].clone()),
        (json!("credential"), json!(true))
    );
    assert_eq!(v["principal"], "alice@example.com");
    assert_eq!(v["tool"], "https://crm.acme.example");
    b.admin_post("/v1/revocations", json!({"kind": "run", "id": run}));
    let (_, v) = inspect(&cred);
    assert_eq!(v["verifies"], false);
    assert_eq!(v["reason"], format!("revoked: run:{run}"));
    let (_, v) = inspect(&mandate);
    assert_eq!(v["verifies"], false);
    let (_, v) = inspect("garbage");
    assert_eq!(
        (v["kind"].clone(), v["verifies"].clone()),
        (json!("unknown"), json!(false))
    );
    let parts: Vec<&str> = cred.split('.').collect();
    let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"at+jwt"}"#), parts[1]);
    let (_, v) = inspect(&none);
    assert!(
        v["reason"].as_str().unwrap().contains("not accepted"),
        "{v}"
    );
    // Admin only.
    let r = Broker::agent()
        .post(format!("{}/v1/tokens/inspect", b.url))
        .send_json(json!({"token": mandate}))
        .unwrap();
    assert_refused(&read(r), 401, "invalid_token", "admin credential");
}

/// A registration with a typo is fixed by replacing it (`PUT`): a tool's
/// actions judge the next exchange at once; an agent's new envelope bounds
/// the next run; the provider and the name cannot change; both changes are
/// audited with before and after, and survive a restart.
#[test]
fn tools_and_agents_are_replaced_and_judged_by_at_once() {
    let b = Broker::start("replace");
    let grant = b.seed("acme");
    let (_, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
    assert_eq!(b.exchange(&mandate, &key, "crm", "read").0, 200);
    let crm = |actions: &[&str]| json!({"name": "crm", "audience": "https://crm.acme.example", "actions": actions, "labels": ["pii"]});
    // `read` taken away: refused at once, for the run that had it.
    let (s, v) = put_whole(&b, "/v1/tenants/acme/tools/crm", crm(&["write", "export"]));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["actions"], json!(["write", "export"]));
    assert_refused(
        &b.exchange(&mandate, &key, "crm", "read"),
        400,
        "invalid_scope",
        "read",
    );
    put_whole(&b, "/v1/tenants/acme/tools/crm", crm(&["read", "write"]));
    assert_eq!(b.exchange(&mandate, &key, "crm", "read").0, 200);
    // What cannot change, and what is not there.
    assert_refused(
        &put_whole(
            &b,
            "/v1/tenants/acme/tools/crm",
            json!({"name": "crm2", "actions": ["read"], "audience": "https://crm.acme.example"}),
        ),
        400,
        "invalid_request",
        "cannot be renamed",
    );
    assert_refused(
        &put_whole(
            &b,
            "/v1/tenants/acme/tools/crm",
            json!({"name": "crm", "actions": ["read"], "provider": "proxy",
            "proxy": {"upstream": "http://127.0.0.1:9", "routes": [{"method": "GET", "path": "/x", "action": "read"}],
                      "inject": {"header": "Authorization", "format": "Bearer {secret}"}}}),
        ),
        400,
        "invalid_request",
        "provider cannot change",
    );
    assert_refused(
        &put_whole(
            &b,
            "/v1/tenants/acme/tools/crm",
            json!({"name": "crm", "actions": ["read"], "audience": "https://github.acme.example"}),
        ),
        409,
        "conflict",
        "already has audience",
    );
    assert_refused(
        &put_whole(
            &b,
            "/v1/tenants/acme/tools/crm",
            json!({"name": "crm", "actions": ["read"], "audience": "https://crm2.acme.example"}),
        ),
        409,
        "conflict",
        "audience cannot change",
    );
    // What a PUT leaves out is not silently reset.
    assert_refused(
        &b.admin_put(
            "/v1/tenants/acme/tools/crm",
            json!({"name": "crm", "actions": ["read"], "audience": "https://crm.acme.example"}),
        ),
        400,
        "invalid_request",
        "missing labels, risk, max_ttl_secs, alg",
    );
    assert_refused(
        &put_whole(
            &b,
            "/v1/tenants/acme/tools/nope",
            json!({"name": "nope", "actions": ["read"], "audience": "https://n.example"}),
        ),
        404,
        "not_found",
        "tool `nope`",
    );
    assert_refused(
        &put_whole(
            &b,
            "/v1/tenants/acme/agents/ghost",
            json!({"name": "ghost", "owner": "o", "envelope": ["crm:*"]}),
        ),
        404,
        "not_found",
        "agent `ghost`",
    );
    // The agent's envelope narrowed: the next run holds less.
    let (s, v) = put_whole(
        &b,
        "/v1/tenants/acme/agents/triage",
        json!({"name": "triage", "owner": "team-ops", "purpose": "fixed", "envelope": ["github:read"]}),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = b.admin_post(
        "/v1/runs",
        json!({"tenant": "acme", "agent": "triage", "principal": "alice@example.com", "grant": grant,
               "jwk": SigningKey::generate(Alg::EdDSA, &mut OsRng).public().to_json()}),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["capabilities"], json!(["github:read"]));
    let updates = b.audit("type=agent.update");
    assert_eq!(
        updates[0]["details"]["before"]["envelope"],
        json!(["crm:*", "github:read"])
    );
    assert_eq!(
        updates[0]["details"]["after"]["envelope"],
        json!(["github:read"])
    );
    assert_eq!(b.audit("type=tool.update").len(), 2);
    // The store has them: a restarted broker judges the same.
    let b = b.restart();
    let agents = b.admin_get("/v1/tenants/acme/agents").1;
    let triage = agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "triage")
        .unwrap()
        .clone();
    assert_eq!(triage["purpose"], "fixed");
    let tools = b.admin_get("/v1/tenants/acme/tools").1;
    let crm = tools
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "crm")
        .unwrap()
        .clone();
    assert_eq!(crm["actions"], json!(["read", "write"]));
    assert_eq!(b.admin_get("/v1/audit/verify").1["ok"], true);
}

/// A replacement body with what registering defaults, unless it names it.
fn put_whole(b: &Broker, path: &str, mut body: Value) -> (u16, Value) {
    if path.contains("/tools/") {
        for (k, v) in [
            ("labels", json!([])),
            ("risk", json!("low")),
            ("max_ttl_secs", json!(300)),
            ("alg", json!("EdDSA")),
        ] {
            if body.get(k).is_none() {
                body[k] = v;
            }
        }
    } else if body.get("purpose").is_none() {
        body["purpose"] = json!("");
    }
    b.admin_put(path, body)
}

/// Registrations at once cannot both pass a uniqueness check: of many
/// tools of two tenants claiming one `jwt` audience together, one wins.
#[test]
fn concurrent_registrations_claim_an_audience_once() {
    let b = Broker::start("reg-race");
    b.seed("acme");
    b.seed("beta");
    let b = std::sync::Arc::new(b);
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let b = std::sync::Arc::clone(&b);
            std::thread::spawn(move || {
                let tenant = if i % 2 == 0 { "acme" } else { "beta" };
                b.admin_post(
                    &format!("/v1/tenants/{tenant}/tools"),
                    json!({"name": format!("t{i}"), "audience": "https://contested.example", "actions": ["read"]}),
                )
                .0
            })
        })
        .collect();
    let codes: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(codes.iter().filter(|c| **c == 201).count(), 1, "{codes:?}");
    assert!(codes.iter().all(|c| *c == 201 || *c == 409), "{codes:?}");
}
