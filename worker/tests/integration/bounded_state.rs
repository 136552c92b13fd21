//! State is bounded: after a long run over many windows, the window entries left (in the
//! cache and in RocksDB) are the windows still open, not the history.

use std::collections::BTreeSet;

use crate::common;

use common::job::JobBuilder;

use sluice_worker::engine::{Engine, EngineOptions};
use sluice_worker::io::memory::MemorySink;
use sluice_worker::io::{Position, SourceRecord};
use sluice_worker::metrics::Metrics;
use sluice_worker::state::rocksdb::RocksDbStore;
use sluice_worker::time::watermark::PartitionId;

#[test]
fn live_window_entries_match_the_open_windows_after_200k_events() {
    // Per user, tumbling windows of 1s with 3s of lateness, counting events.
    let manifest = JobBuilder::tumbling()
        .window("tumbling: {size: 1s}")
        .aggregates(&[("n", "Count", None)])
        .build();
    let (_, checked) = sluice_crds::load_manifest(&manifest).unwrap();
    let directory = tempfile::tempdir().unwrap();
    let store = RocksDbStore::open(directory.path()).unwrap();
    // A small cache, so most state goes through RocksDB and evictions.
    let options = EngineOptions {
        state_cache_entries: 500,
    };
    let mut engine = Engine::new(&checked, Box::new(store), options, Metrics::default()).unwrap();
    let mut sink = MemorySink::default();
    let keys = 1_000u64;
    let events = 200_000u64;
    let mut times = Vec::new();
    for index in 0..events {
        // 100 events per second of event time, 1000 keys, up to 1.5s out of order.
        let base = i64::try_from(index * 10).unwrap();
        let jitter = i64::try_from((index * 7919) % 1500).unwrap();
        let time = base - jitter;
        let user = (index * 104_729) % keys;
        times.push((user, time));
        let payload = format!("{{\"user\":\"u{user}\",\"ts\":{time}}}");
        let position = Position::Line(index + 1);
        let record = SourceRecord {
            partition: PartitionId::new(0, 0),
            position: &position,
            payload: payload.as_bytes(),
        };
        engine
            .process(record, i64::try_from(index).unwrap(), &mut sink)
            .unwrap();
    }
    assert!(sink.late.is_empty());
    let watermark = engine.watermark();
    // Open windows by the rule: (key, window) with an event whose window has not expired.
    let open: BTreeSet<(u64, i64)> = times
        .iter()
        .map(|(user, time)| (*user, time.div_euclid(1000) * 1000))
        .filter(|(_, start)| start + 1000 + 3000 > watermark)
        .collect();
    assert!(
        open.len() < 6_000,
        "the test should leave few windows open, not {}",
        open.len()
    );
    assert_eq!(engine.open_windows(), open.len() as u64);
    assert_eq!(engine.count_stored_windows().unwrap(), open.len() as u64);
    // Timers: at most one per open window (fire or expire).
    assert!(engine.count_timers().unwrap() <= open.len() as u64);
    let windows_fired = sink.results.len();
    assert!(windows_fired > 100_000, "{windows_fired} results");

    engine.finish(&mut sink).unwrap();
    assert_eq!(engine.open_windows(), 0);
    assert_eq!(engine.count_stored_windows().unwrap(), 0);
    assert_eq!(engine.count_timers().unwrap(), 0);
}
