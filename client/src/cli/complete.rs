//! Shell completion. `latchkey completions SHELL` prints a small script
//! that, at each Tab, runs `latchkey` again with [`VAR`] set and the words
//! typed so far; this process then answers from the clap definitions, and a
//! HOST argument is offered the hosts `latchkey hosts` last listed (saved in
//! the device's home), so completing never waits for the relay.

use std::{
    ffi::{OsStr, OsString},
    io::Write,
    path::PathBuf,
    process::ExitCode,
};

use clap_complete::{
    engine::{CompletionCandidate, PathCompleter, ValueCompleter},
    env::{Bash, CompleteEnv, EnvCompleter, Fish, Zsh},
};
use latchkey_client::config::Home;

/// The variable that makes `latchkey` answer a completion request instead
/// of running a command. Named for the product: clap's default, `COMPLETE`,
/// set for some other reason would stop every command.
const VAR: &str = "LATCHKEY_COMPLETE";

/// The program the scripts complete and call: the one on the PATH, as the
/// shell runs it when a person types `latchkey`.
const BIN: &str = "latchkey";

/// The shells `latchkey completions` writes a script for.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum Shell {
    /// GNU Bash.
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
}

impl Shell {
    fn completer(self) -> &'static dyn EnvCompleter {
        match self {
            Self::Bash => &Bash,
            Self::Zsh => &Zsh,
            Self::Fish => &Fish,
        }
    }
}

/// Answers a completion request (when [`VAR`] is set) and exits; returns
/// at once for any other run.
pub(crate) fn answer(command: fn() -> clap::Command) {
    CompleteEnv::with_factory(command)
        .var(VAR)
        .bin(BIN)
        .completer(BIN)
        .complete();
}

/// `latchkey completions SHELL`.
pub(crate) fn print_script(shell: Shell) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    shell
        .completer()
        .write_registration(VAR, BIN, BIN, BIN, &mut out)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The hosts `latchkey hosts` last listed, for a HOST argument.
pub(crate) fn hosts() -> Vec<CompletionCandidate> {
    listed_hosts()
        .into_iter()
        .map(|h| CompletionCandidate::new(h.as_str()))
        .collect()
}

/// A `cp` argument: `HOST:` for the listed hosts, or a local path.
pub(crate) fn host_or_path(current: &OsStr) -> Vec<CompletionCandidate> {
    let typed = current.to_string_lossy();
    let mut offered: Vec<CompletionCandidate> = listed_hosts()
        .into_iter()
        .map(|h| format!("{h}:"))
        .filter(|h| h.starts_with(&*typed))
        .map(CompletionCandidate::new)
        .collect();
    offered.extend(PathCompleter::any().complete(current));
    offered
}

/// The saved host names of the home the command line being completed
/// names, or of the default one; none when nothing was saved.
fn listed_hosts() -> Vec<latchkey_protocol::ids::HostName> {
    let home = Home::locate(home_in(std::env::args_os()).or_else(|| {
        std::env::var_os("LATCHKEY_HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
    }));
    home.listed_hosts().unwrap_or_default()
}

/// The last `--home DIR` (or `--home=DIR`) among the words being completed.
fn home_in(words: impl IntoIterator<Item = OsString>) -> Option<PathBuf> {
    let mut home = None;
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        if word == "--home" {
            home = words.next().map(PathBuf::from);
        } else if let Some(dir) = word.to_str().and_then(|w| w.strip_prefix("--home=")) {
            home = Some(PathBuf::from(dir));
        }
    }
    home
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<OsString> {
        w.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_home_comes_from_the_words_typed() {
        assert_eq!(home_in(words(&["latchkey", "exec", "m"])), None);
        assert_eq!(
            home_in(words(&[
                "latchkey", "--", "latchkey", "--home", "/h", "exec", "m"
            ])),
            Some(PathBuf::from("/h"))
        );
        assert_eq!(
            home_in(words(&["latchkey", "--home=/a", "exec", "--home", "/b"])),
            Some(PathBuf::from("/b"))
        );
    }
}
