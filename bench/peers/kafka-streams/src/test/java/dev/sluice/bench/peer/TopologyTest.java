package dev.sluice.bench.peer;

import static org.junit.jupiter.api.Assertions.assertEquals;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.TestInputTopic;
import org.apache.kafka.streams.TestOutputTopic;
import org.apache.kafka.streams.TopologyTestDriver;
import org.apache.kafka.streams.test.TestRecord;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * The example of examples/page-views through the topology, without a broker: the results
 * must be Sluice's final value for each url and window (its last update), the dead letters
 * its dead letters with the same reasons, and the late event dropped.
 */
class TopologyTest {
    private static final Path EXAMPLE = Path.of(System.getProperty("sluice.examples", "../../../examples/page-views"));
    private static final ObjectMapper JSON = new ObjectMapper();

    @TempDir
    Path stateDir;

    @ParameterizedTest
    @ValueSource(booleans = {false, true})
    void theExampleGivesSluicesFinalResults(boolean keyed) throws IOException {
        Properties properties = new Properties();
        properties.put(StreamsConfig.APPLICATION_ID_CONFIG, "bench-peer-test");
        properties.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, "unused:9092");
        properties.put(StreamsConfig.STATE_DIR_CONFIG, stateDir.toString());
        // at_least_once here: under exactly_once_v2 the test driver loses the dead letters that
        // the deserialization handler returns (those of the processing handler come through).
        // On a broker they do come through under exactly_once_v2: run.sh check tests that.
        properties.put(StreamsConfig.DESERIALIZATION_EXCEPTION_HANDLER_CLASS_CONFIG, DeadLetterHandler.class.getName());
        properties.put(StreamsConfig.PROCESSING_EXCEPTION_HANDLER_CLASS_CONFIG, DeadLetterHandler.class.getName());
        properties.put(StreamsConfig.ERRORS_DEAD_LETTER_QUEUE_TOPIC_NAME_CONFIG, "bench-peer-dead-letters");
        // Emit as soon as stream time closes a window, not at most once a wall-clock second.
        properties.put(StreamsConfig.InternalConfig.EMIT_INTERVAL_MS_KSTREAMS_WINDOWED_AGGREGATION, 0L);
        List<String> lines = Files.readAllLines(EXAMPLE.resolve("input.jsonl"));
        try (TopologyTestDriver driver = new TopologyTestDriver(
                PageViewsApp.topology("bench-peer-in", "bench-peer-out", keyed), properties)) {
            TestInputTopic<String, String> input = driver.createInputTopic("bench-peer-in",
                    new StringSerializer(), new StringSerializer());
            for (String line : lines) {
                byte[] url = Tool.urlOf(line.getBytes(StandardCharsets.UTF_8));
                input.pipeInput(keyed && url != null ? new String(url, StandardCharsets.UTF_8) : null, line);
            }
            // Sluice's end of input: a far-future event closes every window.
            String flush = Tool.sentinelKeys(1).get(0);
            input.pipeInput(flush, Tool.sentinel(Instant.parse("2026-11-26T10:02:10Z").toEpochMilli(), flush));

            TestOutputTopic<String, String> output = driver.createOutputTopic("bench-peer-out",
                    new StringDeserializer(), new StringDeserializer());
            Map<String, String> actual = new TreeMap<>();
            for (TestRecord<String, String> record : output.readRecordsToList()) {
                JsonNode result = JSON.readTree(record.value());
                assertEquals(result.get("key").asText(), record.key());
                assertEquals(false, result.get("isUpdate").asBoolean());
                String previous = actual.put(windowOf(result), record.value());
                assertEquals(null, previous, "one result per url and window");
            }
            // Sluice's final value per url and window is its latest result (first or update).
            Map<String, String> expected = new TreeMap<>();
            for (String line : Files.readAllLines(EXAMPLE.resolve("expected-output.jsonl"))) {
                JsonNode result = JSON.readTree(line);
                ((com.fasterxml.jackson.databind.node.ObjectNode) result).put("isUpdate", false);
                expected.put(windowOf(result), JSON.writeValueAsString(result));
            }
            assertEquals(normalized(expected), normalized(actual));

            TestOutputTopic<byte[], byte[]> deadLetters = driver.createOutputTopic("bench-peer-dead-letters",
                    new ByteArrayDeserializer(), new ByteArrayDeserializer());
            List<String> reasons = new ArrayList<>();
            for (TestRecord<byte[], byte[]> record : deadLetters.readRecordsToList()) {
                String original = new String(record.value(), StandardCharsets.UTF_8);
                reasons.add((lines.indexOf(original) + 1) + " "
                        + new String(record.headers().lastHeader("sluice-reason").value(), StandardCharsets.UTF_8));
            }
            assertEquals(List.of("8 decode-invalid-json", "11 event-time-missing", "14 aggregate-not-number"), reasons);
            // dropped-records counts the dead letters and the late events.
            assertEquals(4.0, driver.metrics().entrySet().stream()
                    .filter(e -> e.getKey().name().equals("dropped-records-total")
                            && e.getKey().group().equals("stream-task-metrics"))
                    .mapToDouble(e -> ((Number) e.getValue().metricValue()).doubleValue()).sum(),
                    "3 dead letters and line 13, late");
        }
    }

    private static String windowOf(JsonNode result) {
        return result.get("key").asText() + " " + result.get("windowStart").asText() + " " + result.get("windowEnd").asText();
    }

    private static Map<String, JsonNode> normalized(Map<String, String> results) throws IOException {
        Map<String, JsonNode> out = new TreeMap<>();
        for (Map.Entry<String, String> entry : results.entrySet()) {
            out.put(entry.getKey(), JSON.readTree(entry.getValue()));
        }
        return out;
    }
}
