//! Getting an access code from a person or a script: the
//! `LATCHKEY_ACCESS_CODE` variable, one line of standard input
//! (`--code-stdin`), or a prompt on the terminal without echo.

use std::io::BufRead;

use latchkey_protocol::{
    ids::AccessCode,
    limits::{MAX_ACCESS_CODE_LEN, MIN_ACCESS_CODE_LEN},
};
use thiserror::Error;
use zeroize::Zeroizing;

/// The variable scripts may set instead of typing the code.
pub const CODE_ENV: &str = "LATCHKEY_ACCESS_CODE";

/// Tries a person gets to type a new code that keeps the length rule and
/// is typed the same twice.
pub const NEW_CODE_TRIES: usize = 3;

/// Errors reading a code.
#[derive(Debug, Error)]
pub enum CodeError {
    /// Reading failed (the cause follows in the error's chain).
    #[error("cannot read the access code")]
    Io(#[from] std::io::Error),
    /// No code in the environment or on standard input, and no terminal
    /// to ask on (a script, a service, ssh's ProxyCommand without one).
    #[error("no terminal to ask for the access code on: set {CODE_ENV} or pass --code-stdin")]
    NoTerminal,
    /// Every try at typing a new code failed.
    #[error("no access code set after {tries} tries (the last: {last}); nothing was changed")]
    NoNewCode {
        /// How many tries.
        tries: usize,
        /// What was wrong with the last.
        last: String,
    },
    /// The code breaks the length rules.
    #[error(transparent)]
    Invalid(#[from] latchkey_protocol::ParseError),
}

fn read_stdin_line() -> Result<Zeroizing<String>, CodeError> {
    let mut line = Zeroizing::new(String::new());
    std::io::stdin().lock().read_line(&mut line)?;
    let trimmed = Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_string());
    Ok(trimmed)
}

fn source(from_stdin: bool, prompt: &str) -> Result<Zeroizing<String>, CodeError> {
    if from_stdin {
        return read_stdin_line();
    }
    if let Ok(code) = std::env::var(CODE_ENV) {
        return Ok(Zeroizing::new(code));
    }
    rpassword::prompt_password(prompt)
        .map(Zeroizing::new)
        .map_err(|e| {
            if no_terminal(&e) {
                CodeError::NoTerminal
            } else {
                e.into()
            }
        })
}

/// Whether a prompt failed for want of a terminal: the process has no
/// controlling terminal to open (`/dev/tty`).
fn no_terminal(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    {
        e.raw_os_error() == Some(nix::errno::Errno::ENXIO as i32)
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// Reads the code for a login.
pub fn for_login(from_stdin: bool, host: &str) -> Result<AccessCode, CodeError> {
    let code = source(from_stdin, &format!("Access code for {host}: "))?;
    Ok(AccessCode::for_login(code.to_string())?)
}

/// The rule a new code must keep, said before a person types one.
pub fn new_code_rule() -> String {
    format!(
        "An access code is {MIN_ACCESS_CODE_LEN} to {MAX_ACCESS_CODE_LEN} bytes long \
         (a phrase with spaces works)."
    )
}

/// Reads a new code. A script's (standard input, the environment) is read
/// once; a person is told the rule first, types the code twice, and is
/// asked again after a code that breaks the rule or a repeat that differs,
/// [`NEW_CODE_TRIES`] times in all.
pub fn new_code(from_stdin: bool) -> Result<AccessCode, CodeError> {
    if from_stdin || std::env::var(CODE_ENV).is_ok() {
        let code = source(from_stdin, "")?;
        return Ok(AccessCode::new(code.to_string())?);
    }
    // Said in the prompt: it goes to the terminal the person types at.
    let mut said = new_code_rule();
    let mut last = String::new();
    for _ in 0..NEW_CODE_TRIES {
        let first = Zeroizing::new(rpassword::prompt_password(format!(
            "{said}\nNew access code: "
        ))?);
        match AccessCode::new(first.to_string()) {
            Err(e) => last = e.to_string(),
            Ok(code) => {
                let again =
                    Zeroizing::new(rpassword::prompt_password("Repeat the new access code: ")?);
                if *again == *first {
                    return Ok(code);
                }
                last = "the two codes differ".into();
            }
        }
        said = format!("{last}; try again.");
    }
    Err(CodeError::NoNewCode {
        tries: NEW_CODE_TRIES,
        last,
    })
}
