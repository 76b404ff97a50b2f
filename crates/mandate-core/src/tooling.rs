//! What a tool's registration says about *how* its credentials are made and
//! used, beyond the `jwt` provider: the `proxy` provider's route table and
//! key injection, the `postgres` provider's role mapping, and the
//! environment variables `mandate exec` sets for a child. Pure data and pure
//! checks; the server does the IO.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::capability::check_action;
use crate::error::{Error, Result, malformed};

/// The placeholder in [`InjectSpec::format`] that the upstream key replaces.
pub const SECRET_PLACEHOLDER: &str = "{secret}";

/// How a tool's credentials are made: the kind of its provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// A signed JWT (RFC 9068 profile) the tool verifies itself.
    Jwt,
    /// A credential good only at the broker's injecting proxy.
    Proxy,
    /// A short-lived PostgreSQL role.
    Postgres,
    /// A credential good only at the broker's MCP gateway for this tool.
    Mcp,
}

impl ProviderKind {
    /// Every kind, in the order they are documented.
    pub const ALL: [ProviderKind; 4] = [Self::Jwt, Self::Proxy, Self::Postgres, Self::Mcp];

    /// The name in registrations, storage and the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jwt => "jwt",
            Self::Proxy => "proxy",
            Self::Postgres => "postgres",
            Self::Mcp => "mcp",
        }
    }

    /// Parses a registration's `provider`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The names of every kind, for messages.
    pub fn names() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the broker's proxy reaches an upstream API that only accepts a static key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySpec {
    /// Base URL of the upstream (`https://api.example.com` or `http://127.0.0.1:3000/base`).
    pub upstream: String,
    /// Method + path patterns and the action each one is.
    pub routes: Vec<RouteSpec>,
    /// Where the upstream key goes.
    pub inject: InjectSpec,
    /// Longest wait for the upstream's response headers (ms).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    30_000
}

/// One route: `POST /emails` → `email:send`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// HTTP method, upper case, or `*` for any.
    pub method: String,
    /// Path pattern: literal segments, `*` for exactly one segment, and a
    /// final `**` for any number (zero or more) of remaining segments.
    pub path: String,
    /// The tool action this request is.
    pub action: String,
    /// Where the request carries the amount it moves, when it moves money:
    /// the proxy then checks it against the amount the credential was
    /// issued for (`authorization_details`), and such a credential is good
    /// for one call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<AmountAt>,
}

/// Where a route's request carries its amount (minor units).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AmountAt {
    /// An RFC 6901 JSON pointer into a JSON body (`/amount`, `/payment/total`).
    Json(String),
    /// A field of an `application/x-www-form-urlencoded` body (`amount`).
    Form(String),
}

