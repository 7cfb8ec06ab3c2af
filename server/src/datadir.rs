//! The relay's data directory: its Noise/OPAQUE identity, its TLS
//! certificate and key, and the SQLite database. Created on first use with
//! owner-only permissions (SPEC I1); the same files serve `serve`, `info`
//! and `admin`, so the admin CLI can work beside a running relay. One relay
//! process serves a directory at a time ([`DataDir::lock_for_serving`]):
//! a second one would settle the first one's attempts (SPEC S7a).

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use fs4::fs_std::FileExt;
use latchkey_protocol::{handshake::RelayIdentity, ids::RelayPin};
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Errors of the data directory.
#[derive(Debug, Error)]
pub enum DataDirError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key file is damaged.
    #[error("{0} is damaged; restore it from a backup (clients pin this key)")]
    Damaged(PathBuf),
    /// The certificate could not be generated.
    #[error("cannot generate the TLS certificate: {0}")]
    Certificate(String),
    /// No relay has kept its data here (the admin CLI and `info` never
    /// make a new relay: a wrong path would give it a new identity).
    #[error(
        "no relay data in {}: pass --data-dir with the directory `latchkey-relay serve` uses \
         (and --store for a relay on PostgreSQL), or start the relay there first",
        .0.display()
    )]
    Missing(PathBuf),
    /// Another relay serves this directory.
    #[error("data directory {} is in use by another relay (pid {pid})", dir.display())]
    InUse {
        /// The directory.
        dir: PathBuf,
        /// The other relay's process id, as it wrote it (`?` if unreadable).
        pid: String,
    },
}

/// Held while a relay serves a data directory; released when dropped (or
/// by the kernel when the process dies, however it dies).
#[derive(Debug)]
pub struct ServingLock {
    _file: fs::File,
}

/// The relay's long-term secrets and where they live.
pub struct DataDir {
    /// The directory.
    pub path: PathBuf,
    /// Noise static key and OPAQUE server setup.
    pub identity: RelayIdentity,
    /// DER certificate.
    pub cert_der: Vec<u8>,
    /// PKCS#8 DER private key of the certificate.
    pub key_der: Vec<u8>,
}

const IDENTITY_FILE: &str = "relay.key";
/// Held (exclusively) by the relay that serves the directory.
const SERVING_LOCK_FILE: &str = "relay.lock";
/// Held for the moment the directory's files are created or checked.
const SETUP_LOCK_FILE: &str = "setup.lock";
const CERT_FILE: &str = "tls.crt";
const CERT_KEY_FILE: &str = "tls.key";
/// The database file name.
pub const DB_FILE: &str = "relay.db";
/// The name in the relay's certificate (clients pin the hash, not the name).
pub const SERVER_NAME: &str = "latchkey-relay";

impl DataDir {
    /// Opens `path`, creating the directory, identity and certificate on
    /// first use.
    pub fn open_or_create(path: &Path) -> Result<Self, DataDirError> {
        let io = |source| DataDirError::Io {
            path: path.to_owned(),
            source,
        };
        if !path.exists() {
            fs::create_dir_all(path).map_err(io)?;
            // Only a directory made here is narrowed: an existing one (a
            // home directory, say) keeps the permissions its owner chose;
            // the files inside are owner-only either way.
            restrict_dir(path).map_err(io)?;
        }
        // The relay and the admin CLI may both get here first on a new
        // directory: files are created under this lock, one process at a time.
        let setup = lock_file(&path.join(SETUP_LOCK_FILE))?;
        FileExt::lock_exclusive(&setup).map_err(io)?;
        let id_path = path.join(IDENTITY_FILE);
        let identity = match read_if_exists(&id_path)? {
            Some(bytes) => RelayIdentity::from_bytes(&bytes)
                .map_err(|_| DataDirError::Damaged(id_path.clone()))?,
            None => {
                let identity = RelayIdentity::generate(&mut OsRng);
                write_private(&id_path, &identity.to_bytes())?;
                identity
            }
        };
        let cert_path = path.join(CERT_FILE);
        let key_path = path.join(CERT_KEY_FILE);
        if read_if_exists(&cert_path)?.is_none() {
            // The certificate is written last: a crash in between leaves no
            // certificate, and the next start makes a new matching pair.
            let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
                .map_err(|e| DataDirError::Certificate(e.to_string()))?;
            write_private(&key_path, &certified.key_pair.serialize_der())?;
            write_private(&cert_path, certified.cert.der())?;
        }
        let cert_der =
            read_if_exists(&cert_path)?.ok_or_else(|| DataDirError::Damaged(cert_path.clone()))?;
        let key_der =
            read_if_exists(&key_path)?.ok_or_else(|| DataDirError::Damaged(key_path.clone()))?;
        drop(setup);
        Ok(Self {
            path: path.to_owned(),
            identity,
            cert_der,
            key_der,
        })
    }

