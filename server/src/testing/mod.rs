//! Test-only helpers, never part of a release relay's behaviour: fault
//! injection on the login path (cargo feature `fault-injection`, a no-op
//! without it) and a private PostgreSQL server for tests (feature
//! `test-postgres`).

pub mod fault;
#[cfg(any(test, feature = "test-postgres"))]
pub mod postgres;

/// A real program a test needs (`what`, as `started` tried to start it),
/// or why not: outside CI the test is skipped with the reason printed
/// (`None`); in CI (`CI` set), whose machine installs every such program,
/// it is a failure.
pub fn needed_in_ci<T, E: std::fmt::Display>(
    test: &str,
    what: &str,
    started: Result<T, E>,
) -> Option<T> {
    match started {
        Ok(started) => Some(started),
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("{test}: {what} is needed in CI and could not start: {why:#}")
        }
        Err(why) => {
            eprintln!("skipping {test}: cannot start {what} here: {why:#}");
            None
        }
    }
}
