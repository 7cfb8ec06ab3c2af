//! The admin console's accounts: a one-time setup link, a password hash
//! and a TOTP secret per admin, and the failures that lock an account.
//! Password and code checks happen in the console (they are slow on
//! purpose); the store records their outcome in one commit with its audit
//! row and, when an account locks, the notices to the other admins.

use std::net::IpAddr;

use serde::Serialize;

use crate::rules::account_lockout::{AccountState, ConsoleLockout};

use super::{
    notice,
    relational::{enqueue, insert_audit, SqlStore},
    sql::{args, Backend, Tx},
    Actor, AuditEvent, Event, StoreError, UnixTime,
};

/// An admin account as the CLI lists it.
#[derive(Clone, Debug, Serialize)]
pub struct AdminRow {
    /// Name.
    pub name: String,
    /// Where lockout notices about other admins go.
    pub email: Option<String>,
    /// Whether the setup link was used (a password and a second factor set).
    pub enrolled: bool,
    /// Until when failed logins locked the account (Unix seconds).
    pub locked_until: Option<UnixTime>,
}

/// What a console login is checked against.
#[derive(Clone)]
pub struct AdminCredentials {
    /// Name.
    pub name: String,
    /// Argon2id, in the PHC string format.
    pub password_hash: String,
    /// The TOTP key.
    pub totp_secret: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for AdminCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminCredentials")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A console login's outcome, once the password and code were checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleLogin {
    /// Both were right; the code was of this TOTP time step.
    Passed {
        /// Codes of this step or older are refused from now on (a code
        /// seen once cannot be replayed).
        totp_step: u64,
    },
    /// The password or the code was wrong (or the name unknown).
    Failed,
}

