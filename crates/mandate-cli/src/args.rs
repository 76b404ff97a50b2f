//! The command line: every verb and its flags (clap).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{approvals, offline};

/// Mandate: identities and short-lived, scoped credentials for AI agents.
#[derive(Parser)]
#[command(name = "mandate", version, about, long_about = None, propagate_version = true)]
pub(crate) struct Cli {
    /// Broker URL.
    #[arg(
        long,
        global = true,
        env = "MANDATE_URL",
        default_value = "http://127.0.0.1:8407"
    )]
    pub(crate) url: String,
    /// File holding the admin credential (the broker writes it on first start).
    #[arg(long, global = true, env = "MANDATE_ADMIN_TOKEN_FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Print only the id of what was made or listed, one per line (for
    /// scripts: `GRANT=$(mandate -q grant create ...)`).
    #[arg(long, short, global = true, conflicts_with = "json")]
    pub(crate) quiet: bool,
    /// The profile whose settings (`mandate config`) give the defaults of
    /// --url, --token-file and --tenant.
    #[arg(
        long,
        global = true,
        env = "MANDATE_PROFILE",
        default_value = "default"
    )]
    pub(crate) profile: String,
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

/// The global flags a verb reads. Every verb is shown them in `--help`;
/// one given on the command line to a verb that would ignore it is refused
/// (issue 16: `mandate serve --url X` was accepted and ignored).
/// Environment variables are not refused: they are set for every verb.
pub(crate) fn refuse_flags_that_do_not_apply(
    m: &clap::ArgMatches,
    cmd: &Cmd,
) -> Result<(), String> {
    // (reads --url, reads --token-file, reads --json)
    let (url, token_file, json) = match cmd {
        Cmd::Serve(_) => (false, true, false),
        Cmd::Exec(_) => (true, true, false),
        Cmd::Config(_) => (false, false, true),
        Cmd::Completion { .. } | Cmd::Man { .. } => (false, false, false),
        Cmd::Key(KeyCmd::SignRequest(_)) => (true, false, true),
        Cmd::Token(TokenCmd::Exchange(_)) => (true, false, true),
        Cmd::Key(KeyCmd::Generate(_)) | Cmd::Token(TokenCmd::Attenuate(_)) => (false, false, true),
        _ => (true, true, true),
    };
    let given = |id: &str| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    let (verb, why) = match cmd {
        Cmd::Serve(_) => (
            "mandate serve",
            "it listens on --listen, its public URL is --issuer, and it logs to standard error",
        ),
        Cmd::Exec(_) => (
            "mandate exec",
            "the command's output is its own; the wrapper prints only errors",
        ),
        Cmd::Key(KeyCmd::SignRequest(_)) => ("mandate key sign-request", "it works offline"),
        Cmd::Completion { .. } | Cmd::Man { .. } => (
            "mandate completion / man",
            "they are made from the command line's definition, offline",
        ),
        Cmd::Config(_) => (
            "mandate config",
            "to set them for a profile: `mandate config set url URL`, `... set token_file FILE`",
        ),
        Cmd::Key(_) => ("mandate key generate", "it works offline"),
        Cmd::Token(TokenCmd::Exchange(_)) => (
            "mandate token exchange",
            "it proves the run's key with the mandate; the admin credential is not used",
        ),
        _ => ("mandate token attenuate", "it works offline"),
    };
    for (flag, id, reads) in [
        ("--url", "url", url),
        ("--token-file", "token_file", token_file),
        ("--json", "json", json),
    ] {
        if !reads && given(id) {
            return Err(format!("{flag} does not apply to `{verb}`: {why}"));
        }
    }
    Ok(())
}

// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub(crate) enum Cmd {
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
    /// Is the broker there: its version and issuer, who the credential is,
    /// the clock's skew, and what each tenant holds.
    #[command(after_help = "Example:\n  mandate status        # or --json, for scripts")]
    Status,
    /// Look for what would go wrong: file permissions of credentials and
    /// keys, the broker and the credential, clock skew, tenants without
    /// policies, tools without their secret; each with the command that fixes it.
    #[command(
        after_help = "Example:\n  mandate doctor --key-file run.jwk   # exit 1 when something fails"
    )]
    Doctor {
        /// Also check this key file's permissions (repeat).
        #[arg(long = "key-file", value_name = "FILE")]
        key_files: Vec<PathBuf>,
    },
    /// Print a shell completion script: `mandate completion bash >
    /// ~/.local/share/bash-completion/completions/mandate` (zsh: into a
    /// directory of $fpath as `_mandate`; fish: ~/.config/fish/completions/mandate.fish).
    Completion {
        /// bash, zsh or fish.
        shell: Shell,
    },
    /// Write the man pages (one per verb) into a directory: `mandate man
    /// --out ~/.local/share/man/man1`, then `man mandate`.
    Man {
        /// The directory (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// This CLI's settings per profile: broker URL, admin credential file,
    /// default tenant (the command line and the environment still win).
    #[command(subcommand)]
    Config(ConfigCmd),
}