impl AmountAt {
    /// Checks the location at registration.
    pub fn validate(&self) -> Result<()> {
        match self {
            AmountAt::Json(p) => {
                let escapes_ok = p
                    .split('~')
                    .skip(1)
                    .all(|rest| rest.starts_with('0') || rest.starts_with('1'));
                if !p.starts_with('/')
                    || p.len() > 256
                    || p.chars().any(char::is_control)
                    || !escapes_ok
                    || p.split('/').skip(1).any(str::is_empty)
                {
                    return Err(bad(
                        "proxy route amount",
                        format!(
                            "`{}` is not a JSON pointer (RFC 6901) to a field: write `/amount` or `/payment/total` (`~0` for `~`, `~1` for `/`)",
                            clip(p)
                        ),
                    ));
                }
            }
            AmountAt::Form(f) => {
                if f.is_empty() || f.len() > 128 || f.chars().any(char::is_control) {
                    return Err(bad(
                        "proxy route amount",
                        format!(
                            "form field `{}` must be 1 to 128 characters without control characters",
                            clip(f)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The name the amount goes by in a query string or form (`amount` for
    /// `/payment/amount`): a parameter by that name elsewhere is refused,
    /// since some frameworks merge query and body parameters.
    pub fn field_name(&self) -> String {
        match self {
            AmountAt::Form(f) => f.clone(),
            AmountAt::Json(p) => p
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .replace("~1", "/")
                .replace("~0", "~"),
        }
    }
}

/// How the upstream key is injected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectSpec {
    /// Header name (`authorization`, `x-api-key`, ...).
    pub header: String,
    /// Its value, with `{secret}` where the key goes (`Bearer {secret}`).
    pub format: String,
}

impl InjectSpec {
    /// Checks the header name and the format.
    pub fn validate(&self, what: &'static str) -> Result<()> {
        check_header_name(&self.header)?;
        if self.format.matches(SECRET_PLACEHOLDER).count() != 1
            || self.format.len() > 256
            || self.format.chars().any(|c| c.is_control())
        {
            return Err(bad(
                what,
                "`inject.format` must hold `{secret}` exactly once (e.g. `Bearer {secret}`)",
            ));
        }
        Ok(())
    }

    /// The header value carrying `secret`.
    pub fn render(&self, secret: &str) -> String {
        self.format.replacen(SECRET_PLACEHOLDER, secret, 1)
    }

    /// The key inside a header value of this format (what a client that
    /// believes it talks to the upstream sends), if the value has the format.
    pub fn extract<'a>(&self, value: &'a str) -> Option<&'a str> {
        let (pre, post) = self.format.split_once(SECRET_PLACEHOLDER)?;
        let v = value
            .strip_prefix(pre)
            .or_else(|| strip_prefix_ignore_case(value, pre))?;
        v.strip_suffix(post).filter(|k| !k.is_empty())
    }
}

fn strip_prefix_ignore_case<'a>(v: &'a str, pre: &str) -> Option<&'a str> {
    (v.len() >= pre.len()
        && v.is_char_boundary(pre.len())
        && v[..pre.len()].eq_ignore_ascii_case(pre))
    .then(|| &v[pre.len()..])
}

/// How the `postgres` provider makes a database credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSpec {
    /// Host the agent connects to.
    pub host: String,
    /// Port.
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// Database the agent connects to.
    pub database: String,
    /// Tool action → existing database role that a credential for it joins.
    pub roles: BTreeMap<String, String>,
}

fn default_pg_port() -> u16 {
    5432
}

/// An environment variable `mandate exec` sets for its child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvSpec {
    /// Variable name.
    pub name: String,
    /// Value template: `{credential}` (a fresh credential for the tool's
    /// granted actions), `{proxy_url}` (the broker's proxy for this tool),
    /// `{mcp_url}` (the broker's MCP gateway for this tool), `{audience}`,
    /// `{broker}`.
    pub value: String,
}

/// Template placeholders an [`EnvSpec`] may use.
pub const ENV_PLACEHOLDERS: [&str; 5] = [
    "{credential}",
    "{proxy_url}",
    "{mcp_url}",
    "{audience}",
    "{broker}",
];

/// Values for [`EnvSpec`] placeholders.
#[derive(Debug, Clone, Copy)]
pub struct EnvValues<'a> {
    /// The credential.
    pub credential: &'a str,
    /// The proxy URL of the tool.
    pub proxy_url: &'a str,
    /// The MCP gateway URL of the tool.
    pub mcp_url: &'a str,
    /// The tool's audience.
    pub audience: &'a str,
    /// The broker's URL.
    pub broker: &'a str,
}

impl EnvSpec {
    /// Whether the value needs a credential.
    pub fn needs_credential(&self) -> bool {
        self.value.contains("{credential}")
    }

    /// The value with its placeholders filled in.
    pub fn render(&self, v: &EnvValues<'_>) -> String {
        self.value
            .replace("{proxy_url}", v.proxy_url)
            .replace("{mcp_url}", v.mcp_url)
            .replace("{audience}", v.audience)
            .replace("{broker}", v.broker)
            .replace("{credential}", v.credential)
    }
}

fn bad(what: &'static str, reason: impl Into<String>) -> Error {
    malformed(what, reason)
}

