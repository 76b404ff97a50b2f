//! `mandate`: run the broker, register tenants, agents, tools, grants and
//! policies, start runs, revoke, and read the audit trail.
#![forbid(unsafe_code)]

mod approvals;
mod client;
mod exec;
mod offline;
mod output;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use client::{CliError, Client, enc};
use output::{print_audit, print_table};

/// Mandate: identities and short-lived, scoped credentials for AI agents.
#[derive(Parser)]
#[command(name = "mandate", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Broker URL.
    #[arg(
        long,
        global = true,
        env = "MANDATE_URL",
        default_value = "http://127.0.0.1:8407"
    )]
    url: String,
    /// File holding the admin credential (the broker writes it on first start).
    #[arg(long, global = true, env = "MANDATE_ADMIN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Run the broker (embedded SQLite; creates keys and an admin credential on first start).
    Serve(ServeArgs),
    /// Tenants: isolation boundaries.
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Principals: the humans (or services) agents act for.
    #[command(subcommand)]
    Principal(PrincipalCmd),
    /// Agents: registered non-human identities.
    #[command(subcommand)]
    Agent(AgentCmd),
    /// Tools: downstream systems that receive credentials.
    #[command(subcommand)]
    Tool(ToolCmd),
    /// Grants: a principal's delegation to an agent.
    #[command(subcommand)]
    Grant(GrantCmd),
    /// Cedar policies of a tenant.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Runs: executions of an agent, each with its own mandate.
    #[command(subcommand)]
    Run(RunCmd),
    /// Revoke a credential, run, agent, principal, grant, tenant, or everything (the kill switch).
    Revoke(RevokeArgs),
    /// Run a command as an agent run: it gets short-lived credentials, never a static secret.
    Exec(ExecCli),
    /// Feed credentials: for tools' verifiers, read the revocation feed and nothing else.
    #[command(subcommand)]
    FeedToken(FeedTokenCmd),
    /// Look inside tokens, and narrow a mandate offline.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Holder keys (private JWK files) for offline attenuation.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Requests waiting for a human: list, show, approve, deny.
    #[command(subcommand)]
    Approvals(approvals::ApprovalsCmd),
    /// List and verify the audit trail.
    Audit(AuditArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "MANDATE_LISTEN", default_value = "127.0.0.1:8407")]
    listen: SocketAddr,
    /// Public base URL of the broker (the `iss` of its tokens; DPoP `htu` is checked against it).
    #[arg(long, env = "MANDATE_ISSUER")]
    issuer: Option<String>,
    /// Data directory (SQLite database).
    #[arg(long, env = "MANDATE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Master key file (0600; created on first start). MANDATE_MASTER_KEY (base64url, 32 bytes) takes precedence.
    #[arg(long, env = "MANDATE_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// SPIFFE trust domain for agent and run identities.
    #[arg(long, env = "MANDATE_TRUST_DOMAIN", default_value = "mandate.local")]
    trust_domain: String,
    /// Default mandate lifetime in seconds.
    #[arg(long, default_value_t = 900)]
    mandate_ttl: u64,
    /// Longest mandate lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    mandate_max_ttl: u64,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 65536)]
    max_body: usize,
    /// Largest request body the proxy forwards (bytes).
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    proxy_max_body: usize,
    /// Make new credential signing keys at start (the previous ones stay in
    /// the JWKS, so credentials they signed still verify).
    #[arg(long)]
    rotate_keys: bool,
    /// Refuse DPoP proofs older than this many seconds.
    #[arg(long, default_value_t = 60)]
    dpop_max_age: u64,
    /// Accept DPoP proofs dated up to this many seconds in the future (clock skew).
    #[arg(long, default_value_t = 5)]
    dpop_skew: u64,
    /// Require server-provided DPoP nonces (RFC 9449 §8): clients retry once
    /// with the nonce from the `DPoP-Nonce` header.
    #[arg(long)]
    dpop_nonce: bool,
    /// POST approval requests, decisions and alerts here (signed with RFC
    /// 9421 by the broker's key; check with mandate-verify's `verify_webhook`).
    #[arg(long, env = "MANDATE_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// How long an approval request can be decided, then used (seconds).
    #[arg(long, default_value_t = 600)]
    approval_ttl: u64,
    /// Alert when a run makes more exchange requests than this in a minute.
    #[arg(long, default_value_t = 120)]
    anomaly_rate: u64,
    /// Alert when a run is denied this many times in a minute.
    #[arg(long, default_value_t = 10)]
    anomaly_denials: u64,
    /// Alert when an agent gets a credential for a tool it never used.
    #[arg(long)]
    anomaly_new_tool: bool,
    /// Suspend a run when it raises an alert (an admin resumes or revokes it).
    #[arg(long)]
    suspend_on_anomaly: bool,
    /// How often DPoP nonces rotate, in seconds.
    #[arg(long, default_value_t = 60)]
    dpop_nonce_period: u64,
    /// Most live DPoP proofs (and RFC 9421 nonces) one key may hold; each
    /// is remembered for the proof age plus the skew, so this bounds one
    /// key's sustained request rate (10,000 ≈ 150 requests/s).
    #[arg(long, default_value_t = 10_000)]
    dpop_replay_per_key: usize,
    /// Close a connection whose request line and headers have not all
    /// arrived this many seconds after their first byte.
    #[arg(long, default_value_t = 10)]
    header_read_timeout: u64,
    /// Close a keep-alive connection idle (no request in flight, no byte
    /// received) for this many seconds.
    #[arg(long, default_value_t = 60)]
    idle_timeout: u64,
    /// Most connections open at once; more are answered 503 and closed.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Most connections open at once from one client address (IPv6: its /64).
    #[arg(long, default_value_t = 256)]
    max_connections_per_client: usize,
    /// Where signed audit checkpoints are written: outside the data
    /// directory (default: beside the master key, `audit.checkpoint`).
    #[arg(long, env = "MANDATE_AUDIT_CHECKPOINT_FILE")]
    audit_checkpoint_file: Option<PathBuf>,
    /// Sign a checkpoint after this many new audit events ...
    #[arg(long, default_value_t = 1000)]
    audit_checkpoint_every: u64,
    /// ... and at least this often, in seconds, while events come in (and at shutdown).
    #[arg(long, default_value_t = 10)]
    audit_checkpoint_secs: u64,
}