    /// Opens the data directory of a relay that has started before (the
    /// admin CLI and `info`), without making one: a mistyped path must not
    /// quietly become a new relay with a new identity and an empty store.
    /// With `embedded_store`, its SQLite database must exist too.
    pub fn open_existing(path: &Path, embedded_store: bool) -> Result<Self, DataDirError> {
        let missing = !path.join(IDENTITY_FILE).is_file()
            || (embedded_store && !path.join(DB_FILE).is_file());
        if missing {
            return Err(DataDirError::Missing(path.to_owned()));
        }
        Self::open_or_create(path)
    }

    /// Takes the directory for one serving relay, or says which process has
    /// it. The admin CLI does not take it: it works beside a running relay.
    pub fn lock_for_serving(&self) -> Result<ServingLock, DataDirError> {
        let lock_path = self.path.join(SERVING_LOCK_FILE);
        let io = |source| DataDirError::Io {
            path: lock_path.clone(),
            source,
        };
        let mut file = lock_file(&lock_path)?;
        if !FileExt::try_lock_exclusive(&file).map_err(io)? {
            let pid = fs::read_to_string(&lock_path).unwrap_or_default();
            let pid = pid.trim();
            return Err(DataDirError::InUse {
                dir: self.path.clone(),
                pid: if pid.is_empty() {
                    "?".into()
                } else {
                    pid.into()
                },
            });
        }
        file.set_len(0).map_err(io)?;
        write!(file, "{}", std::process::id()).map_err(io)?;
        Ok(ServingLock { _file: file })
    }

    /// What clients and hosts pin.
    pub fn pin(&self) -> RelayPin {
        RelayPin {
            noise_key: self.identity.public_key(),
            cert_sha256: Sha256::digest(&self.cert_der).into(),
        }
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.path.join(DB_FILE)
    }
}

fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, DataDirError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DataDirError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Opens (creating) a lock file, readable by the owner only.
fn lock_file(path: &Path) -> Result<fs::File, DataDirError> {
    let mut options = fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(|source| DataDirError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes a file readable by the owner only, atomically: a temporary file,
/// synced, then renamed into place (callers hold the setup lock).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DataDirError> {
    let io = |source| DataDirError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut file = options.open(&tmp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

/// Owner-only on Unix. On Windows the directory keeps the ACL it inherits
/// (docs/relay.md says where to put it).
fn restrict_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_directory_keeps_its_mode_and_a_lost_certificate_gets_a_new_pair() {
        let dir = tempfile::tempdir().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        }
        let a = DataDir::open_or_create(dir.path()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o755);
        }
        // A crash between the key and the certificate: no certificate.
        fs::remove_file(dir.path().join(CERT_FILE)).unwrap();
        let b = DataDir::open_or_create(dir.path()).unwrap();
        assert_ne!(a.cert_der, b.cert_der);
        assert_ne!(a.key_der, b.key_der);
        assert_eq!(a.identity.public_key(), b.identity.public_key());
    }

    #[test]
    fn created_once_with_private_files_and_reopened_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let a = DataDir::open_or_create(&path).unwrap();
        let b = DataDir::open_or_create(&path).unwrap();
        assert_eq!(a.pin(), b.pin());
        let serving = a.lock_for_serving().unwrap();
        let err = b.lock_for_serving().unwrap_err().to_string();
        assert!(
            err.contains("is in use by another relay")
                && err.contains(&format!("(pid {})", std::process::id())),
            "{err}"
        );
        drop(serving);
        b.lock_for_serving().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in [IDENTITY_FILE, CERT_FILE, CERT_KEY_FILE] {
                let mode = fs::metadata(path.join(f)).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
        }
    }
}