fn is_token_char(c: u8) -> bool {
    // RFC 9110 §5.6.2 tchar.
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Checks an HTTP header name (RFC 9110 §5.1) and that it is not one the proxy owns.
pub fn check_header_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 64 || !name.bytes().all(is_token_char) {
        return Err(bad(
            "header name",
            format!("`{}` is not an HTTP header name", clip(name)),
        ));
    }
    let lower = name.to_ascii_lowercase();
    if HOP_BY_HOP.contains(&lower.as_str())
        || ["host", "content-length", "proxy-authorization", "cookie"].contains(&lower.as_str())
    {
        return Err(bad(
            "header name",
            format!("`{name}` cannot carry the upstream key"),
        ));
    }
    Ok(())
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded by the proxy.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// An upstream is an http(s) URL without credentials, query or fragment.
pub(crate) fn check_upstream(what: &'static str, u: &str) -> Result<()> {
    let ok = (u.starts_with("https://") || u.starts_with("http://"))
        && u.len() <= 512
        && !u.contains(['?', '#'])
        && !u.chars().any(|c| c.is_whitespace() || c.is_control())
        && u.split_once("://").is_some_and(|(_, rest)| {
            !rest.is_empty() && !rest.starts_with('/') && !rest.contains('@')
        });
    if ok {
        Ok(())
    } else {
        Err(bad(
            what,
            "`upstream` must be an http(s) URL without credentials, query or fragment",
        ))
    }
}

pub(crate) fn check_timeout(what: &'static str, ms: u64) -> Result<()> {
    if ms == 0 || ms > 600_000 {
        return Err(bad(what, "`timeout_ms` must be 1 to 600000"));
    }
    Ok(())
}

impl ProxySpec {
    /// Checks the spec against the tool's actions.
    pub fn validate(&self, actions: &[String]) -> Result<()> {
        check_upstream("proxy upstream", &self.upstream)?;
        if self.routes.is_empty() || self.routes.len() > 256 {
            return Err(bad("proxy routes", "a proxy tool needs 1 to 256 routes"));
        }
        for r in &self.routes {
            if r.method != "*"
                && (r.method.is_empty()
                    || r.method.len() > 16
                    || !r.method.bytes().all(|b| b.is_ascii_uppercase()))
            {
                return Err(bad(
                    "proxy route",
                    format!(
                        "method `{}` must be upper case (GET, POST, ...) or `*`",
                        clip(&r.method)
                    ),
                ));
            }
            check_pattern(&r.path)?;
            check_action(&r.action)?;
            if let Some(a) = &r.amount {
                a.validate()?;
            }
            if !actions.iter().any(|a| a == &r.action) {
                return Err(bad(
                    "proxy route",
                    format!(
                        "route `{} {}` maps to `{}`, which is not one of the tool's actions",
                        r.method, r.path, r.action
                    ),
                ));
            }
        }
        self.inject.validate("proxy inject")?;
        check_timeout("proxy timeout", self.timeout_ms)
    }

    /// The action a request is, by the first route that matches.
    pub fn action_for(&self, method: &str, path: &str) -> Option<&str> {
        self.route_for(method, path).map(|r| r.action.as_str())
    }

    /// The first route that matches the request.
    pub fn route_for(&self, method: &str, path: &str) -> Option<&RouteSpec> {
        self.route_index(method, path, false)
            .map(|i| &self.routes[i])
    }

    /// The route a request is, refusing a path that matches another route
    /// when letter case is ignored (an upstream that ignores case would do
    /// what that other route is: `/emails/ADMIN` against `GET /emails/admin`
    /// before `GET /emails/*`).
    pub fn judge(
        &self,
        method: &str,
        path: &str,
    ) -> std::result::Result<Option<&RouteSpec>, String> {
        let exact = self.route_index(method, path, false);
        let folded = self.route_index(method, path, true);
        match (exact, folded) {
            (Some(i), Some(j))
                if i != j
                    && (self.routes[i].action != self.routes[j].action
                        || self.routes[i].amount != self.routes[j].amount) =>
            {
                Err(format!(
                    "the path matches route `{} {}` when letter case is ignored, which the upstream may do; send the path as the route table writes it",
                    self.routes[j].method, self.routes[j].path
                ))
            }
            (i, _) => Ok(i.map(|i| &self.routes[i])),
        }
    }

    fn route_index(&self, method: &str, path: &str, fold: bool) -> Option<usize> {
        let segs: Vec<&str> = split_path(path);
        self.routes.iter().position(|r| {
            (r.method == "*" || r.method == method) && pattern_matches(&r.path, &segs, fold)
        })
    }
}

fn split_path(path: &str) -> Vec<&str> {
    path.trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect()
}

fn check_pattern(p: &str) -> Result<()> {
    if !p.starts_with('/') || p.len() > 256 || p.contains(['?', '#', '%', '\\']) {
        return Err(bad(
            "proxy route",
            format!(
                "path pattern `{}` must start with `/` and hold no `?`, `#`, `%` or `\\`",
                clip(p)
            ),
        ));
    }
    let segs = split_path(p);
    for (i, s) in segs.iter().enumerate() {
        if *s == "**" && i + 1 != segs.len() {
            return Err(bad(
                "proxy route",
                format!("`**` may only end a path pattern (`{}`)", clip(p)),
            ));
        }
        if *s == "." || *s == ".." || (s.contains('*') && *s != "*" && *s != "**") {
            return Err(bad(
                "proxy route",
                format!(
                    "path pattern `{}` has a segment that is neither literal, `*` nor `**`",
                    clip(p)
                ),
            ));
        }
    }
    Ok(())
}

fn pattern_matches(pattern: &str, segs: &[&str], fold: bool) -> bool {
    let pats = split_path(pattern);
    for (i, p) in pats.iter().enumerate() {
        match *p {
            "**" => return true,
            "*" => {
                if i >= segs.len() {
                    return false;
                }
            }
            lit => {
                let same = segs
                    .get(i)
                    .is_some_and(|s| *s == lit || (fold && s.eq_ignore_ascii_case(lit)));
                if !same {
                    return false;
                }
            }
        }
    }
    pats.len() == segs.len()
}

/// Refuses request paths that could mean something else upstream than what
/// the route table matched: dot segments, empty segments, backslashes,
/// `;` path parameters (`/files/..;/admin`), control characters, non-ASCII
/// bytes, and percent-encodings of anything but a few harmless printable
/// characters (encoded `/`, `\`, `.`, `;`, `%`, control characters,
/// non-ASCII bytes such as overlong UTF-8 or a full-width dot, and encoded
/// letters and digits, which an upstream decodes to a different route).
pub fn check_request_path(path: &str) -> std::result::Result<(), &'static str> {
    if path.len() > 2048 {
        return Err("the path is longer than 2048 bytes");
    }
    if path.contains("//") {
        return Err("the path has an empty segment (`//`)");
    }
    if path.contains('\\') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err("the path holds a backslash, a space or a control character");
    }
    if !path.is_ascii() {
        return Err("the path holds a non-ASCII character");
    }
    if path.contains(';') {
        return Err("the path holds a `;` (path parameters such as `..;` are not forwarded)");
    }
    let b = path.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let byte = decode_hex_pair(b.get(i + 1..i + 3))
                .ok_or("the path has a bad percent-encoding")?;
            encoded_path_byte_ok(byte)?;
            i += 3;
        } else {
            i += 1;
        }
    }
    if path.split('/').any(|s| s == "." || s == "..") {
        return Err("the path has a `.` or `..` segment");
    }
    Ok(())
}

