//! Recordings of sessions, kept by the host: the only place that sees what
//! a session shows (the relay forwards sealed packets). host.toml's
//! `record` says whose sessions (shared users' by default); each shell and
//! each command is an asciicast v2 file, each copy and forward a JSON line,
//! in the agent's owner-only `recordings` directory, kept for
//! `record_keep_days` and within `record_keep_mib`.
//!
//! `cast.rs` writes a terminal recording, `line.rs` a copy's or a
//! forward's, `library.rs` names, lists and prunes the files, and
//! `reading.rs` lists and replays them for `latchkey host recordings` and
//! `latchkey host replay`.

mod cast;
mod library;
mod line;
mod reading;

use std::{
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use latchkey_protocol::{
    ids::{SessionId, UserName},
    rights::Right,
    session::ChannelKind,
};
use thiserror::Error;

use self::{cast::Budget, library::Claim};
pub(crate) use self::{cast::Cast, line::Line};
pub use self::{
    cast::{CastHeader, Made},
    library::{is_id, Entry, Holds, Library, RECORDINGS},
    line::LineRecord,
    reading::{list, replay, ReadError, Summary, Timing},
};
use crate::config::{Home, HostConfig, RecordPolicy};

/// The least a recording may take, however small `record_keep_mib` is.
const LEAST_EACH: u64 = 64 * 1024;

/// How often the agent removes recordings past their days.
pub(crate) const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Why a session the host must record cannot be: it is refused rather
/// than run unrecorded against the owner's word.
#[derive(Debug, Error)]
#[error("the host records this session and cannot: {0}")]
pub(crate) struct RecordError(#[from] std::io::Error);

/// What the agent records, and where.
pub(crate) struct Recorder {
    library: Library,
    policy: RecordPolicy,
    keep_for: Duration,
    budget: Arc<Budget>,
    host: String,
}

impl Recorder {
    pub(crate) fn new(home: &Home, cfg: &HostConfig) -> Self {
        let all = cfg.record_keep_mib.saturating_mul(1 << 20);
        Self {
            library: Library::at(home),
            policy: cfg.record,
            keep_for: Duration::from_secs(u64::from(cfg.record_keep_days) * 86_400),
            budget: Arc::new(Budget {
                used: AtomicU64::new(0),
                all,
                each: (all / 4).max(LEAST_EACH),
            }),
            host: cfg.host.to_string(),
        }
    }

    /// Whether a user's channels are recorded (`shared`: a user the host
    /// is shared with).
    pub(crate) fn records(&self, shared: bool) -> bool {
        self.policy.records(shared)
    }

    /// Starts recording a shell or a command.
    pub(crate) fn terminal(
        &self,
        user: &UserName,
        session: SessionId,
        kind: &ChannelKind,
    ) -> Result<Cast, RecordError> {
        let made = self.made(user, session, kind);
        let (width, height, command, env) = match kind {
            ChannelKind::Shell { term, cols, rows } => {
                let env = [("TERM".to_owned(), term.clone())].into();
                (*cols, *rows, None, env)
            }
            ChannelKind::Exec { argv } => {
                (80, 24, Some(shell_words::join(argv)), Default::default())
            }
            _ => (80, 24, None, Default::default()),
        };
        let title = match &command {
            Some(command) => format!("{user} on {}: {command}", self.host),
            None => format!("{user} on {}: {}", self.host, made.kind),
        };
        let header = CastHeader {
            version: 2,
            width,
            height,
            timestamp: now(),
            title,
            command,
            env,
            latchkey: made,
        };
        let (file, claim) = self.create(library::Holds::Terminal)?;
        Ok(Cast::start(file, claim, &header, self.budget.clone())?)
    }

    /// Starts recording a copy or a forward.
    pub(crate) fn line(
        &self,
        user: &UserName,
        session: SessionId,
        kind: &ChannelKind,
    ) -> Result<Line, RecordError> {
        let record = LineRecord {
            timestamp: now(),
            latchkey: self.made(user, session, kind),
            detail: kind.detail(),
            secs: None,
            outcome: "running".into(),
        };
        let (file, claim) = self.create(library::Holds::Line)?;
        Ok(Line::start(file, claim, record)?)
    }

    /// Removes recordings past their days, then the oldest past the size
    /// all may take, and counts what is left.
    pub(crate) fn prune(&self) -> usize {
        let removed = self.library.prune(self.keep_for, self.budget.all);
        let left = self
            .library
            .entries()
            .map(|entries| entries.iter().map(|e| e.bytes).sum())
            .unwrap_or(0);
        self.budget
            .used
            .store(left, std::sync::atomic::Ordering::Relaxed);
        removed
    }

    /// A new file, after making room when all recordings are at their
    /// size.
    fn create(&self, holds: library::Holds) -> Result<(std::fs::File, Claim), RecordError> {
        if self.budget.is_full() {
            self.prune();
        }
        Ok(self.library.create(holds)?)
    }

    fn made(&self, user: &UserName, session: SessionId, kind: &ChannelKind) -> Made {
        Made {
            host: self.host.clone(),
            user: user.to_string(),
            session: format!("{session:?}"),
            kind: Right::needed_for(kind).name().to_owned(),
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder(dir: &std::path::Path, keep_mib: u64) -> Recorder {
        let mut cfg = HostConfig::new(
            &["127.0.0.1:1".into()],
            String::new(),
            "mypc".parse().expect("name"),
        );
        cfg.record_keep_mib = keep_mib;
        Recorder::new(&Home::locate(Some(dir.to_owned())), &cfg)
    }

    fn events(path: &std::path::Path) -> (serde_json::Value, Vec<(f64, String, String)>) {
        let text = std::fs::read_to_string(path).expect("read");
        let mut lines = text.lines();
        let header = serde_json::from_str(lines.next().expect("header")).expect("json");
        let events = lines
            .map(|l| serde_json::from_str(l).expect("event"))
            .collect();
        (header, events)
    }

    fn shell() -> ChannelKind {
        ChannelKind::Shell {
            term: "xterm".into(),
            cols: 100,
            rows: 30,
        }
    }

    #[test]
    fn a_recording_keeps_output_within_its_budget_and_says_what_it_left_out() {
        let dir = tempfile::tempdir().expect("temp dir");
        let recorder = recorder(dir.path(), 1);
        let bob: UserName = "bob".parse().expect("name");
        let mut cast = recorder
            .terminal(&bob, SessionId([1; 16]), &shell())
            .expect("start");
        let chunk = vec![b'x'; 32 * 1024];
        for _ in 0..32 {
            cast.output(&chunk);
        }
        cast.end("exit 0");
        let entries = recorder.library.entries().expect("list");
        let (header, events) = events(&entries[0].path);
        assert_eq!(header["version"], 2);
        assert_eq!(header["width"], 100);
        assert_eq!(header["latchkey"]["user"], "bob");
        assert!(entries[0].bytes < 300 * 1024, "{}", entries[0].bytes);
        let kept: usize = events
            .iter()
            .filter(|e| e.1 == "o")
            .map(|e| e.2.len())
            .sum();
        let markers: Vec<&str> = events
            .iter()
            .filter(|e| e.1 == "m")
            .map(|e| e.2.as_str())
            .collect();
        assert_eq!(
            markers,
            [
                format!(
                    "output past the recording's budget not kept: {} bytes",
                    1024 * 1024 - kept
                )
                .as_str(),
                "exit 0"
            ]
        );
        assert!(events.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn a_recording_dropped_unended_says_it_was_cut() {
        let dir = tempfile::tempdir().expect("temp dir");
        let recorder = recorder(dir.path(), 8);
        let bob: UserName = "bob".parse().expect("name");
        let mut cast = recorder
            .terminal(&bob, SessionId([1; 16]), &shell())
            .expect("start");
        cast.output("h\u{e9}".as_bytes().split_at(2).0);
        drop(cast);
        let entries = recorder.library.entries().expect("list");
        let (_, events) = events(&entries[0].path);
        let said: Vec<(&str, &str)> = events
            .iter()
            .map(|e| (e.1.as_str(), e.2.as_str()))
            .collect();
        // The half character is kept as what it was: not text.
        assert_eq!(said, [("o", "h"), ("o", "\u{fffd}"), ("m", "cut")]);
    }
}