#[derive(Subcommand)]
enum TenantCmd {
    /// Create a tenant.
    Create {
        /// Name (a-z, 0-9, `.`, `_`, `-`).
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tenants.
    List,
}

#[derive(Subcommand)]
enum PrincipalCmd {
    /// Create a principal.
    Create {
        #[arg(long)]
        tenant: String,
        /// Id, e.g. an e-mail address.
        id: String,
        #[arg(long, default_value = "")]
        name: String,
        /// A group approval policies can name (`@approval("group:finance")`); repeat.
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// Make an approver credential for a principal: it decides approval
    /// requests and does nothing else. Shown once.
    ApproverToken {
        #[arg(long)]
        tenant: String,
        /// The principal's id.
        id: String,
        /// Write it to this new file (0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Lifetime (e.g. 7d, 12h; default 30d, at most 365d).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// List principals of a tenant.
    List {
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Subcommand)]
enum AgentCmd {
    /// Register an agent.
    Create {
        #[arg(long)]
        tenant: String,
        /// Name.
        name: String,
        /// Person or team accountable for it (mandatory).
        #[arg(long)]
        owner: String,
        /// What it is for.
        #[arg(long, default_value = "")]
        purpose: String,
        /// The most it may ever be granted, as `tool:action` (repeat; `*` allowed on either side).
        #[arg(long = "envelope", required = true)]
        envelope: Vec<String>,
    },
    /// List agents of a tenant.
    List {
        #[arg(long)]
        tenant: String,
    },
    /// A one-time, short-lived join token that starts one run of the agent
    /// (for `mandate exec --join-token-file` on an agent host, instead of the
    /// admin credential).
    JoinToken {
        #[arg(long)]
        tenant: String,
        /// Agent name.
        name: String,
        /// Lifetime (e.g. 10m, 1h; at most 24h).
        #[arg(long, default_value = "10m")]
        ttl: String,
        /// The run must act for this principal (with --grant).
        #[arg(long)]
        principal: Option<String>,
        /// The grant the run must use.
        #[arg(long)]
        grant: Option<String>,
        /// Write the token to this file (created 0600) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Args)]
#[command(
    after_help = "The child gets MANDATE_AGENT_SOCK (a 0600 Unix socket: GET /v1/identity, \
POST /v1/credentials {\"tool\",\"actions\"}, POST /v1/dpop {\"method\",\"url\",\"access_token\"}) \
and the environment variables each --tool's registration names (/v1/dpop makes no proof for \
the broker itself). It never sees the run key, the mandate or the admin credential's path; \
the wrapper is non-dumpable. Exit code and signals pass through; when the child exits, the \
run ends and its credentials are revoked, and if the wrapper is killed the broker ends the \
run within 10 s. A child running as root, or as the same user where PR_SET_DUMPABLE does not \
protect, can read the wrapper's memory: run agents as a separate user."
)]
struct ExecCli {
    #[arg(long, env = "MANDATE_TENANT")]
    tenant: String,
    /// The registered agent this run is of.
    #[arg(long)]
    agent: String,
    /// Act on this principal's behalf (needs --grant).
    #[arg(long = "on-behalf-of")]
    on_behalf_of: Option<String>,
    /// The principal's grant to the agent.
    #[arg(long)]
    grant: Option<String>,
    /// What the run is for (recorded with every credential).
    #[arg(long)]
    task: Option<String>,
    /// Start the run with this one-time join token (from `mandate agent join-token`)
    /// instead of the admin credential; the file is read once and may be deleted after.
    #[arg(long, env = "MANDATE_JOIN_TOKEN_FILE")]
    join_token_file: Option<PathBuf>,
    /// A tool the command uses; its registration's environment variables are set (repeat).
    #[arg(long = "tool")]
    tools: Vec<String>,
    /// Mandate lifetime in seconds (the broker's default when unset).
    #[arg(long)]
    ttl: Option<u64>,
    /// Print nothing of its own on stderr.
    #[arg(long, short)]
    quiet: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum ToolCmd {
    /// Register a tool.
    #[command(
        after_help = "Providers: `jwt` (default; DPoP-bound JWTs for tools that verify them), \
`proxy` (the broker's proxy injects a stored key: --upstream, --route, --inject-header, --inject-format), \
`postgres` (a database role per credential: --pg-host, --pg-port, --pg-database, --pg-role). \
Or give the provider's settings as JSON with --config FILE ({\"proxy\": ...} or {\"postgres\": ...}, and \"env\")."
    )]
    Create {
        #[arg(long)]
        tenant: String,
        /// Name.
        name: String,
        /// Audience URI (the credential's `aud`); `jwt` tools only.
        #[arg(long)]
        audience: Option<String>,
        /// Credential provider: jwt, proxy or postgres.
        #[arg(long, default_value = "jwt")]
        provider: String,
        /// JSON file with `proxy` or `postgres` settings and `env`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// proxy: the upstream base URL.
        #[arg(long)]
        upstream: Option<String>,
        /// proxy: `METHOD /path/pattern=action` (`*` one segment, final `**` the rest; repeat);
        /// add ` amount=json:/pointer` or ` amount=form:field` where the request carries an amount.
        #[arg(long = "route")]
        routes: Vec<String>,
        /// proxy: the header the upstream key goes in.
        #[arg(long, default_value = "Authorization")]
        inject_header: String,
        /// proxy: its value, with {secret} for the key.
        #[arg(long, default_value = "Bearer {secret}")]
        inject_format: String,
        /// proxy: longest wait for the upstream (ms).
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u64,
        /// postgres: host agents connect to.
        #[arg(long)]
        pg_host: Option<String>,
        /// postgres: port.
        #[arg(long, default_value_t = 5432)]
        pg_port: u16,
        /// postgres: database.
        #[arg(long)]
        pg_database: Option<String>,
        /// postgres: `action=role`: a credential for the action joins the role (repeat).
        #[arg(long = "pg-role")]
        pg_roles: Vec<String>,
        /// `NAME=template` set by `mandate exec` ({credential}, {proxy_url}, {audience}, {broker}; repeat).
        #[arg(long = "env")]
        env: Vec<String>,
        /// An action the tool understands (repeat).
        #[arg(long = "action", required = true)]
        actions: Vec<String>,
        /// A data label such as pii, external_send, money (repeat).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// low, medium, high or critical.
        #[arg(long, default_value = "low")]
        risk: String,
        /// Longest credential lifetime in seconds.
        #[arg(long, default_value_t = 300)]
        max_ttl: u64,
        /// Credential signature algorithm: EdDSA or ES256.
        #[arg(long, default_value = "EdDSA")]
        alg: String,
    },
    /// List tools of a tenant.
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Store a tool's upstream key (proxy) or admin connection string
    /// (postgres): read from stdin or --file, never echoed, sealed at rest,
    /// never returned by any API.
    SetSecret {
        #[arg(long)]
        tenant: String,
        /// Tool name.
        name: String,
        /// Read the secret from this file instead of stdin.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum FeedTokenCmd {
    /// A new feed credential (shown once; the broker keeps its hash).
    Create {
        /// Write it to this file (created 0600) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Limit it to this tenant's revocations (and the kill switch); the
        /// others' appear only as placeholders.
        #[arg(long)]
        tenant: Option<String>,
        /// Lifetime (e.g. 30d, 24h; default 90d, at most 365d).
        #[arg(long)]
        ttl: Option<String>,
    },
}

#[derive(Subcommand)]
enum GrantCmd {
    /// A principal delegates capabilities to an agent for a task.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        principal: String,
        #[arg(long)]
        agent: String,
        /// A capability `tool:action` (repeat).
        #[arg(long = "cap", required = true)]
        caps: Vec<String>,
        #[arg(long)]
        task: String,
        /// Lifetime in seconds (default one day).
        #[arg(long)]
        expires_in: Option<u64>,
    },
    /// List grants of a tenant.
    List {
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Load a Cedar policy file (validated against the Mandate schema).
    Add {
        #[arg(long)]
        tenant: String,
        /// The .cedar file.
        file: PathBuf,
        /// Set name (default: the file's stem).
        #[arg(long)]
        name: Option<String>,
    },
    /// List policy sets of a tenant.
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Remove a policy set.
    Remove {
        #[arg(long)]
        tenant: String,
        name: String,
    },
}

#[derive(Subcommand)]
enum RunCmd {
    /// Start a run and print its mandate.
    Start {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        agent: String,
        /// Act on behalf of this principal (needs --grant).
        #[arg(long)]
        principal: Option<String>,
        #[arg(long)]
        grant: Option<String>,
        #[arg(long)]
        task: Option<String>,
        /// Mandate lifetime in seconds.
        #[arg(long)]
        ttl: Option<u64>,
        /// The run's public key as a JWK: a file path, or the JSON itself.
        #[arg(long)]
        jwk: String,
    },
    /// List runs.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        agent: Option<String>,
    },
    /// End a run: its mandate and credentials are refused from now on.
    End { id: String },
    /// Report an eval gate's result for a run (policies see passing gates
    /// as `context.history.evals_passed`).
    Eval {
        id: String,
        /// The gate's name, e.g. `regression`.
        name: String,
        /// It passed.
        #[arg(long, conflicts_with = "fail", required_unless_present = "fail")]
        pass: bool,
        /// It failed (withdraws an earlier pass).
        #[arg(long)]
        fail: bool,
        #[arg(long)]
        score: Option<f64>,
    },
    /// Suspend a run: its exchanges wait until it is resumed or revoked.
    Suspend {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume a suspended run.
    Resume { id: String },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Show what a mandate or credential says (broker → agent → run, principal,
    /// capabilities, expiry, key binding) and whether it verifies now.
    Inspect {
        /// The token, or `-` to read it from standard input.
        token: String,
    },
    /// Narrow a mandate without calling the broker, and optionally hand it to
    /// another key (a sub-agent): appends a Biscuit block signed by the key
    /// that holds it now. Prints the new mandate. Needs no broker.
    Attenuate(offline::Attenuate),
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Make a key pair; writes the private JWK to a new 0600 file and prints
    /// the public JWK and its RFC 7638 thumbprint (what `--to` names).
    Generate(offline::KeyGenerate),
    /// Sign an HTTP request with a key (RFC 9421, with Content-Digest and
    /// Signature-Key); prints the headers to add, as `Name: value` lines or
    /// a JSON object with --json.
    SignRequest(offline::SignRequest),
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["credential", "token", "run", "agent", "principal", "grant", "tenant_only", "all", "everything"])))]
struct RevokeArgs {
    /// A credential, by its `jti`.
    #[arg(long)]
    credential: Option<String>,
    /// A credential, by the token itself.
    #[arg(long)]
    token: Option<String>,
    /// A run.
    #[arg(long)]
    run: Option<String>,
    /// An agent (with --tenant).
    #[arg(long)]
    agent: Option<String>,
    /// A principal (with --tenant).
    #[arg(long)]
    principal: Option<String>,
    /// A grant.
    #[arg(long)]
    grant: Option<String>,
    /// The tenant of --agent or --principal (and of --credential: then only
    /// that tenant's feed shows it).
    #[arg(long)]
    tenant: Option<String>,
    /// A whole tenant: everything under it is refused.
    #[arg(long = "whole-tenant", id = "tenant_only")]
    tenant_only: Option<String>,
    /// With --tenant: the whole tenant (same as --whole-tenant).
    #[arg(long, requires = "tenant")]
    all: bool,
    /// The kill switch: every mandate and credential of every tenant and
    /// provider issued until now (runs started afterwards work). Asks to
    /// confirm unless --yes.
    #[arg(long)]
    everything: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
    /// Why (recorded in the audit trail).
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct AuditArgs {
    #[command(subcommand)]
    verify: Option<AuditSub>,
    #[arg(long)]
    tenant: Option<String>,
    #[arg(long)]
    agent: Option<String>,
    #[arg(long)]
    run: Option<String>,
    #[arg(long)]
    principal: Option<String>,
    #[arg(long)]
    tool: Option<String>,
    /// allow, deny or ok.
    #[arg(long)]
    decision: Option<String>,
    /// Event type, e.g. token.exchange.
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Only events newer than this: 30s, 15m, 24h, 7d.
    #[arg(long)]
    since: Option<String>,
    /// Most events to show.
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

#[derive(Subcommand)]
enum AuditSub {
    /// Recompute the hash chain, check every stored column against the
    /// hashed events and the trail against the broker's latest signed
    /// checkpoint (and --checkpoint), and name the first event that does not fit.
    Verify {
        /// Also check against this checkpoint, exported earlier with
        /// `mandate audit checkpoint` and kept elsewhere (its JWS, or the
        /// JSON `--json audit checkpoint` printed).
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
    },
    /// Print a signed checkpoint of the trail's head (a JWS the broker's
    /// JWKS verifies), to keep outside the broker.
    Checkpoint {
        /// Write it to this new file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

const TOOL_COLS: &[&str] = &[
    "name",
    "provider",
    "audience",
    "actions",
    "labels",
    "risk",
    "max_ttl_secs",
];
const GRANT_COLS: &[&str] = &[
    "id",
    "principal",
    "agent",
    "capabilities",
    "task",
    "expires_at",
];

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn config_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MANDATE_CONFIG_DIR") {
        return PathBuf::from(d);
    }
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".config"))
        .join("mandate")
}

fn data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".local/share"))
        .join("mandate")
}