/// Shells `mandate completion` writes for.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Subcommand)]
pub(crate) enum ConfigCmd {
    /// Set `url`, `tenant` or `token_file` in the profile (--profile; `default`).
    #[command(
        after_help = "Examples:\n  mandate config set url https://mandate.internal:8407\n  mandate config set tenant acme\n  mandate --profile prod config set token_file ~/.config/mandate/prod-admin.token"
    )]
    Set {
        /// url, tenant or token_file.
        key: String,
        value: String,
    },
    /// Remove a setting from the profile.
    Unset {
        /// url, tenant or token_file.
        key: String,
    },
    /// Show the profile's settings, the other profiles and the file.
    Show,
}

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "MANDATE_LISTEN", default_value = "127.0.0.1:8407")]
    pub(crate) listen: SocketAddr,
    /// Public base URL of the broker (the `iss` of its tokens; DPoP `htu` is checked against it).
    #[arg(long, env = "MANDATE_ISSUER")]
    pub(crate) issuer: Option<String>,
    /// Data directory (SQLite database).
    #[arg(long, env = "MANDATE_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Store everything in PostgreSQL instead of the embedded SQLite
    /// database: `postgres://user:password@host:port/database` (prefer the
    /// MANDATE_STORE variable: a password on the command line is visible to
    /// other users of the host).
    #[arg(long, env = "MANDATE_STORE", hide_env_values = true)]
    pub(crate) store: Option<String>,
    /// Master key file (0600; created on first start). MANDATE_MASTER_KEY (base64url, 32 bytes) takes precedence.
    #[arg(long, env = "MANDATE_MASTER_KEY_FILE")]
    pub(crate) master_key_file: Option<PathBuf>,
    /// SPIFFE trust domain for agent and run identities.
    #[arg(long, env = "MANDATE_TRUST_DOMAIN", default_value = "mandate.local")]
    pub(crate) trust_domain: String,
    /// Default mandate lifetime.
    #[arg(long, default_value = "15m", value_parser = crate::when::secs)]
    pub(crate) mandate_ttl: u64,
    /// Longest mandate lifetime.
    #[arg(long, default_value = "1h", value_parser = crate::when::secs)]
    pub(crate) mandate_max_ttl: u64,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 65536)]
    pub(crate) max_body: usize,
    /// Largest request body the proxy forwards (bytes).
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    pub(crate) proxy_max_body: usize,
    /// Make new credential signing keys at start (the previous ones stay in
    /// the JWKS, so credentials they signed still verify).
    #[arg(long)]
    pub(crate) rotate_keys: bool,
    /// A lost admin credential: revoke every admin credential and write a
    /// new one to the admin token file (--token-file). Needs the master
    /// key, as every start does; the change is in the audit trail.
    #[arg(long)]
    pub(crate) new_admin_token: bool,
    /// Refuse DPoP proofs older than this (at most a day).
    #[arg(long, default_value = "60s", value_parser = crate::when::proof_secs)]
    pub(crate) dpop_max_age: u64,
    /// Accept DPoP proofs dated up to this far in the future (clock skew; at
    /// most a day).
    #[arg(long, default_value = "5s", value_parser = crate::when::proof_secs)]
    pub(crate) dpop_skew: u64,
    /// Require server-provided DPoP nonces (RFC 9449 §8): clients retry once
    /// with the nonce from the `DPoP-Nonce` header.
    #[arg(long)]
    pub(crate) dpop_nonce: bool,
    /// POST approval requests, decisions and alerts here (signed with RFC
    /// 9421 by the broker's key; check with mandate-verify's `verify_webhook`).
    #[arg(long, env = "MANDATE_WEBHOOK_URL")]
    pub(crate) webhook_url: Option<String>,
    /// How long an approval request can be decided, then used.
    #[arg(long, default_value = "10m", value_parser = crate::when::secs)]
    pub(crate) approval_ttl: u64,
    /// Alert when a run makes more exchange requests than this in a minute.
    #[arg(long, default_value_t = 120)]
    pub(crate) anomaly_rate: u64,
    /// Alert when a run is denied this many times in a minute.
    #[arg(long, default_value_t = 10)]
    pub(crate) anomaly_denials: u64,
    /// Alert when an agent gets a credential for a tool it never used.
    #[arg(long)]
    pub(crate) anomaly_new_tool: bool,
    /// Suspend a run when it raises an alert (an admin resumes or revokes it).
    #[arg(long)]
    pub(crate) suspend_on_anomaly: bool,
    /// How often DPoP nonces rotate.
    #[arg(long, default_value = "60s", value_parser = crate::when::secs)]
    pub(crate) dpop_nonce_period: u64,
    /// Most live DPoP proofs (and RFC 9421 nonces) one key may hold; each
    /// is remembered for the proof age plus the skew, so this bounds one
    /// key's sustained request rate (10,000 ≈ 150 requests/s).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) dpop_replay_per_key: usize,
    /// Close a connection whose request line and headers have not all
    /// arrived this long after their first byte.
    #[arg(long, default_value = "10s", value_parser = crate::when::secs)]
    pub(crate) header_read_timeout: u64,
    /// Close a keep-alive connection idle (no request in flight, no byte
    /// received) for this long.
    #[arg(long, default_value = "60s", value_parser = crate::when::secs)]
    pub(crate) idle_timeout: u64,
    /// Most connections open at once; more are answered 503 and closed.
    #[arg(long, default_value_t = 4096)]
    pub(crate) max_connections: usize,
    /// Most connections open at once from one client address (IPv6: its /64).
    #[arg(long, default_value_t = 256)]
    pub(crate) max_connections_per_client: usize,
    /// Where signed audit checkpoints are written: outside the data
    /// directory (default: beside the master key, `audit.checkpoint`).
    #[arg(long, env = "MANDATE_AUDIT_CHECKPOINT_FILE")]
    pub(crate) audit_checkpoint_file: Option<PathBuf>,
    /// JSON file of the stdio MCP servers `mcp` tools may use, by name:
    /// `{"github": {"command": ["github-mcp", "stdio"], "secret_env": "GITHUB_TOKEN"}}`
    /// (also `env`, `cwd`, `tenants`, `max_processes`). A registration names
    /// one (`mandate tool create --provider mcp --stdio github`); the broker
    /// starts it, one process per run, with the tool's key in `secret_env`.
    #[arg(long, env = "MANDATE_MCP_STDIO_CONFIG")]
    pub(crate) mcp_stdio_config: Option<PathBuf>,
    /// Sign a checkpoint after this many new audit events ...
    #[arg(long, default_value_t = 1000)]
    pub(crate) audit_checkpoint_every: u64,
    /// ... and at least this often while events come in (and at shutdown).
    #[arg(long, default_value = "10s", value_parser = crate::when::secs)]
    pub(crate) audit_checkpoint_secs: u64,
}

