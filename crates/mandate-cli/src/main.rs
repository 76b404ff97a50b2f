//! `mandate`: run the broker, register tenants, agents, tools, grants and
//! policies, start runs, revoke, and read the audit trail.
#![forbid(unsafe_code)]

// `println!`, `print!` and `eprintln!` of this crate: std's panic when the
// reader went away (`mandate audit | head -1` ended with a panic, exit
// 101: issue 16). These end the process quietly on a closed standard
// output ([`output::write_stdout`]) and drop what a closed standard error
// cannot take (the `exec` wrapper must outlive its terminal).
macro_rules! println {
    () => {
        $crate::output::write_stdout(format_args!("\n"))
    };
    ($($t:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($t)*)))
    };
}
#[allow(unused_macros)]
macro_rules! print {
    ($($t:tt)*) => {
        $crate::output::write_stdout(format_args!($($t)*))
    };
}
macro_rules! eprintln {
    ($($t:tt)*) => {
        $crate::output::write_stderr(format_args!("{}\n", format_args!($($t)*)))
    };
}

mod approvals;
mod args;
mod audit;
mod client;
mod docs;
mod exchange;
mod exec;
mod offline;
mod output;
mod profile;
mod prompt;
mod registry;
mod runs;
mod serve;
mod status;
mod when;

use std::path::PathBuf;

use std::process::ExitCode;
pub(crate) use when::parse_duration;

use serde_json::Value;

use args::{Cli, Cmd};
use client::{CliError, Client};
use output::print_table;

/// mimalloc: the W1 profile spent about a tenth of the broker's CPU in
/// glibc's malloc and free (BENCHMARKS.md, issue 12).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let profile = profile::chosen(&argv);
    // A broken profile file stops no verb (`mandate serve` least of all):
    // it is said, and `mandate config` says it again.
    let settings = match profile::Profiles::load(&profile::file()) {
        Ok(p) => p.profiles.get(&profile).cloned().unwrap_or_default(),
        Err(e) => {
            eprintln!("warning: profiles not used: {e}");
            profile::Profile::default()
        }
    };
    let matches = profile::with_defaults(<Cli as clap::CommandFactory>::command(), &settings)
        .get_matches_from(argv);
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if let Err(e) = args::refuse_flags_that_do_not_apply(&matches, &cli.cmd) {
        eprintln!("error: {e}");
        return ExitCode::from(client::Exit::Usage as u8);
    }
    // `mandate serve` writes its bootstrap credential to --token-file: a
    // profile's file (another broker's credential) must never be it.
    let mut cli = cli;
    if matches!(cli.cmd, Cmd::Serve(_))
        && !matches!(
            matches.value_source("token_file"),
            Some(clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable)
        )
    {
        cli.token_file = None;
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", output::safe(&e.to_string()));
            ExitCode::from(e.exit as u8)
        }
    }
}

pub(crate) fn show(json_out: bool, v: &Value, cols: &[&str]) {
    if json_out {
        println!("{}", output::json_text(v));
    } else {
        print_table(v, cols);
    }
}

/// Runs one command.
fn run(cli: Cli) -> Result<(), CliError> {
    let x = Ctx {
        token_file: cli
            .token_file
            .clone()
            .or_else(|| Some(config_dir().join("admin.token"))),
        url: cli.url.clone(),
        json: cli.json,
        quiet: cli.quiet,
    };
    match cli.cmd {
        Cmd::Serve(a) => serve::serve(a, cli.token_file.clone()),
        Cmd::Approvals(a) => approvals::run(a, &x.url, || x.client(), x.json),
        Cmd::Tenant(a) => registry::tenant(a, &x),
        Cmd::Principal(a) => registry::principal(a, &x),
        Cmd::Agent(a) => registry::agent(a, &x),
        Cmd::Tool(a) => registry::tool(a, &x),
        Cmd::Grant(a) => registry::grant(a, &x),
        Cmd::Policy(a) => registry::policy(a, &x),
        Cmd::FeedToken(a) => registry::feed_token(a, &x),
        Cmd::Run(a) => runs::run(a, &x),
        Cmd::Exec(a) => runs::exec(a, &x),
        Cmd::Key(a) => runs::key(a, &x),
        Cmd::Token(a) => runs::token(a, &x),
        Cmd::Revoke(a) => runs::revoke(a, &x),
        Cmd::Audit(a) => audit::audit(a, &x),
        Cmd::Status => status::status(&x),
        Cmd::Completion { shell } => docs::completion(shell),
        Cmd::Man { out } => {
            let n = docs::man_pages(&out)?;
            eprintln!("wrote {n} man pages to {}", out.display());
            Ok(())
        }
        Cmd::Doctor { key_files } => status::doctor(&x, &key_files),
        Cmd::Config(c) => {
            let v = profile::run(c, &cli.profile)?;
            if x.json {
                show(true, &v, &[]);
            } else {
                println!(
                    "profile {} ({})",
                    output::cell(&v["profile"]),
                    output::cell(&v["file"])
                );
                for k in profile::KEYS {
                    println!("  {k:<11}{}", output::cell(&v["settings"][k]));
                }
            }
            Ok(())
        }
    }
}

/// What every command needs: where the broker is, the admin credential,
/// and whether to print JSON.
pub(crate) struct Ctx {
    /// The broker's URL.
    pub(crate) url: String,
    /// The admin credential file.
    pub(crate) token_file: Option<PathBuf>,
    /// Print JSON (`--json`).
    pub(crate) json: bool,
    /// Print only ids (`--quiet`).
    pub(crate) quiet: bool,
}

impl Ctx {
    /// Prints what the broker answered: its ids with `--quiet`, JSON with
    /// `--json`, else a table of `cols`.
    pub(crate) fn show(&self, v: &Value, cols: &[&str]) {
        if self.quiet {
            output::print_ids(v);
        } else {
            show(self.json, v, cols);
        }
    }

    /// A client of the broker with the admin credential.
    pub(crate) fn client(&self) -> Client {
        Client::new(self.url.clone(), self.token_file.clone())
    }
}
