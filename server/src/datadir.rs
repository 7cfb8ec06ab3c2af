//! The relay's data directory: its Noise/OPAQUE identity, its TLS
//! certificate and key, and the SQLite database. Created on first use with
//! owner-only permissions (SPEC I1); the same files serve `serve`, `info`
//! and `admin`, so the admin CLI can work beside a running relay.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

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
        fs::create_dir_all(path).map_err(io)?;
        restrict_dir(path).map_err(io)?;
        let id_path = path.join(IDENTITY_FILE);
        let identity = match read_if_exists(&id_path)? {
            Some(bytes) => RelayIdentity::from_bytes(&bytes)
                .map_err(|_| DataDirError::Damaged(id_path.clone()))?,
            None => {
                let identity = RelayIdentity::generate(&mut OsRng);
                write_private(&id_path, &identity.to_bytes())?;
                // Another process may have won the race: use what is on disk.
                let bytes = read_if_exists(&id_path)?
                    .ok_or_else(|| DataDirError::Damaged(id_path.clone()))?;
                RelayIdentity::from_bytes(&bytes)
                    .map_err(|_| DataDirError::Damaged(id_path.clone()))?
            }
        };
        let cert_path = path.join(CERT_FILE);
        let key_path = path.join(CERT_KEY_FILE);
        if read_if_exists(&cert_path)?.is_none() {
            let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
                .map_err(|e| DataDirError::Certificate(e.to_string()))?;
            write_private(&key_path, &certified.key_pair.serialize_der())?;
            write_private(&cert_path, certified.cert.der())?;
        }
        let cert_der =
            read_if_exists(&cert_path)?.ok_or_else(|| DataDirError::Damaged(cert_path.clone()))?;
        let key_der =
            read_if_exists(&key_path)?.ok_or_else(|| DataDirError::Damaged(key_path.clone()))?;
        Ok(Self {
            path: path.to_owned(),
            identity,
            cert_der,
            key_der,
        })
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

/// Writes a new file readable by the owner only; an existing file is left
/// alone (first writer wins).
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
    // Hard-link into place: fails if another process got there first.
    match fs::hard_link(&tmp, path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(e)),
    }
    fs::remove_file(&tmp).map_err(io)?;
    Ok(())
}

fn restrict_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_private_files_and_reopened_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let a = DataDir::open_or_create(&path).unwrap();
        let b = DataDir::open_or_create(&path).unwrap();
        assert_eq!(a.pin(), b.pin());
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
