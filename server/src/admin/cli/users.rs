//! Users: invite one (a token for their device), set where their notices
//! are emailed, list them, remove one.

use latchkey_protocol::ids::UserName;

use super::{
    output::{emit, invite_and_show, print_table, printable, yes},
    AdminError, Context,
};
use crate::{admin::service, store::InviteKind};

/// `invite-user`: creates the user if new and prints a token for their device.
pub(super) fn invite(
    cx: &mut Context<'_>,
    name: &UserName,
    email: Option<&str>,
) -> Result<(), AdminError> {
    let kind = InviteKind::User {
        email: email.map(str::to_owned),
    };
    invite_and_show(cx, name.as_str(), kind)
}

/// `set-email`: sets or clears where the user's notices go.
pub(super) fn set_email(
    cx: &mut Context<'_>,
    user: &UserName,
    address: Option<&str>,
) -> Result<(), AdminError> {
    service::set_email(cx.store, user, address, &cx.by)?;
    emit(
        cx,
        &serde_json::json!({"user": user.as_str(), "email": address}),
        |out| match address {
            Some(a) => writeln!(out, "notices for '{user}' go to {}", printable(a)),
            None => writeln!(out, "'{user}' gets no email notices"),
        },
    )
}

/// `remove-user`: offboards a user.
pub(super) fn remove(cx: &mut Context<'_>, name: &UserName) -> Result<(), AdminError> {
    let removed = service::remove_user(cx.store, name, &cx.by)?;
    emit(cx, &removed, |out| {
        writeln!(
            out,
            "removed user '{name}': their device can no longer log in."
        )?;
        match removed.grants.as_slice() {
            [] => writeln!(out, "They had no shared access.")?,
            hosts => writeln!(
                out,
                "Their shared access to {} ended, with any session on it; the owners are emailed.",
                hosts.join(", ")
            )?,
        }
        if let Some(invites) = removed.invites_sentence() {
            writeln!(out, "{invites}")?;
        }
        writeln!(out, "Their audit history stays (admin audit).")
    })
}

/// `users`: every user, whether their device enrolled, and their email.
pub(super) fn list(cx: &mut Context<'_>) -> Result<(), AdminError> {
    let users = cx.store.users()?;
    emit(cx, &users, |out| {
        let rows: Vec<Vec<String>> = users
            .iter()
            .map(|u| {
                vec![
                    u.name.clone(),
                    yes(u.enrolled),
                    u.email.clone().unwrap_or_default(),
                ]
            })
            .collect();
        print_table(out, &["USER", "ENROLLED", "EMAIL"], &rows)
    })
}
