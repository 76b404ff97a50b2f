//! Profiles: the broker URL, admin credential file and default tenant a
//! person uses, kept in `<config dir>/cli.json` so they need not be typed
//! (`mandate config set url https://mandate.internal`). Several profiles
//! (`--profile prod`, `MANDATE_PROFILE`) name several brokers.
//!
//! Precedence: the command line, then the environment (`MANDATE_URL`,
//! `MANDATE_ADMIN_TOKEN_FILE`, `MANDATE_TENANT`), then the profile, then
//! the built-in default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::client::{CliError, Exit};

/// What a profile may set.
pub(crate) const KEYS: [&str; 3] = ["url", "tenant", "token_file"];

/// One profile's settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Profile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) token_file: Option<PathBuf>,
}

/// The file: profiles by name.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Profiles {
    #[serde(default)]
    pub(crate) profiles: BTreeMap<String, Profile>,
}

/// Where profiles are kept.
pub(crate) fn file() -> PathBuf {
    crate::config_dir().join("cli.json")
}

impl Profiles {
    /// The file's profiles (none when there is no file).
    pub(crate) fn load(path: &Path) -> Result<Self, CliError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                CliError::new(format!(
                    "{} is not a profile file ({e}); fix it or remove it",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(CliError::new(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// Writes the file (0600: it names where the admin credential is).
    pub(crate) fn save(&self, path: &Path) -> Result<(), CliError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)
                .map_err(|e| CliError::new(format!("cannot create {}: {e}", d.display())))?;
        }
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self).unwrap_or_default();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| CliError::new(format!("cannot write {}: {e}", tmp.display())))?;
        f.write_all(&text)
            .and_then(|()| f.write_all(b"\n"))
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| CliError::new(format!("cannot write {}: {e}", path.display())))
    }
}

/// The profile named on the command line (`--profile NAME`), else by
/// `MANDATE_PROFILE`, else `default`: read before the command line is
/// parsed, because the profile gives its defaults.
pub(crate) fn chosen(args: &[std::ffi::OsString]) -> String {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--" {
            break;
        }
        if a == "--profile" {
            if let Some(v) = it.next() {
                return v.to_string_lossy().into_owned();
            }
        } else if let Some(v) = a.strip_prefix("--profile=") {
            return v.to_owned();
        }
    }
    std::env::var("MANDATE_PROFILE").unwrap_or_else(|_| "default".to_owned())
}

/// The command line's definition with `p`'s settings as defaults: the
/// global `--url` and `--token-file`, and every `--tenant` that the
/// environment's `MANDATE_TENANT` also fills.
pub(crate) fn with_defaults(cmd: clap::Command, p: &Profile) -> clap::Command {
    let mut cmd = cmd;
    if let Some(u) = &p.url {
        cmd = cmd.mut_arg("url", |a| a.default_value(u.clone()));
    }
    if let Some(t) = &p.token_file {
        cmd = cmd.mut_arg("token_file", |a| a.default_value(t.as_os_str().to_owned()));
    }
    if let Some(t) = &p.tenant {
        cmd = tenant_default(cmd, t);
    }
    cmd
}

fn tenant_default(mut cmd: clap::Command, tenant: &str) -> clap::Command {
    let has = cmd.get_arguments().any(|a| {
        a.get_id() == "tenant" && a.get_env() == Some(std::ffi::OsStr::new("MANDATE_TENANT"))
    });
    if has {
        cmd = cmd.mut_arg("tenant", |a| {
            a.default_value(tenant.to_owned()).required(false)
        });
    }
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in subs {
        cmd = cmd.mut_subcommand(name, |s| tenant_default(s, tenant));
    }
    cmd
}

/// `mandate config set|unset|show`.
pub(crate) fn run(c: crate::args::ConfigCmd, name: &str) -> Result<serde_json::Value, CliError> {
    use crate::args::ConfigCmd;
    let path = file();
    let mut all = Profiles::load(&path)?;
    let check = |key: &str| {
        if KEYS.contains(&key) {
            Ok(())
        } else {
            Err(CliError::new(format!(
                "`{key}` is not a setting; use one of: {}",
                KEYS.join(", ")
            ))
            .exit(Exit::Usage))
        }
    };
    match c {
        ConfigCmd::Set { key, value } => {
            check(&key)?;
            let p = all.profiles.entry(name.to_owned()).or_default();
            match key.as_str() {
                "url" => {
                    if !(value.starts_with("http://") || value.starts_with("https://")) {
                        return Err(CliError::new("url must be an http(s) URL").exit(Exit::Usage));
                    }
                    p.url = Some(value.trim_end_matches('/').to_owned());
                }
                "tenant" => p.tenant = Some(value),
                _ => {
                    let f = PathBuf::from(&value);
                    p.token_file = Some(std::path::absolute(&f).unwrap_or(f));
                }
            }
            all.save(&path)?;
        }
        ConfigCmd::Unset { key } => {
            check(&key)?;
            if let Some(p) = all.profiles.get_mut(name) {
                match key.as_str() {
                    "url" => p.url = None,
                    "tenant" => p.tenant = None,
                    _ => p.token_file = None,
                }
                if *p == Profile::default() {
                    all.profiles.remove(name);
                }
            }
            all.save(&path)?;
        }
        ConfigCmd::Show => {}
    }
    let p = all.profiles.get(name).cloned().unwrap_or_default();
    Ok(serde_json::json!({
        "file": path,
        "profile": name,
        "settings": p,
        "profiles": all.profiles.keys().collect::<Vec<_>>(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn argv(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_profile_is_read_before_parsing_and_stops_at_the_command() {
        assert_eq!(
            chosen(&argv(&["mandate", "--profile", "prod", "audit"])),
            "prod"
        );
        assert_eq!(chosen(&argv(&["mandate", "audit", "--profile=eu"])), "eu");
        // What follows `--` belongs to `exec`'s command.
        let after = chosen(&argv(&["mandate", "exec", "--", "x", "--profile", "p"]));
        assert_ne!(after, "p");
    }

    #[test]
    fn defaults_reach_every_tenant_flag_and_the_globals() {
        use clap::CommandFactory as _;
        let p = Profile {
            url: Some("http://b.example:1".into()),
            tenant: Some("acme".into()),
            token_file: Some("/t/admin.token".into()),
        };
        let m = with_defaults(crate::args::Cli::command(), &p)
            .try_get_matches_from(["mandate", "agent", "list"])
            .unwrap();
        assert_eq!(m.get_one::<String>("url").unwrap(), "http://b.example:1");
        let (_, agent) = m.subcommand().unwrap();
        let (_, list) = agent.subcommand().unwrap();
        assert_eq!(list.get_one::<String>("tenant").unwrap(), "acme");
        // The command line wins.
        let m = with_defaults(crate::args::Cli::command(), &p)
            .try_get_matches_from(["mandate", "--url", "http://c:2", "agent", "list", "-t", "x"])
            .unwrap();
        assert_eq!(m.get_one::<String>("url").unwrap(), "http://c:2");
        let (_, agent) = m.subcommand().unwrap();
        assert_eq!(
            agent
                .subcommand()
                .unwrap()
                .1
                .get_one::<String>("tenant")
                .unwrap(),
            "x"
        );
    }
}
