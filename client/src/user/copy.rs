//! `latchkey cp LOCAL HOST:PATH` and `latchkey cp HOST:PATH LOCAL`: a file
//! each way with a progress bar and an end-to-end SHA-256 check; a damaged
//! or partial file is never left under the final name.

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use latchkey_protocol::session::{ChannelKind, ChannelReply};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::remote::{ChannelError, Remote};
use crate::files;

const COPY_BUF: usize = 64 * 1024;

/// Which way a copy goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopySpec {
    /// Local file to the host.
    Upload {
        /// Local file.
        local: PathBuf,
        /// Host.
        host: String,
        /// Path on the host.
        remote: String,
    },
    /// A host's file to here.
    Download {
        /// Host.
        host: String,
        /// Path on the host.
        remote: String,
        /// Local file.
        local: PathBuf,
    },
}

/// `HOST:PATH` split in two; `None` for a local path. On Windows a drive
/// letter (`C:\notes.txt`, `D:/x`) is a local path, as Windows' own scp
/// reads it; a host's path may hold one (`mypc:C:\notes.txt`).
fn split_remote(s: &str) -> Option<(&str, &str)> {
    if cfg!(windows) && is_drive_path(s) {
        return None;
    }
    let (host, path) = s.split_once(':')?;
    (!host.is_empty() && !host.contains(['/', '\\']) && !path.is_empty()).then_some((host, path))
}

/// Whether `s` starts with a drive letter and a separator: `C:\`, `d:/`.
fn is_drive_path(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && matches!(b[2], b'\\' | b'/')
}

impl CopySpec {
    /// Parses `SRC DST`, exactly one of which is `HOST:PATH`.
    pub fn parse(src: &str, dst: &str) -> Result<Self, String> {
        match (split_remote(src), split_remote(dst)) {
            (None, Some((host, remote))) => Ok(Self::Upload {
                local: src.into(),
                host: host.into(),
                remote: remote.into(),
            }),
            (Some((host, remote)), None) => Ok(Self::Download {
                host: host.into(),
                remote: remote.into(),
                local: dst.into(),
            }),
            _ => Err(
                "give exactly one side as HOST:PATH, e.g. `latchkey cp notes.txt mypc:notes.txt`"
                    .into(),
            ),
        }
    }

    /// The host this copy talks to.
    pub fn host(&self) -> &str {
        match self {
            Self::Upload { host, .. } | Self::Download { host, .. } => host,
        }
    }
}

fn bar(size: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(size),
        if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    // `wide_bar` takes what the terminal's width leaves, so the line never
    // wraps (a fixed 40-column bar made 81 columns).
    if let Ok(style) =
        ProgressStyle::with_template("{wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

/// A file's permission bits, sent with an upload (0o644 where there are none).
fn permission_bits(path: &Path) -> u32 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            return meta.permissions().mode() & 0o777;
        }
    }
    let _ = path;
    0o644
}

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> ChannelError {
    ChannelError::Refused(format!("cannot {what} {}: {e}", path.display()))
}

/// Copies a local file to the host; returns the bytes sent. `path` may be
/// a directory on the host: the file keeps its name there, as with cp.
pub async fn upload(remote: &Remote, local: &Path, path: &str) -> Result<u64, ChannelError> {
    let files::Source {
        reader: mut file,
        size,
    } = files::open(local)
        .await
        .map_err(|e| io_err("read", local, e))?;
    let name = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| ChannelError::Refused(format!("{} is not a file", local.display())))?;
    let (mut send, mut recv, _) = remote
        .channel(ChannelKind::Upload {
            path: path.into(),
            name,
            size,
            mode: permission_bits(local),
        })
        .await?;
    let progress = bar(size);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; COPY_BUF];
    let mut sent = 0u64;
    while sent < size {
        let want = buf
            .len()
            .min(usize::try_from(size - sent).unwrap_or(usize::MAX));
        let n = file
            .read(&mut buf[..want])
            .await
            .map_err(|e| io_err("read", local, e))?;
        if n == 0 {
            return Err(ChannelError::Refused(format!(
                "{} shrank while being copied",
                local.display()
            )));
        }
        hasher.update(&buf[..n]);
        send.write_all(&buf[..n])
            .await
            .map_err(|e| ChannelError::Refused(format!("transfer failed: {e}")))?;
        sent += n as u64;
        progress.set_position(sent);
    }
    send.write_all(&hasher.finalize())
        .await
        .map_err(|e| ChannelError::Refused(format!("transfer failed: {e}")))?;
    let _ = send.finish().await;
    progress.finish_and_clear();
    match recv.read_frame::<ChannelReply>().await? {
        Some(ChannelReply::Accepted { .. }) => Ok(size),
        Some(ChannelReply::Refused(why)) => Err(ChannelError::said_by_peer(&why)),
        _ => Err(ChannelError::Refused(
            "the host did not confirm the copy".into(),
        )),
    }
}

