package dev.sluice.bench.peer;

import java.io.IOException;
import java.lang.management.ManagementFactory;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Locale;
import java.util.Map;

/** Process measurements and the JSON of the report line. */
final class Report {
    private Report() {
    }

    private static final com.sun.management.OperatingSystemMXBean OS =
            (com.sun.management.OperatingSystemMXBean) ManagementFactory.getOperatingSystemMXBean();

    /** CPU time of the whole JVM process (every thread: stream threads, GC, JIT, clients). */
    static long processCpuNanos() {
        return OS.getProcessCpuTime();
    }

    /** Peak resident set size (VmHWM), MiB; -1 where /proc is absent. */
    static long peakRssMiB() {
        try {
            for (String line : Files.readAllLines(Path.of("/proc/self/status"))) {
                if (line.startsWith("VmHWM:")) {
                    return Long.parseLong(line.replaceAll("[^0-9]", "")) / 1024;
                }
            }
        } catch (IOException | NumberFormatException error) {
            return -1;
        }
        return -1;
    }

    /** A small JSON object writer, fields in insertion order. */
    static final class Json {
        private final StringBuilder out = new StringBuilder("{");

        Json field(String name, Object value) {
            if (out.length() > 1) {
                out.append(',');
            }
            Output.appendString(out, name);
            out.append(':');
            if (value == null) {
                out.append("null");
            } else if (value instanceof String) {
                Output.appendString(out, (String) value);
            } else if (value instanceof Double && !Double.isFinite((Double) value)) {
                out.append("null");
            } else if (value instanceof Double) {
                out.append(String.format(Locale.ROOT, "%.3f", (Double) value));
            } else if (value instanceof Map) {
                Json inner = new Json();
                ((Map<?, ?>) value).forEach((k, v) -> inner.field(String.valueOf(k), v));
                out.append(inner);
            } else {
                out.append(value);
            }
            return this;
        }

        @Override
        public String toString() {
            return out + "}";
        }
    }
}
