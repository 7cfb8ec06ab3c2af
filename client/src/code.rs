//! Getting an access code from a person or a script: the
//! `LATCHKEY_ACCESS_CODE` variable, one line of standard input
//! (`--code-stdin`), or a prompt on the terminal without echo.

use std::io::BufRead;

use latchkey_protocol::ids::AccessCode;
use thiserror::Error;
use zeroize::Zeroizing;

/// The variable scripts may set instead of typing the code.
pub const CODE_ENV: &str = "LATCHKEY_ACCESS_CODE";

/// Errors reading a code.
#[derive(Debug, Error)]
pub enum CodeError {
    /// Reading failed.
    #[error("cannot read the access code: {0}")]
    Io(#[from] std::io::Error),
    /// The two entries differ.
    #[error("the two codes differ; nothing was changed")]
    Mismatch,
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
    Ok(Zeroizing::new(rpassword::prompt_password(prompt)?))
}

/// Reads the code for a login.
pub fn for_login(from_stdin: bool, host: &str) -> Result<AccessCode, CodeError> {
    let code = source(from_stdin, &format!("Access code for {host}: "))?;
    Ok(AccessCode::for_login(code.to_string())?)
}

/// Reads a new code; prompts twice when a person types it.
pub fn new_code(from_stdin: bool) -> Result<AccessCode, CodeError> {
    let first = source(from_stdin, "New access code: ")?;
    if !from_stdin && std::env::var(CODE_ENV).is_err() {
        let again = Zeroizing::new(rpassword::prompt_password("Repeat the new access code: ")?);
        if *again != *first {
            return Err(CodeError::Mismatch);
        }
    }
    Ok(AccessCode::new(first.to_string())?)
}
