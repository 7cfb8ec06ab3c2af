//! The names of audit events, in one place: the store writes them, the
//! relay's feed of admin actions and the console read them back. A name,
//! once written, is never renamed (rows written by older relays keep it).

use std::fmt;

/// What an audit row records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuditEvent {
    /// A right code: a session may start.
    LoginOk,
    /// A wrong (or abandoned) code, counted against the host.
    LoginFailed,
    /// An outsider's login, or a right code that may not start a session.
    LoginRefused,
    /// A login refused because the host is locked.
    LoginLocked,
    /// A login refused because attempts in flight use up the host's budget.
    LoginBusy,
    /// The host locked after too many failures.
    HostLocked,
    /// An admin unlocked a host.
    Unlock,
    /// Shared access granted.
    Grant,
    /// A shared user's rights changed (running channels they no longer
    /// allow end).
    Rights,
    /// Shared access revoked (live sessions end).
    Revoke,
    /// A grant reached its end (as a revoke: live sessions end).
    GrantExpired,
    /// A user was removed: their device and grants end, their history stays.
    UserRemoved,
    /// A host was removed: its device, grants and sessions end.
    HostRemoved,
    /// A host's sharing policy changed.
    Policy,
    /// An invite was created.
    InviteCreated,
    /// A device enrolled (again, if it had before).
    Enrolled,
    /// An invite was refused at enrolment.
    EnrollRefused,
    /// The owner set a new access code.
    CodeChanged,
    /// A grant's code was reset on the host.
    CodeReset,
    /// A user's email address changed.
    EmailChanged,
    /// A session started.
    SessionStart,
    /// A session ended (or left this relay to continue elsewhere).
    SessionEnd,
    /// A session resumed with its ticket.
    SessionResume,
    /// A session's resume was refused.
    SessionResumeRefused,
    /// A reboot was asked for.
    Reboot,
    /// A host's reboot command failed.
    RebootFailed,
    /// A rebooted host presented its ticket.
    Resume,
    /// A rebooted host's ticket was refused.
    ResumeRefused,
    /// A host key connected from two places at once.
    HostKeyTwice,
    /// A silent host connection was replaced by a newer one.
    HostReplaced,
    /// A console admin signed in.
    ConsoleLogin,
    /// A console sign-in failed.
    ConsoleLoginFailed,
    /// A console admin's account locked.
    ConsoleAdminLocked,
    /// A console admin's setup link was issued.
    ConsoleAdminSetup,
    /// A console admin set a password and a second factor.
    ConsoleAdminEnrolled,
    /// A console admin was removed.
    ConsoleAdminRemoved,
}

impl AuditEvent {
    /// Every event, in the order the console offers them as filters.
    pub const ALL: &'static [Self] = &[
        Self::LoginOk,
        Self::LoginFailed,
        Self::LoginLocked,
        Self::LoginBusy,
        Self::LoginRefused,
        Self::HostLocked,
        Self::Unlock,
        Self::Grant,
        Self::Rights,
        Self::Revoke,
        Self::GrantExpired,
        Self::UserRemoved,
        Self::HostRemoved,
        Self::Policy,
        Self::InviteCreated,
        Self::Enrolled,
        Self::EnrollRefused,
        Self::CodeChanged,
        Self::CodeReset,
        Self::EmailChanged,
        Self::SessionStart,
        Self::SessionEnd,
        Self::SessionResume,
        Self::SessionResumeRefused,
        Self::Reboot,
        Self::RebootFailed,
        Self::Resume,
        Self::ResumeRefused,
        Self::HostKeyTwice,
        Self::HostReplaced,
        Self::ConsoleLogin,
        Self::ConsoleLoginFailed,
        Self::ConsoleAdminLocked,
        Self::ConsoleAdminSetup,
        Self::ConsoleAdminEnrolled,
        Self::ConsoleAdminRemoved,
    ];

    /// The name the audit log shows and filters match.
    pub const fn name(self) -> &'static str {
        match self {
            Self::LoginOk => "login-ok",
            Self::LoginFailed => "login-failed",
            Self::LoginRefused => "login-refused",
            Self::LoginLocked => "login-locked",
            Self::LoginBusy => "login-busy",
            Self::HostLocked => "host-locked",
            Self::Unlock => "unlock",
            Self::Grant => "grant",
            Self::Rights => "rights",
            Self::Revoke => "revoke",
            Self::GrantExpired => "grant-expired",
            Self::UserRemoved => "user-removed",
            Self::HostRemoved => "host-removed",
            Self::Policy => "policy",
            Self::InviteCreated => "invite-created",
            Self::Enrolled => "enrolled",
            Self::EnrollRefused => "enroll-refused",
            Self::CodeChanged => "code-changed",
            Self::CodeReset => "code-reset",
            Self::EmailChanged => "email-changed",
            Self::SessionStart => "session-start",
            Self::SessionEnd => "session-end",
            Self::SessionResume => "session-resume",
            Self::SessionResumeRefused => "session-resume-refused",
            Self::Reboot => "reboot",
            Self::RebootFailed => "reboot-failed",
            Self::Resume => "resume",
            Self::ResumeRefused => "resume-refused",
            Self::HostKeyTwice => "host-key-twice",
            Self::HostReplaced => "host-replaced",
            Self::ConsoleLogin => "console-login",
            Self::ConsoleLoginFailed => "console-login-failed",
            Self::ConsoleAdminLocked => "console-admin-locked",
            Self::ConsoleAdminSetup => "console-admin-setup",
            Self::ConsoleAdminEnrolled => "console-admin-enrolled",
            Self::ConsoleAdminRemoved => "console-admin-removed",
        }
    }

    /// The event a stored name stands for (`None` for a name this relay
    /// does not know, written by a newer one).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|e| e.name() == name)
    }
}

impl fmt::Display for AuditEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_has_its_own_name_and_reads_back() {
        let mut names: Vec<_> = AuditEvent::ALL.iter().map(|e| e.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), AuditEvent::ALL.len());
        for e in AuditEvent::ALL {
            assert_eq!(AuditEvent::from_name(e.name()), Some(*e));
        }
        assert_eq!(AuditEvent::from_name("no-such-event"), None);
    }
}
