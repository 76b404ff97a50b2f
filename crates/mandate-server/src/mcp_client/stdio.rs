//! MCP servers over stdio (MCP 2025-11-25 `basic/transports` §stdio): the
//! broker starts the server as its child and speaks newline-delimited
//! JSON-RPC on its stdin and stdout.
//!
//! The commands are the operator's, not the admin API's: `mandate serve
//! --mcp-stdio-config FILE` names each command, and a registration picks
//! one by name (`"stdio": "github"`), so an admin credential cannot run a
//! program on the broker's host. The tool's key goes into the environment
//! variable the operator named; the child's environment is otherwise only
//! `PATH`, `HOME`, `LANG`, `TMPDIR` and the operator's `env`, never the
//! broker's own (no master key, no admin token).
//!
//! One process per run and tool (the HTTP gateway's one session per run
//! and tool: a stateful server never carries one run's state into
//! another's calls), at most `max_processes` per tool (the least recently
//! used idle one is stopped for a new one), stopped when the run ends, the
//! tool changes, or it has been idle for [`IDLE`]. A process that exits,
//! or writes anything on stdout that is not a JSON-RPC message, is stopped:
//! the calls it had in flight fail at once, and the next call starts a new
//! one. Requests the server makes of the broker are answered (`ping`) or
//! refused (`-32601`: the broker offers it nothing); its notifications are
//! ignored; its stderr is drained (and logged at debug level, scrubbed).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mandate_core::credential::AccessClaims;
use mandate_core::model::Tool;
use mandate_core::scrub::Scrubber;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use super::{Failure, MAX_ANSWER, Returned};
use crate::state::AppState;

/// A process unused this long is stopped.
pub const IDLE: Duration = Duration::from_secs(600);

/// Most processes of all stdio servers together.
const MAX_ALL: usize = 256;

/// Longest stderr line logged (bytes; the rest is dropped).
const MAX_LOG_LINE: usize = 1024;

/// One stdio MCP server the operator allows registrations to use.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// The program and its arguments (no shell).
    pub command: Vec<String>,
    /// The environment variable that carries the tool's key, if any.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// More environment for the process.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Its working directory.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// The tenants whose tools may use it (all if absent).
    #[serde(default)]
    pub tenants: Option<Vec<String>>,
    /// Most processes per tool (one per run).
    #[serde(default = "default_max_processes")]
    pub max_processes: usize,
    /// The user id it runs as (the broker must be allowed to switch to
    /// it). Processes of one user can read each other's environment and
    /// pipes through `/proc`: give each tenant's servers a user of their
    /// own, and never the broker's.
    #[serde(default)]
    pub uid: Option<u32>,
    /// The group id it runs as (with `uid`).
    #[serde(default)]
    pub gid: Option<u32>,
}

fn default_max_processes() -> usize {
    16
}

/// The operator's stdio servers, by name.
pub type Commands = BTreeMap<String, Command>;

/// Reads the operator's stdio servers from `path`: a JSON object of name →
/// [`Command`].
pub fn load(path: &Path) -> Result<Commands, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the stdio servers file {}: {e}", path.display()))?;
    let commands: Commands = serde_json::from_str(&text)
        .map_err(|e| format!("the stdio servers file {} is invalid: {e}", path.display()))?;
    for (name, c) in &commands {
        check(name, c).map_err(|e| format!("stdio server `{name}` in {}: {e}", path.display()))?;
        if c.uid.is_none() {
            tracing::warn!(
                "stdio MCP server `{name}` runs as the broker's own user: its processes can read one another's environment (their keys) through /proc; give it a `uid` of its own per tenant"
            );
        }
    }
    Ok(commands)
}

