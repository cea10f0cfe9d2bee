//! Naming rules for groups, private names and daemons, checked at every boundary.

use thiserror::Error;

/// Longest group name, in bytes (Spread's limit).
pub const MAX_GROUP_NAME_LEN: usize = 32;

/// Longest user part of a private name, in bytes.
pub const MAX_USER_NAME_LEN: usize = 20;

/// Longest daemon name, in bytes.
pub const MAX_DAEMON_NAME_LEN: usize = 20;

/// The character that opens a private name (`#user#daemon`); group names may not use it.
pub const PRIVATE_NAME_MARK: char = '#';

/// A name that breaks the rules, with the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// The name is empty.
    #[error("{what} name is empty")]
    Empty {
        /// Which kind of name.
        what: &'static str,
    },
    /// The name is longer than its limit.
    #[error("{what} name is {len} bytes, longer than the limit of {max}")]
    TooLong {
        /// Which kind of name.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name holds a byte outside printable ASCII (0x21..=0x7e), or a reserved `#`.
    #[error(
        "{what} name holds {byte:#04x} at offset {at}: only printable ASCII without '#' is allowed"
    )]
    NotPrintable {
        /// Which kind of name.
        what: &'static str,
        /// The offending byte.
        byte: u8,
        /// Its offset.
        at: usize,
    },
}

fn check(name: &str, what: &'static str, max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    if name.len() > max {
        return Err(NameError::TooLong {
            what,
            len: name.len(),
            max,
        });
    }
    match name
        .bytes()
        .enumerate()
        .find(|&(_, b)| !(0x21..=0x7e).contains(&b) || b == PRIVATE_NAME_MARK as u8)
    {
        Some((at, byte)) => Err(NameError::NotPrintable { what, byte, at }),
        None => Ok(()),
    }
}

/// Checks a group name: 1..=32 bytes of printable ASCII, no `#`.
pub fn check_group(name: &str) -> Result<(), NameError> {
    check(name, "group", MAX_GROUP_NAME_LEN)
}

/// Checks the user part of a private name: 1..=20 bytes of printable ASCII, no `#`.
pub fn check_user(name: &str) -> Result<(), NameError> {
    check(name, "user", MAX_USER_NAME_LEN)
}

/// Checks a daemon name: 1..=20 bytes of printable ASCII, no `#`.
pub fn check_daemon(name: &str) -> Result<(), NameError> {
    check(name, "daemon", MAX_DAEMON_NAME_LEN)
}

/// True when `target` is a private name (`#user#daemon`) rather than a group.
pub fn is_private_name(target: &str) -> bool {
    target.starts_with(PRIVATE_NAME_MARK)
}

/// Splits a private name into (user, daemon) if it is well formed.
pub fn split_private_name(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix(PRIVATE_NAME_MARK)?;
    let (user, daemon) = rest.split_once(PRIVATE_NAME_MARK)?;
    (check_user(user).is_ok() && check_daemon(daemon).is_ok()).then_some((user, daemon))
}

/// The daemon part of a well-formed private name (`#user#daemon` gives `daemon`): the
/// daemon a client is connected to, which is what decides whether the client survives a
/// daemon configuration change. `None` for a group name or a malformed private name.
pub fn daemon_of(private_name: &str) -> Option<&str> {
    split_private_name(private_name).map(|(_, daemon)| daemon)
}

/// Writes the private name of `user` at `daemon`.
pub fn private_name(user: &str, daemon: &str) -> String {
    format!("{PRIVATE_NAME_MARK}{user}{PRIVATE_NAME_MARK}{daemon}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_rules() {
        assert!(check_group("chat").is_ok());
        assert_eq!(check_group(""), Err(NameError::Empty { what: "group" }));
        assert!(matches!(
            check_group(&"x".repeat(33)),
            Err(NameError::TooLong {
                len: 33,
                max: 32,
                ..
            })
        ));
        assert!(matches!(
            check_group("a b"),
            Err(NameError::NotPrintable {
                byte: b' ',
                at: 1,
                ..
            })
        ));
        assert!(check_group("#a").is_err());
        assert!(check_group("é").is_err());
    }

    #[test]
    fn private_names() {
        let n = private_name("alice", "d1");
        assert_eq!(n, "#alice#d1");
        assert!(is_private_name(&n));
        assert_eq!(split_private_name(&n), Some(("alice", "d1")));
        assert_eq!(split_private_name("#alice"), None);
        assert_eq!(split_private_name("alice#d1"), None);
    }

    #[test]
    fn daemon_of_takes_the_daemon_part_of_well_formed_names_only() {
        assert_eq!(daemon_of("#alice#d1"), Some("d1"));
        assert_eq!(daemon_of(&private_name("c1", "east-2")), Some("east-2"));
        // Group names and malformed private names name no daemon.
        for bad in [
            "chat", "", "#", "#alice", "#alice#", "##d1", "#a#b#c", "#a#d 1",
        ] {
            assert_eq!(daemon_of(bad), None, "{bad:?}");
        }
        assert_eq!(daemon_of(&format!("#a#{}", "d".repeat(21))), None);
    }
}