#[derive(Subcommand)]
pub(crate) enum TenantCmd {
    /// Create a tenant.
    #[command(
        after_help = "Example:\n  mandate tenant create acme --description \"Acme production\""
    )]
    Create {
        /// Name (a-z, 0-9, `.`, `_`, `-`).
        name: String,
        /// What the tenant is, in words (e.g. "Acme production").
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tenants.
    #[command(after_help = "Example:\n  mandate tenant list")]
    List,
    /// Show one tenant, every field.
    Show {
        /// Its name.
        name: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum PrincipalCmd {
    /// Create a principal.
    #[command(
        after_help = "Example:\n  mandate principal create -t acme alice@example.com --name \"Alice Martin\" --group finance"
    )]
    Create {
        /// The tenant, e.g. `acme` (default: MANDATE_TENANT, or the profile's).
        #[arg(long, short = 't', env = "MANDATE_TENANT")]
        tenant: String,
        /// Id, e.g. an e-mail address.
        id: String,
        /// A display name, e.g. "Alice Martin".
        #[arg(long, default_value = "")]
        name: String,
        /// A group approval policies can name (`@approval("group:finance")`); repeat.
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// Make an approver credential for a principal: it decides approval
    /// requests and does nothing else. Shown once.
    ApproverToken {
        /// The tenant, e.g. `acme` (default: MANDATE_TENANT, or the profile's).
        #[arg(long, short = 't', env = "MANDATE_TENANT")]
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
    #[command(after_help = "Example:\n  mandate principal list -t acme")]
    List {
        /// The tenant, e.g. `acme` (default: MANDATE_TENANT, or the profile's).
        #[arg(long, short = 't', env = "MANDATE_TENANT")]
        tenant: String,
    },
    /// Show one principal, every field.
    Show {
        /// The tenant, e.g. `acme` (default: MANDATE_TENANT, or the profile's).
        #[arg(long, short = 't', env = "MANDATE_TENANT")]
        tenant: String,
        /// Its id.
        id: String,
    },
}

/// An agent's registration, as `agent create` and `agent update` take it.
#[derive(Args)]
pub(crate) struct AgentSpec {
    /// The tenant, e.g. `acme` (default: MANDATE_TENANT, or the profile's).
    #[arg(long, short = 't', env = "MANDATE_TENANT")]
    pub(crate) tenant: String,
    /// Name.
    pub(crate) name: String,
    /// Person or team accountable for it (mandatory to create).
    #[arg(long)]
    pub(crate) owner: Option<String>,
    /// What it is for.
    #[arg(long)]
    pub(crate) purpose: Option<String>,
    /// The most it may ever be granted, as `tool:action` (repeat; `*` allowed
    /// on either side; at least one to create; an update's replace the list).
    #[arg(long = "envelope")]
    pub(crate) envelope: Vec<String>,
}

#[derive(Subcommand)]
pub(crate) enum AgentCmd {
    /// Register an agent.
    #[command(
        after_help = "Example:\n  mandate agent create -t acme support-bot --owner team-support --purpose \"answers tickets\" --envelope 'crm:*'"
    )]
    Create(AgentSpec),
    /// Change an agent's registration: the flags given replace those values,
    /// the rest stays. Runs started before keep what their mandates carry
    /// until they expire (`mandate revoke --agent` cuts them off now).
    Update(AgentSpec),
    /// List agents of a tenant.
    #[command(after_help = "Example:\n  mandate agent list -t acme")]
    List {
        /// The tenant, e.g. `acme` (default: MANDATE_TENANT, or the profile's).
        #[arg(long, short = 't', env = "MANDATE_TENANT")]
        tenant: String,
    },
    /// Show one agent, every field.
    Show {
        /// The tenant, e.g. `acme` (default: MANDATE_TENANT, or the profile's).
        #[arg(long, short = 't', env = "MANDATE_TENANT")]
        tenant: String,
        /// Its name.
        name: String,
    },
    /// A one-time, short-lived join token that starts one run of the agent
    /// (for `mandate exec --join-token-file` on an agent host, instead of the
    /// admin credential).
    JoinToken {
        /// The tenant, e.g. `acme` (default: MANDATE_TENANT, or the profile's).
        #[arg(long, short = 't', env = "MANDATE_TENANT")]
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
POST /v1/credentials {\"tool\",\"actions\"}, POST /v1/dpop {\"method\",\"url\",\"access_token\"}, \
POST /v1/attenuate, and POST /v1/delegate for the agents --delegate-to names) \
and the environment variables each --tool's registration names (/v1/dpop makes no proof for \
the broker itself). It never sees the run key, the mandate or the admin credential's path; \
the wrapper is non-dumpable. Exit code and signals pass through; when the child exits, the \
run ends and its credentials are revoked, and if the wrapper is killed the broker ends the \
run within 10 s. A child running as root, or as the same user where PR_SET_DUMPABLE does not \
protect, can read the wrapper's memory: run agents as a separate user."
)]
pub(crate) struct ExecCli {
    /// The tenant, e.g. `acme` (default: MANDATE_TENANT, or the profile's).
    #[arg(long, short = 't', env = "MANDATE_TENANT")]
    pub(crate) tenant: String,
    /// The registered agent this run is of.
    #[arg(long)]
    pub(crate) agent: String,
    /// Act on this principal's behalf (needs --grant).
    #[arg(long = "principal", visible_alias = "on-behalf-of")]
    pub(crate) on_behalf_of: Option<String>,
    /// The principal's grant to the agent.
    #[arg(long)]
    pub(crate) grant: Option<String>,
    /// What the run is for (recorded with every credential).
    #[arg(long)]
    pub(crate) task: Option<String>,
    /// Start the run with this one-time join token (from `mandate agent join-token`)
    /// instead of the admin credential; the file is read once and may be deleted after.
    #[arg(long, env = "MANDATE_JOIN_TOKEN_FILE")]
    pub(crate) join_token_file: Option<PathBuf>,
    /// A tool the command uses; its registration's environment variables are set (repeat).
    #[arg(long = "tool")]
    pub(crate) tools: Vec<String>,
    /// A registered agent the command may start sub-agent runs of through
    /// the socket's /v1/delegate (repeat; none by default): each child run
    /// has at most this run's capabilities and ends with it.
    #[arg(long = "delegate-to")]
    pub(crate) delegate_to: Vec<String>,
    /// Mandate lifetime (e.g. 15m; the broker's default when unset).
    #[arg(long, value_parser = crate::when::secs)]
    pub(crate) ttl: Option<u64>,
    /// Print nothing of its own on stderr.
    #[arg(long, short)]
    pub(crate) quiet: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub(crate) command: Vec<String>,
}

/// A tool's registration, as `tool create` and `tool update` take it.
#[derive(Args)]
pub(crate) struct ToolSpec {
    /// The tenant, e.g. `acme` (default: MANDATE_TENANT, or the profile's).
    #[arg(long, short = 't', env = "MANDATE_TENANT")]
    pub(crate) tenant: String,
    /// Name.
    pub(crate) name: String,
    /// Audience URI (the credential's `aud`); `jwt` tools only.
    #[arg(long)]
    pub(crate) audience: Option<String>,
    /// Credential provider: jwt (the default), proxy, postgres or mcp.
    #[arg(long)]
    pub(crate) provider: Option<String>,
    /// JSON file with `proxy` or `postgres` settings and `env`.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// proxy: the upstream base URL; mcp: the MCP server's streamable-HTTP endpoint.
    #[arg(long, conflicts_with = "stdio")]
    pub(crate) upstream: Option<String>,
    /// mcp: a stdio MCP server the broker starts, by the name its operator
    /// gave it in `mandate serve --mcp-stdio-config`.
    #[arg(long)]
    pub(crate) stdio: Option<String>,
    /// mcp: mint a credential per call for the MCP server, with this
    /// audience (its identifier), `sub` = the human and `act` = the agents;
    /// it goes as `Authorization: Bearer` (stdio: `_meta`).
    #[arg(long)]
    pub(crate) mint_audience: Option<String>,
    /// mcp: `true` takes only DPoP-bound credentials at the gateway (RFC
    /// 9449: bound to the run's key at the exchange, a proof per request);
    /// `false` (the default) takes bearer ones, as MCP client libraries send.
    #[arg(long, value_name = "true|false")]
    pub(crate) dpop: Option<bool>,
    /// proxy: `METHOD /path/pattern=action` (`*` one segment, final `**` the rest; repeat);
    /// add ` amount=json:/pointer` or ` amount=form:field` where the request carries an amount.
    #[arg(long = "route")]
    pub(crate) routes: Vec<String>,
    /// proxy: the header the upstream key goes in (default Authorization).
    #[arg(long)]
    pub(crate) inject_header: Option<String>,
    /// proxy: its value, with {secret} for the key (default `Bearer {secret}`).
    #[arg(long)]
    pub(crate) inject_format: Option<String>,
    /// proxy: longest wait for the upstream, in ms (default 30000).
    #[arg(long)]
    pub(crate) timeout_ms: Option<u64>,
    /// postgres: host agents connect to.
    #[arg(long)]
    pub(crate) pg_host: Option<String>,
    /// postgres: port (default 5432).
    #[arg(long)]
    pub(crate) pg_port: Option<u16>,
    /// postgres: database.
    #[arg(long)]
    pub(crate) pg_database: Option<String>,
    /// postgres: `action=role`: a credential for the action joins the role (repeat).
    #[arg(long = "pg-role")]
    pub(crate) pg_roles: Vec<String>,
    /// `NAME=template` set by `mandate exec` ({credential}, {proxy_url}, {mcp_url}, {audience}, {broker}; repeat).
    #[arg(long = "env")]
    pub(crate) env: Vec<String>,
    /// An action the tool understands (repeat; at least one to create).
    #[arg(long = "action")]
    pub(crate) actions: Vec<String>,
    /// A data label such as pii, external_send, money (repeat).
    #[arg(long = "label")]
    pub(crate) labels: Vec<String>,
    /// low (the default), medium, high or critical.
    #[arg(long)]
    pub(crate) risk: Option<String>,
    /// Longest credential lifetime (e.g. 2m; default 5m).
    #[arg(long, value_parser = crate::when::secs)]
    pub(crate) max_ttl: Option<u64>,
    /// Credential signature algorithm: EdDSA (the default) or ES256.
    #[arg(long)]
    pub(crate) alg: Option<String>,
}

// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub(crate) enum ToolCmd {
    /// Register a tool.
    #[command(
        after_help = "Providers: `jwt` (default; DPoP-bound JWTs for tools that verify them), \
`proxy` (the broker's proxy injects a stored key: --upstream, --route, --inject-header, --inject-format), \
`postgres` (a database role per credential: --pg-host, --pg-port, --pg-database, --pg-role), \
`mcp` (the broker's MCP gateway judges each tools/call on its arguments: --upstream URL or --stdio NAME, \
--action per MCP tool, --inject-header/--inject-format if an HTTP MCP server wants a key, --mint-audience if it \
verifies a credential naming the human; then `mandate tool sync`). \
Or give the provider's settings as JSON with --config FILE ({\"proxy\": ...} or {\"postgres\": ...}, and \"env\")."
    )]
    Create(ToolSpec),
    /// Change a tool's registration: the flags given replace those values
    /// (repeated ones, such as --action, replace the whole list); the rest
    /// stays. The provider cannot change; an upstream holding a secret
    /// cannot move. Exchanges judge by it at once.
    Update(ToolSpec),
    /// Read an `mcp` tool's tools from its MCP server (`tools/list`) and
    /// pin them: the gateway lists and checks calls against this snapshot
    /// only, so a server that changes its tools changes nothing until the
    /// next sync. A change that would break a stored policy is refused.
    #[command(after_help = "Example:\n  mandate tool sync -t acme github")]
    Sync {
        /// The tenant, e.g. `acme` (default: MANDATE_TENANT, or the profile's).
        #[arg(long, short = 't', env = "MANDATE_TENANT")]
        tenant: String,
        /// Tool name.
        name: String,
        /// Pin the tools even if an enabled one lost an argument or had
        /// one retyped (policies reading it would stop applying: check them).
        #[arg(long)]
        accept_changes: bool,
    },
    /// List tools of a tenant.
    #[command(after_help = "Example:\n  mandate tool list -t acme")]
    List {
        /// The tenant, e.g. `acme` (default: MANDATE_TENANT, or the profile's).
        #[arg(long, short = 't', env = "MANDATE_TENANT")]
        tenant: String,
    },
    /// Show one tool, every field (its secret never: only whether it is set).
    Show {
        /// The tenant, e.g. `acme` (default: MANDATE_TENANT, or the profile's).
        #[arg(long, short = 't', env = "MANDATE_TENANT")]
        tenant: String,
        /// Its name.
        name: String,
    },
    /// Store a tool's upstream key (proxy) or admin connection string
    /// (postgres): read from stdin or --file, never echoed, sealed at rest,
    /// never returned by any API.
    SetSecret {
        /// The tenant, e.g. `acme` (default: MANDATE_TENANT, or the profile's).
        #[arg(long, short = 't', env = "MANDATE_TENANT")]
        tenant: String,
        /// Tool name.
        name: String,
        /// Read the secret from this file instead of stdin.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub(crate) enum FeedTokenCmd {
    /// A new feed credential (shown once; the broker keeps its hash).
    #[command(
        after_help = "Example:\n  mandate feed-token create --tenant acme --ttl 30d --out feed.token"
    )]
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
pub(crate) enum GrantCmd {
    /// A principal delegates capabilities to an agent for a task.
    #[command(
        after_help = "Example:\n  GRANT=$(mandate -q grant create -t acme --principal alice@example.com --agent support-bot --cap crm:read --task \"ticket 42\" --expires-in 8h)"
    )]
    Create {
        /// The tenant, e.g. `acme` (default: MANDATE_TENANT, or the profile's).
        #[arg(long, short = 't', env = "MANDATE_TENANT")]
        tenant: String,
        /// The principal who delegates, e.g. `alice@example.com`.
        #[arg(long)]
        principal: String,
        /// The agent, by name, e.g. `support-bot`.
        #[arg(long)]
        agent: String,
        /// A capability `tool:action` (repeat).
        #[arg(long = "cap", required = true)]
        caps: Vec<String>,
        /// What the delegation is for, e.g. "answer ticket 42" (recorded with every credential).
        #[arg(long)]
        task: String,
        /// Lifetime (e.g. 8h, 7d; default one day).
        #[arg(long, value_parser = crate::when::secs)]
        expires_in: Option<u64>,
    },
    /// List grants of a tenant.
    #[command(after_help = "Example:\n  mandate -q grant list -t acme")]
    List {
        /// The tenant, e.g. `acme` (default: MANDATE_TENANT, or the profile's).
        #[arg(long, short = 't', env = "MANDATE_TENANT")]
        tenant: String,
    },
    /// Show one grant, every field.
    Show {
        /// The tenant, e.g. `acme` (default: MANDATE_TENANT, or the profile's).
        #[arg(long, short = 't', env = "MANDATE_TENANT")]
        tenant: String,
        /// Its id.
        id: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum PolicyCmd {
    /// Load a Cedar policy file (validated against the Mandate schema).
    #[command(
        after_help = "Example:\n  mandate policy add -t acme examples/policies/baseline.cedar"
    )]
    Add {
        /// The tenant, e.g. `acme` (default: MANDATE_TENANT, or the profile's).
        #[arg(long, short = 't', env = "MANDATE_TENANT")]
        tenant: String,
        /// The .cedar file.
        file: PathBuf,
        /// Set name (default: the file's stem).
        #[arg(long)]
        name: Option<String>,
    },
    /// List policy sets of a tenant.
    #[command(after_help = "Example:\n  mandate policy list -t acme")]
    List {
        /// The tenant, e.g. `acme` (default: MANDATE_TENANT, or the profile's).
        #[arg(long, short = 't', env = "MANDATE_TENANT")]
        tenant: String,
    },
    /// Remove a policy set.
    #[command(after_help = "Example:\n  mandate policy remove -t acme baseline")]
    Remove {
        /// The tenant, e.g. `acme` (default: MANDATE_TENANT, or the profile's).
        #[arg(long, short = 't', env = "MANDATE_TENANT")]
        tenant: String,
        name: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum RunCmd {
    /// Start a run and print its mandate.
    #[command(
        after_help = "Example:\n  RUN=$(mandate -q run start -t acme --agent support-bot --principal alice@example.com --grant $GRANT --jwk run.jwk --out run.mandate)"
    )]
    Start {
        /// The tenant, e.g. `acme` (default: MANDATE_TENANT, or the profile's).
        #[arg(long, short = 't', env = "MANDATE_TENANT")]
        tenant: String,
        /// The agent, by name, e.g. `support-bot`.
        #[arg(long)]
        agent: String,
        /// Act on behalf of this principal (needs --grant).
        #[arg(long)]
        principal: Option<String>,
        /// The principal's grant to the agent (its id, `grt_...`; with --principal).
        #[arg(long)]
        grant: Option<String>,
        /// What the run is for (recorded with every credential).
        #[arg(long)]
        task: Option<String>,
        /// Mandate lifetime (e.g. 15m; the broker's default when unset).
        #[arg(long, value_parser = crate::when::secs)]
        ttl: Option<u64>,
        /// The run's key as a JWK: a file (a private one from `mandate key
        /// generate` is fine: only its public half is sent), or the JSON itself.
        #[arg(long)]
        jwk: String,
        /// Write the mandate to this new file (0600) instead of printing it.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// List runs.
    #[command(after_help = "Example:\n  mandate run list -t acme")]
    List {
        /// Only this tenant's, e.g. `acme` (default: MANDATE_TENANT, or the profile's).
        #[arg(long, short = 't', env = "MANDATE_TENANT")]
        tenant: Option<String>,
        /// Only this agent's, by name.
        #[arg(long)]
        agent: Option<String>,
    },
    /// End a run: its mandate and credentials are refused from now on.
    #[command(after_help = "Example:\n  mandate run end $RUN")]
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
        /// The gate's score, e.g. 0.93 (recorded).
        #[arg(long)]
        score: Option<f64>,
    },
    /// Suspend a run: its exchanges wait until it is resumed or revoked.
    #[command(
        after_help = "Example:\n  mandate run suspend $RUN --reason \"odd burst of exports\""
    )]
    Suspend {
        id: String,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume a suspended run.
    #[command(after_help = "Example:\n  mandate run resume $RUN")]
    Resume { id: String },
}