fn check(name: &str, c: &Command) -> Result<(), String> {
    if !mandate_core::mcp::spec::stdio_name_ok(name) {
        return Err("a name is 1 to 64 of a-z, 0-9, `_`, `-`, starting with a letter".into());
    }
    if c.command.first().is_none_or(String::is_empty) {
        return Err("`command` names the program (and its arguments) to start".into());
    }
    let env_ok = |k: &str| {
        !k.is_empty()
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !k.as_bytes()[0].is_ascii_digit()
    };
    if let Some(k) = &c.secret_env
        && !env_ok(k)
    {
        return Err(format!(
            "`secret_env` `{k}` is not an environment variable name"
        ));
    }
    if let Some(k) = &c.secret_env
        && (steers_programs(k) || !key_shaped(k))
    {
        return Err(format!(
            "`secret_env` `{k}` is not a key's variable (it must end in _KEY, _TOKEN, _SECRET, _PASSWORD, _PAT or _CREDENTIALS, and not tell programs what to load or run): whoever sets the tool's key must not choose code the broker starts"
        ));
    }
    if let Some(k) = c.env.keys().find(|k| !env_ok(k)) {
        return Err(format!("`env` `{k}` is not an environment variable name"));
    }
    match (c.uid, c.gid) {
        (Some(0), _) | (_, Some(0)) => {
            return Err("`uid` and `gid` cannot be 0 (root)".into());
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(
                "`uid` and `gid` go together (with `uid` alone the process keeps the broker's group)"
                    .into(),
            );
        }
        _ => {}
    }
    if !(1..=MAX_ALL).contains(&c.max_processes) {
        return Err(format!("`max_processes` is 1 to {MAX_ALL}"));
    }
    Ok(())
}

/// Environment variables that make a program load or run other code (the
/// loader's, shells', interpreters' and runtimes' own): a key the admin
/// API sets must never land in one.
fn steers_programs(name: &str) -> bool {
    const EXACT: [&str; 12] = [
        "PATH",
        "HOME",
        "IFS",
        "ENV",
        "BASH_ENV",
        "SHELLOPTS",
        "NODE_OPTIONS",
        "NODE_PATH",
        "RUBYOPT",
        "RUBYLIB",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
    ];
    const PREFIXES: [&str; 6] = ["LD_", "DYLD_", "PYTHON", "PERL", "GCONV_", "MALLOC_"];
    let n = name.to_ascii_uppercase();
    EXACT.contains(&n.as_str()) || PREFIXES.iter().any(|p| n.starts_with(p))
}

/// A variable named as a key's (what servers read theirs from).
fn key_shaped(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    [
        "_KEY",
        "_TOKEN",
        "_SECRET",
        "_PASSWORD",
        "_PAT",
        "_CREDENTIALS",
    ]
    .iter()
    .any(|end| n.ends_with(end))
}

/// The operator's stdio server `name`, if `tenant` may use it; else why not.
pub fn command_for<'a>(
    commands: &'a Commands,
    tenant: &str,
    name: &str,
) -> Result<&'a Command, String> {
    let known = || commands.keys().cloned().collect::<Vec<_>>().join(", ");
    let c = commands.get(name).ok_or_else(|| {
        format!(
            "this broker has no stdio MCP server `{name}` (it has: {}); its operator defines them with `mandate serve --mcp-stdio-config FILE`",
            if commands.is_empty() { "none".into() } else { known() }
        )
    })?;
    if c.tenants
        .as_ref()
        .is_some_and(|t| !t.iter().any(|t| t == tenant))
    {
        return Err(format!(
            "the broker's operator has not allowed tenant `{tenant}` to use stdio MCP server `{name}`"
        ));
    }
    Ok(c)
}

/// (tenant, tool, run): one process each.
type Key = (String, String, String);

/// Most processes of one tenant (so no tenant can take every slot).
const MAX_TENANT: usize = 64;

/// How often idle, revoked and exited processes are looked for.
const REAP_EVERY: Duration = Duration::from_secs(15);

/// The processes, running and starting (both count toward the limits).
#[derive(Debug, Default)]
struct Slots {
    running: HashMap<Key, Arc<Process>>,
    /// Starts in flight per key (more than one only after a stop forgot
    /// a gate that was held).
    starting: HashMap<Key, usize>,
}