pub(crate) fn parse_duration(s: &str) -> Result<u64, CliError> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| {
        CliError(format!(
            "`{s}` is not a duration; use e.g. 30s, 15m, 24h, 7d"
        ))
    })?;
    let mult = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => {
            return Err(CliError(format!(
                "`{s}` has an unknown unit; use s, m, h or d"
            )));
        }
    };
    Ok(n * mult)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", output::safe(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files toward the hard one, so that the
/// connection limit is reached before the descriptor limit (which would
/// make every accept fail); warns when the hard limit is lower.
fn raise_descriptor_limit(max_connections: usize) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // Connections, plus the database, logs and upstream connections.
    let want = max_connections as u64 + 256;
    let cur = getrlimit(Resource::Nofile);
    let have = cur.current.unwrap_or(u64::MAX);
    if have >= want {
        return;
    }
    let target = cur.maximum.map_or(want, |m| m.min(want));
    if target > have {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: cur.maximum,
            },
        );
    }
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    if now < want {
        tracing::warn!(
            "open files are limited to {now}; --max-connections {max_connections} needs about {want} (raise `ulimit -n` or lower --max-connections)"
        );
    }
}

/// `mandate serve`; `token_file` is the global `--token-file` (or
/// `MANDATE_ADMIN_TOKEN_FILE`): where the bootstrap admin credential is written.
fn serve(a: ServeArgs, token_file: Option<PathBuf>) -> Result<(), CliError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cfg_dir = config_dir();
    let mut cfg =
        mandate_server::Config::new(a.listen, a.data_dir.unwrap_or_else(data_dir), &cfg_dir);
    if let Some(i) = a.issuer {
        cfg.issuer = i.trim_end_matches('/').to_owned();
    }
    if let Ok(k) = std::env::var("MANDATE_MASTER_KEY") {
        cfg.master_key = mandate_server::config::MasterKeySource::Env(
            mandate_core::secret::Secret::new(k.into_bytes()),
        );
    } else if let Some(f) = a.master_key_file {
        cfg.master_key = mandate_server::config::MasterKeySource::File(f);
    }
    if let Some(f) = token_file {
        cfg.admin_token_file = f;
    }
    cfg.trust_domain = a.trust_domain;
    cfg.mandate_ttl = a.mandate_ttl;
    cfg.mandate_max_ttl = a.mandate_max_ttl;
    cfg.max_body = a.max_body;
    cfg.proxy_max_body = a.proxy_max_body;
    cfg.rotate_keys = a.rotate_keys;
    cfg.dpop_max_age = a.dpop_max_age;
    cfg.dpop_max_skew = a.dpop_skew;
    cfg.dpop_nonce = a.dpop_nonce;
    cfg.dpop_nonce_period = a.dpop_nonce_period;
    if let Some(u) = a.webhook_url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(CliError("--webhook-url must be an http(s) URL".into()));
        }
        cfg.webhook_url = Some(u);
    }
    cfg.approval_ttl = a.approval_ttl;
    cfg.anomaly_rate_1m = a.anomaly_rate;
    cfg.anomaly_denials_1m = a.anomaly_denials;
    cfg.anomaly_new_tool = a.anomaly_new_tool;
    cfg.suspend_on_anomaly = a.suspend_on_anomaly;
    cfg.dpop_replay_per_key = a.dpop_replay_per_key.max(1);
    if a.header_read_timeout == 0 || a.idle_timeout == 0 || a.max_connections == 0 {
        return Err(CliError(
            "--header-read-timeout, --idle-timeout and --max-connections must be at least 1".into(),
        ));
    }
    raise_descriptor_limit(a.max_connections);
    cfg.connections = mandate_server::listen::Limits {
        header_read_timeout: std::time::Duration::from_secs(a.header_read_timeout),
        idle_timeout: std::time::Duration::from_secs(a.idle_timeout),
        max_connections: a.max_connections,
        max_connections_per_client: a.max_connections_per_client.max(1),
    };
    if let Some(f) = a.audit_checkpoint_file {
        cfg.audit_checkpoint_file = f;
    }
    cfg.audit_checkpoint_every = a.audit_checkpoint_every;
    cfg.audit_checkpoint_secs = a.audit_checkpoint_secs;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError(format!("cannot start the runtime: {e}")))?;
    rt.block_on(mandate_server::serve(cfg, async {
        // Stop on Ctrl-C or SIGTERM (systemd, kill): queued audit writes commit first.
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        tracing::info!("shutting down");
    }))
    .map_err(|e| CliError(e.to_string()))
}