/// The byte a `%XY` encodes.
pub(crate) fn decode_hex_pair(pair: Option<&[u8]>) -> Option<u8> {
    let [h, l] = pair? else { return None };
    let h = (*h as char).to_digit(16)?;
    let l = (*l as char).to_digit(16)?;
    Some((h * 16 + l) as u8)
}

fn encoded_path_byte_ok(byte: u8) -> std::result::Result<(), &'static str> {
    match byte {
        b'/' | b'\\' | b'.' | b'%' | b';' => {
            Err("the path holds an encoded `/`, `\\`, `.`, `;` or `%`")
        }
        0..=0x1f | 0x7f => {
            Err("the path holds an encoded control character (`%00`, `%0d%0a`, ...)")
        }
        0x80..=0xff => Err(
            "the path holds an encoded non-ASCII byte (overlong UTF-8 or look-alike characters such as a full-width dot are refused)",
        ),
        b if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'~' => {
            Err("the path holds an encoded letter, digit, `-`, `_` or `~`; send it unencoded")
        }
        _ => Ok(()),
    }
}

impl PostgresSpec {
    /// Checks the spec against the tool's actions.
    pub fn validate(&self, actions: &[String]) -> Result<()> {
        let host_ok = !self.host.is_empty()
            && self.host.len() <= 255
            && self
                .host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
        if !host_ok {
            return Err(bad(
                "postgres host",
                "`host` must be a host name or IP address",
            ));
        }
        if self.port == 0 {
            return Err(bad("postgres port", "`port` must be 1 to 65535"));
        }
        check_pg_ident("database", &self.database)?;
        if self.roles.is_empty() {
            return Err(bad(
                "postgres roles",
                "map at least one action to a database role (e.g. read → app_reader)",
            ));
        }
        for (action, role) in &self.roles {
            if !actions.iter().any(|a| a == action) {
                return Err(bad(
                    "postgres roles",
                    format!("`{action}` is not one of the tool's actions"),
                ));
            }
            check_pg_ident("role", role)?;
            if role.starts_with("mandate_") || role.starts_with("pg_") {
                return Err(bad(
                    "postgres roles",
                    format!("role `{role}`: `mandate_` and `pg_` roles cannot be granted"),
                ));
            }
        }
        Ok(())
    }
}