/// The running processes.
#[derive(Debug, Default)]
pub struct Pool {
    slots: Mutex<Slots>,
    /// One start at a time per key: concurrent first calls of a run wait
    /// for one process instead of each starting their own.
    gates: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stop_where(&self, gone: impl Fn(&Key) -> bool) {
        self.lock().running.retain(|k, _| !gone(k));
        // A gate someone holds stays (a start is under way behind it).
        self.gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, g| !gone(k) || Arc::strong_count(g) > 1);
    }

    /// Stops the processes of `run` (it ended or was revoked).
    pub fn end_run(&self, run: &str) {
        self.stop_where(|(_, _, r)| r == run);
    }

    /// Stops the process the broker used for its own requests to `tool`
    /// of `tenant` (a sync).
    pub fn end_own(&self, tenant: &str, tool: &str) {
        self.stop_where(|(t, n, r)| t == tenant && n == tool && r.is_empty());
    }

    /// Stops the processes of `tool` of `tenant` (its registration or key changed).
    pub fn forget_tool(&self, tenant: &str, tool: &str) {
        self.stop_where(|(t, n, _)| t == tenant && n == tool);
    }

    /// Stops processes that exited, idled [`IDLE`], or whose caller was
    /// revoked (`revoked` answers for a process's revocation keys).
    pub fn reap(&self, revoked: impl Fn(&[String], u64) -> bool) {
        let now = Instant::now();
        self.lock().running.retain(|_, p| {
            p.alive()
                && now.duration_since(p.last_used()) < IDLE
                && !p
                    .caller
                    .as_ref()
                    .is_some_and(|(keys, iat)| revoked(keys, *iat))
        });
        let running: std::collections::HashSet<Key> = self.lock().running.keys().cloned().collect();
        self.gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, g| running.contains(k) || Arc::strong_count(g) > 1);
    }

    fn gate(&self, key: &Key) -> Arc<tokio::sync::Mutex<()>> {
        let mut g = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(g.entry(key.clone()).or_default())
    }

    /// A live process for `key` started as `started` (the command's name
    /// and the key's version: a process of another command or key, a
    /// registration or key changed since, perhaps on another broker, is
    /// stopped).
    fn live(&self, key: &Key, started: &(String, u64)) -> Option<Arc<Process>> {
        let mut m = self.lock();
        let p = m.running.get(key)?;
        if &p.started != started || !p.alive() {
            m.running.remove(key);
            return None;
        }
        Some(Arc::clone(p))
    }

    /// Counts a process about to start for `key` toward the limits (of the
    /// tool, the tenant, all), making room by stopping the least recently
    /// used idle process in the full scope, or refusing when all are busy.
    fn reserve(&self, key: &Key, per_tool: usize) -> Result<Reservation<'_>, Failure> {
        let mut m = self.lock();
        let same_tool = |k: &Key| k.0 == key.0 && k.1 == key.1;
        let same_tenant = |k: &Key| k.0 == key.0;
        let anyone = |_: &Key| true;
        let scopes: [(usize, &str, &KeyFilter<'_>); 3] = [
            (per_tool, "of this stdio server for this tool", &same_tool),
            (MAX_TENANT, "of this tenant", &same_tenant),
            (MAX_ALL, "of the broker", &anyone),
        ];
        for (limit, what, within) in scopes {
            let n = m
                .running
                .keys()
                .chain(
                    m.starting
                        .iter()
                        .flat_map(|(k, n)| std::iter::repeat_n(k, *n)),
                )
                .filter(|k| within(k))
                .count();
            if n < limit {
                continue;
            }
            let idle = m
                .running
                .iter()
                .filter(|(k, p)| within(k) && p.in_flight() == 0)
                .min_by_key(|(_, p)| p.last_used())
                .map(|(k, _)| k.clone());
            match idle {
                Some(k) => {
                    m.running.remove(&k);
                }
                None => {
                    return Err(Failure::Unreachable(format!(
                        "all {limit} stdio processes {what} are busy; try again shortly"
                    )));
                }
            }
        }
        *m.starting.entry(key.clone()).or_default() += 1;
        Ok(Reservation {
            pool: self,
            key: key.clone(),
        })
    }
}

