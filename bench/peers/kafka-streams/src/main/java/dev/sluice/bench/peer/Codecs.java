package dev.sluice.bench.peer;

import java.nio.ByteBuffer;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;

/** The serdes of the topology's values. */
public final class Codecs {
    private Codecs() {
    }

    /** Wall-clock nanoseconds of the first input record decoded (0 before). */
    static final AtomicLong FIRST_RECORD_NANOS = new AtomicLong();
    /** Process CPU nanoseconds when the first input record was decoded. */
    static volatile long firstRecordCpuNanos;
    /** Wall-clock nanoseconds of the latest input record decoded. */
    static volatile long lastInputNanos;

    /**
     * Input values: decodes the JSON page view, throwing {@link DeadLetter} for what Sluice's
     * source refuses (the deserialization exception handler sends those to the dead-letter
     * topic). Notes the time of the first and latest records for the report.
     */
    public static final class PageViewDeserializer implements Deserializer<PageView> {
        @Override
        public PageView deserialize(String topic, byte[] data) {
            long now = System.nanoTime();
            if (FIRST_RECORD_NANOS.get() == 0 && FIRST_RECORD_NANOS.compareAndSet(0, now)) {
                firstRecordCpuNanos = Report.processCpuNanos();
            }
            lastInputNanos = now;
            return PageView.decode(data);
        }
    }

    public static Serde<PageView> pageViews() {
        return Serdes.serdeFrom(
                (topic, value) -> {
                    throw new UnsupportedOperationException("page views are only read");
                },
                new PageViewDeserializer());
    }

    /** Latencies across the repartition topic: a tag byte and 8 bytes. */
    public static Serde<Latency> latencies() {
        Serializer<Latency> serializer = (topic, latency) -> {
            ByteBuffer buffer = ByteBuffer.allocate(9);
            if (latency.isDouble) {
                buffer.put((byte) 2).putDouble(latency.real);
            } else {
                buffer.put((byte) 1).putLong(latency.integer);
            }
            return buffer.array();
        };
        Deserializer<Latency> deserializer = (topic, bytes) -> {
            ByteBuffer buffer = ByteBuffer.wrap(bytes);
            return buffer.get() == 2 ? Latency.ofDouble(buffer.getDouble()) : Latency.ofInteger(buffer.getLong());
        };
        return Serdes.serdeFrom(serializer, deserializer);
    }

    /** Window state in RocksDB and its changelog: 32 bytes. */
    public static Serde<WindowAggregate> windowAggregates() {
        Serializer<WindowAggregate> serializer = (topic, aggregate) -> ByteBuffer.allocate(32)
                .putLong(aggregate.views)
                .putLong(aggregate.integerSum)
                .putDouble(aggregate.doubleSum)
                .putLong(aggregate.latencies)
                .array();
        Deserializer<WindowAggregate> deserializer = (topic, bytes) -> {
            if (bytes == null) {
                return null;
            }
            ByteBuffer buffer = ByteBuffer.wrap(bytes);
            WindowAggregate aggregate = new WindowAggregate();
            aggregate.views = buffer.getLong();
            aggregate.integerSum = buffer.getLong();
            aggregate.doubleSum = buffer.getDouble();
            aggregate.latencies = buffer.getLong();
            return aggregate;
        };
        return Serdes.serdeFrom(serializer, deserializer);
    }
}
