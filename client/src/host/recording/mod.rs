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

mod budget;
mod cast;
mod library;
mod line;
mod reading;

use std::{sync::Arc, time::Duration};

use latchkey_protocol::{
    ids::{SessionId, UserName},
    rights::Right,
    session::ChannelKind,
};
use thiserror::Error;

use self::{
    budget::{Budget, NoShare, Share, BLOCK},
    cast::{Cast, CastHeader, Made},
    library::{Claim, Entry},
    line::LineRecord,
};
// What `latchkey host recordings` and `host replay` use.
pub use self::{
    library::Library,
    reading::{list, replay, ReadError, Summary, Timing},
};
// What the agent's channels use.
pub(crate) use self::{
    cast::{Stream, Tape},
    line::Line,
};
use crate::config::{Home, HostConfig, RecordPolicy};

/// The least a terminal recording may take, however small
/// `record_keep_mib` is: a header with the longest command line fits.
const LEAST_EACH: u64 = 512 * 1024;

/// How many terminal recordings the budget has room for at once (each
/// holds its share from its start).
const AT_ONCE: u64 = 32;

/// The longest `TERM` a header keeps (the client names it).
const MAX_TERM: usize = 64;

/// The longest path or target a copy's or a forward's line keeps (the
/// client names it; escaped, it may grow six times).
const MAX_DETAIL: usize = 1024;

/// The room a copy's or a forward's line holds: two blocks, enough for
/// the longest.
const LINE_SHARE: u64 = 2 * BLOCK;