/// A process being started, counted toward the limits until it runs or fails.
struct Reservation<'a> {
    pool: &'a Pool,
    key: Key,
}

impl Reservation<'_> {
    fn fill(self, p: &Arc<Process>) {
        self.pool
            .lock()
            .running
            .insert(self.key.clone(), Arc::clone(p));
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut m = self.pool.lock();
        if let Some(n) = m.starting.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.starting.remove(&self.key);
            }
        }
    }
}

/// Stops idle, revoked and exited processes: every [`REAP_EVERY`], and at
/// once when a revocation is applied.
pub async fn reaper(s: Arc<AppState>) {
    let mut heard = s.revocations.subscribe();
    loop {
        tokio::select! {
            r = heard.recv() => {
                if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    return;
                }
            }
            () = tokio::time::sleep(REAP_EVERY) => {}
        }
        if s.config.mcp_stdio.is_empty() {
            continue;
        }
        let reg = s.reg();
        s.mcp_stdio
            .reap(|keys, iat| reg.refused(keys, iat).is_some());
    }
}

/// Sends `method` to the process of `caller`'s run (the broker's own with
/// no caller) of tool `tool` (stdio server `name`).
pub(super) async fn request(
    s: &AppState,
    tool: &Tool,
    name: &str,
    caller: Option<&AccessClaims>,
    method: &str,
    params: Value,
) -> Result<Returned, Failure> {
    let command = command_for(&s.config.mcp_stdio, &tool.tenant, name).map_err(|e| {
        // The operator's names are for admins (`tool sync` shows it), not agents.
        tracing::warn!("tool `{}` of tenant `{}`: {e}", tool.name, tool.tenant);
        match caller {
            None => Failure::Unreachable(e),
            Some(_) => Failure::Unreachable(
                "this tool's stdio MCP server is not available on this broker; an admin runs `mandate tool sync` to see why".into(),
            ),
        }
    })?;
    let timeout = Duration::from_millis(tool.mcp.as_ref().map_or(30_000, |m| m.timeout_ms));
    let run = caller.map_or("", |c| c.run.as_str());
    let key = (tool.tenant.clone(), tool.name.clone(), run.to_owned());
    let gate = s.mcp_stdio.gate(&key);
    let one_start = gate.lock().await;
    // Read behind the gate: a caller that waited there sees a key rotated meanwhile.
    let secret = s.tool_secret_versioned(&tool.tenant, &tool.name);
    let started = (name.to_owned(), secret.as_ref().map_or(0, |(v, _)| *v));
    let process = match s.mcp_stdio.live(&key, &started) {
        Some(p) => p,
        None => {
            if command.secret_env.is_some() && secret.is_none() {
                return Err(Failure::Unreachable(
                    "the tool has no key yet; an admin sets it with `mandate tool set-secret`"
                        .into(),
                ));
            }
            let reserved = s.mcp_stdio.reserve(&key, command.max_processes)?;
            let who = caller.map(|c| (c.revocation_keys(), c.iat));
            let p = Arc::new(
                Process::start(command, secret.map(|(_, k)| k), (started, who), timeout).await?,
            );
            reserved.fill(&p);
            p
        }
    };
    drop(one_start);
    let (result, reflected) = process.call(method, params, timeout).await?;
    Ok(Returned { result, reflected })
}

/// Where a request's outcome goes: its result and whether the key was
/// scrubbed from it.
type Reply = oneshot::Sender<Result<(Value, bool), Failure>>;

/// What a process was started with: the command's name and the key's version.
type Started = (String, u64);