/// Prints a newly made credential, or writes it to a new 0600 file.
fn emit_token(j: bool, v: &Value, out: Option<PathBuf>, cols: &[&str]) -> Result<(), CliError> {
    let token = v["token"].as_str().unwrap_or_default();
    match out {
        Some(path) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| CliError(format!("cannot create {}: {e}", path.display())))?;
            writeln!(f, "{token}")
                .map_err(|e| CliError(format!("cannot write {}: {e}", path.display())))?;
            let mut shown = v.clone();
            shown["token"] = json!(format!("(written to {})", path.display()));
            show(j, &shown, cols);
        }
        None if j => show(j, v, &[]),
        None => println!("{token}"),
    }
    Ok(())
}

/// `POST /emails=send` → a route; `POST /payments=pay amount=json:/amount`
/// (or `amount=form:amount`) names where the request carries its amount.
fn parse_route(r: &str) -> Result<Value, CliError> {
    let bad = || {
        CliError(format!(
            "--route `{r}`: write it as `METHOD /path=action`, optionally followed by ` amount=json:/pointer` or ` amount=form:field`"
        ))
    };
    let (route, amount) = match r.split_once(" amount=") {
        Some((route, at)) => {
            let at = match at.trim().split_once(':') {
                Some(("json", p)) => json!({"json": p}),
                Some(("form", f)) => json!({"form": f}),
                _ => return Err(bad()),
            };
            (route, Some(at))
        }
        None => (r, None),
    };
    let (lhs, action) = route.rsplit_once('=').ok_or_else(bad)?;
    let (method, path) = lhs.trim().split_once(' ').ok_or_else(bad)?;
    let mut v = json!({"method": method.trim(), "path": path.trim(), "action": action.trim()});
    if let Some(at) = amount {
        v["amount"] = at;
    }
    Ok(v)
}

