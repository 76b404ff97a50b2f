//! What a database credential may reach. A `postgres` tool maps actions to
//! existing roles; a credential's role joins them. Some role powers let the
//! holder escape every role it was given (become anyone, read past
//! row-level security, read the server's files, create roles and join
//! them). The rule: an action never maps to a role that has such a power,
//! itself or through any role it is a member of, at any depth; nor to the
//! broker's own admin role. The server asks the database (`pg_roles`) and
//! hands the answer to [`check_mapped_roles`].

/// Predefined roles that act as the database server's operating-system
/// user (files, programs): as good as superuser.
pub const PG_SERVER_ROLES: [&str; 3] = [
    "pg_execute_server_program",
    "pg_read_server_files",
    "pg_write_server_files",
];

/// A power no credential may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgPower {
    /// The role of the broker's admin connection (it creates and drops
    /// every credential's role).
    BrokerAdmin,
    /// `SUPERUSER`: bypasses every permission check.
    Superuser,
    /// `CREATEROLE`: creates roles and grants memberships.
    CreateRole,
    /// `BYPASSRLS`: ignores row-level security.
    BypassRls,
    /// `REPLICATION`: streams every table of the cluster.
    Replication,
    /// One of [`PG_SERVER_ROLES`].
    ServerAccess,
}

impl PgPower {
    /// How an administrator would name it.
    pub fn name(self) -> &'static str {
        match self {
            PgPower::BrokerAdmin => "the broker's admin role",
            PgPower::Superuser => "SUPERUSER",
            PgPower::CreateRole => "CREATEROLE",
            PgPower::BypassRls => "BYPASSRLS",
            PgPower::Replication => "REPLICATION",
            PgPower::ServerAccess => "access to the server's files or programs",
        }
    }

    /// The `ALTER ROLE` option that takes it away, if it is an attribute.
    fn alter(self) -> Option<&'static str> {
        match self {
            PgPower::Superuser => Some("NOSUPERUSER"),
            PgPower::CreateRole => Some("NOCREATEROLE"),
            PgPower::BypassRls => Some("NOBYPASSRLS"),
            PgPower::Replication => Some("NOREPLICATION"),
            PgPower::BrokerAdmin | PgPower::ServerAccess => None,
        }
    }
}

/// What the database says about one role that a mapped role reaches (the
/// mapped role itself, or a role it is a member of, directly or not).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgReach {
    /// The role an action maps to.
    pub mapped: String,
    /// The role reached.
    pub via: String,
    /// `rolsuper`.
    pub superuser: bool,
    /// `rolcreaterole`.
    pub createrole: bool,
    /// `rolbypassrls`.
    pub bypassrls: bool,
    /// `rolreplication`.
    pub replication: bool,
    /// `via` is one of [`PG_SERVER_ROLES`].
    pub server_access: bool,
    /// `via` is the role of the broker's admin connection.
    pub broker_admin: bool,
}

impl PgReach {
    /// The forbidden powers `via` has, most serious first.
    pub fn powers(&self) -> Vec<PgPower> {
        [
            (self.broker_admin, PgPower::BrokerAdmin),
            (self.superuser, PgPower::Superuser),
            (self.createrole, PgPower::CreateRole),
            (self.bypassrls, PgPower::BypassRls),
            (self.replication, PgPower::Replication),
            (self.server_access, PgPower::ServerAccess),
        ]
        .into_iter()
        .filter_map(|(has, p)| has.then_some(p))
        .collect()
    }
}

/// Why an action may not map to a database role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgRoleRefusal {
    /// The role does not exist in the database.
    #[error(
        "database role `{role}` does not exist; create it (NOLOGIN, with only the privileges its action needs) or map the action to an existing role"
    )]
    Missing {
        /// The mapped role.
        role: String,
    },
    /// The role reaches a forbidden power.
    #[error("{}", powerful(.mapped, .via, .powers))]
    Powerful {
        /// The mapped role.
        mapped: String,
        /// The role that has the powers (`mapped` or one it is a member of).
        via: String,
        /// What it has.
        powers: Vec<PgPower>,
    },
}

