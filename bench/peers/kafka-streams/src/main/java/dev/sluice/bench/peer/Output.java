package dev.sluice.bench.peer;

import java.time.Instant;
import org.apache.kafka.streams.kstream.Windowed;

/**
 * The result record's value, in Sluice's shape and field order:
 * {@code {"key":url,"windowStart":...,"windowEnd":...,"avgLatencyMs":...,"views":...,"isUpdate":false}}.
 * Window bounds are RFC 3339 in UTC like Sluice's ({@code 2026-11-26T10:00:00Z}); every
 * result of Kafka Streams' onWindowClose is final, so {@code isUpdate} is always false.
 */
final class Output {
    private Output() {
    }

    /** The latest window's formatted bounds, per stream thread (windows close together). */
    private static final ThreadLocal<Object[]> BOUNDS = ThreadLocal.withInitial(() -> new Object[] {Long.MIN_VALUE, ""});

    static String result(Windowed<String> window, WindowAggregate aggregate) {
        long start = window.window().start();
        Object[] cached = BOUNDS.get();
        if ((long) cached[0] != start) {
            cached[0] = start;
            cached[1] = ",\"windowStart\":\"" + Instant.ofEpochMilli(start)
                    + "\",\"windowEnd\":\"" + Instant.ofEpochMilli(window.window().end()) + "\"";
        }
        StringBuilder out = new StringBuilder(128 + window.key().length());
        out.append("{\"key\":");
        appendString(out, window.key());
        out.append((String) cached[1]);
        out.append(",\"avgLatencyMs\":");
        double average = aggregate.average();
        if (Double.isFinite(average)) {
            out.append(average);
        } else {
            out.append("null");
        }
        out.append(",\"views\":").append(aggregate.views);
        out.append(",\"isUpdate\":false}");
        return out.toString();
    }

    /** A JSON string as serde_json writes it (the same escapes, so the keys compare equal). */
    static void appendString(StringBuilder out, String value) {
        out.append('"');
        for (int i = 0; i < value.length(); i++) {
            char c = value.charAt(i);
            switch (c) {
                case '"': out.append("\\\""); break;
                case '\\': out.append("\\\\"); break;
                case '\b': out.append("\\b"); break;
                case '\f': out.append("\\f"); break;
                case '\n': out.append("\\n"); break;
                case '\r': out.append("\\r"); break;
                case '\t': out.append("\\t"); break;
                default:
                    if (c < 0x20) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
            }
        }
        out.append('"');
    }
}
