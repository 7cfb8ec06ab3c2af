//! One terminal recording being written: an asciicast v2 file (a JSON
//! header line, then one `[seconds, code, data]` line per event), which
//! `asciinema play` plays as well as `latchkey host replay`. Output is
//! written as it happens, so a recording survives the agent's death up to
//! its last chunk. A recording has a byte budget; past it the output is
//! counted, not kept, and the file says so where it happens and at its end.

use std::{
    collections::VecDeque,
    fs::File,
    io::Write,
    sync::{Arc, Mutex},
    time::Instant,
};

use tracing::warn;

use super::{budget::Share, library::Claim};

/// The header line's fields that Latchkey reads back when listing.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct CastHeader {
    /// Always 2.
    pub version: u8,
    /// The terminal's columns when the recording started.
    pub width: u16,
    /// Its rows.
    pub height: u16,
    /// When it started, in Unix seconds.
    pub timestamp: u64,
    /// What a player shows as its name.
    pub title: String,
    /// An exec's command line, as a shell would read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// `TERM` for a shell.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    /// Who and what, for `latchkey host recordings`; players ignore keys
    /// they do not know.
    pub latchkey: Made,
}

/// Who made a recording, and of what.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Made {
    /// The host's name.
    pub host: String,
    /// The user whose session it was.
    pub user: String,
    /// The session, as `channels.log` names it.
    pub session: String,
    /// `shell`, `exec`, `copy-to`, `copy-from` or `forward`.
    pub kind: String,
}

/// The closing marker of a recording the agent did not end (it died).
pub(crate) const AGENT_STOPPED: &str = "cut: the agent stopped";

/// The marker written where a recording's share runs out.
pub(crate) const BUDGET_FROM_HERE: &str =
    "output past the recording's budget is not kept from here";

/// Which of a channel's streams bytes come from: each keeps its own cut
/// character.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stream {
    /// What the user was sent (a command's standard output).
    Output,
    /// A command's standard error, shown to the user as output too.
    Errors,
    /// What the user sent.
    Input,
}

/// A channel's recording, or none (its user's channels are not recorded).
/// Shared by the tasks of one channel; the last one dropped without
/// [`Tape::end`] (the channel's task was cut) marks it cut.
#[derive(Clone, Default)]
pub(crate) struct Tape(Option<Arc<Mutex<Cast>>>);

impl Tape {
    /// No recording.
    pub(crate) fn off() -> Self {
        Self(None)
    }

    pub(super) fn on(cast: Cast) -> Self {
        Self(Some(Arc::new(Mutex::new(cast))))
    }

    /// Whether the channel is recorded.
    pub(crate) fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Writes to the recording, unless it has ended: a clone another task
    /// holds (a command's input pump, until it is stopped) adds nothing
    /// after the closing marker, which stays the last event.
    fn with(&self, write: impl FnOnce(&mut Cast)) {
        if let Some(cast) = &self.0 {
            let mut cast = cast.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if !cast.ended {
                write(&mut cast);
            }
        }
    }

    /// The recording's id.
    pub(crate) fn id(&self) -> Option<String> {
        let cast = self.0.as_ref()?;
        let cast = cast.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Some(cast.claim.id().to_owned())
    }

    /// Bytes of one of the channel's streams.
    pub(crate) fn record(&self, stream: Stream, bytes: &[u8]) {
        self.with(|cast| cast.record(stream, bytes));
    }

    /// The terminal changed size.
    pub(crate) fn resize(&self, cols: u16, rows: u16) {
        self.with(|cast| cast.resize(cols, rows));
    }

    /// Ends the recording with how its channel ended (`exit 0`, `hung
    /// up`, ...), as a marker a player shows.
    pub(crate) fn end(&self, how: &str) {
        self.with(|cast| cast.close(how));
    }
}

/// A terminal recording being written. Past the head of its share, what
/// comes is counted, and its last bytes (output and input apart) are kept
/// for the end: a user who pads a command's input or output first does
/// not hide what ends it.
pub(crate) struct Cast {
    file: File,
    claim: Claim,
    started: Instant,
    written: u64,
    share: Share,
    /// Whether the user's input is kept (a command's standard input; a
    /// shell's keystrokes only if the owner asked).
    keep_input: bool,
    /// Bytes past the head, counted for the closing marker.
    skipped: u64,
    /// Per stream, the start of a character the last chunk cut in two.
    carry: [Vec<u8>; 3],
    /// The last bytes past the head: output (both streams) and input.
    tails: [VecDeque<u8>; 2],
    /// A write failed (a full disk): warned once, then nothing more.
    broken: bool,
    ended: bool,
}

impl Cast {
    pub(super) fn start(
        mut file: File,
        claim: Claim,
        header: &CastHeader,
        share: Share,
        keep_input: bool,
    ) -> std::io::Result<Self> {
        let mut line = serde_json::to_vec(header).map_err(std::io::Error::other)?;
        line.push(b'\n');
        file.write_all(&line)?;
        Ok(Self {
            file,
            claim,
            started: Instant::now(),
            written: line.len() as u64,
            share,
            keep_input,
            skipped: 0,
            carry: Default::default(),
            tails: Default::default(),
            broken: false,
            ended: false,
        })
    }

