//! The `recordings` directory in the agent's home: owner-only (0700, each
//! file 0600, like `host.key`), one file per recording named by its id
//! (`20261207-224500-3f2a.cast` for a shell or a command, `.json` for a
//! copy or a forward), pruned by age and by size, oldest first, never
//! while it is being written.

use std::{
    collections::HashSet,
    fs::{self, File},
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use tracing::warn;

#[cfg(not(unix))]
use super::budget::on_disk;
use crate::config::Home;

/// The directory's name in the agent's home.
pub(crate) const RECORDINGS: &str = "recordings";

/// What a recording's file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Holds {
    /// A shell or a command: asciicast v2.
    Terminal,
    /// A copy or a forward: one JSON line.
    Line,
}

impl Holds {
    fn extension(self) -> &'static str {
        match self {
            Self::Terminal => "cast",
            Self::Line => "json",
        }
    }

    fn of(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()? {
            "cast" => Some(Self::Terminal),
            "json" => Some(Self::Line),
            _ => None,
        }
    }
}

/// One recording's file.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    /// Its id.
    pub id: String,
    /// Its file.
    pub path: PathBuf,
    /// What the file holds.
    pub holds: Holds,
    /// When it was last written.
    pub modified: SystemTime,
    /// Its size.
    pub bytes: u64,
    /// What it takes on disk (blocks used: a sparse file takes less than
    /// its size).
    pub disk: u64,
    /// Whether other names link to the file too (a file a recording would
    /// never be).
    pub linked: bool,
}

/// The recordings directory, and which of its recordings are being
/// written (never pruned).
#[derive(Clone, Debug)]
pub struct Library {
    dir: PathBuf,
    writing: Arc<Mutex<HashSet<String>>>,
}

/// A recording being written: its id stays out of pruning until this is
/// dropped.
#[derive(Debug)]
pub(crate) struct Claim {
    id: String,
    writing: Arc<Mutex<HashSet<String>>>,
}

impl Claim {
    pub(crate) fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        lock(&self.writing).remove(&self.id);
    }
}

fn lock(set: &Mutex<HashSet<String>>) -> MutexGuard<'_, HashSet<String>> {
    set.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether `id` is one this library makes: `YYYYMMDD-HHMMSS-xxxx`, so an
