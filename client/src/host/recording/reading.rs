//! Reading recordings back, for the owner at the host: a summary of each
//! (`latchkey host recordings`), and one played in the terminal with its
//! own timing (`latchkey host replay`). A file is read with a limit per
//! line, so a damaged or hostile one gives an error, never unbounded
//! memory.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Seek, SeekFrom, Write},
    time::Duration,
};

use latchkey_protocol::text::Shown;
use serde::Serialize;
use thiserror::Error;

use super::{
    cast::{CastHeader, AGENT_STOPPED, BUDGET_FROM_HERE},
    library::{Entry, Holds, Library},
    line::LineRecord,
};

/// The longest line a recording holds: a header with a command line of a
/// whole frame (64 KiB), or an event with one chunk of output (32 KiB), at
/// most six times longer once escaped as JSON.
const MAX_LINE: u64 = 1024 * 1024;

/// How much of a terminal recording's end is read to find its length and
/// how it ended: its last events are markers, or a chunk of output.
const TAIL: u64 = 256 * 1024;

/// Why a recording could not be read.
#[derive(Debug, Error)]
pub enum ReadError {
    /// The directory or a file could not be read.
    #[error("cannot read the recordings: {0}")]
    Io(#[from] std::io::Error),
    /// No recording has that id.
    #[error("no recording '{0}' on this host (`latchkey host recordings` lists them)")]
    NotFound(String),
    /// A file is not what Latchkey writes.
    #[error("recording {id} is damaged at line {line}: {why}")]
    Damaged {
        /// The recording.
        id: String,
        /// Its line, from 1.
        line: usize,
        /// What is wrong there.
        why: String,
    },
}

/// One recording, as `latchkey host recordings` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Its id, for `latchkey host replay`.
    pub id: String,
    /// When it started, in Unix seconds.
    pub started: u64,
    /// Whose session it was.
    pub user: String,
    /// `shell`, `exec`, `copy-to`, `copy-from` or `forward`.
    pub kind: String,
    /// The command, the path or the target.
    pub detail: String,
    /// How long it ran (for a terminal, to its last event).
    pub secs: Option<f64>,
    /// How it ended (`exit 0`, `hung up`, `done`...), once it has.
    pub outcome: Option<String>,
    /// Its file's size.
    pub bytes: u64,
}

/// Every recording in `library`, oldest first. A damaged file is listed
/// with what is wrong rather than hiding the others.
pub fn list(library: &Library) -> Result<Vec<Summary>, ReadError> {
    let mut summaries = Vec::new();
    for entry in library.entries()? {
        let summary = match entry.holds {
            Holds::Terminal => terminal_summary(&entry),
            Holds::Line => line_summary(&entry),
        };
        summaries.push(summary.unwrap_or_else(|e| Summary {
            id: entry.id.clone(),
            started: 0,
            user: String::new(),
            kind: "damaged".into(),
            detail: e.to_string(),
            secs: None,
            outcome: None,
            bytes: entry.bytes,
        }));
    }
    Ok(summaries)
}

/// How a replay keeps time: `None` writes the output at once.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How many times faster than it happened.
    pub speed: f64,
    /// The longest pause shown, whatever the recording's.
    pub max_wait: Duration,
}

