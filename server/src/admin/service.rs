//! What an admin can do, once, for both the CLI (`admin`) and the web
//! console: each action is one store call that applies the rules and
//! writes its audit row with who acted ([`Actor`]). Live sessions learn of
//! a change from that audit row (`notify::admin_actions`), whichever
//! process made it.

use std::net::SocketAddr;

use latchkey_protocol::{
    ids::{HostName, RelayPin, TokenSecret, UserName},
    invite::{Invite, MAX_RELAYS},
    rights::{Rights, RightsError},
    text,
};
use rand::{rngs::OsRng, RngCore};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::{
    clock::now_unix,
    config::Config,
    rules::lease,
    store::{Actor, GrantTerms, InviteKind, Removal, Store, StoreError, Unlock},
};

/// Errors of admin actions.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The relay's address is unknown.
    #[error("the relay's address is unknown: start it once (latchkey-relay serve) or set public_addr in its config")]
    NoAddress,
    /// The console's address is unknown.
    #[error(
        "the console's address is unknown: set admin_public_url, or admin_listen to an address"
    )]
    NoConsole,
    /// Not an email address.
    #[error("'{}' is not an email address", .0.escape_debug())]
    BadEmail(String),
    /// Rights that cannot be given.
    #[error(transparent)]
    Rights(#[from] RightsError),
    /// Not an idle limit.
    #[error("'{}' is not an idle limit: give a duration from 1s to 7d, such as 15m", .0.escape_debug())]
    BadIdle(String),
}

/// An invite token, shown once.
pub struct Invitation {
    /// The token to give the device.
    pub token: String,
    /// When it stops working (Unix seconds).
    pub expires_at: i64,
    /// Whether it enrolls a host.
    pub is_host: bool,
}

/// A one-time link that lets an admin set their password and second factor.
pub struct AdminSetup {
    /// The link.
    pub link: String,
    /// When it stops working (Unix seconds).
    pub expires_at: i64,
}

/// How long a console setup link works.
pub const ADMIN_SETUP_TTL_SECS: i64 = 24 * 3600;

/// The store key of the console's address, written by the relay at start
/// (exact even when it bound port 0).
pub const CONSOLE_URL_META: &str = "console_url";

/// The addresses put into invite tokens: `public_addr` if set, then those
/// of the relays serving the store now (their heartbeats say where they
/// are reached). With none of these: the address the relay last bound
/// (exact even for port 0), or the configured one, so an invite made while
/// the relay starts works.
fn relay_addresses(config: &Config, store: &dyn Store) -> Result<Vec<String>, ServiceError> {
    let live_after = lease::alive_since(now_unix());
    let mut all: Vec<String> = config.public_addr.iter().cloned().collect();
    for addr in store.relay_addrs(live_after)? {
        if !all.contains(&addr) && all.len() < MAX_RELAYS {
            all.push(addr);
        }
    }
    if all.is_empty() {
        let addr: SocketAddr = match store.meta("listen_addr")? {
            Some(listen) => listen.parse().map_err(|_| ServiceError::NoAddress)?,
            None if config.listen.port() != 0 => config.listen,
            None => return Err(ServiceError::NoAddress),
        };
        all.push(reachable(addr).to_string());
    }
    Ok(all)
}

/// `addr` as a device on this machine reaches it: loopback for an
/// unspecified IP.
pub(crate) fn reachable(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            [127, 0, 0, 1].into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    addr
}

/// Creates the user or host (if new) and a one-time invite for its device.
pub fn invite(
    store: &dyn Store,
    config: &Config,
    pin: &RelayPin,
    name: &str,
    kind: InviteKind,
    by: &Actor,
) -> Result<Invitation, ServiceError> {
    if let InviteKind::User { email: Some(e) } = &kind {
        check_email(e)?;
    }
    let relays = relay_addresses(config, store)?;
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let secret = TokenSecret(secret);
    let now = now_unix();
    let expires_at = now + i64::try_from(config.invite_ttl_secs).unwrap_or(i64::MAX / 2);
    store.create_invite(name, &kind, secret.digest(), expires_at, by, now)?;
    let is_host = matches!(kind, InviteKind::Host { .. });
    let token = Invite {
        relays,
        pin: *pin,
        secret,
        for_host: is_host,
    }
    .to_text();
    Ok(Invitation {
        token,
        expires_at,
        is_host,
    })
}

/// Gives `user` shared access to `host` with the owner's current code, on
/// `terms`.
pub fn grant(
    store: &dyn Store,
    host: &HostName,
    user: &UserName,
    terms: &GrantTerms,
    by: &Actor,
) -> Result<(), ServiceError> {
    Ok(store.grant(host, user, terms, by, now_unix())?)
}

/// Sets what `user` may do on `host`; running channels the new rights do
/// not allow end.
pub fn set_rights(
    store: &dyn Store,
    host: &HostName,
    user: &UserName,
    rights: &Rights,
    idle_secs: Option<u32>,
    by: &Actor,
) -> Result<(), ServiceError> {
    Ok(store.set_rights(host, user, rights, idle_secs, by, now_unix())?)
}

