package dev.sluice.bench.peer;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * {@code Tool compare}: the peer's results, dead letters and late count on a small input
 * against Sluice's expected files (examples/page-views). Sluice emits a first result when
 * the watermark passes a window's end and an update for each late event within the allowed
 * lateness; Kafka Streams' onWindowClose emits once, when the grace period ends. So the
 * peer must match Sluice's latest result for each url and window; where Sluice's first
 * result differs, the table says so.
 */
final class Compare {
    private static final ObjectMapper JSON = new ObjectMapper();

    private Compare() {
    }

    static int run(Args args) throws IOException {
        List<String> input = Files.readAllLines(Path.of(args.required("input")));
        List<String> expected = Files.readAllLines(Path.of(args.required("expected")));
        List<String> actual = Files.readAllLines(Path.of(args.required("actual")));
        String expectedDeadPath = args.string("expected-dead-letters", null);
        String actualDeadPath = args.string("actual-dead-letters", null);
        String expectedLatePath = args.string("expected-late", null);
        String reportPath = args.string("report", null);
        args.done();
        boolean ok = true;

        Map<String, JsonNode> first = new TreeMap<>();
        Map<String, JsonNode> last = new TreeMap<>();
        for (String line : expected) {
            if (line.isBlank()) {
                continue;
            }
            JsonNode result = JSON.readTree(line);
            first.putIfAbsent(window(result), result);
            last.put(window(result), result);
        }
        Map<String, JsonNode> peer = new TreeMap<>();
        for (String line : actual) {
            if (line.isBlank()) {
                continue;
            }
            JsonNode result = JSON.readTree(line);
            if (result.get("key").asText().startsWith("/__flush__/")) {
                continue;
            }
            if (peer.put(window(result), result) != null) {
                System.out.println("DIFF  two results for " + window(result));
                ok = false;
            }
        }
        System.out.printf("%-6s %-46s %-16s %-16s %-16s%n", "", "url and window", "Sluice first", "Sluice final", "Kafka Streams");
        Map<String, Boolean> keys = new TreeMap<>();
        last.keySet().forEach(k -> keys.put(k, true));
        peer.keySet().forEach(k -> keys.put(k, true));
        for (String key : keys.keySet()) {
            JsonNode sluiceFirst = first.get(key);
            JsonNode sluiceFinal = last.get(key);
            JsonNode streams = peer.get(key);
            boolean same = sluiceFinal != null && streams != null
                    && sluiceFinal.get("views").asLong() == streams.get("views").asLong()
                    && sluiceFinal.get("avgLatencyMs").asDouble() == streams.get("avgLatencyMs").asDouble();
            ok &= same;
            String note = same ? "ok" : "DIFF";
            System.out.printf("%-6s %-46s %-16s %-16s %-16s%s%n", note, key, brief(sluiceFirst), brief(sluiceFinal), brief(streams),
                    sluiceFirst != null && sluiceFirst != sluiceFinal
                            ? "  (Sluice updated this window for a late event; Kafka Streams emits only the final value)" : "");
        }

        if (expectedDeadPath != null && actualDeadPath != null) {
            List<String> wanted = new ArrayList<>();
            for (String line : Files.readAllLines(Path.of(expectedDeadPath))) {
                if (!line.isBlank() && !line.startsWith("#")) {
                    wanted.add(line.trim());
                }
            }
            List<String> got = new ArrayList<>();
            for (String line : Files.readAllLines(Path.of(actualDeadPath))) {
                if (line.isBlank()) {
                    continue;
                }
                int tab = line.indexOf('\t');
                String reason = line.substring(0, tab);
                String original = line.substring(tab + 1);
                got.add((input.indexOf(original) + 1) + " " + reason);
            }
            // The expected file gives the reason's family (decode, event-time, aggregate).
            boolean same = wanted.size() == got.size();
            for (int i = 0; same && i < wanted.size(); i++) {
                String[] w = wanted.get(i).split(" ");
                String[] g = got.get(i).split(" ");
                same = w[0].equals(g[0]) && g[1].startsWith(w[1]);
            }
            ok &= same;
            System.out.printf("%-6s dead letters (line reason): Sluice %s, Kafka Streams %s%n", same ? "ok" : "DIFF", wanted, got);
        }
        if (expectedLatePath != null && reportPath != null) {
            long wanted = Files.readAllLines(Path.of(expectedLatePath)).stream()
                    .filter(line -> !line.isBlank() && !line.startsWith("#")).count();
            JsonNode report = JSON.readTree(Files.readString(Path.of(reportPath)));
            long got = report.get("lateDropped").asLong();
            ok &= wanted == got;
            System.out.printf("%-6s late events: Sluice %d (to its late-data topic), Kafka Streams %d (dropped, counted)%n",
                    wanted == got ? "ok" : "DIFF", wanted, got);
        }
        System.out.println(ok ? "MATCH: every url and window has Sluice's final views and avgLatencyMs"
                : "MISMATCH: see the DIFF lines");
        return ok ? 0 : 1;
    }

    private static String window(JsonNode result) {
        return result.get("key").asText() + " " + result.get("windowStart").asText().substring(11)
                + "-" + result.get("windowEnd").asText().substring(11);
    }

    private static String brief(JsonNode result) {
        if (result == null) {
            return "-";
        }
        return result.get("views").asLong() + " @ " + result.get("avgLatencyMs").asDouble();
    }
}