/// Which processes a limit counts.
type KeyFilter<'a> = dyn Fn(&Key) -> bool + 'a;

/// A credential's revocation keys and issue time.
type Revocable = (Vec<String>, u64);

/// What the supervisor is asked to do.
enum Order {
    /// Send a request and answer `reply` with its response.
    Call {
        id: String,
        line: Vec<u8>,
        reply: Reply,
    },
    /// Send a notification.
    Notify(Vec<u8>),
    /// The caller stopped waiting for `id` (timeout, revocation, hang-up).
    Cancel(String),
}

/// A running stdio server.
#[derive(Debug)]
pub struct Process {
    orders: mpsc::Sender<Order>,
    started: Started,
    /// The credential whose call started it (none for the broker's own).
    caller: Option<Revocable>,
    in_flight: Arc<AtomicUsize>,
    used: Mutex<Instant>,
}

impl Process {
    fn alive(&self) -> bool {
        !self.orders.is_closed()
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn last_used(&self) -> Instant {
        *self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts `c` and opens the session (`initialize`, MCP 2025-11-25
    /// `basic/lifecycle`).
    async fn start(
        c: &Command,
        secret: Option<Arc<mandate_core::secret::Secret>>,
        (started, caller): (Started, Option<Revocable>),
        timeout: Duration,
    ) -> Result<Process, Failure> {
        let mut cmd = tokio::process::Command::new(&c.command[0]);
        cmd.args(&c.command[1..]).env_clear();
        for k in ["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR"] {
            if let Some(v) = std::env::var_os(k) {
                cmd.env(k, v);
            }
        }
        cmd.envs(&c.env);
        let mut given = None;
        if let Some(var) = &c.secret_env {
            let secret = secret.ok_or_else(|| {
                Failure::Unreachable(
                    "the tool has no key yet; an admin sets it with `mandate tool set-secret`"
                        .into(),
                )
            })?;
            let value = std::str::from_utf8(secret.expose())
                .map_err(|_| Failure::Unreachable("the tool's key is not text".into()))?;
            cmd.env(var, value);
            given = Some(secret);
        }
        // Whatever it writes is cleaned of the key it was given.
        let scrubber = || given.as_ref().map(|k| Scrubber::new([k.expose()]));
        if let Some(dir) = &c.cwd {
            cmd.current_dir(dir);
        }
        #[cfg(unix)]
        {
            // std drops supplementary groups when root switches user.
            if let Some(g) = c.gid {
                cmd.gid(g);
            }
            if let Some(u) = c.uid {
                cmd.uid(u);
            }
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        #[cfg(unix)]
        cmd.process_group(0);
        let mut child = cmd.spawn().map_err(|e| {
            Failure::Unreachable(format!(
                "its command could not be started ({}); the broker's operator checks --mcp-stdio-config",
                e.kind()
            ))
        })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(Failure::Unreachable("its pipes could not be opened".into()));
        };
        let (orders, rx) = mpsc::channel(64);
        let in_flight = Arc::new(AtomicUsize::new(0));
        tokio::spawn(drain_stderr(stderr, scrubber()));
        tokio::spawn(supervise(child, stdin, stdout, rx, scrubber()));
        let p = Process {
            orders,
            started,
            caller,
            in_flight,
            used: Mutex::new(Instant::now()),
        };
        let init = json!({
            "protocolVersion": mandate_core::mcp::LATEST_HANDSHAKE,
            "capabilities": {},
            "clientInfo": {"name": "mandate-gateway", "version": env!("CARGO_PKG_VERSION")},
        });
        let (result, _) = p.call("initialize", init, timeout).await?;
        if !result
            .get("protocolVersion")
            .and_then(Value::as_str)
            .is_some_and(|v| mandate_core::mcp::HANDSHAKE_VERSIONS.contains(&v))
        {
            return Err(Failure::Unreachable(
                "it answered `initialize` with a protocol revision the gateway does not speak"
                    .into(),
            ));
        }
        let note = line(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        p.orders
            .send(Order::Notify(note))
            .await
            .map_err(|_| exited())?;
        Ok(p)
    }

    /// One request; its result and whether the key was scrubbed from it.
    async fn call(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<(Value, bool), Failure> {
        *self.used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        let id = mandate_core::ids::random_id(&mut rand_core::OsRng, "mandate");
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let (reply, answer) = oneshot::channel();
        self.orders
            .try_send(Order::Call {
                id: id.clone(),
                line: line(&body),
                reply,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Failure::Unreachable(
                    "the stdio server is not reading its input; try again shortly".into(),
                ),
                mpsc::error::TrySendError::Closed(_) => exited(),
            })?;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        // Whatever ends the wait (an answer, the timeout, the caller going
        // away), the request is no longer in flight; unless answered, the
        // server is told to stop working on it (`notifications/cancelled`).
        let mut guard = InFlight {
            id,
            orders: self.orders.clone(),
            count: Arc::clone(&self.in_flight),
            answered: false,
        };
        let out = match tokio::time::timeout(timeout, answer).await {
            Err(_) => Err(Failure::Timeout),
            Ok(Err(_)) => Err(exited()),
            Ok(Ok(r)) => r,
        };
        guard.answered = !matches!(out, Err(Failure::Timeout));
        out
    }
}

/// A request in flight (see [`Process::call`]).
struct InFlight {
    id: String,
    orders: mpsc::Sender<Order>,
    count: Arc<AtomicUsize>,
    answered: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        if !self.answered {
            let _ = self
                .orders
                .try_send(Order::Cancel(std::mem::take(&mut self.id)));
        }
    }
}

fn exited() -> Failure {
    Failure::Unreachable(
        "the stdio server exited or broke the protocol; it was stopped, and the next call starts it again".into(),
    )
}

fn line(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Owns the process: writes orders to its stdin (through a writer of its
/// own, so a server that does not read cannot stall its answers), routes
/// its answers, and stops it when it breaks the protocol, exits, or the
/// [`Process`] is dropped.
async fn supervise(
    mut child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::process::ChildStdout,
    mut orders: mpsc::Receiver<Order>,
    mut scrub: Option<Scrubber>,
) {
    let (to_stdin, lines) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(write_lines(stdin, lines));
    // Lines are read whole by a task of their own: a read cancelled by
    // another branch of the select below would lose what it had read.
    let (from_stdout, mut read) = mpsc::channel::<Vec<u8>>(16);
    let reader = tokio::spawn(read_lines(stdout, from_stdout));
    let mut pending: HashMap<String, Reply> = HashMap::new();
    loop {
        tokio::select! {
            order = orders.recv() => {
                let Some(order) = order else { break };
                let out = match order {
                    Order::Call { id, line, reply } => {
                        pending.insert(id, reply);
                        line
                    }
                    Order::Notify(line) => line,
                    Order::Cancel(id) => {
                        if pending.remove(&id).is_none() {
                            continue;
                        }
                        line(&json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                            "params": {"requestId": id, "reason": "the gateway stopped waiting"}}))
                    }
                };
                if to_stdin.try_send(out).is_err() {
                    break;
                }
            }
            raw = read.recv() => {
                let Some(raw) = raw else { break };
                let (bytes, reflected) = match scrub.as_mut().and_then(|s| s.scrub(&raw)) {
                    Some(clean) => (clean, true),
                    None => (raw, false),
                };
                match handle(&bytes, reflected, &mut pending) {
                    Handled::Done => {}
                    Handled::Answer(v) => {
                        if to_stdin.try_send(line(&v)).is_err() {
                            break;
                        }
                    }
                    Handled::Garbage => {
                        tracing::warn!("a stdio MCP server wrote something that is not JSON-RPC on stdout; it was stopped");
                        break;
                    }
                }
            }
        }
    }
    // Pending callers learn at once (their senders drop); the process and
    // whatever it started (its process group) go.
    drop(pending);
    writer.abort();
    reader.abort();
    stop(&mut child).await;
}

/// Kills the process's group (it was made the leader of its own), then
/// the process, and reaps it.
async fn stop(child: &mut tokio::process::Child) {
    #[cfg(unix)]
    if let Some(pid) = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(i32::try_from(id).ok()?))
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.start_kill();
    // A process the broker may not signal (another user, without the
    // capability) is not waited for forever.
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        tracing::warn!("a stdio MCP server did not exit when killed; it is left running");
    }
}

/// Reads whole lines (at most [`MAX_ANSWER`] bytes) into `out` until the
/// end, an over-long line, or the supervisor goes.
async fn read_lines(stdout: tokio::process::ChildStdout, out: mpsc::Sender<Vec<u8>>) {
    let mut r = BufReader::new(stdout);
    while let Ok(Some(l)) = read_line(&mut r, MAX_ANSWER).await {
        if out.send(l).await.is_err() {
            return;
        }
    }
}

/// What one line from the server was.
enum Handled {
    /// A response routed, or a notification ignored.
    Done,
    /// A request of the server's, and our answer to it.
    Answer(Value),
    /// Not a JSON-RPC message: the server breaks the protocol.
    Garbage,
}

fn handle(bytes: &[u8], reflected: bool, pending: &mut HashMap<String, Reply>) -> Handled {
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(bytes) else {
        return Handled::Garbage;
    };
    if m.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Handled::Garbage;
    }
    let m = Value::Object(m);
    match (m.get("id"), m.get("method").and_then(Value::as_str)) {
        (Some(id), Some(method)) => Handled::Answer(if method == "ping" {
            json!({"jsonrpc": "2.0", "id": id, "result": {}})
        } else {
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": mandate_core::mcp::jsonrpc::METHOD_NOT_FOUND,
                "message": "the gateway offers its MCP servers no methods"}})
        }),
        (None, Some(_)) => Handled::Done,
        (Some(Value::String(id)), None) => {
            if let Some(reply) = pending.remove(id) {
                let _ = reply.send(super::outcome(&m).map(|r| (r, reflected)));
            }
            Handled::Done
        }
        _ => Handled::Garbage,
    }
}

