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

use self::{
    cast::{on_disk, Budget, Cast, BLOCK},
    library::Claim,
};
pub use self::{
    cast::{CastHeader, Made, AGENT_STOPPED, BUDGET_FROM_HERE},
    library::{is_id, Entry, Holds, Library, RECORDINGS},
    line::LineRecord,
    reading::{list, replay, ReadError, Summary, Timing},
};
pub(crate) use self::{
    cast::{Stream, Tape},
    line::Line,
};
use crate::config::{Home, HostConfig, RecordPolicy};

/// The least a recording may take, however small `record_keep_mib` is.
const LEAST_EACH: u64 = 64 * 1024;

/// The longest `TERM` a header keeps (the client names it).
const MAX_TERM: usize = 64;

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
    keystrokes: bool,
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
            keystrokes: cfg.record_keystrokes,
            host: cfg.host.to_string(),
        }
    }

    /// Whether a user's channels are recorded (`shared`: a user the host
    /// is shared with).
    pub(crate) fn records(&self, shared: bool) -> bool {
        self.policy.records(shared)
    }

    /// Starts recording a shell or a command. Its header holds the whole
    /// command line (at most a frame, 64 KiB, so the header stays within
    /// what a reader takes as one line).
    pub(crate) fn terminal(
        &self,
        user: &UserName,
        session: SessionId,
        kind: &ChannelKind,
    ) -> Result<Tape, RecordError> {
        let made = self.made(user, session, kind);
        let (width, height, command, env, keep_input) = match kind {
            ChannelKind::Shell { term, cols, rows } => {
                let env = [("TERM".to_owned(), clip(term, MAX_TERM))].into();
                (*cols, *rows, None, env, self.keystrokes)
            }
            ChannelKind::Exec { argv } => {
                let command = Some(shell_words::join(argv));
                (80, 24, command, Default::default(), true)
            }
            _ => (80, 24, None, Default::default(), false),
        };
        let title = format!("{user} on {}: {}", self.host, made.kind);
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
        let cast = Cast::start(file, claim, &header, self.budget.clone(), keep_input)?;
        Ok(Tape::on(cast))
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
        self.budget.add(BLOCK);
        Ok(Line::start(file, claim, record)?)
    }

    /// Ends the recordings a previous agent left unended (it died).
    pub(crate) fn settle(&self) {
        match reading::settle(&self.library) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                recordings = n,
                "recordings the agent left unended marked cut"
            ),
            Err(e) => tracing::warn!("{e}"),
        }
    }

    /// Removes recordings past their days, then the least recently
    /// written until all take at most nine tenths of their size (so a full
    /// budget is not pruned again at each new recording), and counts what
    /// is left.
    pub(crate) fn prune(&self) -> usize {
        let removed = self
            .library
            .prune(self.keep_for, self.budget.all, self.budget.all / 10 * 9);
        let left = self
            .library
            .entries()
            .map(|entries| entries.iter().map(|e| on_disk(e.bytes)).sum())
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

/// At most `max` bytes of `text`, cut at a character's boundary.
fn clip(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
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

    fn recorder_in(dir: &std::path::Path, keep_mib: u64) -> Recorder {
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

    fn bob() -> UserName {
        "bob".parse().expect("name")
    }

    #[test]
    fn a_recording_keeps_output_within_its_budget_and_says_what_it_left_out() {
        let dir = tempfile::tempdir().expect("temp dir");
        let recorder = recorder_in(dir.path(), 1);
        let tape = recorder
            .terminal(&bob(), SessionId([1; 16]), &shell())
            .expect("start");
        let chunk = vec![b'x'; 32 * 1024];
        for _ in 0..32 {
            tape.record(Stream::Output, &chunk);
        }
        tape.end("exit 0");
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
        let not_kept = format!(
            "past the recording's budget, {} bytes were not kept",
            1024 * 1024 - kept
        );
        assert_eq!(markers, [BUDGET_FROM_HERE, &not_kept, "exit 0"]);
        assert!(events.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn a_recording_dropped_unended_says_it_was_cut() {
        let dir = tempfile::tempdir().expect("temp dir");
        let recorder = recorder_in(dir.path(), 8);
        let tape = recorder
            .terminal(&bob(), SessionId([1; 16]), &shell())
            .expect("start");
        tape.record(Stream::Output, "h\u{e9}".as_bytes().split_at(2).0);
        // A shell's keystrokes are not kept unless the owner asks.
        tape.record(Stream::Input, b"secret\r");
        drop(tape);
        let entries = recorder.library.entries().expect("list");
        let (_, events) = events(&entries[0].path);
        let said: Vec<(&str, &str)> = events
            .iter()
            .map(|e| (e.1.as_str(), e.2.as_str()))
            .collect();
        // The half character is kept as what it was: not text.
        assert_eq!(said, [("o", "h"), ("o", "\u{fffd}"), ("m", "cut")]);
    }

    #[test]
    fn a_command_keeps_its_input_and_each_streams_characters_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let recorder = recorder_in(dir.path(), 8);
        let exec = ChannelKind::Exec {
            argv: vec!["sh".into()],
        };
        let tape = recorder
            .terminal(&bob(), SessionId([1; 16]), &exec)
            .expect("start");
        let e = "\u{e9}".as_bytes();
        tape.record(Stream::Input, b"echo hi\n");
        tape.record(Stream::Output, &e[..1]);
        tape.record(Stream::Errors, &e[..1]);
        tape.record(Stream::Output, &e[1..]);
        tape.record(Stream::Errors, &e[1..]);
        tape.end("exit 0");
        let entries = recorder.library.entries().expect("list");
        let (header, events) = events(&entries[0].path);
        assert_eq!(header["command"], "sh");
        let said: Vec<(&str, &str)> = events
            .iter()
            .map(|e| (e.1.as_str(), e.2.as_str()))
            .collect();
        assert_eq!(
            said,
            [
                ("i", "echo hi\n"),
                ("o", "\u{e9}"),
                ("o", "\u{e9}"),
                ("m", "exit 0")
            ]
        );
    }

    #[test]
    fn the_longest_command_line_leaves_its_recording_readable() {
        let dir = tempfile::tempdir().expect("temp dir");
        let recorder = recorder_in(dir.path(), 8);
        // A frame's worth of characters JSON escapes six times over.
        let exec = ChannelKind::Exec {
            argv: vec!["sh".into(), "\u{1}".repeat(64 * 1024)],
        };
        let tape = recorder
            .terminal(&bob(), SessionId([1; 16]), &exec)
            .expect("start");
        tape.record(Stream::Output, b"done");
        tape.end("exit 0");
        let listed = list(&recorder.library).expect("list");
        assert_eq!(listed[0].kind, "exec", "{listed:?}");
        assert_eq!(listed[0].outcome.as_deref(), Some("exit 0"));
        let (mut out, mut notes) = (Vec::new(), Vec::new());
        replay(
            &recorder.library,
            &listed[0].id,
            None,
            false,
            &mut out,
            &mut notes,
        )
        .expect("replay");
        assert_eq!(out, b"done");
    }

    #[test]
    fn recordings_an_agent_left_unended_are_ended_at_its_start() {
        let dir = tempfile::tempdir().expect("temp dir");
        let recorder = recorder_in(dir.path(), 8);
        let tape = recorder
            .terminal(&bob(), SessionId([1; 16]), &shell())
            .expect("start");
        tape.record(Stream::Output, b"before");
        let line = recorder
            .line(
                &bob(),
                SessionId([1; 16]),
                &ChannelKind::Forward {
                    target: "127.0.0.1:22".into(),
                },
            )
            .expect("line");
        // The agent dies: nothing more is written, and a last line is cut.
        let entries = recorder.library.entries().expect("list");
        std::mem::forget(tape);
        std::mem::forget(line);
        let cast = entries
            .iter()
            .find(|e| e.holds == Holds::Terminal)
            .expect("cast");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&cast.path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"[0.5, \"o\", \"cu"))
            .expect("cut line");
        let fresh = recorder_in(dir.path(), 8);
        fresh.settle();
        let listed = list(&fresh.library).expect("list");
        assert!(
            listed
                .iter()
                .all(|r| r.outcome.as_deref() == Some(AGENT_STOPPED)),
            "{listed:?}"
        );
        let (_, events) = events(&cast.path);
        assert_eq!(events.last().map(|e| e.2.as_str()), Some(AGENT_STOPPED));
        // Settled once: a second start changes nothing.
        let before = std::fs::read(&cast.path).expect("read");
        fresh.settle();
        assert_eq!(std::fs::read(&cast.path).expect("read"), before);
    }
}