/// `mandate audit verify [--checkpoint FILE]`.
fn audit_verify(c: &Client, j: bool, checkpoint: Option<PathBuf>) -> Result<(), CliError> {
    let v = match checkpoint {
        None => c.get("/v1/audit/verify")?,
        Some(f) => {
            let text = std::fs::read_to_string(&f)
                .map_err(|e| CliError(format!("cannot read {}: {e}", f.display())))?;
            // The JWS, or the JSON `mandate --json audit checkpoint` printed.
            let jws = match serde_json::from_str::<Value>(&text) {
                Ok(v) => v["checkpoint"].as_str().unwrap_or_default().to_owned(),
                Err(_) => text.trim().to_owned(),
            };
            c.post("/v1/audit/verify", &json!({"checkpoint": jws}))?
        }
    };
    if j {
        show(j, &v, &[]);
    } else {
        output::print_verify(&v);
    }
    if v["ok"].as_bool() != Some(true) {
        return Err(CliError("the audit trail does not verify".into()));
    }
    Ok(())
}

/// Prints a checkpoint's JWS (or all of it with --json), or writes it to a new file.
fn emit_checkpoint(j: bool, v: &Value, out: Option<PathBuf>) -> Result<(), CliError> {
    let jws = v["checkpoint"].as_str().unwrap_or_default();
    if let Some(e) = v["file_error"].as_str() {
        eprintln!("warning: {}", output::safe(e));
    }
    match out {
        Some(path) => {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| CliError(format!("cannot create {}: {e}", path.display())))?;
            writeln!(f, "{jws}")
                .map_err(|e| CliError(format!("cannot write {}: {e}", path.display())))?;
            eprintln!(
                "checkpoint of event {} written to {}",
                output::cell(&v["seq"]),
                path.display()
            );
        }
        None if j => show(j, v, &[]),
        None => println!("{}", output::safe(jws)),
    }
    Ok(())
}