/// Plays recording `id`: its output to `out` as the user's terminal was
/// sent it, what Latchkey says about it (who, what, how it ended) to
/// `notes`, and with `input` what the user sent (escaped) there too.
pub fn replay(
    library: &Library,
    id: &str,
    timing: Option<Timing>,
    input: bool,
    out: &mut impl Write,
    notes: &mut impl Write,
) -> Result<(), ReadError> {
    let entry = library
        .find(id)
        .ok_or_else(|| ReadError::NotFound(id.to_owned()))?;
    if entry.holds == Holds::Line {
        let summary = line_summary(&entry)?;
        writeln!(notes, "latchkey: {}", Shown(&describe(&summary)))?;
        return Ok(());
    }
    let mut lines = Lines::open(&entry)?;
    let header: CastHeader = lines.parse_next()?.ok_or_else(|| lines.damaged("empty"))?;
    // The title holds a command line the user typed: escaped, as every
    // word of theirs is before it reaches a terminal.
    writeln!(notes, "latchkey: {} (recording {id})", Shown(&header.title))?;
    let mut at = 0.0f64;
    while let Some((t, code, data)) = lines.parse_next::<(f64, String, String)>()? {
        match code.as_str() {
            "o" => {
                if let Some(timing) = timing {
                    let wait =
                        ((t - at).max(0.0) / timing.speed).min(timing.max_wait.as_secs_f64());
                    out.flush()?;
                    std::thread::sleep(Duration::from_secs_f64(wait));
                }
                at = t;
                out.write_all(data.as_bytes())?;
            }
            "i" if input => {
                out.flush()?;
                writeln!(notes, "\r\nlatchkey: sent: {}", Shown(&data))?;
            }
            "m" => {
                out.flush()?;
                writeln!(notes, "\r\nlatchkey: {}", Shown(&data))?;
            }
            _ => {}
        }
    }
    out.flush()?;
    Ok(())
}

fn terminal_summary(entry: &Entry) -> Result<Summary, ReadError> {
    let mut lines = Lines::open(entry)?;
    let header: CastHeader = lines.parse_next()?.ok_or_else(|| lines.damaged("empty"))?;
    // The end: the last event's time, and the last closing marker.
    let tail = Tail::read(&entry.path)?;
    let secs = tail.events.last().map(|e| e.0);
    let outcome = tail
        .events
        .iter()
        .rev()
        .find(|(_, code, data)| code == "m" && data != BUDGET_FROM_HERE)
        .map(|e| e.2.clone());
    let detail = header
        .command
        .clone()
        .unwrap_or_else(|| format!("{}x{}", header.width, header.height));
    Ok(Summary {
        id: entry.id.clone(),
        started: header.timestamp,
        user: header.latchkey.user,
        kind: header.latchkey.kind,
        detail,
        secs,
        outcome,
        bytes: entry.bytes,
    })
}

fn line_summary(entry: &Entry) -> Result<Summary, ReadError> {
    let mut lines = Lines::open(entry)?;
    let record: LineRecord = lines.parse_next()?.ok_or_else(|| lines.damaged("empty"))?;
    let outcome = (record.outcome != "running").then_some(record.outcome);
    Ok(Summary {
        id: entry.id.clone(),
        started: record.timestamp,
        user: record.latchkey.user,
        kind: record.latchkey.kind,
        detail: record.detail,
        secs: record.secs,
        outcome,
        bytes: entry.bytes,
    })
}

/// The events at a terminal recording's end.
struct Tail {
    events: Vec<(f64, String, String)>,
    /// Where the tail read starts.
    from: u64,
    /// Where the last complete line ends: past it, a line the agent's
    /// death cut.
    complete: u64,
    len: u64,
}

impl Tail {
    fn read(path: &std::path::Path) -> Result<Self, ReadError> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let from = len.saturating_sub(TAIL);
        file.seek(SeekFrom::Start(from))?;
        let mut tail = Vec::new();
        file.take(TAIL).read_to_end(&mut tail)?;
        let complete = from
            + tail
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i as u64 + 1);
        // The first line of a tail read from the middle may be cut: skipped.
        let skip = usize::from(from > 0);
        let events = tail
            .split(|b| *b == b'\n')
            .skip(skip)
            .filter_map(|line| serde_json::from_slice(line).ok())
            .collect();
        Ok(Self {
            events,
            from,
            complete,
            len,
        })
    }
}

/// Ends the recordings a previous agent left unended (it died): a line
/// the death cut is dropped, and the closing marker says the agent
/// stopped. Run at the agent's start, before it records. Only a file a
/// recording could be is changed: one name, a header that reads, its cut
/// line within the tail read. Returns how many were ended.
pub(crate) fn settle(library: &Library) -> Result<usize, ReadError> {
    let mut settled = 0;
    for entry in library.entries()? {
        if entry.linked {
            tracing::warn!(recording = %entry.id, "left as it is: the file has other names");
            continue;
        }
        let ended = match entry.holds {
            Holds::Terminal => settle_terminal(&entry),
            Holds::Line => settle_line(&entry),
        };
        match ended {
            Ok(ended) => settled += usize::from(ended),
            // Listed as damaged; the others are settled all the same.
            Err(e) => tracing::warn!(recording = %entry.id, "cannot end a recording: {e}"),
        }
    }
    Ok(settled)
}