async fn write_lines(mut stdin: tokio::process::ChildStdin, mut lines: mpsc::Receiver<Vec<u8>>) {
    while let Some(l) = lines.recv().await {
        if stdin.write_all(&l).await.is_err() || stdin.flush().await.is_err() {
            return;
        }
    }
}

/// The next line (without its end), at most `max` bytes; `None` at the end.
/// A longer line is an error (the server breaks the protocol).
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok((!out.is_empty()).then_some(out));
        }
        let (take, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if out.len() + take > max + 1 {
            return Err(std::io::Error::other("a line longer than the limit"));
        }
        out.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            out.pop();
            if out.last() == Some(&b'\r') {
                out.pop();
            }
            return Ok(Some(out));
        }
    }
}

async fn drain_stderr(stderr: tokio::process::ChildStderr, mut scrub: Option<Scrubber>) {
    let mut r = BufReader::new(stderr);
    let mut buf = vec![0u8; 8 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Scrubbed as a stream: a key split across two reads is caught too.
        let shown = match scrub.as_mut() {
            Some(sc) => sc.push(&buf[..n]),
            None => buf[..n].to_vec(),
        };
        log_stderr(&shown);
    }
    if let Some(sc) = scrub.as_mut() {
        log_stderr(&sc.finish());
    }
}

