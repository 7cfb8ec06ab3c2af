//! Every path the console serves, named once: the router and the pages'
//! links and forms use these, so a link cannot point where nothing is.

/// The overview.
pub(crate) const OVERVIEW: &str = "/";
/// Sign in (GET shows the form, POST checks it).
pub(crate) const LOGIN: &str = "/login";
/// Sign out.
pub(crate) const LOGOUT: &str = "/logout";
/// A setup link (`/setup/TOKEN`).
pub(crate) const SETUP: &str = "/setup/{token}";
/// Every host.
pub(crate) const HOSTS: &str = "/hosts";
/// One host (`/hosts/NAME`).
pub(crate) const HOST: &str = "/hosts/{host}";
/// Actions on one host (`/hosts/NAME/ACTION`).
pub(crate) const HOST_ACTION: &str = "/hosts/{host}/{action}";
/// Invite a host.
pub(crate) const INVITE_HOST: &str = "/invite/host";
/// Every user.
pub(crate) const USERS: &str = "/users";
/// Invite a user.
pub(crate) const INVITE_USER: &str = "/invite/user";
/// Set a user's email (`/users/NAME/email`).
pub(crate) const USER_EMAIL: &str = "/users/{user}/email";
/// Remove a user (`/users/NAME/remove`): asks first.
pub(crate) const USER_REMOVE: &str = "/users/{user}/remove";
/// The audit log.
pub(crate) const AUDIT: &str = "/audit";
/// The notices.
pub(crate) const OUTBOX: &str = "/outbox";
/// Live host status, as server-sent events.
pub(crate) const EVENTS: &str = "/events";

/// The page of host `name`.
pub(crate) fn host(name: &str) -> String {
    format!("/hosts/{name}")
}

/// An action on host `name` (`grant`, `revoke`, `regrant`, `unlock`,
/// `policy`, `remove`).
pub(crate) fn host_action(name: &str, action: &str) -> String {
    format!("/hosts/{name}/{action}")
}

/// Where a user's email is set.
pub(crate) fn user_email(name: &str) -> String {
    format!("/users/{name}/email")
}

/// Where a user is removed.
pub(crate) fn user_remove(name: &str) -> String {
    format!("/users/{name}/remove")
}

/// A setup link's path.
pub(crate) fn setup(token: &str) -> String {
    format!("/setup/{token}")
}
