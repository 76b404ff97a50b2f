//! The CLI as people use it (issue 16): pipes, flags, files, errors.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;

use common::{Serve, mandate, stderr, tempdir};

/// `mandate audit | head -1` and friends end quietly when the reader goes
/// away: no panic, no exit 101, nothing on standard error; exit 141.
#[test]
fn every_verb_ends_quietly_on_a_closed_pipe() {
    let s = Serve::start(&tempdir("pipe"));
    for args in [
        &["audit"][..],
        &["--json", "audit"],
        &["tenant", "list"],
        &["audit", "verify"],
    ] {
        let mut child = mandate(&s.dir)
            .arg("--url")
            .arg(&s.url)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader is gone before the first byte is written.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        // 141: as a program ended by SIGPIPE (`audit verify | head` must
        // not pass for a verified trail).
        assert_eq!(out.status.code(), Some(141), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "{args:?}");
    }
    s.stop();
}

/// A global flag given to a verb that would ignore it is refused (exit 2,
/// the flag named), before anything runs; the same setting from the
/// environment is not (it is set for every verb).
#[test]
fn flags_that_do_not_apply_are_refused() {
    let dir = tempdir("flags");
    for args in [
        &["serve", "--url", "http://127.0.0.1:1"][..],
        &["--url", "http://127.0.0.1:1", "serve"],
        &["--json", "serve"],
        &["key", "generate", "--out", "k.jwk", "--token-file", "t"],
        &[
            "exec", "--json", "--tenant", "a", "--agent", "b", "--", "true",
        ],
    ] {
        let out = mandate(&dir).args(args).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        let flag = args
            .iter()
            .find(|a| a.starts_with("--") && **a != "--out")
            .unwrap();
        assert!(
            err.contains(&format!("{flag} does not apply")),
            "{args:?}: {err}"
        );
    }
    assert!(!dir.join("k.jwk").exists());
    let key = dir.join("k.jwk");
    let out = mandate(&dir)
        .env("MANDATE_URL", "http://127.0.0.1:1")
        .args(["key", "generate", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `--since` takes an RFC 3339 time or a duration with its unit; a bare
/// number is refused (it meant seconds without saying so), and so are the
/// bare numbers of every other duration flag.
#[test]
fn since_takes_rfc_3339_times_and_durations_need_units() {
    let s = Serve::start(&tempdir("since"));
    let events = |since: &str| -> usize {
        let o = s.cli(&["--json", "audit", "--since", since]);
        assert!(o.status.success(), "{since}: {}", stderr(&o));
        serde_json::from_str::<serde_json::Value>(&common::stdout(&o))
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    assert!(events("2020-01-01T00:00:00Z") > 0);
    assert!(events("1h") > 0);
    assert_eq!(events("2999-01-01T00:00:00+02:00"), 0);
    for (args, says) in [
        (&["audit", "--since", "1"][..], "no unit: write 1s, 1m"),
        (&["audit", "--since", "2026-11-30"], "RFC 3339"),
        (&["audit", "--since", "5 parsecs"], "unknown unit"),
        (
            &["grant", "list", "--tenant", "x", "--since", "1"],
            "unexpected argument",
        ),
        (
            &[
                "run", "start", "--tenant", "a", "--agent", "b", "--jwk", "{}", "--ttl", "600",
            ],
            "no unit",
        ),
        (&["serve", "--mandate-ttl", "900"], "no unit"),
    ] {
        let o = s.cli(args);
        assert!(!o.status.success(), "{args:?}");
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
    s.stop();
}

/// Exit codes tell a script what happened (README, "Exit codes"): 2 usage,
/// 3 not found, 4 refused, 5 the broker unreachable.
#[test]
fn exit_codes_say_what_kind_of_failure() {
    let s = Serve::start(&tempdir("exits"));
    let code = |o: std::process::Output| o.status.code();
    assert_eq!(code(s.cli(&["tenant", "create", "acme"])), Some(0));
    assert_eq!(code(s.cli(&["tenant", "create", "--bogus"])), Some(2));
    assert_eq!(code(s.cli(&["audit", "--since", "1"])), Some(2));
    assert_eq!(
        code(s.cli(&["agent", "list", "--tenant", "ghost"])),
        Some(3)
    );
    let bad = s.dir.join("bad.token");
    std::fs::write(&bad, "mandate_admin_AAAA\n").unwrap();
    let o = mandate(&s.dir)
        .args(["--url", &s.url, "--token-file"])
        .arg(&bad)
        .args(["tenant", "list"])
        .output()
        .unwrap();
    assert_eq!(code(o), Some(4));
    let port = common::free_port();
    let o = mandate(&s.dir)
        .args([
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "tenant",
            "list",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("is `mandate serve` running?"));
    // The admin credential never goes in clear to another host.
    for url in [
        "http://192.0.2.7:8407",
        "HTTP://192.0.2.7",
        "http://127.0.0.1@192.0.2.7/",
        "http://localhost:1@192.0.2.7/",
        "http://[::1]:1@192.0.2.7/",
    ] {
        let o = mandate(&s.dir)
            .args(["--url", url, "tenant", "list"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{url}");
        assert!(
            stderr(&o).contains("plain HTTP to another host")
                || stderr(&o).contains("naming a user"),
            "{url}: {}",
            stderr(&o)
        );
    }
    s.stop();
}

/// Profiles and `MANDATE_TENANT`: set the broker and the tenant once; the
/// environment beats the profile and the command line beats both.
#[test]
fn profiles_and_the_default_tenant_spare_the_flags() {
    let s = Serve::start(&tempdir("profiles"));
    for t in ["acme", "beta"] {
        assert!(s.cli(&["tenant", "create", t]).status.success());
    }
    for t in ["acme", "beta"] {
        let o = s.cli(&[
            "agent",
            "create",
            "-t",
            t,
            &format!("bot-{t}"),
            "--owner",
            "o",
            "--envelope",
            "x:*",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let bare = |env: &[(&str, &str)], args: &[&str]| {
        let mut c = mandate(&s.dir);
        for (k, v) in env {
            c.env(k, v);
        }
        let o = c.args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        common::stdout(&o)
    };
    // Without a profile the CLI looks for a broker on the default port.
    assert!(
        !mandate(&s.dir)
            .args(["-q", "agent", "list", "-t", "acme"])
            .output()
            .unwrap()
            .status
            .success()
    );
    bare(&[], &["config", "set", "url", &s.url]);
    bare(&[], &["config", "set", "tenant", "acme"]);
    assert_eq!(bare(&[], &["-q", "agent", "list"]), "bot-acme\n");
    assert_eq!(
        bare(&[("MANDATE_TENANT", "beta")], &["-q", "agent", "list"]),
        "bot-beta\n"
    );
    assert_eq!(
        bare(
            &[("MANDATE_TENANT", "beta")],
            &["-q", "agent", "list", "--tenant", "acme"]
        ),
        "bot-acme\n"
    );
    // Another profile, another broker.
    bare(
        &[],
        &[
            "--profile",
            "other",
            "config",
            "set",
            "url",
            "http://127.0.0.1:1",
        ],
    );
    let o = mandate(&s.dir)
        .args(["--profile", "other", "agent", "list", "-t", "acme"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let o = mandate(&s.dir)
        .env("MANDATE_PROFILE", "other")
        .args(["agent", "list", "-t", "acme"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    // The revocation verb never takes its tenant from a default.
    let o = mandate(&s.dir)
        .args(["revoke", "--all", "--yes"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    s.stop();
}

/// `mandate status` says what the broker is and holds; `mandate doctor`
/// finds what would go wrong and says how to fix it, and stops failing
/// once it is fixed.
#[test]
fn status_and_doctor_find_what_blocks_the_first_exchange() {
    use std::os::unix::fs::PermissionsExt as _;
    let s = Serve::start(&tempdir("doctor"));
    let ok = |args: &[&str]| {
        let o = s.cli(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        common::stdout(&o)
    };
    ok(&["tenant", "create", "acme"]);
    let o = s.cli(&[
        "tool",
        "create",
        "-t",
        "acme",
        "mail",
        "--provider",
        "proxy",
        "--upstream",
        "http://127.0.0.1:9",
        "--route",
        "POST /emails=send",
        "--action",
        "send",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("needs a secret before any exchange succeeds: mandate tool set-secret --tenant acme mail"),
        "{}",
        stderr(&o)
    );
    let v: serde_json::Value = serde_json::from_str(&ok(&["--json", "status"])).unwrap();
    assert_eq!(v["broker"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["broker"]["tenants"][0]["name"], "acme");
    assert_eq!(v["broker"]["tenants"][0]["tools"], 1);
    assert_eq!(v["broker"]["tenants"][0]["tools_without_secret"][0], "mail");
    assert!(v["clock_skew_secs"].as_i64().unwrap().abs() <= 2);

    let token = s.dir.join("config/admin.token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = s.cli(&["doctor"]);
    assert_eq!(o.status.code(), Some(1));
    let out = common::stdout(&o);
    for needle in [
        "fail  admin credential",
        &format!("fix: chmod 600 {}", token.display()),
        "fail  tenant acme: policies",
        "fix: mandate policy add --tenant acme",
        "fail  tenant acme: tool mail",
        "fix: mandate tool set-secret --tenant acme mail",
        "ok    broker",
    ] {
        assert!(out.contains(needle), "{needle}:\n{out}");
    }
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let policy = env!("CARGO_MANIFEST_DIR").to_owned() + "/../../examples/policies/baseline.cedar";
    ok(&["policy", "add", "-t", "acme", &policy]);
    let secret = s.dir.join("mail.key");
    std::fs::write(&secret, "re_123").unwrap();
    ok(&[
        "tool",
        "set-secret",
        "-t",
        "acme",
        "mail",
        "--file",
        secret.to_str().unwrap(),
    ]);
    let out = ok(&["doctor"]);
    assert!(!out.contains("fail"), "{out}");
    let shown = ok(&["tool", "show", "-t", "acme", "mail"]);
    assert!(
        shown.contains("secret_set    true") && !shown.contains("re_123"),
        "{shown}"
    );
    let o = s.cli(&["agent", "show", "-t", "acme", "nobody"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("no agent `nobody`"));
    // A broker that is not there is a finding too, not a crash.
    let port = common::free_port();
    let o = mandate(&s.dir)
        .args(["--url", &format!("http://127.0.0.1:{port}"), "doctor"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(common::stdout(&o).contains("fail  broker"));
    s.stop();
}

/// Completions and man pages come from the command line's definition:
/// bash's script parses, every shell knows `token exchange`, and there is
/// a man page per verb.
#[test]
fn completions_and_man_pages_cover_every_verb() {
    let dir = tempdir("docs");
    for sh in ["bash", "zsh", "fish"] {
        let o = mandate(&dir).args(["completion", sh]).output().unwrap();
        assert!(o.status.success(), "{sh}: {}", stderr(&o));
        let text = common::stdout(&o);
        assert!(text.contains("exchange") && text.contains("doctor"), "{sh}");
        if sh == "bash" {
            let script = dir.join("mandate.bash");
            std::fs::write(&script, &text).unwrap();
            let check = std::process::Command::new("bash")
                .arg("-n")
                .arg(&script)
                .output()
                .unwrap();
            assert!(check.status.success(), "{}", stderr(&check));
        }
    }
    let out = dir.join("man1");
    let o = mandate(&dir)
        .args(["man", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    for page in [
        "mandate.1",
        "mandate-serve.1",
        "mandate-token-exchange.1",
        "mandate-audit-verify.1",
    ] {
        let text = std::fs::read_to_string(out.join(page)).unwrap();
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }
    let o = mandate(&dir)
        .args(["completion", "powershell"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

/// Mistakes said when made: a run without a principal and grant is warned
/// about (it holds the agent's whole envelope), and `exec` without a join
/// token explains join tokens.
#[test]
fn a_run_for_nobody_is_warned_about_and_exec_explains_join_tokens() {
    let s = Serve::start(&tempdir("warn"));
    let ok = |args: &[&str]| {
        let o = s.cli(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        o
    };
    ok(&["tenant", "create", "acme"]);
    ok(&[
        "agent",
        "create",
        "-t",
        "acme",
        "bot",
        "--owner",
        "o",
        "--envelope",
        "crm:*",
    ]);
    let key = s.dir.join("run.jwk");
    let o = mandate(&s.dir)
        .args(["key", "generate", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let start = |extra: &[&str]| {
        let mut args = vec!["-q", "run", "start", "-t", "acme", "--agent", "bot"];
        args.extend_from_slice(extra);
        s.cli(&args)
    };
    // -q without --out would lose the mandate; a taken --out is said
    // before a run exists; a private key inline is refused.
    let o = start(&["--jwk", key.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let taken = s.dir.join("taken.mandate");
    std::fs::write(&taken, "x").unwrap();
    let o = start(&[
        "--jwk",
        key.to_str().unwrap(),
        "--out",
        taken.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let inline = std::fs::read_to_string(&key).unwrap();
    let o = start(&[
        "--jwk",
        &inline,
        "--out",
        s.dir.join("x.mandate").to_str().unwrap(),
    ]);
    assert!(stderr(&o).contains("private key"), "{}", stderr(&o));
    assert!(!s.dir.join("x.mandate").exists());
    let runs = common::stdout(&ok(&["-q", "run", "list", "-t", "acme"]));
    assert!(runs.is_empty(), "{runs}");
    let mandate_file = s.dir.join("run.mandate");
    let o = ok(&[
        "-q",
        "run",
        "start",
        "-t",
        "acme",
        "--agent",
        "bot",
        "--jwk",
        key.to_str().unwrap(),
        "--out",
        mandate_file.to_str().unwrap(),
    ]);
    assert!(common::stdout(&o).starts_with("run_"));
    let run = common::stdout(&o).trim().to_owned();
    ok(&["revoke", "--run", &run, "--reason", "typo"]);
    let listed = common::stdout(&ok(&["revoke", "list"]));
    assert!(
        listed.contains(&format!("run:{run}")) && listed.contains("typo"),
        "{listed}"
    );
    assert!(common::stdout(&ok(&["-q", "revoke", "list", "-t", "other"])).is_empty());
    assert!(common::stdout(&ok(&["-q", "run", "list", "-t", "acme"])).contains(&run));
    let runs = common::stdout(&ok(&["run", "list", "-t", "acme"]));
    assert!(
        runs.contains("revoked") && runs.contains(&format!("run:{run}")),
        "{runs}"
    );
    let err = stderr(&o);
    assert!(
        err.contains(
            "warning: this run acts for no principal and holds the agent's whole envelope (crm:*)"
        ),
        "{err}"
    );
    let o = mandate(&s.dir)
        .args(["--url", &s.url, "--token-file", "/nonexistent/admin.token"])
        .args(["exec", "-t", "acme", "--agent", "bot", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("mandate agent join-token --tenant acme bot --out join.token"),
        "{}",
        stderr(&o)
    );
    s.stop();
}

/// A typo is fixable: `agent update` and `tool update` replace the
/// registration with what their flags say.
#[test]
fn registrations_with_a_typo_are_fixed_by_update() {
    let s = Serve::start(&tempdir("update"));
    let ok = |args: &[&str]| {
        let o = s.cli(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        common::stdout(&o)
    };
    ok(&["tenant", "create", "acme"]);
    ok(&[
        "agent",
        "create",
        "-t",
        "acme",
        "bot",
        "--owner",
        "tema-ops",
        "--purpose",
        "tickets",
        "--envelope",
        "crm:raed",
    ]);
    ok(&[
        "agent",
        "update",
        "-t",
        "acme",
        "bot",
        "--envelope",
        "crm:read",
    ]);
    ok(&[
        "agent", "update", "-t", "acme", "bot", "--owner", "team-ops",
    ]);
    let shown = ok(&["agent", "show", "-t", "acme", "bot"]);
    assert!(
        shown.contains("team-ops")
            && shown.contains("crm:read")
            && shown.contains("tickets")
            && !shown.contains("raed"),
        "{shown}"
    );
    ok(&[
        "tool",
        "create",
        "-t",
        "acme",
        "crm",
        "--audience",
        "https://crm.example",
        "--action",
        "raed",
        "--risk",
        "high",
        "--label",
        "pii",
    ]);
    ok(&[
        "tool", "update", "-t", "acme", "crm", "--action", "read", "--action", "write",
    ]);
    ok(&["tool", "update", "-t", "acme", "crm", "--max-ttl", "2m"]);
    let v: serde_json::Value =
        serde_json::from_str(&ok(&["--json", "tool", "show", "-t", "acme", "crm"])).unwrap();
    // What the updates did not name stays.
    assert_eq!(v["actions"], serde_json::json!(["read", "write"]));
    assert_eq!(
        (
            v["risk"].as_str(),
            v["labels"][0].as_str(),
            v["max_ttl_secs"].as_u64()
        ),
        (Some("high"), Some("pii"), Some(120))
    );
    let o = s.cli(&["tool", "update", "-t", "acme", "nope", "--action", "read"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let o = s.cli(&[
        "tool",
        "update",
        "-t",
        "acme",
        "crm",
        "--audience",
        "https://elsewhere.example",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("audience cannot change"),
        "{}",
        stderr(&o)
    );
    s.stop();
}
