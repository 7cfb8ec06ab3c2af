//! Shared access: grant a secondary user a host with the owner's current
//! access code, revoke it, or both in one step.

use std::io::Write;

use latchkey_protocol::{
    ids::{HostName, UserName},
    rights::Rights,
};

use super::{output::emit, AdminError, Context};
use crate::{
    admin::{human_time, service},
    store::GrantTerms,
};

/// `grant`: gives `user` shared access to `host`.
pub(super) fn grant(
    cx: &mut Context<'_>,
    host: &HostName,
    user: &UserName,
    terms: &GrantTerms,
) -> Result<(), AdminError> {
    service::grant(cx.store, host, user, terms, &cx.by)?;
    let rights = &terms.rights;
    let zone = jiff::tz::TimeZone::system();
    emit(
        cx,
        &serde_json::json!({
            "granted": true,
            "host": host.as_str(),
            "user": user.as_str(),
            "rights": rights.to_string(),
            "expires_at": terms.expires_at.map(|at| human_time::iso_time(at, &zone)),
        }),
        |out| {
            writeln!(
                out,
                "'{user}' now has shared access to '{host}' with the owner's current access code."
            )?;
            if !rights.is_all() {
                writeln!(out, "It allows: {rights}.")?;
            }
            if let Some(at) = terms.expires_at {
                writeln!(
                    out,
                    "It ends by itself at {}, as a revoke would.",
                    human_time::local_time(at, &zone)
                )?;
            }
            tell_owner(out, user)
        },
    )
}

/// `--until`: a local date and time (`2026-12-31T18:00`), or a timestamp
/// with its offset.
pub(super) fn parse_until(s: &str) -> Result<jiff::Timestamp, String> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    match s.parse::<jiff::civil::DateTime>() {
        Ok(dt) => dt
            .to_zoned(jiff::tz::TimeZone::system())
            .map(|z| z.timestamp())
            .map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "'{s}' is not a time: give a local date and time (2026-12-31T18:00) or a \
             timestamp (2026-12-31T18:00:00Z)"
        )),
    }
}

/// When a grant given `--for` or `--until` ends (Unix seconds).
pub(super) fn grant_end(
    lasting: Option<&jiff::Span>,
    until: Option<&jiff::Timestamp>,
) -> Result<Option<crate::store::UnixTime>, AdminError> {
    let end = match (lasting, until) {
        (Some(span), _) => jiff::Zoned::now()
            .checked_add(*span)
            .map(|z| z.timestamp())
            .map_err(|e| AdminError::Input(format!("--for {span}: {e}")))?,
        (None, Some(at)) => *at,
        (None, None) => return Ok(None),
    };
    Ok(Some(end.as_second()))
}

/// `rights`: sets what `user` may do on `host`.
pub(super) fn set_rights(
    cx: &mut Context<'_>,
    host: &HostName,
    user: &UserName,
    rights: &Rights,
    idle_secs: Option<u32>,
) -> Result<(), AdminError> {
    service::set_rights(cx.store, host, user, rights, idle_secs, &cx.by)?;
    emit(
        cx,
        &serde_json::json!({
            "host": host.as_str(),
            "user": user.as_str(),
            "rights": rights.to_string(),
            "idle_secs": idle_secs,
        }),
        |out| {
            writeln!(
                out,
                "'{user}' may now do on '{host}': {rights}. What they had running that this no \
                 longer allows ends."
            )?;
            if let Some(secs) = idle_secs {
                writeln!(
                    out,
                    "A session of theirs ends after {secs} s without channel traffic."
                )?;
            }
            Ok(())
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