/// A PostgreSQL identifier we are willing to quote into DDL: lower-case
/// letters, digits and `_`, starting with a letter or `_`, at most 63 bytes.
pub fn check_pg_ident(what: &'static str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            what,
            value: clip(s),
            reason: "use lower-case letters, digits and `_` (at most 63, not starting with a digit)",
        })
    }
}

/// Checks `mandate exec` environment variables of a tool.
pub fn check_env(env: &[EnvSpec]) -> Result<()> {
    if env.len() > 16 {
        return Err(bad("env", "at most 16 variables per tool"));
    }
    for e in env {
        let name_ok = !e.name.is_empty()
            && e.name.len() <= 64
            && e.name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            && !e.name.as_bytes()[0].is_ascii_digit()
            && !e.name.starts_with("MANDATE_");
        if !name_ok {
            return Err(bad(
                "env",
                format!(
                    "variable `{}` must be upper case letters, digits and `_`, and not start with MANDATE_",
                    clip(&e.name)
                ),
            ));
        }
        if e.value.len() > 512 || e.value.chars().any(|c| c.is_control()) {
            return Err(bad(
                "env",
                format!(
                    "the value of `{}` is too long or has control characters",
                    e.name
                ),
            ));
        }
        let mut rest = e.value.as_str();
        while let Some(i) = rest.find('{') {
            let tail = &rest[i..];
            let Some(p) = ENV_PLACEHOLDERS.iter().find(|p| tail.starts_with(**p)) else {
                return Err(bad(
                    "env",
                    format!(
                        "`{}` uses an unknown placeholder; use {}",
                        e.name,
                        ENV_PLACEHOLDERS.join(", ")
                    ),
                ));
            };
            rest = &tail[p.len()..];
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ProxySpec {
        ProxySpec {
            upstream: "http://127.0.0.1:3000".into(),
            routes: vec![
                RouteSpec {
                    method: "POST".into(),
                    path: "/emails".into(),
                    action: "send".into(),
                    amount: None,
                },
                RouteSpec {
                    method: "GET".into(),
                    path: "/emails/*".into(),
                    action: "read".into(),
                    amount: None,
                },
                RouteSpec {
                    method: "*".into(),
                    path: "/admin/**".into(),
                    action: "admin".into(),
                    amount: None,
                },
            ],
            inject: InjectSpec {
                header: "Authorization".into(),
                format: "Bearer {secret}".into(),
            },
            timeout_ms: 1000,
        }
    }

    fn actions() -> Vec<String> {
        ["send", "read", "admin"].map(String::from).to_vec()
    }

    #[test]
    fn routes_match_method_and_segments() {
        let s = spec();
        s.validate(&actions()).unwrap();
        assert_eq!(s.action_for("POST", "/emails"), Some("send"));
        assert_eq!(s.action_for("GET", "/emails"), None);
        assert_eq!(s.action_for("GET", "/emails/abc"), Some("read"));
        assert_eq!(s.action_for("GET", "/emails/abc/x"), None);
        assert_eq!(s.action_for("DELETE", "/emails/abc"), None);
        assert_eq!(s.action_for("PUT", "/admin"), Some("admin"));
        assert_eq!(s.action_for("PUT", "/admin/a/b/c"), Some("admin"));
        assert_eq!(s.action_for("PUT", "/administrator"), None);
    }

    #[test]
    fn a_path_that_matches_another_route_ignoring_case_is_refused() {
        let mut s = spec();
        s.routes.insert(
            1,
            RouteSpec {
                method: "GET".into(),
                path: "/emails/admin".into(),
                action: "admin".into(),
                amount: None,
            },
        );
        assert_eq!(
            s.judge("GET", "/emails/admin").unwrap().unwrap().action,
            "admin"
        );
        assert_eq!(
            s.judge("GET", "/emails/abc").unwrap().unwrap().action,
            "read"
        );
        let e = s.judge("GET", "/emails/ADMIN").unwrap_err();
        assert!(
            e.contains("GET /emails/admin") && e.contains("letter case"),
            "{e}"
        );
        // Case only matters when it changes the route's action.
        assert_eq!(
            s.judge("GET", "/emails/Abc").unwrap().unwrap().action,
            "read"
        );
        assert!(s.judge("GET", "/EMAILS/abc").unwrap().is_none());
    }

    #[test]
    fn amount_locations_are_checked() {
        for ok in [
            AmountAt::Json("/amount".into()),
            AmountAt::Json("/payment/total".into()),
            AmountAt::Json("/items/0/a~1b~0c".into()),
            AmountAt::Form("amount".into()),
            AmountAt::Form("payment[amount]".into()),
        ] {
            assert!(ok.validate().is_ok(), "{ok:?}");
        }
        for bad in [
            AmountAt::Json("amount".into()),
            AmountAt::Json("".into()),
            AmountAt::Json("/a/~2".into()),
            AmountAt::Json("/a~".into()),
            AmountAt::Json("/a//b".into()),
            AmountAt::Form("".into()),
            AmountAt::Form("a\nb".into()),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert_eq!(AmountAt::Json("/payment/a~1b".into()).field_name(), "a/b");
        assert_eq!(AmountAt::Form("amount".into()).field_name(), "amount");
        let mut s = spec();
        s.routes[0].amount = Some(AmountAt::Json("amount".into()));
        assert!(s.validate(&actions()).is_err());
    }

    #[test]
    fn bad_specs_are_refused() {
        let a = actions();
        let mut s = spec();
        s.routes[0].action = "delete".into();
        assert!(s.validate(&a).unwrap_err().to_string().contains("delete"));
        let mut s = spec();
        s.routes[0].path = "/a/**/b".into();
        assert!(s.validate(&a).is_err());
        let mut s = spec();
        s.routes[0].method = "post".into();
        assert!(s.validate(&a).is_err());
        let mut s = spec();
        s.inject.format = "Bearer".into();
        assert!(s.validate(&a).is_err());
        let mut s = spec();
        s.inject.header = "Host".into();
        assert!(s.validate(&a).is_err());
        let mut s = spec();
        s.upstream = "http://user:pw@example.com".into();
        assert!(s.validate(&a).is_err());
        let mut s = spec();
        s.upstream = "ftp://example.com".into();
        assert!(s.validate(&a).is_err());
    }

    #[test]
    fn inject_renders_and_extracts() {
        let i = spec().inject;
        assert_eq!(i.render("k1"), "Bearer k1");
        assert_eq!(i.extract("Bearer abc"), Some("abc"));
        assert_eq!(i.extract("bearer abc"), Some("abc"));
        assert_eq!(i.extract("Basic abc"), None);
        assert_eq!(i.extract("Bearer "), None);
        let raw = InjectSpec {
            header: "x-api-key".into(),
            format: "{secret}".into(),
        };
        assert_eq!(raw.extract("abc"), Some("abc"));
    }

    #[test]
    fn request_paths_that_could_be_reinterpreted_are_refused() {
        for p in [
            "/emails/../admin",
            "/emails/%2e%2e/admin",
            "/emails%2Fadmin",
            "//emails",
            "/emails/./x",
            "/a\\b",
            "/a%00",
            "/a%252f",
        ] {
            assert!(check_request_path(p).is_err(), "{p}");
        }
        for p in [
            "/files/..;/admin",
            "/files/x;jsessionid=1",
            "/files/%3b/admin",
            "/emails/%c0%ae%c0%ae/admin",
            "/emails/%ef%bc%8e%ef%bc%8e/admin",
            "/emails/\u{ff0e}\u{ff0e}/admin",
            "/emails/%0d%0aX-Injected:%20yes",
            "/emails/%7f",
            "/emails/%61dmin",
            "/emails/%5C",
            "/emails/%zz",
            "/emails/%4",
        ] {
            assert!(check_request_path(p).is_err(), "{p}");
        }
        for p in [
            "/emails",
            "/emails/abc-123",
            "/",
            "/a/b%20c",
            "/a/%40me",
            "/a.json",
        ] {
            assert!(check_request_path(p).is_ok(), "{p}");
        }
    }

    #[test]
    fn env_templates_are_checked_and_rendered() {
        let e = vec![
            EnvSpec {
                name: "RESEND_API_KEY".into(),
                value: "{credential}".into(),
            },
            EnvSpec {
                name: "RESEND_BASE_URL".into(),
                value: "{proxy_url}".into(),
            },
        ];
        check_env(&e).unwrap();
        let v = EnvValues {
            credential: "c",
            proxy_url: "http://b/proxy/t",
            mcp_url: "http://b/mcp/t",
            audience: "a",
            broker: "http://b",
        };
        assert_eq!(e[0].render(&v), "c");
        assert_eq!(e[1].render(&v), "http://b/proxy/t");
        assert!(e[0].needs_credential() && !e[1].needs_credential());
        for bad in [
            ("lower", "x"),
            ("MANDATE_X", "x"),
            ("X", "{secret}"),
            ("1X", "x"),
        ] {
            let e = vec![EnvSpec {
                name: bad.0.into(),
                value: bad.1.into(),
            }];
            assert!(check_env(&e).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn postgres_specs_are_checked() {
        let a = ["read", "write"].map(String::from).to_vec();
        let mut s = PostgresSpec {
            host: "127.0.0.1".into(),
            port: 5432,
            database: "app".into(),
            roles: BTreeMap::from([("read".into(), "app_reader".into())]),
        };
        s.validate(&a).unwrap();
        s.roles.insert("read".into(), "app\"; DROP".into());
        assert!(s.validate(&a).is_err());
        s.roles.insert("read".into(), "pg_read_all_data".into());
        assert!(s.validate(&a).is_err());
        s.roles = BTreeMap::from([("delete".into(), "x".into())]);
        assert!(s.validate(&a).is_err());
    }
}