pub(crate) fn show(json_out: bool, v: &Value, cols: &[&str]) {
    if json_out {
        println!("{}", output::json_text(v));
    } else {
        print_table(v, cols);
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    let token_file = cli
        .token_file
        .clone()
        .or_else(|| Some(config_dir().join("admin.token")));
    let c = || Client::new(cli.url.clone(), token_file.clone());
    let j = cli.json;
    match cli.cmd {
        Cmd::Serve(a) => serve(a, cli.token_file.clone())?,
        Cmd::Tenant(TenantCmd::Create { name, description }) => {
            let v = c().post(
                "/v1/tenants",
                &json!({"name": name, "description": description}),
            )?;
            show(j, &v, &["name", "description"]);
        }
        Cmd::Tenant(TenantCmd::List) => show(j, &c().get("/v1/tenants")?, &["name", "description"]),
        Cmd::Principal(PrincipalCmd::Create {
            tenant,
            id,
            name,
            groups,
        }) => {
            let v = c().post(
                &format!("/v1/tenants/{}/principals", enc(&tenant)),
                &json!({"id": id, "display_name": name, "groups": groups}),
            )?;
            show(j, &v, &["tenant", "id", "display_name", "groups"]);
        }
        Cmd::Principal(PrincipalCmd::ApproverToken {
            tenant,
            id,
            out,
            ttl,
        }) => {
            let v = c().post(
                &format!(
                    "/v1/tenants/{}/principals/{}/approver-tokens",
                    enc(&tenant),
                    enc(&id)
                ),
                &json!({"ttl_secs": ttl.as_deref().map(parse_duration).transpose()?}),
            )?;
            emit_token(
                j,
                &v,
                out,
                &["id", "tenant", "principal", "expires_at", "token"],
            )?;
        }
        Cmd::Approvals(a) => approvals::run(a, &cli.url, c, j)?,
        Cmd::Run(RunCmd::Eval {
            id,
            name,
            pass,
            fail: _,
            score,
        }) => {
            let v = c().post(
                &format!("/v1/runs/{}/evals", enc(&id)),
                &json!({"name": name, "passed": pass, "score": score}),
            )?;
            show(j, &v, &["run", "eval", "passed"]);
        }
        Cmd::Run(RunCmd::Suspend { id, reason }) => {
            let v = c().post(
                &format!("/v1/runs/{}/suspend", enc(&id)),
                &json!({"reason": reason}),
            )?;
            show(j, &v, &["run", "suspended"]);
        }
        Cmd::Run(RunCmd::Resume { id }) => {
            let v = c().post(&format!("/v1/runs/{}/resume", enc(&id)), &json!({}))?;
            show(j, &v, &["run", "suspended"]);
        }
        Cmd::Principal(PrincipalCmd::List { tenant }) => show(
            j,
            &c().get(&format!("/v1/tenants/{}/principals", enc(&tenant)))?,
            &["id", "display_name"],
        ),
        Cmd::Agent(AgentCmd::Create {
            tenant,
            name,
            owner,
            purpose,
            envelope,
        }) => {
            let v = c().post(
                &format!("/v1/tenants/{}/agents", enc(&tenant)),
                &json!({"name": name, "owner": owner, "purpose": purpose, "envelope": envelope}),
            )?;
            show(j, &v, &["name", "owner", "spiffe_id", "envelope"]);
        }
        Cmd::Agent(AgentCmd::List { tenant }) => show(
            j,
            &c().get(&format!("/v1/tenants/{}/agents", enc(&tenant)))?,
            &["name", "owner", "purpose", "envelope"],
        ),
        Cmd::Tool(ToolCmd::Create {
            tenant,
            name,
            audience,
            provider,
            config,
            upstream,
            routes,
            inject_header,
            inject_format,
            timeout_ms,
            pg_host,
            pg_port,
            pg_database,
            pg_roles,
            env,
            actions,
            labels,
            risk,
            max_ttl,
            alg,
        }) => {
            let mut body = json!({"name": name, "audience": audience, "actions": actions, "labels": labels,
                        "risk": risk, "max_ttl_secs": max_ttl, "alg": alg, "provider": provider});
            if let Some(f) = config {
                let text = std::fs::read_to_string(&f)
                    .map_err(|e| CliError(format!("cannot read {}: {e}", f.display())))?;
                let extra: Value = serde_json::from_str(&text)
                    .map_err(|e| CliError(format!("{} is not JSON: {e}", f.display())))?;
                let Value::Object(extra) = extra else {
                    return Err(CliError(format!("{} must hold a JSON object", f.display())));
                };
                for (k, v) in extra {
                    body[k] = v;
                }
            }
            if let Some(u) = upstream {
                let routes = routes
                    .iter()
                    .map(|r| parse_route(r))
                    .collect::<Result<Vec<_>, _>>()?;
                body["proxy"] = json!({"upstream": u, "routes": routes, "timeout_ms": timeout_ms,
                    "inject": {"header": inject_header, "format": inject_format}});
            }
            if let Some(db) = pg_database {
                let mut roles = serde_json::Map::new();
                for r in &pg_roles {
                    let (a, role) = r.split_once('=').ok_or_else(|| {
                        CliError(format!("--pg-role `{r}`: write it as action=role"))
                    })?;
                    roles.insert(a.to_owned(), json!(role));
                }
                body["postgres"] = json!({"host": pg_host.unwrap_or_else(|| "127.0.0.1".into()),
                    "port": pg_port, "database": db, "roles": roles});
            }
            if !env.is_empty() {
                let vars = env
                    .iter()
                    .map(|e| {
                        e.split_once('=')
                            .map(|(n, v)| json!({"name": n, "value": v}))
                            .ok_or_else(|| {
                                CliError(format!("--env `{e}`: write it as NAME=template"))
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                body["env"] = json!(vars);
            }
            if let Some(o) = body.as_object_mut() {
                o.retain(|_, v| !v.is_null());
            }
            let v = c().post(&format!("/v1/tenants/{}/tools", enc(&tenant)), &body)?;
            show(j, &v, TOOL_COLS);
        }
        Cmd::Tool(ToolCmd::SetSecret { tenant, name, file }) => {
            let secret = match file {
                Some(f) => std::fs::read_to_string(&f)
                    .map_err(|e| CliError(format!("cannot read {}: {e}", f.display())))?,
                None => {
                    use std::io::{IsTerminal, Read};
                    if std::io::stdin().is_terminal() {
                        eprintln!(
                            "paste the secret, then press Enter and Ctrl-D (it is not shown):"
                        );
                    }
                    let mut s = String::new();
                    std::io::stdin()
                        .read_to_string(&mut s)
                        .map_err(|e| CliError(format!("cannot read stdin: {e}")))?;
                    s
                }
            };
            let v = c().put_text(
                &format!("/v1/tenants/{}/tools/{}/secret", enc(&tenant), enc(&name)),
                &secret,
            )?;
            show(j, &v, &["tenant", "tool", "secret_set"]);
        }
        Cmd::Agent(AgentCmd::JoinToken {
            tenant,
            name,
            ttl,
            principal,
            grant,
            out,
        }) => {
            let v = c().post(
                &format!(
                    "/v1/tenants/{}/agents/{}/join-tokens",
                    enc(&tenant),
                    enc(&name)
                ),
                &json!({"ttl_secs": parse_duration(&ttl)?, "principal": principal, "grant": grant}),
            )?;
            emit_token(j, &v, out, &["id", "agent", "expires_at", "token"])?;
        }
        Cmd::FeedToken(FeedTokenCmd::Create { out, tenant, ttl }) => {
            let v = c().post(
                "/v1/feed-tokens",
                &json!({"tenant": tenant, "ttl_secs": ttl.as_deref().map(parse_duration).transpose()?}),
            )?;
            emit_token(j, &v, out, &["id", "tenant", "expires_at", "token"])?;
        }
        Cmd::Exec(a) => {
            // Before any credential is read, and before the child exists.
            exec::harden()?;
            let starter = match &a.join_token_file {
                Some(f) => {
                    let t = std::fs::read_to_string(f)
                        .map_err(|e| CliError(format!("cannot read {}: {e}", f.display())))?;
                    Client::with_token(cli.url.clone(), t.trim().to_owned())
                }
                None => c(),
            };
            let code = exec::exec(
                starter,
                &cli.url,
                exec::ExecArgs {
                    tenant: a.tenant,
                    agent: a.agent,
                    principal: a.on_behalf_of,
                    grant: a.grant,
                    task: a.task,
                    tools: a.tools,
                    ttl: a.ttl,
                    quiet: a.quiet,
                    command: a.command,
                },
            )?;
            std::process::exit(i32::from(code));
        }
        Cmd::Tool(ToolCmd::List { tenant }) => show(
            j,
            &c().get(&format!("/v1/tenants/{}/tools", enc(&tenant)))?,
            TOOL_COLS,
        ),
        Cmd::Grant(GrantCmd::Create {
            tenant,
            principal,
            agent,
            caps,
            task,
            expires_in,
        }) => {
            let v = c().post(
                &format!("/v1/tenants/{}/grants", enc(&tenant)),
                &json!({"principal": principal, "agent": agent, "capabilities": caps, "task": task, "expires_in_secs": expires_in}),
            )?;
            show(j, &v, GRANT_COLS);
        }
        Cmd::Grant(GrantCmd::List { tenant }) => show(
            j,
            &c().get(&format!("/v1/tenants/{}/grants", enc(&tenant)))?,
            GRANT_COLS,
        ),
        Cmd::Policy(PolicyCmd::Add { tenant, file, name }) => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| CliError(format!("cannot read {}: {e}", file.display())))?;
            let name = name.unwrap_or_else(|| {
                file.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            let v = c().put_text(
                &format!("/v1/tenants/{}/policies/{}", enc(&tenant), enc(&name)),
                &text,
            )?;
            if j {
                show(j, &v, &[]);
            } else {
                let ids: Vec<&str> = v["policies"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|p| p["id"].as_str()).collect())
                    .unwrap_or_default();
                println!(
                    "loaded policy set `{name}` into tenant `{tenant}`: {}",
                    ids.join(", ")
                );
            }
        }
        Cmd::Policy(PolicyCmd::List { tenant }) => {
            let v = c().get(&format!("/v1/tenants/{}/policies", enc(&tenant)))?;
            if j {
                show(j, &v, &[]);
            } else {
                for set in v.as_array().into_iter().flatten() {
                    for p in set["policies"].as_array().into_iter().flatten() {
                        println!(
                            "// {}\n{}\n",
                            p["id"].as_str().unwrap_or(""),
                            p["text"].as_str().unwrap_or("")
                        );
                    }
                }
            }
        }
        Cmd::Policy(PolicyCmd::Remove { tenant, name }) => {
            c().delete(&format!(
                "/v1/tenants/{}/policies/{}",
                enc(&tenant),
                enc(&name)
            ))?;
            if !j {
                println!("removed policy set `{name}` from tenant `{tenant}`");
            }
        }
        Cmd::Run(RunCmd::Start {
            tenant,
            agent,
            principal,
            grant,
            task,
            ttl,
            jwk,
        }) => {
            let text = if jwk.trim_start().starts_with('{') {
                jwk
            } else {
                std::fs::read_to_string(&jwk)
                    .map_err(|e| CliError(format!("cannot read JWK file {jwk}: {e}")))?
            };
            let jwk: Value = serde_json::from_str(&text)
                .map_err(|e| CliError(format!("the JWK is not JSON: {e}")))?;
            let v = c().post(
                "/v1/runs",
                &json!({"tenant": tenant, "agent": agent, "principal": principal, "grant": grant,
                        "task": task, "ttl_secs": ttl, "jwk": jwk}),
            )?;
            if j {
                show(j, &v, &[]);
            } else {
                println!("run        {}", v["run"].as_str().unwrap_or(""));
                println!("identity   {}", v["run_id"].as_str().unwrap_or(""));
                println!(
                    "expires at {}",
                    output::time_s(v["expires_at"].as_u64().unwrap_or(0))
                );
                println!("capabilities {}", output::cell(&v["capabilities"]));
                println!(
                    "mandate (give it only to the run; it is bound to the run's key):\n{}",
                    v["mandate"].as_str().unwrap_or("")
                );
            }
        }
        Cmd::Run(RunCmd::List { tenant, agent }) => {
            let mut q = String::from("/v1/runs?limit=100");
            if let Some(t) = tenant {
                q.push_str(&format!("&tenant={}", enc(&t)));
            }
            if let Some(a) = agent {
                q.push_str(&format!("&agent={}", enc(&a)));
            }
            show(
                j,
                &c().get(&q)?,
                &[
                    "id",
                    "tenant",
                    "agent",
                    "principal",
                    "task",
                    "expires_at",
                    "ended_ms",
                ],
            );
        }
        Cmd::Run(RunCmd::End { id }) => {
            let v = c().post(&format!("/v1/runs/{}/end", enc(&id)), &json!({}))?;
            if j {
                show(j, &v, &[]);
            } else {
                println!("run {id} ended; its mandate and credentials are refused from now on");
            }
        }
        Cmd::Revoke(r) => {
            let body = if let Some(id) = r.credential {
                json!({"kind": "credential", "id": id, "tenant": r.tenant})
            } else if let Some(t) = r.token {
                json!({"kind": "credential", "token": t})
            } else if let Some(id) = r.run {
                json!({"kind": "run", "id": id})
            } else if let Some(id) = r.agent {
                let t = r
                    .tenant
                    .ok_or_else(|| CliError("--agent needs --tenant".into()))?;
                json!({"kind": "agent", "tenant": t, "id": id})
            } else if let Some(id) = r.principal {
                let t = r
                    .tenant
                    .ok_or_else(|| CliError("--principal needs --tenant".into()))?;
                json!({"kind": "principal", "tenant": t, "id": id})
            } else if let Some(id) = r.grant {
                json!({"kind": "grant", "id": id})
            } else if let Some(t) = r.tenant_only.or(if r.all { r.tenant } else { None }) {
                json!({"kind": "tenant", "id": t})
            } else if r.everything {
                if !r.yes {
                    use std::io::{BufRead, IsTerminal, Write};
                    if !std::io::stdin().is_terminal() {
                        return Err(CliError(
                            "`--everything` revokes every credential of every tenant: add --yes to confirm".into(),
                        ));
                    }
                    eprint!(
                        "This revokes every mandate and credential of every tenant. Type `everything` to confirm: "
                    );
                    let _ = std::io::stderr().flush();
                    let mut line = String::new();
                    let _ = std::io::stdin().lock().read_line(&mut line);
                    if line.trim() != "everything" {
                        return Err(CliError("not confirmed; nothing was revoked".into()));
                    }
                }
                json!({"kind": "everything"})
            } else {
                return Err(CliError(
                    "say what to revoke (see `mandate revoke --help`)".into(),
                ));
            };
            let mut body = body;
            if let Some(reason) = r.reason {
                body["reason"] = json!(reason);
            }
            let v = c().post("/v1/revocations", &body)?;
            if j {
                show(j, &v, &[]);
            } else {
                println!(
                    "revoked {}: refused from now on",
                    v["revoked"].as_str().unwrap_or("")
                );
            }
        }
        Cmd::Key(KeyCmd::SignRequest(a)) => {
            let v = offline::sign_request(a, exec::now())?;
            if j {
                show(j, &v, &[]);
            } else if let Some(o) = v.as_object() {
                for (k, v) in o {
                    println!("{k}: {}", v.as_str().unwrap_or_default());
                }
            }
        }
        Cmd::Key(KeyCmd::Generate(a)) => {
            let v = offline::key_generate(a)?;
            show(j, &v, &["file", "alg", "jkt"]);
        }
        Cmd::Token(TokenCmd::Attenuate(a)) => {
            let v = offline::attenuate_cmd(a, exec::now())?;
            if j {
                show(j, &v, &[]);
            } else {
                println!("{}", v["mandate"].as_str().unwrap_or_default());
            }
        }
        Cmd::Token(TokenCmd::Inspect { token }) => {
            let token = if token == "-" {
                let mut t = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut t).map_err(|e| {
                    CliError(format!("cannot read the token from standard input: {e}"))
                })?;
                t.trim().to_owned()
            } else {
                token
            };
            let v = c().post("/v1/tokens/inspect", &json!({"token": token}))?;
            if j {
                show(j, &v, &[]);
            } else {
                output::print_inspection(&v);
            }
            if !v["verifies"].as_bool().unwrap_or(false) {
                return Err(CliError(format!(
                    "the token does not verify: {}",
                    v["reason"].as_str().unwrap_or("unknown reason")
                )));
            }
        }
        Cmd::Audit(a) => {
            match a.verify {
                Some(AuditSub::Verify { checkpoint }) => return audit_verify(&c(), j, checkpoint),
                Some(AuditSub::Checkpoint { out }) => {
                    let v = c().get("/v1/audit/checkpoint")?;
                    return emit_checkpoint(j, &v, out);
                }
                None => {}
            }
            let mut q = format!("/v1/audit?limit={}", a.limit);
            for (k, v) in [
                ("tenant", &a.tenant),
                ("agent", &a.agent),
                ("run", &a.run),
                ("principal", &a.principal),
                ("tool", &a.tool),
                ("decision", &a.decision),
                ("type", &a.event_type),
            ] {
                if let Some(v) = v {
                    q.push_str(&format!("&{k}={}", enc(v)));
                }
            }
            if let Some(s) = &a.since {
                let secs = parse_duration(s)?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                q.push_str(&format!("&since_ms={}", now.saturating_sub(secs * 1000)));
            }
            let v = c().get(&q)?;
            if j {
                show(j, &v, &[]);
            } else {
                print_audit(&v);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_with_and_without_an_amount() {
        assert_eq!(
            parse_route("POST /emails=send").unwrap(),
            json!({"method": "POST", "path": "/emails", "action": "send"})
        );
        assert_eq!(
            parse_route("POST /payments=pay amount=json:/amount").unwrap(),
            json!({"method": "POST", "path": "/payments", "action": "pay", "amount": {"json": "/amount"}})
        );
        assert_eq!(
            parse_route("POST /v1/charges=pay amount=form:amount").unwrap()["amount"],
            json!({"form": "amount"})
        );
        assert!(parse_route("POST /payments=pay amount=header:x").is_err());
        assert!(parse_route("POST/payments").is_err());
    }
}
