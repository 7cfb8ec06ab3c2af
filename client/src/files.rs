//! What both ends of `latchkey cp` share: reading a file whose size the
//! file system may misreport, and a partial file that removes itself unless
//! the copy completes.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Files that report at most this size are read whole before the copy
/// announces its size: procfs reports 0 and sysfs 4096 whatever a read
/// gives, and `cp` copies what a read gives.
pub const READ_WHOLE_UP_TO: u64 = 64 * 1024;

/// The most read from such a file (a procfs file that reports 0 bytes may
/// give more than [`READ_WHOLE_UP_TO`], but nothing there is large).
pub const MAX_READ_WHOLE: u64 = 16 << 20;

/// A file opened to be sent: its bytes and their exact count.
pub struct Source {
    /// The bytes.
    pub reader: Box<dyn AsyncRead + Unpin + Send>,
    /// How many bytes `reader` gives.
    pub size: u64,
}

/// Opens `path` to be copied: a regular file, read whole first if small
/// (see [`READ_WHOLE_UP_TO`]).
pub async fn open(path: &Path) -> std::io::Result<Source> {
    let mut options = tokio::fs::OpenOptions::new();
    options.read(true);
    // Never blocks in open (a FIFO would, for ever): what is not a regular
    // file is refused just below, and a regular file reads as usual.
    #[cfg(unix)]
    options.custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits());
    let file = options.open(path).await?;
    let meta = file.metadata().await?;
    if meta.is_dir() {
        return Err(std::io::Error::other("is a directory"));
    }
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.len() > READ_WHOLE_UP_TO {
        return Ok(Source {
            reader: Box::new(file.take(meta.len())),
            size: meta.len(),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_READ_WHOLE + 1)
        .read_to_end(&mut bytes)
        .await?;
    if bytes.len() as u64 > MAX_READ_WHOLE {
        return Err(std::io::Error::other(format!(
            "reports {} bytes but gives more than {} MiB",
            meta.len(),
            MAX_READ_WHOLE >> 20
        )));
    }
    Ok(Source {
        size: bytes.len() as u64,
        reader: Box::new(std::io::Cursor::new(bytes)),
    })
}

/// Where a copy writes before the file is complete:
/// `.NAME.RANDOM.latchkey-partial` beside the destination, created anew
/// (never an existing file or a symlink someone left there; the random part
/// means nobody can take the name first). Removed when dropped (an error,
/// an interrupted copy, a cancelled task) unless [`Partial::commit`]
/// renamed it.
pub struct Partial {
    path: PathBuf,
    done: bool,
}

impl Partial {
    /// Creates the partial file for `dest`, with permissions `mode` (the
    /// umask applies).
    pub async fn create(dest: &Path, mode: u32) -> std::io::Result<(Self, tokio::fs::File)> {
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tag: u32 = rand::random();
        let path = dest.with_file_name(format!(".{name}.{tag:08x}.latchkey-partial"));
        let mut options = tokio::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        options.mode(mode);
        #[cfg(not(unix))]
        let _ = mode;
        let file = options.open(&path).await?;
        Ok((Self { path, done: false }, file))
    }

    /// The partial file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the complete file to `dest`.
    pub async fn commit(mut self, dest: &Path) -> std::io::Result<()> {
        tokio::fs::rename(&self.path, dest).await?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.done {
            // Synchronous on purpose: a cancelled copy has no later await.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Where a copy to `dest` lands, as `cp` decides it: into `dest` when it is
/// a directory (under `name`, the source's file name), else `dest` itself.
/// A `dest` ending in `/` must be an existing directory, and the parent
/// of a file destination must exist.
pub fn destination(dest: &str, name: &str) -> Result<PathBuf, String> {
    destination_from(Path::new(dest), dest.ends_with('/'), name)
}

/// [`destination`] for a path already resolved (`dir_wanted`: the user
/// wrote a trailing `/`).
pub fn destination_from(dest: &Path, dir_wanted: bool, name: &str) -> Result<PathBuf, String> {
    let name = Path::new(name)
        .file_name()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("'{name}' has no file name to copy to"))?;
    if dest.is_dir() {
        return Ok(dest.join(name));
    }
    if dir_wanted {
        return Err(if dest.exists() {
            format!("{} is not a directory", dest.display())
        } else {
            format!("no such directory: {}", dest.display())
        });
    }
    match dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) if !parent.is_dir() => Err(format!(
            "cannot write {}: no such directory: {}",
            dest.display(),
            parent.display()
        )),
        _ => Ok(dest.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_take_the_source_name_and_missing_ones_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().to_str().expect("utf-8");
        assert_eq!(destination(d, "a/x.txt"), Ok(dir.path().join("x.txt")));
        assert_eq!(
            destination(&format!("{d}/"), "x.txt"),
            Ok(dir.path().join("x.txt"))
        );
        assert_eq!(
            destination(&format!("{d}/y.txt"), "x.txt"),
            Ok(dir.path().join("y.txt"))
        );
        let missing = format!("{d}/missing/");
        assert!(destination(&missing, "x.txt")
            .unwrap_err()
            .contains("no such directory"));
        let err = destination(&format!("{d}/missing/y"), "x").unwrap_err();
        assert!(err.contains("no such directory"), "{err}");
        assert!(!err.contains("latchkey-partial"), "{err}");
    }
}