fn settle_terminal(entry: &Entry) -> Result<bool, ReadError> {
    Lines::open(entry)?
        .parse_next::<CastHeader>()?
        .ok_or_else(|| ReadError::Damaged {
            id: entry.id.clone(),
            line: 1,
            why: "no header".into(),
        })?;
    let tail = Tail::read(&entry.path)?;
    let closed = matches!(tail.events.last(), Some((_, code, data)) if code == "m" && data != BUDGET_FROM_HERE);
    if closed && tail.complete == tail.len {
        return Ok(false);
    }
    if tail.complete == tail.from && tail.from > 0 {
        // The cut line is longer than the tail: it is left, not cut in
        // the middle.
        return Err(ReadError::Damaged {
            id: entry.id.clone(),
            line: 0,
            why: "its last line is cut and too long to drop".into(),
        });
    }
    let mut file = std::fs::OpenOptions::new().write(true).open(&entry.path)?;
    file.set_len(tail.complete)?;
    file.seek(SeekFrom::End(0))?;
    let at = tail.events.last().map_or(0.0, |e| e.0);
    let mut line = serde_json::to_vec(&(at, "m", AGENT_STOPPED)).map_err(std::io::Error::other)?;
    line.push(b'\n');
    file.write_all(&line)?;
    Ok(true)
}

fn settle_line(entry: &Entry) -> Result<bool, ReadError> {
    let mut lines = Lines::open(entry)?;
    let Some(mut record) = lines.parse_next::<LineRecord>()? else {
        return Ok(false);
    };
    if record.outcome != "running" {
        return Ok(false);
    }
    record.outcome = AGENT_STOPPED.into();
    let mut text = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
    text.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&entry.path)?;
    file.write_all(&text)?;
    Ok(true)
}

/// Whose session a recording is, from its first line.
pub(crate) fn user_of(entry: &Entry) -> Option<String> {
    let first: serde_json::Value = Lines::open(entry).ok()?.parse_next().ok()??;
    first["latchkey"]["user"].as_str().map(str::to_owned)
}

/// One line for a summary: who did what, for how long, how it ended.
fn describe(s: &Summary) -> String {
    let mut text = format!("{} {} {}", s.user, s.kind, s.detail);
    if let Some(secs) = s.secs {
        text.push_str(&format!(", {secs:.1} s"));
    }
    match &s.outcome {
        Some(outcome) => text.push_str(&format!(", {outcome}")),
        None => text.push_str(", still running"),
    }
    text
}

/// A recording's lines, each read with [`MAX_LINE`] as its limit.
struct Lines {
    id: String,
    reader: BufReader<File>,
    number: usize,
    buf: Vec<u8>,
}

impl Lines {
    fn open(entry: &Entry) -> Result<Self, ReadError> {
        Ok(Self {
            id: entry.id.clone(),
            reader: BufReader::new(File::open(&entry.path)?),
            number: 0,
            buf: Vec::new(),
        })
    }

    fn parse_next<T: serde::de::DeserializeOwned>(&mut self) -> Result<Option<T>, ReadError> {
        self.buf.clear();
        let read = (&mut self.reader)
            .take(MAX_LINE + 1)
            .read_until(b'\n', &mut self.buf)?;
        if read == 0 {
            return Ok(None);
        }
        self.number += 1;
        if self.buf.last() != Some(&b'\n') {
            if read as u64 > MAX_LINE {
                return Err(self.damaged("a line longer than a recording writes"));
            }
            // The last line of a recording cut by the agent's death.
            return Ok(None);
        }
        serde_json::from_slice(&self.buf)
            .map(Some)
            .map_err(|e| self.damaged(&e.to_string()))
    }

    fn damaged(&self, why: &str) -> ReadError {
        ReadError::Damaged {
            id: self.id.clone(),
            line: self.number.max(1),
            why: why.to_owned(),
        }
    }
}
