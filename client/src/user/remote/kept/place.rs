//! Where a held session's socket and lock live: in the user's runtime
//! directory (`$XDG_RUNTIME_DIR/latchkey`, or `latchkey-UID` in the
//! temporary directory where there is none), named after the home and the
//! host, so that two identities of one account never share a session.

use std::{
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use latchkey_protocol::ids::HostName;
use sha2::{Digest, Sha256};

use super::ReuseError;
use crate::config::Home;

/// A held session's files.
#[derive(Clone, Debug)]
pub struct Place {
    /// The socket commands connect to.
    pub socket: PathBuf,
    /// Held locked by the holder for its whole life: one holder at a time.
    pub lock: PathBuf,
}

impl Place {
    /// The files for `host`'s session of the identity in `home`, creating
    /// the private directory if needed.
    pub fn of(home: &Home, host: &HostName) -> Result<Self, ReuseError> {
        let dir = private_dir()?;
        let home = std::path::absolute(&home.path)?;
        let mut hash = Sha256::new();
        hash.update(home.as_os_str().as_encoded_bytes());
        hash.update([0]);
        hash.update(host.as_str().as_bytes());
        let digest = hash.finalize();
        let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        // The host's name makes `ls` readable; the hash alone where a
        // long name would not fit a socket's address.
        let named = format!("{host}-{hash}");
        let name = if dir.join(format!("{named}.sock")).as_os_str().len() <= MAX_SOCKET_PATH {
            named
        } else {
            hash
        };
        let socket = dir.join(format!("{name}.sock"));
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(ReuseError::UnsafeDir {
                path: dir,
                why: "too long a path for a socket (set XDG_RUNTIME_DIR to a shorter one)".into(),
            });
        }
        Ok(Self {
            lock: dir.join(format!("{name}.lock")),
            socket,
        })
    }
}

/// The longest socket path every Unix takes (`sun_path` is 104 bytes on
/// the BSDs and macOS, 108 on Linux, with its terminating zero).
const MAX_SOCKET_PATH: usize = 103;

/// The directory for sockets: created 0700, or checked to be a directory
/// (not a link) of this user that no one else may enter.
fn private_dir() -> Result<PathBuf, ReuseError> {
    let uid = nix::unistd::getuid().as_raw();
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(run) if run.is_absolute() => run.join("latchkey"),
        _ => std::env::temp_dir().join(format!("latchkey-{uid}")),
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e.into()),
    }
    check_private(&dir, uid)?;
    Ok(dir)
}

/// Refuses a directory that another user owns, or could enter, or that is
/// a link to somewhere else.
fn check_private(dir: &Path, uid: u32) -> Result<(), ReuseError> {
    let unsafe_dir = |why: String| ReuseError::UnsafeDir {
        path: dir.to_owned(),
        why,
    };
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(unsafe_dir("not a directory".into()));
    }
    if meta.uid() != uid {
        return Err(unsafe_dir(format!("owned by uid {}, not you", meta.uid())));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(unsafe_dir(format!(
            "mode {mode:03o} lets others in (chmod 700 it)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_private_directory_of_ours_is_used() {
        let uid = nix::unistd::getuid().as_raw();
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("run");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .expect("dir");
        check_private(&dir, uid).expect("private");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).expect("chmod");
        let e = check_private(&dir, uid).expect_err("group may enter");
        assert!(e.to_string().contains("mode 750"), "{e}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let e = check_private(&dir, uid.wrapping_add(1)).expect_err("not ours");
        assert!(e.to_string().contains("not you"), "{e}");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).expect("link");
        let e = check_private(&link, uid).expect_err("a link");
        assert!(e.to_string().contains("not a directory"), "{e}");
    }
}
