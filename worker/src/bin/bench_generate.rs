//! Writes the benchmark's page-views input: JSON lines like `examples/page-views`, from a
//! fixed seed, so every run of `bench/local-throughput.sh` reads the same bytes.
//!
//! Half of the events go to 10,000 hot pages, half to pages drawn uniformly from
//! `--keys`; event time advances `--events-per-second` per second of event time, with up
//! to 4s of disorder (inside the page-views job's 5s out-of-orderness), 0.1% stragglers
//! older than the allowed lateness (late data) and 0.05% undecodable records (dead
//! letters).

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

/// Generate the page-views benchmark input.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Arguments {
    /// Number of events.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Number of distinct pages (keys) to draw from.
    #[arg(long, default_value_t = 1_200_000)]
    keys: u64,
    /// Events per second of event time.
    #[arg(long, default_value_t = 5_000)]
    events_per_second: u64,
    /// Seed of the generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where to write (JSON lines).
    #[arg(long)]
    output: PathBuf,
}

/// SplitMix64: small, fast, fully specified, so the input never depends on a crate's
/// version.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

fn main() -> anyhow::Result<()> {
    let arguments = Arguments::parse();
    let file = std::fs::File::create(&arguments.output)
        .with_context(|| format!("failed to create {}", arguments.output.display()))?;
    let mut out = BufWriter::with_capacity(1 << 22, file);
    let mut random = SplitMix64(arguments.seed);
    let start_millis: i64 = 1_795_687_200_000; // 2026-11-26T10:00:00Z
    let mut seen = vec![false; usize::try_from(arguments.keys).unwrap_or(usize::MAX)];
    let mut distinct = 0u64;
    for index in 0..arguments.events {
        let roll = random.below(10_000);
        if roll < 5 {
            writeln!(out, "{{\"timestamp\":\"2026-11-26T10:00:00Z\",\"url\":")?;
            continue;
        }
        let base = start_millis
            + i64::try_from(index * 1000 / arguments.events_per_second.max(1)).unwrap_or(0);
        let mut time = base - i64::try_from(random.below(4_000)).unwrap_or(0);
        if roll < 15 {
            time -= 120_000;
        }
        let page = if random.below(2) == 0 {
            random.below(10_000)
        } else {
            random.below(arguments.keys)
        };
        if let Some(flag) = seen.get_mut(usize::try_from(page).unwrap_or(usize::MAX))
            && !*flag
        {
            *flag = true;
            distinct += 1;
        }
        let status = match random.below(100) {
            0..=89 => 200,
            90..=95 => 404,
            _ => 500,
        };
        let latency = 1 + random.below(2_000);
        let user = random.below(5_000_000);
        let timestamp = chrono::DateTime::from_timestamp_millis(time)
            .context("time out of range")?
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        writeln!(
            out,
            "{{\"timestamp\":\"{timestamp}\",\"url\":\"/page/{page}\",\"status\":{status},\"latencyMs\":{latency},\"user\":\"u{user}\"}}"
        )?;
    }
    out.flush()?;
    eprintln!(
        "wrote {} events with {distinct} distinct pages to {}",
        arguments.events,
        arguments.output.display()
    );
    Ok(())
}