    /// What the tails may hold, each: escaped as JSON (six times at
    /// most), the two stay within the share's last 3/16.
    fn tail_max(&self) -> usize {
        usize::try_from(self.share.bytes() / 64).unwrap_or(usize::MAX)
    }

    fn record(&mut self, stream: Stream, bytes: &[u8]) {
        let code = match stream {
            Stream::Output | Stream::Errors => "o",
            Stream::Input if self.keep_input => "i",
            Stream::Input => return,
        };
        if self.skipped == 0 {
            let text = text_of(&mut self.carry[stream as usize], bytes);
            if text.is_empty() {
                return;
            }
            // Kept only if the whole event fits the head: escaped, a
            // chunk may be six times longer than it came.
            if let Some(line) = self.line(code, &text) {
                if self.written + line.len() as u64 <= self.head() {
                    self.write(&line);
                    return;
                }
            }
            // Said at once, so a recording cut by the agent's death says
            // it too.
            self.event("m", BUDGET_FROM_HERE);
        }
        self.skipped += bytes.len() as u64;
        let max = self.tail_max();
        let tail = &mut self.tails[usize::from(matches!(stream, Stream::Input))];
        tail.extend(bytes);
        let over = tail.len().saturating_sub(max);
        tail.drain(..over);
    }

    /// The terminal changed size (kept while the budget lasts, as output
    /// is: the client sends as many as it likes).
    fn resize(&mut self, cols: u16, rows: u16) {
        if self.has_room() {
            self.event("r", &format!("{cols}x{rows}"));
        }
    }

    /// The head of its share: what it keeps as it comes (the rest is for
    /// its tails and markers).
    fn head(&self) -> u64 {
        self.share.bytes() - self.share.bytes() / 16 * 3
    }

    /// Whether events still go in as they come.
    fn has_room(&self) -> bool {
        self.skipped == 0 && self.written < self.head()
    }

    fn close(&mut self, how: &str) {
        if self.ended {
            return;
        }
        self.ended = true;
        for (stream, code) in [(0, "o"), (1, "o"), (2, "i")] {
            let tail = std::mem::take(&mut self.carry[stream]);
            if !tail.is_empty() {
                self.event(code, &String::from_utf8_lossy(&tail));
            }
        }
        if self.skipped > 0 {
            let note = format!(
                "past the recording's budget, {} bytes were not kept but the last ones, which follow",
                self.skipped
            );
            self.event("m", &note);
            for (tail, code) in [(0, "o"), (1, "i")] {
                let bytes: Vec<u8> = std::mem::take(&mut self.tails[tail]).into();
                if !bytes.is_empty() {
                    self.event(code, &String::from_utf8_lossy(&bytes));
                }
            }
        }
        self.event("m", how);
    }

    fn event(&mut self, code: &str, data: &str) {
        if let Some(line) = self.line(code, data) {
            self.write(&line);
        }
    }

    /// An event's line, timed from the recording's start.
    fn line(&self, code: &str, data: &str) -> Option<Vec<u8>> {
        let at = (self.started.elapsed().as_secs_f64() * 1e6).round() / 1e6;
        let mut line = serde_json::to_vec(&(at, code, data)).ok()?;
        line.push(b'\n');
        Some(line)
    }

    fn write(&mut self, line: &[u8]) {
        if self.broken {
            return;
        }
        match self.file.write_all(line) {
            Ok(()) => self.written += line.len() as u64,
            Err(e) => {
                self.broken = true;
                warn!(
                    recording = self.claim.id(),
                    "cannot write the recording: {e}"
                );
            }
        }
    }
}

impl Drop for Cast {
    fn drop(&mut self) {
        self.close("cut");
        self.share.leaves(self.written);
    }
}

/// `bytes` as text, with the start of a character that `bytes` cut in two
/// kept in `carry` for the next chunk, and bytes that are no UTF-8 shown
/// as U+FFFD (as a terminal would).
fn text_of(carry: &mut Vec<u8>, bytes: &[u8]) -> String {
    let mut data = std::mem::take(carry);
    data.extend_from_slice(bytes);
    let mut text = String::with_capacity(data.len());
    let mut rest = data.as_slice();
    loop {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                text.push_str(valid);
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                match e.error_len() {
                    // An incomplete character at the end: at most 3 bytes.
                    None => {
                        carry.extend_from_slice(after);
                        break;
                    }
                    Some(n) => {
                        text.push(char::REPLACEMENT_CHARACTER);
                        rest = &after[n..];
                    }
                }
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_cut_between_chunks_is_kept_whole() {
        let mut carry = Vec::new();
        let bytes = "héllo €".as_bytes();
        let (a, b) = bytes.split_at(bytes.len() - 2);
        let first = text_of(&mut carry, a);
        assert_eq!(carry.len(), 1);
        let second = text_of(&mut carry, b);
        assert_eq!(format!("{first}{second}"), "héllo €");
        assert!(carry.is_empty());
    }

    #[test]
    fn bytes_that_are_no_text_become_replacement_characters() {
        let mut carry = Vec::new();
        assert_eq!(text_of(&mut carry, b"a\xffb\xc3"), "a\u{fffd}b");
        assert_eq!(carry, b"\xc3");
        assert_eq!(text_of(&mut carry, b"\xa9"), "é");
    }
}