/// How often the agent removes recordings past their days.
pub(crate) const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Why a session the host must record cannot be: it is refused rather
/// than run unrecorded against the owner's word.
#[derive(Debug, Error)]
pub(crate) enum RecordError {
    /// The file could not be made.
    #[error("the host records this session and cannot: {0}")]
    Io(#[from] std::io::Error),
    /// Recordings being written hold all of `record_keep_mib`.
    #[error(
        "the host records this session and its recordings' space is taken by those being \
         written (record_keep_mib); try again when one ends"
    )]
    Full,
    /// The user's running recordings hold their quarter of it.
    #[error(
        "the host records this session and your running shells, commands, copies and \
         forwards hold all the recording space one user may; end one first"
    )]
    UsersQuarter,
}

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
            budget: Arc::new(Budget::new(all, (all / AT_ONCE).max(LEAST_EACH))),
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
                // A terminal that says 0x0 plays as the usual 80x24.
                let (cols, rows) = if *cols == 0 || *rows == 0 {
                    (80, 24)
                } else {
                    (*cols, *rows)
                };
                (cols, rows, None, env, self.keystrokes)
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
        let (file, claim, share) = self.create(user, library::Holds::Terminal)?;
        let cast = Cast::start(file, claim, &header, share, keep_input)?;
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
            detail: clip(&kind.detail(), MAX_DETAIL),
            secs: None,
            outcome: "running".into(),
        };
        let (file, claim, share) = self.create(user, library::Holds::Line)?;
        Ok(Line::start(file, claim, share, record)?)
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

    /// Removes recordings past their days, and recounts what the others
    /// take. Returns how many went.
    pub(crate) fn prune(&self) -> usize {
        let (removed, kept) = self
            .library
            .prune(self.keep_for, self.budget.all(), |_| false);
        self.budget.recount(kept);
        removed
    }

    /// [`Recorder::prune`], then the least recently written finished ones
    /// until a share of `bytes` fits with a tenth of the budget free:
    /// `user`'s own first, so that what one user writes pushes out no
    /// other's record before their own.
    fn prune_for(&self, user: &UserName, bytes: u64) -> usize {
        let keep = self.budget.keep_at_most(bytes);
        let theirs = |entry: &Entry| reading::user_of(entry).as_deref() == Some(user.as_str());
        let (removed, kept) = self.library.prune(self.keep_for, keep, theirs);
        if removed > 0 {
            tracing::warn!(%user, removed, "recordings removed to make room for a new one of this user's");
        }
        self.budget.recount(kept);
        removed
    }

    /// A new file and its share of the budget, after making room when
    /// there is none. Refused when recordings being written hold it all.
    fn create(
        &self,
        user: &UserName,
        holds: library::Holds,
    ) -> Result<(std::fs::File, Claim, Share), RecordError> {
        let bytes = match holds {
            library::Holds::Terminal => self.budget.each(),
            library::Holds::Line => LINE_SHARE,
        };
        let refused = |why| match why {
            NoShare::Taken => RecordError::Full,
            NoShare::UsersQuarter => RecordError::UsersQuarter,
        };
        let share = match self.budget.share(user.as_str(), bytes) {
            Ok(share) => share,
            Err(NoShare::Taken) => {
                self.prune_for(user, bytes);
                self.budget.share(user.as_str(), bytes).map_err(refused)?
            }
            Err(why) => return Err(refused(why)),
        };
        let (file, claim) = self.library.create(holds)?;
        Ok((file, claim, share))
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
    use super::{
        cast::{AGENT_STOPPED, BUDGET_FROM_HERE},
        library::Holds,
        *,
    };

    fn recorder_in(dir: &std::path::Path, keep_mib: u64) -> Recorder {
        let mut cfg = HostConfig::new(
            &["127.0.0.1:1".into()],
            String::new(),
            "mypc".parse().expect("name"),
        );
        cfg.record_keep_mib = keep_mib;
        Recorder::new(&Home::locate(Some(dir.to_owned())), &cfg)
    }

    /// The tape of bob's command `sh`.
    fn bobs_sh(recorder: &Recorder) -> Tape {
        let exec = ChannelKind::Exec {
            argv: vec!["sh".into()],
        };
        recorder
            .terminal(&bob(), SessionId([1; 16]), &exec)
            .expect("start")
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
    fn past_its_share_a_recording_counts_what_comes_and_keeps_the_last_of_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let recorder = recorder_in(dir.path(), 1);
        let tape = recorder
            .terminal(&bob(), SessionId([1; 16]), &shell())
            .expect("start");
        let chunk = vec![b'x'; 32 * 1024];
        for _ in 0..32 {
            tape.record(Stream::Output, &chunk);
        }
        tape.record(Stream::Output, b"the end");
        tape.end("exit 0");
        let entries = recorder.library.entries().expect("list");
        let (header, events) = events(&entries[0].path);
        assert_eq!(header["version"], 2);
        assert_eq!(header["width"], 100);
        assert_eq!(header["latchkey"]["user"], "bob");
        // Within its share: 512 KiB for a 1 MiB budget.
        assert!(entries[0].bytes <= 512 * 1024, "{}", entries[0].bytes);
        let cut = events
            .iter()
            .position(|e| e.1 == "m")
            .expect("the budget's marker");
        assert_eq!(events[cut].2, BUDGET_FROM_HERE);
        let head: usize = events[..cut].iter().map(|e| e.2.len()).sum();
        let not_kept = format!(
            "past the recording's budget, {} bytes were not kept but the last ones, which follow",
            32 * 32 * 1024 + 7 - head
        );
        let after: Vec<(&str, &str)> = events[cut + 1..]
            .iter()
            .map(|e| (e.1.as_str(), e.2.as_str()))
            .collect();
        assert_eq!(after.len(), 3, "{:?}", &after[..after.len().min(4)]);
        assert_eq!(after[0], ("m", not_kept.as_str()));
        // The last 8 KiB (a 64th of the share), ending as the output did.
        assert_eq!(after[1].0, "o");
        assert_eq!(after[1].1.len(), 8 * 1024);
        assert!(after[1].1.ends_with("xthe end"));
        assert_eq!(after[2], ("m", "exit 0"));
        assert!(events.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn output_that_escapes_long_keeps_a_recording_within_its_share() {
        let dir = tempfile::tempdir().expect("temp dir");
        let recorder = recorder_in(dir.path(), 1);
        let tape = recorder
            .terminal(&bob(), SessionId([1; 16]), &shell())
            .expect("start");
        // Each byte is six in JSON.
        for _ in 0..64 {
            tape.record(Stream::Output, &[1u8; 32 * 1024]);
        }
        tape.end("exit 0");
        let entries = recorder.library.entries().expect("list");
        assert!(entries[0].bytes <= 512 * 1024, "{}", entries[0].bytes);
    }

    #[test]
    fn a_full_space_blinds_no_running_recording_and_refuses_a_new_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        // 1 MiB: two terminal shares of 512 KiB, one user's at most.
        let recorder = recorder_in(dir.path(), 1);
        let start = |user: &str| {
            let user: UserName = user.parse().expect("name");
            recorder.terminal(&user, SessionId([1; 16]), &shell())
        };
        let flood = start("bob").expect("bob's");
        assert!(matches!(start("bob"), Err(RecordError::UsersQuarter)));
        let quiet = start("carol").expect("carol's");
        assert!(matches!(start("dave"), Err(RecordError::Full)));
        for _ in 0..64 {
            flood.record(Stream::Output, &[b'x'; 32 * 1024]);
        }
        // The other's share is its own: what it shows is kept.
        quiet.record(Stream::Output, b"evidence");
        quiet.end("exit 0");
        let id = quiet.id().expect("id");
        drop(quiet);
        flood.end("exit 0");
        drop(flood);
        let (_, events) = events(&recorder.library.dir().join(format!("{id}.cast")));
        assert_eq!(events[0], (events[0].0, "o".into(), "evidence".into()));
        // Finished, they make room for a new one (the least recently
        // written goes).
        let third = start("dave").expect("room made");
        third.end("exit 0");
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
        let tape = bobs_sh(&recorder);
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
    fn nothing_follows_a_recordings_closing_marker() {
        let dir = tempfile::tempdir().expect("temp dir");
        let recorder = recorder_in(dir.path(), 8);
        let tape = bobs_sh(&recorder);
        // A command's input pump holds a clone until it is stopped.
        let pump = tape.clone();
        tape.end("exit 0");
        pump.record(Stream::Input, b"late\n");
        pump.resize(100, 30);
        drop((tape, pump));
        let entries = recorder.library.entries().expect("list");
        let (_, events) = events(&entries[0].path);
        assert_eq!(events.last().map(|e| e.2.as_str()), Some("exit 0"));
        assert_eq!(events.len(), 1);
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

    #[cfg(unix)]
    #[test]
    fn ending_unended_recordings_changes_no_file_a_recording_could_not_be() {
        let dir = tempfile::tempdir().expect("temp dir");
        let recorder = recorder_in(dir.path(), 8);
        std::fs::create_dir_all(recorder.library.dir()).expect("dir");
        // A name in the directory for a file elsewhere, and a file with
        // no header.
        let victim = dir.path().join("victim.txt");
        std::fs::write(&victim, "line one\nline two").expect("write");
        let linked = recorder.library.dir().join("20200101-000000-0001.cast");
        std::fs::hard_link(&victim, &linked).expect("link");
        let headless = recorder.library.dir().join("20200101-000000-0002.cast");
        std::fs::write(&headless, "[0.1, \"o\", \"x\"]\nno newline").expect("write");
        recorder.settle();
        assert_eq!(
            std::fs::read_to_string(&victim).expect("read"),
            "line one\nline two"
        );
        assert_eq!(
            std::fs::read_to_string(&headless).expect("read"),
            "[0.1, \"o\", \"x\"]\nno newline"
        );
    }
}
