//! A small blocking HTTP client for the admin API.

use std::path::PathBuf;

use serde_json::Value;

/// Talks to one broker with the admin credential.
pub(crate) struct Client {
    pub(crate) url: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// A failed call, already phrased for a human.
#[derive(Debug)]
pub(crate) struct CliError {
    /// What went wrong and what to do, for a human.
    pub(crate) msg: String,
    /// The exit code it ends the process with.
    pub(crate) exit: Exit,
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

/// The CLI's exit codes (documented in README.md, "Exit codes"), so that
/// scripts can tell a typo from a refusal from a broker that is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// 1: anything else (a file that cannot be read, a bad answer, a conflict).
    Failure = 1,
    /// 2: the command line is wrong (clap's own code for usage errors).
    Usage = 2,
    /// 3: what was named does not exist (HTTP 404).
    NotFound = 3,
    /// 4: refused: not authenticated, not allowed, invalid or revoked
    /// (HTTP 400, 401, 403 and the OAuth errors).
    Denied = 4,
    /// 5: the broker cannot be reached or is unavailable (HTTP 5xx).
    Unavailable = 5,
    /// 6: waiting for a human's approval (`authorization_pending`).
    Pending = 6,
}

impl CliError {
    /// A failure (exit 1) with this message.
    pub(crate) fn new(msg: impl Into<String>) -> Self {
        Self {
            msg: msg.into(),
            exit: Exit::Failure,
        }
    }

    /// The same error with another exit code.
    pub(crate) fn exit(mut self, exit: Exit) -> Self {
        self.exit = exit;
        self
    }

    /// The exit code of a refusal with HTTP `status` and OAuth `error` code.
    pub(crate) fn exit_of(status: u16, error: &str) -> Exit {
        match (status, error) {
            (_, "authorization_pending" | "slow_down") => Exit::Pending,
            (404, _) => Exit::NotFound,
            // Already exists, or cannot change: not a refusal of authority.
            (409, _) => Exit::Failure,
            (500..=599, _) => Exit::Unavailable,
            (400..=499, _) => Exit::Denied,
            _ => Exit::Failure,
        }
    }
}

impl Client {
    /// A client that authenticates with `token` (a join token).
    pub(crate) fn with_token(url: String, token: String) -> Self {
        let mut c = Self::new(url, None);
        c.token = Some(token);
        c
    }

    pub(crate) fn new(url: String, token_file: Option<PathBuf>) -> Self {
        let token = token_file
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|t| t.trim().to_owned());
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // Straight to the broker: a proxy from the environment would see
            // the admin credential (and plain HTTP to it would leave the machine).
            .proxy(None)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .build()
            .into();
        Client {
            url: url.trim_end_matches('/').to_owned(),
            token,
            agent,
        }
    }

    fn auth(&self) -> Result<String, CliError> {
        self.refuse_plain_http()?;
        self.token.as_ref().map(|t| format!("Bearer {t}")).ok_or_else(|| {
            CliError::new("no admin credential found: start the broker once (it writes one), or pass --token-file / set MANDATE_ADMIN_TOKEN_FILE")
        })
    }

    /// A credential goes over `https://`, or over `http://` to this machine
    /// only (a profile or MANDATE_URL naming another host over plain HTTP
    /// would send the admin credential in clear), unless
    /// `MANDATE_ALLOW_HTTP=1` says the network is trusted.
    fn refuse_plain_http(&self) -> Result<(), CliError> {
        let bad = |why: &str| Err(CliError::new(format!("{}: {why}", self.url)).exit(Exit::Usage));
        let Ok(uri) = self.url.parse::<ureq::http::Uri>() else {
            return bad("not a URL (set --url or MANDATE_URL)");
        };
        let Some(authority) = uri.authority() else {
            return bad("not an absolute http(s) URL");
        };
        if authority.as_str().contains('@') {
            return bad("a URL naming a user (`...@host`) is refused: say the broker's host alone");
        }
        match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("https") => Ok(()),
            Some("http")
                if mandate_core::client::is_loopback_host(authority.host())
                    || std::env::var("MANDATE_ALLOW_HTTP").is_ok_and(|v| v == "1") =>
            {
                Ok(())
            }
            Some("http") => bad(
                "plain HTTP to another host: the credential would travel in clear; use https://, or set MANDATE_ALLOW_HTTP=1 on a network you trust",
            ),
            _ => bad("not an http(s) URL (set --url or MANDATE_URL)"),
        }
    }

    fn finish(
        &self,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value, CliError> {
        let mut r = r.map_err(|e| CliError::new(format!("cannot reach the broker at {}: {e}; is `mandate serve` running? (set --url or MANDATE_URL)", self.url)).exit(Exit::Unavailable))?;
        let status = r.status();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        let v: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            if matches!(v, Value::String(_)) {
                // Not the broker's answer (every one is JSON): a proxy, a
                // web server, another service at --url.
                return Err(CliError::new(format!(
                    "the answer from {} is not JSON ({} {}): is --url (or MANDATE_URL) the broker?",
                    self.url,
                    status.as_u16(),
                    status.canonical_reason().unwrap_or("")
                )));
            }
            Ok(v)
        } else {
            let code = v.get("error").and_then(Value::as_str).unwrap_or("error");
            let desc = v
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or("");
            let mut msg = format!("the broker refused ({} {code}): {desc}", status.as_u16());
            if let Some(problems) = v.get("problems").and_then(Value::as_array) {
                for p in problems {
                    msg.push_str(&format!(
                        "\n  line {}, column {}: {}",
                        p.get("line").and_then(Value::as_u64).unwrap_or(0),
                        p.get("column").and_then(Value::as_u64).unwrap_or(0),
                        p.get("message").and_then(Value::as_str).unwrap_or("")
                    ));
                }
            }
            Err(CliError::new(msg).exit(CliError::exit_of(status.as_u16(), code)))
        }
    }

    pub(crate) fn get(&self, path: &str) -> Result<Value, CliError> {
        let r = self
            .agent
            .get(format!("{}{path}", self.url))
            .header("Authorization", &self.auth()?)
            .call();
        self.finish(r)
    }

    pub(crate) fn post(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        let r = self
            .agent
            .post(format!("{}{path}", self.url))
            .header("Authorization", &self.auth()?)
            .send_json(body);
        self.finish(r)
    }

    pub(crate) fn put_json(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        let r = self
            .agent
            .put(format!("{}{path}", self.url))
            .header("Authorization", &self.auth()?)
            .send_json(body);
        self.finish(r)
    }

    pub(crate) fn put_text(&self, path: &str, text: &str) -> Result<Value, CliError> {
        let r = self
            .agent
            .put(format!("{}{path}", self.url))
            .header("Authorization", &self.auth()?)
            .header("Content-Type", "text/plain")
            .send(text);
        self.finish(r)
    }

    pub(crate) fn delete(&self, path: &str) -> Result<Value, CliError> {
        let r = self
            .agent
            .delete(format!("{}{path}", self.url))
            .header("Authorization", &self.auth()?)
            .call();
        self.finish(r)
    }
}

/// Percent-encodes a path segment or query value.
pub(crate) use mandate_core::client::form_encode as enc;