#[derive(Subcommand)]
pub(crate) enum TokenCmd {
    /// Show what a mandate or credential says (broker → agent → run, principal,
    /// capabilities, expiry, key binding) and whether it verifies now.
    #[command(
        after_help = "Examples:\n  mandate token inspect \"$CRED\"\n  mandate token inspect - < run.mandate"
    )]
    Inspect {
        /// The token, or `-` to read it from standard input.
        token: String,
    },
    /// Narrow a mandate without calling the broker, and optionally hand it to
    /// another key (a sub-agent): appends a Biscuit block signed by the key
    /// that holds it now. Prints the new mandate. Needs no broker.
    #[command(
        after_help = "Example:\n  mandate token attenuate - --key-file run.jwk --to sub.jwk --only crm:read --ttl 10m --uses 5 < run.mandate > sub.mandate"
    )]
    Attenuate(offline::Attenuate),
    /// Exchange a mandate for a credential for one tool and its actions
    /// (RFC 8693), proving the run's key (DPoP, or --sign for RFC 9421), as
    /// an agent does at each tool call. Prints the credential.
    Exchange(crate::exchange::ExchangeArgs),
}

#[derive(Subcommand)]
pub(crate) enum KeyCmd {
    /// Make a key pair; writes the private JWK to a new 0600 file and prints
    /// the public JWK and its RFC 7638 thumbprint (what `--to` names).
    #[command(
        after_help = "Examples:\n  mandate key generate --out run.jwk\n  mandate --json key generate --alg ES256 --out run-p256.jwk"
    )]
    Generate(offline::KeyGenerate),
    /// Sign an HTTP request with a key (RFC 9421, with Content-Digest and
    /// Signature-Key); prints the headers to add, as `Name: value` lines or
    /// a JSON object with --json.
    #[command(
        after_help = "Example:\n  mandate key sign-request --key-file run.jwk --url http://127.0.0.1:8407/proxy/crm/items -H 'Authorization: Bearer $CRED'"
    )]
    SignRequest(offline::SignRequest),
}

