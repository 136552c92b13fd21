//! Watermarks over several partitions through the engine: the slowest partition holds
//! windows back until it has been idle longer than the idle timeout, measured in the
//! processing time the caller passes (no clock is read, so this is deterministic).

use crate::common;

use common::job::JobBuilder;
use serde_json::json;
use sluice_worker::engine::{Engine, EngineOptions};
use sluice_worker::io::memory::MemorySink;
use sluice_worker::io::{Position, SourceRecord};
use sluice_worker::metrics::Metrics;
use sluice_worker::state::MemoryStore;
use sluice_worker::time::watermark::PartitionId;

fn send(engine: &mut Engine, sink: &mut MemorySink, partition: u32, time: i64, now: i64) {
    let payload = format!("{{\"user\":\"u\",\"ts\":{time}}}");
    let position = Position::Kafka {
        topic: "in".into(),
        partition: i32::try_from(partition).unwrap(),
        offset: 0,
    };
    let record = SourceRecord {
        partition: PartitionId::new(0, i32::try_from(partition).unwrap()),
        position: &position,
        payload: payload.as_bytes(),
    };
    engine.process(record, now, sink).unwrap();
}

/// Per user, tumbling windows of 10s counting events; 1s out of order; a partition
/// silent for 30s stops holding the watermark (unless `idle` is false).
fn manifest(idle: bool) -> String {
    let job = JobBuilder::tumbling()
        .lateness(None)
        .aggregates(&[("n", "Count", None)])
        .out_of_orderness("1s");
    if idle { job.idle_timeout("30s") } else { job }.build()
}

/// An engine for `manifest` with in-memory state.
fn engine_for(manifest: &str) -> Engine {
    let (_, checked) = sluice_crds::load_manifest(manifest).unwrap();
    Engine::new(
        &checked,
        Box::new(MemoryStore::default()),
        EngineOptions::default(),
        Metrics::default(),
    )
    .unwrap()
}

#[test]
fn an_idle_partition_stops_holding_windows_back() {
    let mut engine = engine_for(&manifest(true));
    let mut sink = MemorySink::default();
    send(&mut engine, &mut sink, 0, 1_000, 0);
    send(&mut engine, &mut sink, 1, 2_000, 0);
    // Partition 0 moves on to 25s; partition 1 stays at 2s: the watermark stays at 1s.
    send(&mut engine, &mut sink, 0, 25_000, 10_000);
    assert!(sink.results.is_empty());
    assert_eq!(engine.watermark(), 1_000);
    // 20s of processing time later partition 1 is not idle yet (timeout 30s).
    engine.advance(20_000, &mut sink).unwrap();
    assert!(sink.results.is_empty());
    // After 30s without records it is idle: the watermark follows partition 0 alone.
    engine.advance(30_001, &mut sink).unwrap();
    assert_eq!(engine.watermark(), 24_000);
    let results = sink.result_values();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["windowEnd"], json!("1970-01-01T00:00:10Z"));
    assert_eq!(results[0]["n"], json!(2));
    // Partition 1 comes back behind the watermark: its event is late, nothing else moves.
    send(&mut engine, &mut sink, 1, 3_000, 31_000);
    assert_eq!(sink.late.len(), 1);
    assert_eq!(engine.watermark(), 24_000);
}

#[test]
fn a_dead_letter_also_lets_an_idle_partition_release_the_watermark() {
    let mut engine = engine_for(&manifest(true));
    let mut sink = MemorySink::default();
    send(&mut engine, &mut sink, 0, 1_000, 0);
    send(&mut engine, &mut sink, 1, 2_000, 0);
    send(&mut engine, &mut sink, 0, 25_000, 10_000);
    assert_eq!(engine.watermark(), 1_000);
    // Partition 1 has been idle past its timeout when partition 0 delivers records that
    // go to the dead-letter output (undecodable, then without an event time): processing
    // them moves the watermark as any record would.
    let position = Position::Kafka {
        topic: "in".into(),
        partition: 0,
        offset: 3,
    };
    for (payload, now) in [
        (&b"{not json"[..], 30_001),
        (&b"{\"user\":\"u\"}"[..], 30_002),
    ] {
        let record = SourceRecord {
            partition: PartitionId::new(0, 0),
            position: &position,
            payload,
        };
        engine.process(record, now, &mut sink).unwrap();
    }
    assert_eq!(sink.dead_letters.len(), 2);
    assert_eq!(engine.watermark(), 24_000);
    let results = sink.result_values();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["windowEnd"], json!("1970-01-01T00:00:10Z"));
}

#[test]
fn an_assigned_partition_that_has_sent_nothing_holds_windows_back() {
    // No idle timeout: a partition assigned but silent holds the watermark until it sends.
    let mut engine = engine_for(&manifest(false));
    let mut sink = MemorySink::default();
    engine.assign_partitions(&[PartitionId::new(0, 0), PartitionId::new(0, 1)], 0);
    send(&mut engine, &mut sink, 0, 1_000, 0);
    send(&mut engine, &mut sink, 0, 25_000, 10_000);
    assert!(sink.results.is_empty(), "partition 1 has not spoken yet");
    // Partition 1's first event belongs to the first window: on time, not late, and
    // partition 1 (at 2s) still holds the watermark at 1s.
    send(&mut engine, &mut sink, 1, 2_000, 20_000);
    assert!(sink.late.is_empty());
    assert!(sink.results.is_empty());
    assert_eq!(engine.watermark(), 1_000);
    // Once partition 1 is revoked, partition 0 alone sets the watermark: the first
    // window fires with both events.
    engine
        .revoke_partitions(&[PartitionId::new(0, 1)], 30_000, &mut sink)
        .unwrap();
    assert_eq!(engine.watermark(), 24_000);
    let results = sink.result_values();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["windowEnd"], json!("1970-01-01T00:00:10Z"));
    assert_eq!(results[0]["n"], json!(2));
}
