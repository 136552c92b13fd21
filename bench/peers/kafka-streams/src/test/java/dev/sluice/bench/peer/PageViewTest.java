package dev.sluice.bench.peer;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.Random;
import org.junit.jupiter.api.Test;

class PageViewTest {
    private static PageView decode(String json) {
        return PageView.decode(json.getBytes(StandardCharsets.UTF_8));
    }

    private static String reason(String json) {
        return assertThrows(DeadLetter.class, () -> decode(json)).reason();
    }

    @Test
    void decodesTheFieldsTheJobReads() {
        PageView view = decode("{\"timestamp\":\"2026-11-26T10:15:03.250Z\",\"url\":\"/home\",\"status\":200,\"latencyMs\":123,\"user\":{\"a\":[1,2]}}");
        assertEquals(Instant.parse("2026-11-26T10:15:03.250Z").toEpochMilli(), view.timestamp);
        assertEquals("/home", view.requireUrl());
        assertTrue(view.ok);
        assertEquals(123, view.requireLatency().integer);
        assertTrue(decode("{\"timestamp\":\"2026-11-26T10:15:03Z\",\"url\":\"/a\",\"status\":200.0,\"latencyMs\":1.5}").ok);
        assertEquals(1.5, decode("{\"timestamp\":\"2026-11-26T10:15:03Z\",\"url\":\"/a\",\"status\":200,\"latencyMs\":1.5}").requireLatency().real);
        assertEquals(false, decode("{\"timestamp\":\"2026-11-26T10:15:03Z\",\"url\":\"/a\",\"status\":\"200\",\"latencyMs\":1}").ok);
        assertEquals(false, decode("{\"timestamp\":\"2026-11-26T10:15:03Z\",\"url\":\"/a\",\"status\":404,\"latencyMs\":1}").ok);
    }

    @Test
    void refusesWhatSluiceRefusesWithTheSameReasons() {
        assertEquals(DeadLetter.DECODE_INVALID_JSON, reason("{\"timestamp\":\"2026-11-26T10:01:03Z\",\"url\":"));
        assertEquals(DeadLetter.DECODE_INVALID_JSON, reason("not json"));
        assertEquals(DeadLetter.DECODE_INVALID_JSON, reason("{\"a\":1} {\"b\":2}"));
        assertEquals(DeadLetter.DECODE_INVALID_JSON, reason(""));
        assertEquals(DeadLetter.DECODE_NOT_AN_OBJECT, reason("[1,2]"));
        assertEquals(DeadLetter.EVENT_TIME_MISSING, reason("{\"url\":\"/home\",\"status\":200,\"latencyMs\":10}"));
        assertEquals(DeadLetter.EVENT_TIME_INVALID, reason("{\"timestamp\":12,\"url\":\"/home\"}"));
        assertEquals(DeadLetter.EVENT_TIME_INVALID, reason("{\"timestamp\":\"yesterday\",\"url\":\"/home\"}"));
        assertEquals(DeadLetter.EVENT_TIME_INVALID, reason("{\"timestamp\":\"2026-02-30T00:00:00Z\"}"));
        PageView slow = decode("{\"timestamp\":\"2026-11-26T10:01:20Z\",\"url\":\"/cart\",\"status\":200,\"latencyMs\":\"slow\"}");
        assertEquals(DeadLetter.AGGREGATE_NOT_NUMBER, assertThrows(DeadLetter.class, slow::requireLatency).reason());
        PageView noUrl = decode("{\"timestamp\":\"2026-11-26T10:01:20Z\",\"status\":200,\"latencyMs\":1}");
        assertEquals(DeadLetter.MAP_ERROR, assertThrows(DeadLetter.class, noUrl::requireUrl).reason());
        assertTrue(decode("{\"timestamp\":\"2026-11-26T10:01:20Z\"}").statusMissing);
    }

    @Test
    void readsRfc3339LikeJavaTime() {
        assertEquals(Instant.parse("2026-11-26T10:00:00.250Z").toEpochMilli(), PageView.parseRfc3339("2026-11-26T11:00:00.250+01:00"));
        assertEquals(Instant.parse("2026-11-26T10:00:00.123Z").toEpochMilli(), PageView.parseRfc3339("2026-11-26T10:00:00.123456789Z"));
        assertEquals(Instant.parse("2026-11-26T10:00:00.100Z").toEpochMilli(), PageView.parseRfc3339("2026-11-26t10:00:00.1z"));
        assertEquals(Instant.parse("1969-12-31T23:59:59Z").toEpochMilli(), PageView.parseRfc3339("1969-12-31T23:59:59Z"));
        Random random = new Random(42);
        for (int i = 0; i < 100_000; i++) {
            long millis = random.nextLong() % 253_402_300_799_000L;
            if (millis < -62_167_219_200_000L) {
                continue;
            }
            int offsetMinutes = random.nextInt(18 * 60 * 2 + 1) - 18 * 60;
            ZoneOffset offset = ZoneOffset.ofTotalSeconds(offsetMinutes * 60);
            OffsetDateTime time = Instant.ofEpochMilli(millis).atOffset(offset);
            String text = String.format("%04d-%02d-%02dT%02d:%02d:%02d.%03d%s", time.getYear(), time.getMonthValue(),
                    time.getDayOfMonth(), time.getHour(), time.getMinute(), time.getSecond(), time.getNano() / 1_000_000,
                    offsetMinutes == 0 ? "Z" : offset.getId());
            if (time.getYear() < 0 || time.getYear() > 9999) {
                continue;
            }
            assertEquals(millis, PageView.parseRfc3339(text), text);
        }
    }
}