fn log_stderr(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_LOG_LINE)]);
    tracing::debug!(target: "mandate::mcp_stdio", "{}", text.trim_end());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded() {
        let mut r = BufReader::new(&b"{\"a\":1}\r\nxyz\n0123456789\n"[..]);
        assert_eq!(read_line(&mut r, 16).await.unwrap().unwrap(), b"{\"a\":1}");
        assert_eq!(read_line(&mut r, 16).await.unwrap().unwrap(), b"xyz");
        assert!(read_line(&mut r, 4).await.is_err());
        let mut r = BufReader::new(&b"tail"[..]);
        assert_eq!(read_line(&mut r, 16).await.unwrap().unwrap(), b"tail");
        assert!(read_line(&mut r, 16).await.unwrap().is_none());
    }

    #[test]
    fn the_operators_file_is_checked() {
        let ok: Commands =
            serde_json::from_value(json!({"github": {"command": ["python3", "gh.py"],
            "secret_env": "GITHUB_TOKEN"}}))
            .unwrap();
        check("github", &ok["github"]).unwrap();
        assert_eq!(ok["github"].max_processes, 16);
        for (name, bad) in [
            ("GitHub", json!({"command": ["x"]})),
            ("x", json!({"command": []})),
            ("x", json!({"command": ["x"], "secret_env": "A=B"})),
            ("x", json!({"command": ["x"], "env": {"1X": "y"}})),
            ("x", json!({"command": ["x"], "max_processes": 0})),
            ("x", json!({"command": ["x"], "secret_env": "LD_PRELOAD"})),
            ("x", json!({"command": ["x"], "secret_env": "NODE_OPTIONS"})),
            (
                "x",
                json!({"command": ["x"], "secret_env": "PythonStartup"}),
            ),
            (
                "x",
                json!({"command": ["x"], "secret_env": "GIT_SSH_COMMAND"}),
            ),
            ("x", json!({"command": ["x"], "secret_env": "LUA_INIT"})),
            ("x", json!({"command": ["x"], "uid": 1000})),
            ("x", json!({"command": ["x"], "uid": 0, "gid": 0})),
        ] {
            let c: Command = serde_json::from_value(bad).unwrap();
            assert!(check(name, &c).is_err(), "{name}");
        }
        assert!(
            serde_json::from_value::<Command>(json!({"command": ["x"], "shell": true})).is_err()
        );
        let limited: Commands =
            serde_json::from_value(json!({"gh": {"command": ["x"], "tenants": ["acme"]}})).unwrap();
        assert!(command_for(&limited, "acme", "gh").is_ok());
        assert!(command_for(&limited, "other", "gh").is_err());
        assert!(
            command_for(&limited, "acme", "nope")
                .unwrap_err()
                .contains("gh")
        );
    }

    #[test]
    fn the_servers_lines_are_routed_or_refused() {
        let mut pending = HashMap::new();
        let (tx, mut rx) = oneshot::channel();
        pending.insert("mandate-1".to_owned(), tx);
        assert!(matches!(
            handle(b"not json", false, &mut pending),
            Handled::Garbage
        ));
        assert!(matches!(
            handle(b"[1]", false, &mut pending),
            Handled::Garbage
        ));
        assert!(matches!(
            handle(br#"{"id":"x","result":{}}"#, false, &mut pending),
            Handled::Garbage
        ));
        let Handled::Answer(a) = handle(
            br#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#,
            false,
            &mut pending,
        ) else {
            panic!()
        };
        assert_eq!(a["result"], json!({}));
        let Handled::Answer(a) = handle(
            br#"{"jsonrpc":"2.0","id":8,"method":"sampling/createMessage"}"#,
            false,
            &mut pending,
        ) else {
            panic!()
        };
        assert_eq!(a["error"]["code"], -32601);
        assert!(matches!(
            handle(
                br#"{"jsonrpc":"2.0","method":"notifications/message"}"#,
                false,
                &mut pending
            ),
            Handled::Done
        ));
        assert!(matches!(
            handle(
                br#"{"jsonrpc":"2.0","id":"mandate-1","result":{"ok":1}}"#,
                true,
                &mut pending
            ),
            Handled::Done
        ));
        let (v, reflected) = rx.try_recv().unwrap().unwrap();
        assert_eq!(v["ok"], 1);
        assert!(reflected);
    }
}
