//! The host's file helper (`latchkey host file-helper`, hidden): the agent
//! runs it as the session's account ([`super::account`]) for every copy, so
//! a user reaches exactly the files that account may, never the agent's
//! keys. It speaks over its standard streams:
//!
//! - `read PATH`: writes the size (8 bytes, big endian), then the bytes.
//! - `write PATH NAME SIZE MODE`: says `ready` once the destination is
//!   checked, reads SIZE bytes into the partial file (created anew, 0600),
//!   then one byte: `C` commits it (MODE without group and other write,
//!   then renamed into place; then it says `done`); anything else, or the
//!   end of input, removes the partial file.
//!
//! Errors go to standard error as one line, with a non-zero exit.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::files;

/// Relative paths start in the account's home, as in a shell there.
fn resolve(path: &str) -> PathBuf {
    let p = Path::new(path);
    match std::env::var_os("HOME") {
        Some(home) if p.is_relative() => PathBuf::from(home).join(p),
        _ => p.to_owned(),
    }
}

/// Sends the file at `path` (as `read`).
pub async fn read(path: &str) -> Result<(), String> {
    let resolved = resolve(path);
    let files::Source { reader, size } = files::open(&resolved)
        .await
        .map_err(|e| format!("cannot read {}: {e}", resolved.display()))?;
    let mut out = tokio::io::stdout();
    let write = async {
        out.write_all(&size.to_be_bytes()).await?;
        tokio::io::copy(&mut reader.take(size), &mut out).await?;
        out.flush().await
    };
    // A closed pipe means the agent gave up on the copy: nothing to say.
    write.await.map_err(|e| format!("sending stopped: {e}"))
}

/// Receives a file into `path` (as `write`).
pub async fn write(path: &str, name: &str, size: u64, mode: u32) -> Result<(), String> {
    // Like cp: into a directory under the source's name.
    let dest = files::destination_from(&resolve(path), path.ends_with('/'), name)?;
    let (partial, mut file) = files::Partial::create(&dest, 0o600)
        .await
        .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
    let mut out = tokio::io::stdout();
    let said = async {
        out.write_all(b"ready\n").await?;
        out.flush().await
    };
    said.await.map_err(|e| e.to_string())?;
    let mut input = tokio::io::stdin();
    let copied = tokio::io::copy(&mut (&mut input).take(size), &mut file)
        .await
        .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
    if copied != size {
        // The agent stopped feeding us: the copy failed. `partial` goes.
        return Err("the transfer ended early".into());
    }
    let mut verdict = [0u8; 1];
    if input.read_exact(&mut verdict).await.is_err() || verdict != *b"C" {
        return Err("the copy was not confirmed; nothing stored".into());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let bits = mode & 0o777 & !0o022;
        file.set_permissions(std::fs::Permissions::from_mode(bits))
            .await
            .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    file.sync_all()
        .await
        .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
    drop(file);
    partial
        .commit(&dest)
        .await
        .map_err(|e| format!("cannot store {}: {e}", dest.display()))?;
    let said = async {
        out.write_all(b"done\n").await?;
        out.flush().await
    };
    said.await.map_err(|e| e.to_string())
}
