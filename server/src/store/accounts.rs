//! The admin console's accounts: a one-time setup link, a password hash
//! and a TOTP secret per admin, and the failures that lock an account.
//! Password and code checks happen in the console (they are slow on
//! purpose); the store records their outcome in one commit with its audit
//! row and, when an account locks, the notices to the other admins.

use std::net::IpAddr;

use serde::Serialize;

use super::{
    notice,
    relational::{enqueue, insert_audit, SqlStore},
    sql::{args, Backend, Tx},
    Actor, Event, StoreError, UnixTime,
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

/// The console's lockout rule: `threshold` failed logins in a row lock an
/// account for `lasts_secs` (then the next failure starts a new count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsoleLockout {
    /// Failures in a row that lock.
    pub threshold: u32,
    /// How long a lock lasts.
    pub lasts_secs: i64,
}

impl ConsoleLockout {
    /// Locks taken at or before this time have ended.
    fn ended_before(&self, now: UnixTime) -> UnixTime {
        now.saturating_sub(self.lasts_secs.max(0))
    }
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
    fn finish_admin_setup(
        &self,
        digest: [u8; 32],
        password_hash: &str,
        totp_secret: &[u8],
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

fn console_event<'a>(event: &'a str, source: IpAddr, detail: String) -> Event<'a> {
    Event {
        event,
        host: None,
        user: None,
        source: Some(source),
        detail: Some(detail),
    }
}

/// The failure count after one more failure, locking at `threshold`.
fn fail(
    tx: &mut dyn Tx,
    name: &str,
    rule: ConsoleLockout,
    source: IpAddr,
    now: UnixTime,
) -> Result<(), StoreError> {
    // A lock that has ended starts a new count.
    let counted = tx.opt_row(
        "UPDATE admins SET
           failures = CASE WHEN locked_at IS NOT NULL AND locked_at <= ?2 THEN 1
                           ELSE failures + 1 END,
           locked_at = CASE WHEN locked_at IS NOT NULL AND locked_at <= ?2 THEN NULL
                            ELSE locked_at END
         WHERE name = ?1
         RETURNING failures, CASE WHEN locked_at IS NULL THEN 0 ELSE 1 END",
        args![name, rule.ended_before(now)],
    )?;
    insert_audit(
        tx,
        &console_event(
            "console-login-failed",
            source,
            format!("admin '{}'", name.escape_debug()),
        ),
        now,
    )?;
    let Some(row) = counted else {
        return Ok(());
    };
    let (failures, locked) = (row.int(0)?, row.flag(1)?);
    if locked || failures < i64::from(rule.threshold.max(1)) {
        return Ok(());
    }
    tx.exec(
        "UPDATE admins SET locked_at = ?1 WHERE name = ?2",
        args![now, name],
    )?;
    insert_audit(
        tx,
        &console_event(
            "console-admin-locked",
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
                    event: "console-admin-setup",
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
        source: IpAddr,
        now: UnixTime,
    ) -> Result<String, StoreError> {
        self.write(|tx| {
            let name = tx
                .opt_row(
                    "UPDATE admins SET password_hash = ?1, totp_secret = ?2,
                       setup_digest = NULL, setup_expires_at = NULL, failures = 0, locked_at = NULL
                     WHERE setup_digest = ?3 AND setup_expires_at > ?4 RETURNING name",
                    args![password_hash, totp_secret, &digest[..], now],
                )?
                .ok_or(StoreError::InvalidInvite)?
                .text(0)?;
            insert_audit(
                tx,
                &console_event(
                    "console-admin-enrolled",
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
                let signed_in = tx.exec(
                    "UPDATE admins SET failures = 0, totp_last_step = ?1, locked_at = NULL
                     WHERE name = ?2 AND (locked_at IS NULL OR locked_at <= ?3)
                       AND password_hash IS NOT NULL AND totp_last_step < ?1",
                    args![step, name, rule.ended_before(now)],
                )?;
                if signed_in == 1 {
                    insert_audit(
                        tx,
                        &console_event(
                            "console-login",
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
                        CASE WHEN locked_at IS NOT NULL AND locked_at > ?1 THEN locked_at END
                 FROM admins ORDER BY name",
                args![rule.ended_before(now)],
            )?
            .iter()
            .map(|r| {
                Ok(AdminRow {
                    name: r.text(0)?,
                    email: r.opt_text(1)?,
                    enrolled: r.flag(2)?,
                    locked_until: r.opt_int(3)?.map(|at| at + rule.lasts_secs),
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
                    event: "console-admin-removed",
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