/// Copies a host's file here; returns the bytes received. `local` may be
/// a directory: the file keeps its name there, as with cp.
pub async fn download(remote: &Remote, path: &str, local: &Path) -> Result<u64, ChannelError> {
    // Check the destination before anything moves.
    let dir_wanted = local.as_os_str().to_string_lossy().ends_with('/');
    let local = files::destination_from(local, dir_wanted, path).map_err(ChannelError::Refused)?;
    let (_send, mut recv, size) = remote
        .channel(ChannelKind::Download { path: path.into() })
        .await?;
    let size =
        size.ok_or_else(|| ChannelError::Refused("the host did not say the file's size".into()))?;
    // Removed on every path but success, a cancelled copy (Ctrl-C) too.
    let (partial, mut file) = files::Partial::create(&local, 0o666)
        .await
        .map_err(|e| io_err("write", &local, e))?;
    let progress = bar(size);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; COPY_BUF];
    let mut got = 0u64;
    let result = async {
        while got < size {
            let want = buf
                .len()
                .min(usize::try_from(size - got).unwrap_or(usize::MAX));
            let n = recv
                .read(&mut buf[..want])
                .await
                .map_err(|e| ChannelError::Refused(format!("transfer failed: {e}")))?;
            if n == 0 {
                return Err(ChannelError::Refused("the transfer ended early".into()));
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])
                .await
                .map_err(|e| io_err("write", &local, e))?;
            got += n as u64;
            progress.set_position(got);
        }
        let mut sent = [0u8; 32];
        recv.read_exact(&mut sent)
            .await
            .map_err(|_| ChannelError::Refused("the transfer ended early".into()))?;
        if sent[..] != hasher.finalize()[..] {
            return Err(ChannelError::Refused(
                "checksum mismatch: the file was damaged in transit; nothing stored".into(),
            ));
        }
        file.sync_all()
            .await
            .map_err(|e| io_err("write", &local, e))?;
        Ok(size)
    }
    .await;
    progress.finish_and_clear();
    drop(file);
    let size = result?;
    partial
        .commit(&local)
        .await
        .map_err(|e| io_err("write", &local, e))?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_side_is_remote() {
        assert!(matches!(
            CopySpec::parse("a.txt", "mypc:b.txt"),
            Ok(CopySpec::Upload { .. })
        ));
        assert!(matches!(
            CopySpec::parse("mypc:/etc/hosts", "./hosts"),
            Ok(CopySpec::Download { .. })
        ));
        assert!(CopySpec::parse("a", "b").is_err());
        // A host's Windows path is the host's.
        assert_eq!(
            CopySpec::parse("a.txt", "mypc:C:\\Users\\bob\\a.txt"),
            Ok(CopySpec::Upload {
                local: "a.txt".into(),
                host: "mypc".into(),
                remote: "C:\\Users\\bob\\a.txt".into(),
            })
        );
        assert!(is_drive_path("C:\\x") && is_drive_path("d:/x") && !is_drive_path("mypc:x"));
        assert!(CopySpec::parse("x:a", "y:b").is_err());
        assert!(CopySpec::parse("./dir/a:b", "c").is_err());
    }
}
