//! Local mode's files: JSON lines in, JSON lines out.
//!
//! - input: one event per line (`-` or no file: stdin); blank lines are skipped; a UTF-8
//!   byte-order mark at the very start is skipped.
//! - output: one result per line.
//! - dead letters and late events: one envelope per line,
//!   `{"reason": ..., "detail": ..., "line": N, "original": "<the line, untouched>"}`:
//!   the line's bytes without its line ending (`\n` or `\r\n`); a line that is not UTF-8
//!   comes as `"originalBase64"` instead, so no byte is lost.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use anyhow::Context as _;
use base64::prelude::{BASE64_STANDARD, Engine as _};
use serde::Serialize;

use super::{OutputRecord, Position, Rejected, Sink, Source, SourceRecord};
use crate::time::watermark::PartitionId;

/// The UTF-8 encoding of U+FEFF.
const UTF8_BYTE_ORDER_MARK: &[u8] = b"\xEF\xBB\xBF";

/// Reads JSON lines.
pub struct LineSource {
    reader: Box<dyn BufRead>,
    buffer: Vec<u8>,
    line: u64,
    position: Position,
}

impl LineSource {
    /// Reads `path`, or stdin when it is `None` or `-`.
    pub fn open(path: Option<&Path>) -> anyhow::Result<Self> {
        let reader: Box<dyn BufRead> = match path {
            Some(path) if path != Path::new("-") => Box::new(BufReader::with_capacity(
                1 << 20,
                File::open(path)
                    .with_context(|| format!("failed to open the input {}", path.display()))?,
            )),
            _ => Box::new(BufReader::with_capacity(1 << 20, std::io::stdin())),
        };
        Ok(Self::new(reader))
    }

    /// Reads from any reader.
    pub fn new(reader: Box<dyn BufRead>) -> Self {
        Self {
            reader,
            buffer: Vec::with_capacity(4096),
            line: 0,
            position: Position::Line(0),
        }
    }
}

impl Source for LineSource {
    fn next_record(&mut self) -> anyhow::Result<Option<SourceRecord<'_>>> {
        loop {
            self.buffer.clear();
            let read = self
                .reader
                .read_until(b'\n', &mut self.buffer)
                .context("failed to read the input")?;
            if read == 0 {
                return Ok(None);
            }
            self.line += 1;
            // A UTF-8 byte-order mark at the start of the input (editors on Windows write
            // one) marks the encoding, it is not part of the first event.
            if self.line == 1 && self.buffer.starts_with(UTF8_BYTE_ORDER_MARK) {
                self.buffer.drain(..UTF8_BYTE_ORDER_MARK.len());
            }
            // The line ending is framing, not the event: `\n` or `\r\n`, once.
            if self.buffer.last() == Some(&b'\n') {
                self.buffer.pop();
                if self.buffer.last() == Some(&b'\r') {
                    self.buffer.pop();
                }
            }
            if self.buffer.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            self.position = Position::Line(self.line);
            return Ok(Some(SourceRecord {
                partition: PartitionId::new(0, 0),
                position: &self.position,
                payload: &self.buffer,
            }));
        }
    }
}

/// The envelope of a dead letter or late event in local mode.
#[derive(Serialize)]
struct Envelope<'a> {
    reason: &'a str,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    original: Option<&'a str>,
    #[serde(rename = "originalBase64", skip_serializing_if = "Option::is_none")]
    original_base64: Option<String>,
}

/// Writes JSON lines to files or stdout.
pub struct FileSink {
    results: Box<dyn Write>,
    dead_letters: Option<Box<dyn Write>>,
    late: Option<Box<dyn Write>>,
}

fn create(path: &Path) -> anyhow::Result<Box<dyn Write>> {
    let file =
        File::create(path).with_context(|| format!("failed to create {}", path.display()))?;
    Ok(Box::new(BufWriter::with_capacity(1 << 20, file)))
}

impl FileSink {
    /// Results to `output` (stdout when `None` or `-`); dead letters and late events to
    /// their files, or counted only when `None`.
    pub fn create(
        output: Option<&Path>,
        dead_letters: Option<&Path>,
        late: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let results = match output {
            Some(path) if path != Path::new("-") => create(path)?,
            _ => Box::new(BufWriter::with_capacity(1 << 20, std::io::stdout())),
        };
        Ok(Self {
            results,
            dead_letters: dead_letters.map(create).transpose()?,
            late: late.map(create).transpose()?,
        })
    }

    fn write_envelope(writer: &mut dyn Write, rejected: Rejected<'_>) -> anyhow::Result<()> {
        let text = std::str::from_utf8(rejected.original).ok();
        let envelope = Envelope {
            reason: rejected.reason.as_str(),
            detail: rejected.detail,
            line: match rejected.position {
                Some(Position::Line(line)) => Some(*line),
                Some(Position::Kafka { offset, .. }) => u64::try_from(*offset).ok(),
                None => None,
            },
            original: text,
            original_base64: text
                .is_none()
                .then(|| BASE64_STANDARD.encode(rejected.original)),
        };
        serde_json::to_writer(&mut *writer, &envelope).context("failed to write an envelope")?;
        writer
            .write_all(b"\n")
            .context("failed to write an envelope")?;
        Ok(())
    }
}

impl Sink for FileSink {
    fn result(&mut self, record: OutputRecord) -> anyhow::Result<()> {
        self.results
            .write_all(&record.value)
            .context("failed to write a result")?;
        self.results
            .write_all(b"\n")
            .context("failed to write a result")
    }

    fn dead_letter(&mut self, rejected: Rejected<'_>) -> anyhow::Result<()> {
        match &mut self.dead_letters {
            Some(writer) => Self::write_envelope(writer.as_mut(), rejected),
            None => Ok(()),
        }
    }

    fn late(&mut self, rejected: Rejected<'_>) -> anyhow::Result<()> {
        match &mut self.late {
            Some(writer) => Self::write_envelope(writer.as_mut(), rejected),
            None => Ok(()),
        }
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.results
            .flush()
            .context("failed to flush the results")?;
        for writer in [&mut self.dead_letters, &mut self.late]
            .into_iter()
            .flatten()
        {
            writer
                .flush()
                .context("failed to flush a rejected-events file")?;
        }
        Ok(())
    }
}
