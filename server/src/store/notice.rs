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

/// Shared access was revoked: the owner's notice (the revoked user gets
/// [`access_revoked`]).
pub fn revoked(host: &str, owner: &str, user: &str) -> Notice {
    Notice {
        to: vec![(Channel::Email, owner.into()), (Channel::Host, host.into())],
        subject: format!("Shared access to {host} revoked for {user}"),
        body: format!(
            "Your admin revoked {user}'s shared access to {host}.\n\
             Any session {user} had on {host} was ended.\n\
             If {user} knew your access code, we recommend that you\n\
             change it (latchkey host set-code on {host}).\n"
        ),
    }
}

/// Shared access was revoked: the revoked user's notice.
pub fn access_revoked(host: &str, user: &str) -> Notice {
    Notice {
        to: vec![(Channel::Email, user.into())],
        subject: format!("Your shared access to {host} was revoked"),
        body: format!(
            "Your admin revoked your shared access to {host}.\n\
             Any session you had on {host} was ended, and you can no\n\
             longer connect to it. Ask your admin if you still need it.\n"
        ),
    }
}

/// A grant reached its end: the owner's notice.
pub fn grant_expired(host: &str, owner: &str, user: &str) -> Notice {
    Notice {
        to: vec![(Channel::Email, owner.into()), (Channel::Host, host.into())],
        subject: format!("{user}'s shared access to {host} expired"),
        body: format!(
            "{user}'s shared access to {host} reached the end your admin set.\n\
             Any session {user} had on {host} was ended.\n\
             If {user} knew your access code, we recommend that you\n\
             change it (latchkey host set-code on {host}).\n"
        ),
    }
}

/// A grant reached its end: the user's notice.
pub fn access_expired(host: &str, user: &str) -> Notice {
    Notice {
        to: vec![(Channel::Email, user.into())],
        subject: format!("Your shared access to {host} expired"),
        body: format!(
            "Your shared access to {host} reached the end your admin set.\n\
             Any session you had on {host} was ended. Ask your admin if\n\
             you still need it.\n"
        ),
    }
}

/// A shared user's rights changed: the user is told what they may do now.
pub fn rights_changed(host: &str, user: &str, rights: &str) -> Notice {
    Notice {
        to: vec![(Channel::Email, user.into())],
        subject: format!("Your rights on {host} changed"),
        body: format!(
            "Your admin changed what your shared access to {host} allows.\n\
             It now allows: {rights}.\n\
             Anything you had running that it no longer allows was ended.\n"
        ),
    }
}

/// A user was removed: the owner of each host they shared is told.
pub fn user_removed(host: &str, owner: &str, user: &str) -> Notice {
    Notice {
        to: vec![(Channel::Email, owner.into()), (Channel::Host, host.into())],
        subject: format!("{user} was removed: their shared access to {host} ended"),
        body: format!(
            "Your admin removed {user} from Latchkey.\n\
             Their shared access to {host} ended, and any session they\n\
             had on {host} was ended.\n\
             If {user} knew your access code, we recommend that you\n\
             change it (latchkey host set-code on {host}).\n"
        ),
    }
}

/// A host was removed: its owner's notice.
pub fn host_removed(host: &str, owner: &str, shared: &[String]) -> Notice {
    let shared = match shared {
        [] => String::new(),
        users => format!(
            "The shared access of {} to it ended too.\n",
            users.join(", ")
        ),
    };
    Notice {
        to: vec![(Channel::Email, owner.into())],
        subject: format!("{host} was removed from Latchkey"),
        body: format!(
            "Your admin removed your host {host} from Latchkey.\n\
             Every session on {host} was ended, and its agent can no\n\
             longer connect: stop the agent on {host}, or ask your\n\
             admin for a new invite to use it again.\n\
             {shared}"
        ),
    }
}

/// A host was removed: the notice to each user who had shared access.
pub fn host_removed_for_user(host: &str, user: &str) -> Notice {
    Notice {
        to: vec![(Channel::Email, user.into())],
        subject: format!("{host} was removed: your shared access ended"),
        body: format!(
            "Your admin removed the host {host} from Latchkey.\n\
             Your shared access to it ended, and any session you had\n\
             on it was ended.\n"
        ),
    }
}

/// How long a secondary user goes without a session before their next
/// session's end mails the owner again: one recommendation to change the
/// code per run of sessions.
pub const SESSION_RUN_GAP_SECS: i64 = 3600;

/// A secondary user's session ended (SPEC S3), the first of a run.
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
