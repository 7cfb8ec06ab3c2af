//! Console admins: add (or reset) one with a one-time setup link, list
//! them, remove one.

use latchkey_protocol::ids::UserName;

use super::{
    output::{emit, print_table, yes},
    AdminError, Context,
};
use crate::admin::{human_time::local_time, service};

/// `add-admin`: creates or resets the admin and prints their setup link.
pub(super) fn add(
    cx: &mut Context<'_>,
    name: &UserName,
    email: Option<&str>,
) -> Result<(), AdminError> {
    let setup = service::add_admin(cx.store, cx.config, name, email, &cx.by)?;
    emit(
        cx,
        &serde_json::json!({"admin": name.as_str(), "setup_link": setup.link, "expires_at": setup.expires_at}),
        |out| {
            writeln!(
                out,
                "# {name} opens this link once, within {} h, to set a password and a second factor:",
                service::ADMIN_SETUP_TTL_SECS / 3600
            )?;
            writeln!(out, "{}", setup.link)
        },
    )
}

/// `admins`: every console admin, enrolled or not, locked or not.
pub(super) fn list(cx: &mut Context<'_>) -> Result<(), AdminError> {
    let admins = cx
        .store
        .admins(cx.config.console_lockout(), crate::clock::now_unix())?;
    let zone = jiff::tz::TimeZone::system();
    emit(cx, &admins, |out| {
        let rows: Vec<Vec<String>> = admins
            .iter()
            .map(|a| {
                vec![
                    a.name.clone(),
                    yes(a.enrolled),
                    a.locked_until
                        .map_or("no".into(), |t| format!("until {}", local_time(t, &zone))),
                    a.email.clone().unwrap_or_default(),
                ]
            })
            .collect();
        print_table(out, &["ADMIN", "ENROLLED", "LOCKED", "EMAIL"], &rows)
    })
}

/// `remove-admin`: deletes the admin, which ends their console sessions.
pub(super) fn remove(cx: &mut Context<'_>, name: &UserName) -> Result<(), AdminError> {
    cx.store
        .remove_admin(name.as_str(), &cx.by, crate::clock::now_unix())?;
    emit(cx, &serde_json::json!({"removed": name.as_str()}), |out| {
        writeln!(
            out,
            "console admin '{name}' removed; their sessions have ended."
        )
    })
}
