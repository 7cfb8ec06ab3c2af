//! The words of the notices the relay sends (SPEC S2, S3, S6), in one
//! place. Lines stay under 76 characters so mail goes out as plain 7-bit
//! text that any client (and a grep) reads as written. Each notice goes to the host's owner by email (when an address and
//! SMTP are configured) and to the host agent, which logs it.

/// How a notice travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// Email to a user (or `admin`).
    Email,
    /// A notice on the host agent.
    Host,
}

impl Channel {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Host => "host",
        }
    }
}

/// A notice and its recipients.
#[derive(Clone, Debug)]
pub struct Notice {
    /// Where it goes.
    pub to: Vec<(Channel, String)>,
    /// Subject line.
    pub subject: String,
    /// Text.
    pub body: String,
}

/// The admin's recipient name (resolved from the relay's config).
pub const ADMIN: &str = "admin";

/// Shared access was granted (SPEC S2).
pub fn granted(host: &str, owner: &str, user: &str) -> Notice {
    Notice {
        to: vec![(Channel::Email, owner.into()), (Channel::Host, host.into())],
        subject: format!("Shared access enabled on {host}"),
        body: format!(
            "Your admin enabled shared access on {host} for {user}.\n\
             Give {user} your access code: they inherit the code you have now.\n\
             After {user} ends their connection, we recommend that you\n\
             change your access code (latchkey host set-code on {host}).\n"
        ),
    }
}

/// Shared access was revoked: the owner and the revoked user are told.
pub fn revoked(host: &str, owner: &str, user: &str) -> Notice {
    Notice {
        to: vec![
            (Channel::Email, owner.into()),
            (Channel::Email, user.into()),
            (Channel::Host, host.into()),
        ],
        subject: format!("Shared access to {host} revoked for {user}"),
        body: format!(
            "Your admin revoked {user}'s shared access to {host}.\n\
             Any session {user} had on {host} was ended.\n\
             If {user} knew your access code, we recommend that you\n\
             change it (latchkey host set-code on {host}).\n"
        ),
    }
}

/// A secondary user's session ended (SPEC S3).
pub fn secondary_session_ended(host: &str, owner: &str, user: &str) -> Notice {
    Notice {
        to: vec![(Channel::Email, owner.into()), (Channel::Host, host.into())],
        subject: format!("{user} ended their session on {host}: change your access code"),
        body: format!(
            "{user} ended their connection to {host}.\n\
             We recommend that you change your access code now\n\
             (latchkey host set-code on {host}).\n\
             {user} keeps the code they inherited.\n"
        ),
    }
}

/// One host key connected from two places at once: a copy of the host's
/// key is in use (or two agents run on one identity).
pub fn host_key_twice(host: &str, owner: &str, older: &str, newer: &str) -> Notice {
    Notice {
        to: vec![
            (Channel::Email, owner.into()),
            (Channel::Email, ADMIN.into()),
            (Channel::Host, host.into()),
        ],
        subject: format!("{host}'s key connected from two places at once"),
        body: format!(
            "Two agents connected as {host} with its key at once:\n\
             one from {older}, one from {newer}.\n\
             The relay kept the one from {older} and refused the other.\n\
             If you did not start both, the host's key was copied:\n\
             enroll {host} again (latchkey-relay admin invite-host),\n\
             then set its access code again.\n"
        ),
    }
}

/// A host was locked (SPEC S6).
/// `cause` completes "(...)": who failed last, or why it locked now.
pub fn locked(host: &str, owner: &str, cause: &str, failures: u32) -> Notice {
    Notice {
        to: vec![
            (Channel::Email, owner.into()),
            (Channel::Email, ADMIN.into()),
            (Channel::Host, host.into()),
        ],
        subject: format!("{host} is locked after {failures} failed access-code attempts"),
        body: format!(
            "{host} is locked: {failures} access-code attempts failed\n\
             ({cause}).\n\
             Nobody can connect to {host} until an admin unlocks it,\n\
             on its page in the admin console or with:\n\
             latchkey-relay admin unlock {host}\n"
        ),
    }
}

/// Recipients prefixed with this are console admins, by name (their
/// address is in the admins table).
pub const CONSOLE_ADMIN_PREFIX: &str = "admin:";

/// A console admin account was locked by failed logins: the other admins
/// (and the configured admin address) are told.
pub fn console_admin_locked(
    name: &str,
    failures: i64,
    minutes: i64,
    source: std::net::IpAddr,
    others: &[String],
) -> Notice {
    let mut to = vec![(Channel::Email, ADMIN.to_string())];
    to.extend(
        others
            .iter()
            .map(|o| (Channel::Email, format!("{CONSOLE_ADMIN_PREFIX}{o}"))),
    );
    Notice {
        to,
        subject: format!("Console account {name} locked after {failures} failed logins"),
        body: format!(
            "The admin console locked the account {name} for {minutes} minutes:\n\
             {failures} logins in a row failed, the last from {source}.\n\
             If that was not {name}, someone is guessing the password:\n\
             give {name} a new password and second factor with\n\
             latchkey-relay admin add-admin {name}\n\
             (which also unlocks the account at once).\n"
        ),
    }
}