#[derive(Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Examples:\n  mandate revoke --run $RUN --reason \"ticket closed\"\n  mandate revoke --agent support-bot --tenant acme --reason \"key leaked\"\n  mandate revoke --everything --yes --reason incident-42   # the kill switch\n  mandate revoke list -t acme",
    group(clap::ArgGroup::new("what").required(true).args(["credential", "token", "run", "agent", "principal", "grant", "tenant_only", "all", "everything"]))
)]
pub(crate) struct RevokeArgs {
    #[command(subcommand)]
    pub(crate) list: Option<RevokeSub>,
    /// A credential, by its `jti`.
    #[arg(long)]
    pub(crate) credential: Option<String>,
    /// A credential, by the token itself.
    #[arg(long)]
    pub(crate) token: Option<String>,
    /// A run.
    #[arg(long)]
    pub(crate) run: Option<String>,
    /// An agent (with --tenant).
    #[arg(long)]
    pub(crate) agent: Option<String>,
    /// A principal (with --tenant).
    #[arg(long)]
    pub(crate) principal: Option<String>,
    /// A grant.
    #[arg(long)]
    pub(crate) grant: Option<String>,
    /// The tenant of --agent or --principal (and of --credential: then only
    /// that tenant's feed shows it).
    #[arg(long)]
    pub(crate) tenant: Option<String>,
    /// A whole tenant: everything under it is refused.
    #[arg(long = "whole-tenant", id = "tenant_only")]
    pub(crate) tenant_only: Option<String>,
    /// With --tenant: the whole tenant (same as --whole-tenant).
    #[arg(long, requires = "tenant")]
    pub(crate) all: bool,
    /// The kill switch: every mandate and credential of every tenant and
    /// provider issued until now (runs started afterwards work). Asks to
    /// confirm unless --yes.
    #[arg(long)]
    pub(crate) everything: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub(crate) yes: bool,
    /// Why (recorded in the audit trail).
    #[arg(long)]
    pub(crate) reason: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum RevokeSub {
    /// The latest revocations, oldest first: what is refused, why, since when.
    List {
        /// Only this tenant's (and the kill switch).
        #[arg(long, short = 't')]
        tenant: Option<String>,
        /// How many of the latest to read.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  mandate audit -t acme --decision deny --since 1h\n  mandate audit --run $RUN --since 2026-11-30T18:00:00Z\n  mandate --json audit --tool crm --before 1234 | jq .\n  mandate audit verify --checkpoint cp.jws"
)]
pub(crate) struct AuditArgs {
    #[command(subcommand)]
    pub(crate) verify: Option<AuditSub>,
    /// Only this tenant's events (never taken from MANDATE_TENANT or a
    /// profile: events of no tenant, such as admin credentials and the kill
    /// switch, would silently vanish).
    #[arg(long, short = 't')]
    pub(crate) tenant: Option<String>,
    /// Only this agent's events, by name.
    #[arg(long)]
    pub(crate) agent: Option<String>,
    /// Only this run's events (`run_...`).
    #[arg(long)]
    pub(crate) run: Option<String>,
    /// Only events for this principal, e.g. `alice@example.com`.
    #[arg(long)]
    pub(crate) principal: Option<String>,
    /// Only this tool's events, by name.
    #[arg(long)]
    pub(crate) tool: Option<String>,
    /// allow, deny or ok.
    #[arg(long)]
    pub(crate) decision: Option<String>,
    /// Event type, e.g. token.exchange.
    #[arg(long = "type")]
    pub(crate) event_type: Option<String>,
    /// Only events from this time on: an RFC 3339 time (2026-11-30T18:00:00Z)
    /// or a duration ago (30s, 15m, 24h, 7d).
    #[arg(long)]
    pub(crate) since: Option<String>,
    /// Most events to show.
    #[arg(long, default_value_t = 100)]
    pub(crate) limit: u32,
    /// Only events older than this sequence number: the next page back
    /// (pass the smallest `seq` of the page shown).
    #[arg(long, value_name = "SEQ")]
    pub(crate) before: Option<u64>,
}

#[derive(Subcommand)]
pub(crate) enum AuditSub {
    /// Recompute the hash chain, check every stored column against the
    /// hashed events and the trail against the broker's latest signed
    /// checkpoint (and --checkpoint), and name the first event that does not fit.
    Verify {
        /// Also check against this checkpoint, exported earlier with
        /// `mandate audit checkpoint` and kept elsewhere (its JWS, or the
        /// JSON `--json audit checkpoint` printed).
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
        /// Read only the events after --checkpoint (one you verified
        /// before): it must still match, and every later event is checked.
        /// Fast at any size; a whole verification also checks older events.
        #[arg(long, requires = "checkpoint")]
        incremental: bool,
    },
    /// Print a signed checkpoint of the trail's head (a JWS the broker's
    /// JWKS verifies), to keep outside the broker.
    Checkpoint {
        /// Write it to this new file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}