fn powerful(mapped: &str, via: &str, powers: &[PgPower]) -> String {
    let names = powers
        .iter()
        .map(|p| p.name())
        .collect::<Vec<_>>()
        .join(", ");
    let whose = if via == mapped {
        format!("database role `{mapped}` has {names}")
    } else {
        format!("database role `{mapped}` is a member of `{via}`, which has {names}")
    };
    let options: Vec<&str> = powers.iter().filter_map(|p| p.alter()).collect();
    let mut fixes = Vec::new();
    if !options.is_empty() {
        fixes.push(format!("`ALTER ROLE {via} {}`", options.join(" ")));
    }
    if via != mapped {
        fixes.push(format!("`REVOKE {via} FROM {mapped}`"));
    }
    fixes.push("map the action to a role without it".into());
    format!(
        "{whose}; a credential must never reach it (it would escape the roles it was given): {}",
        fixes.join(", or ")
    )
}

/// Refuses when any mapped role is missing or reaches a forbidden power.
/// `reach` holds what the database reported (only rows with a power
/// matter); `missing` the mapped roles it does not know.
pub fn check_mapped_roles(reach: &[PgReach], missing: &[String]) -> Result<(), PgRoleRefusal> {
    if let Some(role) = missing.first() {
        return Err(PgRoleRefusal::Missing { role: role.clone() });
    }
    // The mapped role's own powers first: that is the first thing to fix.
    let mut rows: Vec<&PgReach> = reach.iter().collect();
    rows.sort_by_key(|r| (r.via != r.mapped, r.mapped.clone(), r.via.clone()));
    match rows.into_iter().find(|r| !r.powers().is_empty()) {
        Some(r) => Err(PgRoleRefusal::Powerful {
            mapped: r.mapped.clone(),
            via: r.via.clone(),
            powers: r.powers(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reach(mapped: &str, via: &str) -> PgReach {
        PgReach {
            mapped: mapped.into(),
            via: via.into(),
            ..Default::default()
        }
    }

    #[test]
    fn roles_without_powers_pass() {
        assert_eq!(
            check_mapped_roles(&[reach("app_reader", "app_reader")], &[]),
            Ok(())
        );
        assert_eq!(check_mapped_roles(&[], &[]), Ok(()));
    }

    #[test]
    fn each_power_is_refused_and_named_with_its_fix() {
        type Case = (fn(&mut PgReach), &'static str, &'static str);
        let cases: [Case; 6] = [
            (|r| r.superuser = true, "SUPERUSER", "NOSUPERUSER"),
            (|r| r.createrole = true, "CREATEROLE", "NOCREATEROLE"),
            (|r| r.bypassrls = true, "BYPASSRLS", "NOBYPASSRLS"),
            (|r| r.replication = true, "REPLICATION", "NOREPLICATION"),
            (|r| r.server_access = true, "server's files", "without it"),
            (
                |r| r.broker_admin = true,
                "the broker's admin role",
                "without it",
            ),
        ];
        for (set, name, fix) in cases {
            let mut r = reach("app_reader", "app_reader");
            set(&mut r);
            let e = check_mapped_roles(&[r], &[]).unwrap_err();
            let text = e.to_string();
            assert!(text.contains("`app_reader` has"), "{text}");
            assert!(text.contains(name), "{text}");
            assert!(text.contains(fix), "{text}");
            assert!(text.contains("never reach"), "{text}");
        }
    }

    #[test]
    fn a_power_reached_through_membership_names_the_path() {
        let mut r = reach("app_reader", "ops");
        r.superuser = true;
        r.createrole = true;
        let e = check_mapped_roles(&[reach("app_reader", "app_reader"), r], &[]).unwrap_err();
        assert_eq!(
            e,
            PgRoleRefusal::Powerful {
                mapped: "app_reader".into(),
                via: "ops".into(),
                powers: vec![PgPower::Superuser, PgPower::CreateRole],
            }
        );
        let text = e.to_string();
        assert!(
            text.contains("`app_reader` is a member of `ops`, which has SUPERUSER, CREATEROLE"),
            "{text}"
        );
        assert!(
            text.contains("`ALTER ROLE ops NOSUPERUSER NOCREATEROLE`"),
            "{text}"
        );
        assert!(text.contains("`REVOKE ops FROM app_reader`"), "{text}");
    }

    #[test]
    fn the_mapped_roles_own_power_is_reported_first() {
        let mut via = reach("app_reader", "ops");
        via.bypassrls = true;
        let mut own = reach("app_reader", "app_reader");
        own.createrole = true;
        let e = check_mapped_roles(&[via, own], &[]).unwrap_err();
        assert!(matches!(e, PgRoleRefusal::Powerful { ref via, .. } if via == "app_reader"));
    }

    #[test]
    fn a_missing_role_is_refused() {
        let e = check_mapped_roles(&[], &["app_ghost".into()]).unwrap_err();
        assert!(e.to_string().contains("`app_ghost` does not exist"), "{e}");
    }
}
