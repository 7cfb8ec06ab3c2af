//! Shared access: grant a secondary user a host with the owner's current
//! access code, revoke it, or both in one step.

use std::io::Write;

use latchkey_protocol::{
    ids::{HostName, UserName},
    rights::Rights,
};

use super::{output::emit, AdminError, Context};
use crate::admin::service;

/// `grant`: gives `user` shared access to `host`.
pub(super) fn grant(
    cx: &mut Context<'_>,
    host: &HostName,
    user: &UserName,
    rights: &Rights,
) -> Result<(), AdminError> {
    service::grant(cx.store, host, user, rights, &cx.by)?;
    emit(
        cx,
        &serde_json::json!({
            "granted": true,
            "host": host.as_str(),
            "user": user.as_str(),
            "rights": rights.to_string(),
        }),
        |out| {
            writeln!(
                out,
                "'{user}' now has shared access to '{host}' with the owner's current access code."
            )?;
            if !rights.is_all() {
                writeln!(out, "It allows: {rights}.")?;
            }
            tell_owner(out, user)
        },
    )
}

/// `rights`: sets what `user` may do on `host`.
pub(super) fn set_rights(
    cx: &mut Context<'_>,
    host: &HostName,
    user: &UserName,
    rights: &Rights,
) -> Result<(), AdminError> {
    service::set_rights(cx.store, host, user, rights, &cx.by)?;
    emit(
        cx,
        &serde_json::json!({
            "host": host.as_str(),
            "user": user.as_str(),
            "rights": rights.to_string(),
        }),
        |out| {
            writeln!(
                out,
                "'{user}' may now do on '{host}': {rights}. What they had running that this no \
                 longer allows ends."
            )
        },
    )
}

/// `revoke`: takes `user`'s shared access to `host` away.
pub(super) fn revoke(
    cx: &mut Context<'_>,
    host: &HostName,
    user: &UserName,
) -> Result<(), AdminError> {
    service::revoke(cx.store, host, user, &cx.by)?;
    emit(
        cx,
        &serde_json::json!({"revoked": true, "host": host.as_str(), "user": user.as_str()}),
        |out| writeln!(out, "'{user}' no longer has shared access to '{host}'."),
    )
}

/// `regrant`: revokes and grants again, so `user` gets the current code.
pub(super) fn regrant(
    cx: &mut Context<'_>,
    host: &HostName,
    user: &UserName,
) -> Result<(), AdminError> {
    service::regrant(cx.store, host, user, &cx.by)?;
    emit(
        cx,
        &serde_json::json!({"regranted": true, "host": host.as_str(), "user": user.as_str()}),
        |out| {
            writeln!(
                out,
                "'{user}' has shared access to '{host}' again, with the owner's current access code."
            )?;
            tell_owner(out, user)
        },
    )
}

/// The reminder after a grant: the user logs in with the owner's code, so
/// the owner has to hand it over.
fn tell_owner(out: &mut dyn Write, user: &UserName) -> std::io::Result<()> {
    writeln!(out, "The owner should give '{user}' that code.")
}
