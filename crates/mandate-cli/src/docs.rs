//! Shell completions and man pages, generated from the command line's own
//! definition (so they cannot drift from it).

use std::path::Path;

use clap::CommandFactory as _;

use crate::args::{Cli, Shell};
use crate::client::CliError;

/// `mandate completion SHELL`: the script on standard output.
pub(crate) fn completion(shell: Shell) -> Result<(), CliError> {
    let mut cmd = Cli::command();
    let mut out: Vec<u8> = Vec::new();
    let sh = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(sh, &mut cmd, "mandate", &mut out);
    print!("{}", String::from_utf8_lossy(&out));
    Ok(())
}

/// `mandate man --out DIR`: one page per command and subcommand
/// (`mandate.1`, `mandate-token-exchange.1`, ...); returns how many.
pub(crate) fn man_pages(dir: &Path) -> Result<usize, CliError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::new(format!("cannot create {}: {e}", dir.display())))?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut n = 0;
    write_pages(&cmd, "mandate", dir, &mut n)?;
    Ok(n)
}

fn write_pages(cmd: &clap::Command, name: &str, dir: &Path, n: &mut usize) -> Result<(), CliError> {
    let page = cmd.clone().name(name.to_owned());
    let mut text: Vec<u8> = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut text)
        .map_err(|e| CliError::new(format!("cannot render the man page of {name}: {e}")))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, text)
        .map_err(|e| CliError::new(format!("cannot write {}: {e}", path.display())))?;
    *n += 1;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, n)?;
    }
    Ok(())
}