/// Admin accounts of the console, kept beside the rest of the state.
pub trait AdminAccounts {
    /// Creates admin `name`, or resets an existing one (new password and
    /// second factor, unlocked), with a one-time setup link's digest.
    fn issue_admin_setup(
        &self,
        name: &str,
        email: Option<&str>,
        digest: [u8; 32],
        expires_at: UnixTime,
        by: &Actor,
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// The admin a setup link is for, while it is unused and unexpired.
    fn admin_setup_for(
        &self,
        digest: [u8; 32],
        now: UnixTime,
    ) -> Result<Option<String>, StoreError>;
    /// Uses a setup link, once: sets the password hash and TOTP secret.
    /// The code that proved the secret, of step `totp_step`, counts as
    /// used: it cannot sign in.
    fn finish_admin_setup(
        &self,
        digest: [u8; 32],
        password_hash: &str,
        totp_secret: &[u8],
        totp_step: u64,
        source: IpAddr,
        now: UnixTime,
    ) -> Result<String, StoreError>;
    /// What a login by `name` is checked against, if `name` is an
    /// enrolled admin (whether a lock lets it in is
    /// [`AdminAccounts::console_login`]'s to decide).
    fn admin_credentials(&self, name: &str) -> Result<Option<AdminCredentials>, StoreError>;
    /// Records a console login's outcome: `true` if the admin is now
    /// signed in. A passed check whose code was used before, or by a
    /// locked account, counts as a failure. The `threshold`-th failure in a
    /// row locks the account for a while and tells the other admins.
    fn console_login(
        &self,
        name: &str,
        outcome: ConsoleLogin,
        rule: ConsoleLockout,
        source: IpAddr,
        now: UnixTime,
    ) -> Result<bool, StoreError>;
    /// Every admin account.
    fn admins(&self, rule: ConsoleLockout, now: UnixTime) -> Result<Vec<AdminRow>, StoreError>;
    /// Deletes admin `name`: their sessions end at their next request.
    fn remove_admin(&self, name: &str, by: &Actor, now: UnixTime) -> Result<(), StoreError>;
    /// An admin's email address.
    fn admin_email(&self, name: &str) -> Result<Option<String>, StoreError>;
}

fn console_event<'a>(event: AuditEvent, source: IpAddr, detail: String) -> Event<'a> {
    Event {
        event,
        host: None,
        user: None,
        source: Some(source),
        detail: Some(detail),
    }
}

/// An account's lockout state, if the account exists.
fn account_state(tx: &mut dyn Tx, name: &str) -> Result<Option<AccountState>, StoreError> {
    tx.opt_row(
        "SELECT failures, locked_at FROM admins WHERE name = ?1",
        args![name],
    )?
    .map(|r| {
        Ok(AccountState {
            failures: r.u32(0)?,
            locked_at: r.opt_int(1)?,
        })
    })
    .transpose()
}

/// Records one more failure as [`ConsoleLockout::after_failure`] says and,
/// when it locks the account, tells the other admins.
fn fail(
    tx: &mut dyn Tx,
    name: &str,
    rule: ConsoleLockout,
    source: IpAddr,
    now: UnixTime,
) -> Result<(), StoreError> {
    insert_audit(
        tx,
        &console_event(
            AuditEvent::ConsoleLoginFailed,
            source,
            format!("admin '{}'", name.escape_debug()),
        ),
        now,
    )?;
    let Some(state) = account_state(tx, name)? else {
        return Ok(());
    };
    let (after, locks) = rule.after_failure(&state, now);
    tx.exec(
        "UPDATE admins SET failures = ?1, locked_at = ?2 WHERE name = ?3",
        args![after.failures, after.locked_at, name],
    )?;
    if !locks {
        return Ok(());
    }
    let failures = i64::from(after.failures);
    insert_audit(
        tx,
        &console_event(
            AuditEvent::ConsoleAdminLocked,
            source,
            format!(
                "admin '{}' for {} min after {failures} failed logins",
                name.escape_debug(),
                rule.lasts_secs / 60
            ),
        ),
        now,
    )?;
    let others = tx
        .rows(
            "SELECT name FROM admins WHERE name <> ?1 AND email IS NOT NULL ORDER BY name",
            args![name],
        )?
        .iter()
        .map(|r| r.text(0))
        .collect::<Result<Vec<_>, _>>()?;
    enqueue(
        tx,
        &notice::console_admin_locked(name, failures, rule.lasts_secs / 60, source, &others),
        now,
    )
}

#[allow(private_bounds)]
impl<B: Backend> AdminAccounts for SqlStore<B> {
    fn issue_admin_setup(
        &self,
        name: &str,
        email: Option<&str>,
        digest: [u8; 32],
        expires_at: UnixTime,
        by: &Actor,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec(
                "INSERT INTO admins (name, email, setup_digest, setup_expires_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (name) DO UPDATE SET
                   email = COALESCE(excluded.email, admins.email),
                   password_hash = NULL, totp_secret = NULL, totp_last_step = 0,
                   failures = 0, locked_at = NULL,
                   setup_digest = excluded.setup_digest,
                   setup_expires_at = excluded.setup_expires_at",
                args![name, email, &digest[..], expires_at, now],
            )?;
            insert_audit(
                tx,
                &Event {
                    event: AuditEvent::ConsoleAdminSetup,
                    host: None,
                    user: None,
                    source: by.source,
                    detail: Some(format!(
                        "admin '{}': setup link expires at {expires_at}; {}",
                        name.escape_debug(),
                        by.detail()
                    )),
                },
                now,
            )
        })
    }

    fn admin_setup_for(
        &self,
        digest: [u8; 32],
        now: UnixTime,
    ) -> Result<Option<String>, StoreError> {
        self.read(|tx| {
            tx.opt_row(
                "SELECT name FROM admins WHERE setup_digest = ?1 AND setup_expires_at > ?2",
                args![&digest[..], now],
            )?
            .map(|r| r.text(0))
            .transpose()
        })
    }

    fn finish_admin_setup(
        &self,
        digest: [u8; 32],
        password_hash: &str,
        totp_secret: &[u8],
        totp_step: u64,
        source: IpAddr,
        now: UnixTime,
    ) -> Result<String, StoreError> {
        let step = i64::try_from(totp_step).unwrap_or(i64::MAX);
        self.write(|tx| {
            let name = tx
                .opt_row(
                    "UPDATE admins SET password_hash = ?1, totp_secret = ?2, totp_last_step = ?5,
                       setup_digest = NULL, setup_expires_at = NULL, failures = 0, locked_at = NULL
                     WHERE setup_digest = ?3 AND setup_expires_at > ?4 RETURNING name",
                    args![password_hash, totp_secret, &digest[..], now, step],
                )?
                .ok_or(StoreError::InvalidInvite)?
                .text(0)?;
            insert_audit(
                tx,
                &console_event(
                    AuditEvent::ConsoleAdminEnrolled,
                    source,
                    format!(
                        "admin '{}' set a password and a second factor",
                        name.escape_debug()
                    ),
                ),
                now,
            )?;
            Ok(name)
        })
    }

    fn admin_credentials(&self, name: &str) -> Result<Option<AdminCredentials>, StoreError> {
        self.read(|tx| {
            let Some(r) = tx.opt_row(
                "SELECT name, password_hash, totp_secret
                 FROM admins WHERE name = ?1 AND password_hash IS NOT NULL",
                args![name],
            )?
            else {
                return Ok(None);
            };
            Ok(Some(AdminCredentials {
                name: r.text(0)?,
                password_hash: r.text(1)?,
                totp_secret: zeroize::Zeroizing::new(r.blob(2)?),
            }))
        })
    }

    fn console_login(
        &self,
        name: &str,
        outcome: ConsoleLogin,
        rule: ConsoleLockout,
        source: IpAddr,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            if let ConsoleLogin::Passed { totp_step } = outcome {
                let step = i64::try_from(totp_step).unwrap_or(i64::MAX);
                let open = account_state(tx, name)?.is_some_and(|s| !rule.is_locked(&s, now));
                // A code of a step used before is a replay: a failure.
                let signed_in = open
                    && tx.exec(
                        "UPDATE admins SET failures = 0, totp_last_step = ?1, locked_at = NULL
                         WHERE name = ?2 AND password_hash IS NOT NULL AND totp_last_step < ?1",
                        args![step, name],
                    )? == 1;
                if signed_in {
                    insert_audit(
                        tx,
                        &console_event(
                            AuditEvent::ConsoleLogin,
                            source,
                            format!("admin '{}'", name.escape_debug()),
                        ),
                        now,
                    )?;
                    return Ok(true);
                }
            }
            fail(tx, name, rule, source, now)?;
            Ok(false)
        })
    }

    fn admins(&self, rule: ConsoleLockout, now: UnixTime) -> Result<Vec<AdminRow>, StoreError> {
        self.read(|tx| {
            tx.rows(
                "SELECT name, email, CASE WHEN password_hash IS NULL THEN 0 ELSE 1 END,
                        failures, locked_at
                 FROM admins ORDER BY name",
                args![],
            )?
            .iter()
            .map(|r| {
                let state = AccountState {
                    failures: r.u32(3)?,
                    locked_at: r.opt_int(4)?,
                };
                Ok(AdminRow {
                    name: r.text(0)?,
                    email: r.opt_text(1)?,
                    enrolled: r.flag(2)?,
                    locked_until: rule.locked_until(&state, now),
                })
            })
            .collect()
        })
    }

    fn remove_admin(&self, name: &str, by: &Actor, now: UnixTime) -> Result<(), StoreError> {
        self.write(|tx| {
            if tx.exec("DELETE FROM admins WHERE name = ?1", args![name])? == 0 {
                return Err(StoreError::Refused(format!(
                    "there is no console admin named '{name}'"
                )));
            }
            insert_audit(
                tx,
                &Event {
                    event: AuditEvent::ConsoleAdminRemoved,
                    host: None,
                    user: None,
                    source: by.source,
                    detail: Some(format!("admin '{name}'; {}", by.detail())),
                },
                now,
            )
        })
    }

    fn admin_email(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.read(|tx| {
            Ok(tx
                .opt_row("SELECT email FROM admins WHERE name = ?1", args![name])?
                .map(|r| r.opt_text(0))
                .transpose()?
                .flatten())
        })
    }
}