/// id a user types can name nothing outside the directory.
pub(crate) fn is_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 20
        && b[8] == b'-'
        && b[15] == b'-'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
        && b[16..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

impl Entry {
    /// The recording at `path`, if it is one: a plain file named by an id,
    /// with a recording's extension.
    fn at(path: PathBuf) -> Option<Self> {
        let holds = Holds::of(&path)?;
        let id = path.file_stem()?.to_str()?;
        if !is_id(id) {
            return None;
        }
        let meta = fs::symlink_metadata(&path).ok()?;
        if !meta.is_file() {
            return None;
        }
        Some(Self {
            id: id.to_owned(),
            holds,
            modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            bytes: meta.len(),
            disk: disk_use(&meta),
            linked: links(&meta) > 1,
            path,
        })
    }
}

impl Library {
    /// The library in `home`.
    pub fn at(home: &Home) -> Self {
        Self {
            dir: home.path.join(RECORDINGS),
            writing: Arc::default(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes a new recording's file, owner-only, under a new id.
    pub(crate) fn create(&self, holds: Holds) -> io::Result<(File, Claim)> {
        fs::create_dir_all(&self.dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))?;
        }
        let now = jiff::Timestamp::now();
        let stamp = now.strftime("%Y%m%d-%H%M%S").to_string();
        // The last four digits: the millisecond in the top ten bits (so
        // ids of one second sort as they were made), six random ones.
        let millis = u16::try_from(now.subsec_millisecond()).unwrap_or(0);
        let mut tries = 0;
        loop {
            let id = format!("{stamp}-{:04x}", millis << 6 | rand::random::<u16>() & 0x3f);
            // Claimed before the file exists, so no prune takes it between.
            if !lock(&self.writing).insert(id.clone()) {
                tries += 1;
                if tries >= 16 {
                    return Err(io::ErrorKind::AlreadyExists.into());
                }
                continue;
            }
            let claim = Claim {
                id,
                writing: self.writing.clone(),
            };
            let mut options = fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            match options.open(self.path_of(&claim.id, holds)) {
                Ok(file) => return Ok((file, claim)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 16 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    fn path_of(&self, id: &str, holds: Holds) -> PathBuf {
        self.dir.join(format!("{id}.{}", holds.extension()))
    }

    /// Every recording, oldest first (an id starts with its time). None
    /// when the directory does not exist yet.
    pub(crate) fn entries(&self) -> io::Result<Vec<Entry>> {
        let dir = match fs::read_dir(&self.dir) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut entries = Vec::new();
        for item in dir {
            entries.extend(Entry::at(item?.path()));
        }
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(entries)
    }

    /// The recording `id`, if there is one (its two possible files looked
    /// at, not the directory read).
    pub(crate) fn find(&self, id: &str) -> Option<Entry> {
        if !is_id(id) {
            return None;
        }
        [Holds::Terminal, Holds::Line]
            .into_iter()
            .find_map(|holds| Entry::at(self.path_of(id, holds)))
    }

    /// Removes finished recordings last written more than `keep_for` ago,
    /// then, those `first` picks before the others, the least recently
    /// written until the finished ones take at most `keep_bytes` on disk;
    /// those being written stay. Returns how many went and what the
    /// finished ones left take.
    pub(crate) fn prune(
        &self,
        keep_for: Duration,
        keep_bytes: u64,
        first: impl Fn(&Entry) -> bool,
    ) -> (usize, u64) {
        let mut entries = match self.entries() {
            Ok(entries) => entries,
            Err(e) => {
                warn!(dir = %self.dir.display(), "cannot read the recordings: {e}");
                return (0, 0);
            }
        };
        let writing = lock(&self.writing).clone();
        entries.retain(|e| !writing.contains(&e.id));
        // Least recently written first: a long session started early is
        // kept as long as its newest output.
        entries.sort_by_cached_key(|e| (!first(e), e.modified));
        let now = SystemTime::now();
        let mut total: u64 = entries.iter().map(|e| e.disk).sum();
        let mut removed = 0;
        for entry in &entries {
            let age = now.duration_since(entry.modified).unwrap_or_default();
            if age <= keep_for && total <= keep_bytes {
                continue;
            }
            match fs::remove_file(&entry.path) {
                Ok(()) => {
                    total = total.saturating_sub(entry.disk);
                    removed += 1;
                }
                Err(e) => warn!(recording = %entry.id, "cannot remove an old recording: {e}"),
            }
        }
        if removed > 0 {
            // A user who fills the budget pushes older recordings out: the
            // owner reads it here (and every channel in channels.log).
            warn!(
                removed,
                "recordings removed: past record_keep_days or record_keep_mib"
            );
        }
        (removed, total)
    }
}

/// What a file takes on disk: its blocks where the system says, else its
/// size in whole blocks.
fn disk_use(meta: &fs::Metadata) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        meta.blocks() * 512
    }
    #[cfg(not(unix))]
    {
        on_disk(meta.len())
    }
}

/// How many names the file has.
fn links(meta: &fs::Metadata) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        meta.nlink()
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn library() -> (tempfile::TempDir, Library) {
        let dir = tempfile::tempdir().expect("temp dir");
        let library = Library::at(&Home::locate(Some(dir.path().to_owned())));
        (dir, library)
    }

    fn ids(library: &Library) -> Vec<String> {
        let entries = library.entries().expect("list");
        entries.into_iter().map(|e| e.id).collect()
    }

    fn aged(library: &Library, bytes: usize, age: Duration) -> String {
        let (file, claim) = library.create(Holds::Line).expect("create");
        std::io::Write::write_all(&mut &file, &vec![b'x'; bytes]).expect("write");
        file.set_modified(SystemTime::now() - age).expect("age");
        claim.id().to_owned()
    }

    #[test]
    fn ids_name_nothing_outside_the_directory() {
        assert!(is_id("20261207-224500-3f2a"));
        for bad in [
            "../../host.key",
            "20261207-224500-3F2A",
            "20261207-224500-3f2a.cast",
            "",
        ] {
            assert!(!is_id(bad), "{bad}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn recordings_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, library) = library();
        let (file, _claim) = library.create(Holds::Terminal).expect("create");
        let mode = |m: fs::Metadata| m.permissions().mode() & 0o777;
        assert_eq!(mode(file.metadata().expect("meta")), 0o600);
        assert_eq!(mode(fs::metadata(library.dir()).expect("meta")), 0o700);
    }

    #[test]
    fn old_recordings_go_and_the_oldest_go_first_past_the_size() {
        let (_dir, library) = library();
        let day = Duration::from_secs(86_400);
        let expired = aged(&library, 10, 31 * day);
        let oldest = aged(&library, 100, 3 * day);
        let newer = aged(&library, 100, day);
        let newest = aged(&library, 100, Duration::ZERO);
        // 30 days, and 2 blocks (each file takes one at least): the
        // expired one, then the oldest.
        assert_eq!(library.prune(30 * day, 2 * 4096, |_| false), (2, 2 * 4096));
        let left = ids(&library);
        assert!(
            !left.contains(&expired) && !left.contains(&oldest),
            "{left:?}"
        );
        assert!(left.contains(&newer) && left.contains(&newest), "{left:?}");
    }

    #[test]
    fn those_picked_first_go_first_however_new() {
        let (_dir, library) = library();
        let day = Duration::from_secs(86_400);
        let carols = aged(&library, 100, 2 * day);
        let bobs = aged(&library, 100, Duration::ZERO);
        let (removed, _) = library.prune(30 * day, 4096, |e| e.id == bobs);
        assert_eq!(removed, 1);
        let left = ids(&library);
        assert_eq!(left, [carols]);
    }

    #[test]
    fn a_recording_being_written_is_never_pruned() {
        let (_dir, library) = library();
        let (file, claim) = library.create(Holds::Terminal).expect("create");
        file.set_modified(SystemTime::now() - Duration::from_secs(90 * 86_400))
            .expect("age");
        assert_eq!(
            library.prune(Duration::from_secs(86_400), 0, |_| false).0,
            0
        );
        drop(claim);
        assert_eq!(
            library.prune(Duration::from_secs(86_400), 0, |_| false).0,
            1
        );
    }
}
