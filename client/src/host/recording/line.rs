//! A copy's or a forward's recording: one JSON line, written when the
//! channel starts (so one still running is listed) and again with how it
//! ended.

use std::{
    fs::File,
    io::{Seek, Write},
    time::Instant,
};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{budget::Share, cast::Made, library::Claim};

/// What a copy's or a forward's recording says.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct LineRecord {
    /// When it started, in Unix seconds.
    pub timestamp: u64,
    /// Who and what.
    pub latchkey: Made,
    /// The path (and a copy's size) or the target.
    pub detail: String,
    /// How long it ran, once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secs: Option<f64>,
    /// `running`, `done`, or why it ended.
    pub outcome: String,
}

/// A copy's or a forward's recording, until it ends; dropped without
/// [`Line::end`] (its task was cut), it says so.
pub(crate) struct Line {
    file: File,
    claim: Claim,
    /// Its room in the budget, told what the line takes.
    share: Share,
    record: LineRecord,
    started: Instant,
    ended: bool,
}

impl Line {
    pub(super) fn start(
        file: File,
        claim: Claim,
        share: Share,
        record: LineRecord,
    ) -> std::io::Result<Self> {
        let mut line = Self {
            file,
            claim,
            share,
            record,
            started: Instant::now(),
            ended: false,
        };
        line.write()?;
        Ok(line)
    }

    /// The recording's id.
    pub(crate) fn id(&self) -> &str {
        self.claim.id()
    }

    /// Records how the channel ended.
    pub(crate) fn end(mut self, outcome: &str) {
        self.close(outcome);
    }

    fn close(&mut self, outcome: &str) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.record.outcome = outcome.to_owned();
        self.record.secs = Some((self.started.elapsed().as_secs_f64() * 1e3).round() / 1e3);
        if let Err(e) = self.write() {
            warn!(
                recording = self.claim.id(),
                "cannot write the recording: {e}"
            );
        }
    }

    fn write(&mut self) -> std::io::Result<()> {
        let mut text = serde_json::to_vec(&self.record).map_err(std::io::Error::other)?;
        text.push(b'\n');
        self.file.set_len(0)?;
        self.file.rewind()?;
        self.file.write_all(&text)?;
        self.share.leaves(text.len() as u64);
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        self.close("cut");
    }
}