/// An idle limit as given (`15m`, `1h 30m`, `90s`), in whole seconds:
/// at least a second, at most a week.
pub fn idle_limit(text: &str) -> Result<u32, ServiceError> {
    let bad = || ServiceError::BadIdle(text.to_string());
    let d: jiff::SignedDuration = text.trim().parse().map_err(|_| bad())?;
    let secs = u32::try_from(d.as_secs()).map_err(|_| bad())?;
    if !(1..=7 * 86_400).contains(&secs) {
        return Err(bad());
    }
    Ok(secs)
}

/// `allow` narrowed to forward only to `forward_to`, for the CLI and the
/// console alike; no targets named: any target the host allows.
pub fn rights_from(allow: &Rights, forward_to: &[SocketAddr]) -> Result<Rights, ServiceError> {
    let rights = allow.clone();
    if forward_to.is_empty() {
        return Ok(rights);
    }
    Ok(rights.forwarding_only_to(forward_to.to_vec())?)
}

/// Takes `user`'s shared access to `host` away; their sessions end.
pub fn revoke(
    store: &dyn Store,
    host: &HostName,
    user: &UserName,
    by: &Actor,
) -> Result<(), ServiceError> {
    Ok(store.revoke(host, user, by, now_unix())?)
}

/// Revokes and grants again in one commit: `user` inherits the owner's
/// current code.
pub fn regrant(
    store: &dyn Store,
    host: &HostName,
    user: &UserName,
    by: &Actor,
) -> Result<(), ServiceError> {
    Ok(store.regrant(host, user, by, now_unix())?)
}

/// Removes a user who left (their history stays); refused while they own
/// a host.
pub fn remove_user(
    store: &dyn Store,
    user: &UserName,
    by: &Actor,
) -> Result<Removal, ServiceError> {
    Ok(store.remove_user(user, by, now_unix())?)
}

/// Removes a host (its history stays).
pub fn remove_host(
    store: &dyn Store,
    host: &HostName,
    by: &Actor,
) -> Result<Removal, ServiceError> {
    Ok(store.remove_host(host, by, now_unix())?)
}

/// Unlocks `host` and clears its failure count, if there is anything to
/// unlock or clear.
pub fn unlock(store: &dyn Store, host: &HostName, by: &Actor) -> Result<Unlock, ServiceError> {
    Ok(store.unlock(host, by, now_unix())?)
}

/// Changes a host's shared-access policy. With no setting given nothing
/// changes, so nothing is written (an audit row saying "unchanged" twice
/// would only be noise).
pub fn set_policy(
    store: &dyn Store,
    host: &HostName,
    shared_access: Option<bool>,
    lockout_threshold: Option<u32>,
    by: &Actor,
) -> Result<(), ServiceError> {
    if shared_access.is_none() && lockout_threshold.is_none() {
        return Ok(());
    }
    Ok(store.set_policy(host, shared_access, lockout_threshold, by, now_unix())?)
}

/// Sets (or clears) where a user's notices are emailed.
pub fn set_email(
    store: &dyn Store,
    user: &UserName,
    address: Option<&str>,
    by: &Actor,
) -> Result<(), ServiceError> {
    if let Some(a) = address {
        check_email(a)?;
    }
    Ok(store.set_email(user, address, by, now_unix())?)
}

/// Where notices may be emailed: one address as SMTP takes it (no name,
/// no line breaks), so no stored address can add a header to a notice or
/// escape sequences to the CLI's output.
fn check_email(address: &str) -> Result<(), ServiceError> {
    // Control and format characters (C0, C1, bidirectional overrides)
    // would reach a terminal or a mail header as they are.
    let printable = !address.chars().any(text::is_hidden);
    match address.parse::<lettre::Address>() {
        Ok(_) if printable && address.len() <= 254 => Ok(()),
        _ => Err(ServiceError::BadEmail(address.to_string())),
    }
}

/// The digest under which a console setup token is stored.
pub fn setup_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Creates (or resets) console admin `name` and returns their one-time
/// setup link.
pub fn add_admin(
    store: &dyn Store,
    config: &Config,
    name: &UserName,
    email: Option<&str>,
    by: &Actor,
) -> Result<AdminSetup, ServiceError> {
    if let Some(e) = email {
        check_email(e)?;
    }
    let base = console_url(config, store)?;
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let token = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, secret);
    let now = now_unix();
    let expires_at = now + ADMIN_SETUP_TTL_SECS;
    store.issue_admin_setup(
        name.as_str(),
        email,
        setup_digest(&token),
        expires_at,
        by,
        now,
    )?;
    Ok(AdminSetup {
        link: format!("{}/setup/{token}", base.trim_end_matches('/')),
        expires_at,
    })
}

/// The console's address as admins open it.
fn console_url(config: &Config, store: &dyn Store) -> Result<String, ServiceError> {
    if let Some(url) = &config.admin_public_url {
        return Ok(url.clone());
    }
    if let Some(url) = store.meta(CONSOLE_URL_META)? {
        return Ok(url);
    }
    match config.console_listen() {
        Ok(Some(addr)) if addr.port() != 0 => Ok(console_url_for(config, addr)),
        _ => Err(ServiceError::NoConsole),
    }
}

/// The console's URL when it listens on `addr`.
pub fn console_url_for(config: &Config, addr: SocketAddr) -> String {
    let addr = reachable(addr);
    let scheme = if config.admin_tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{addr}")
}
