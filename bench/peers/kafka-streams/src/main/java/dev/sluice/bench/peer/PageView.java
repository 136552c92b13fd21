package dev.sluice.bench.peer;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.core.StreamReadConstraints;
import java.io.IOException;
import java.time.DateTimeException;
import java.time.OffsetDateTime;
import java.time.format.DateTimeFormatter;
import java.time.format.DateTimeParseException;

/**
 * One decoded page-view event: the fields the job reads, parsed in one streaming pass over
 * the whole JSON object (every other field is read and skipped, so an invalid record is
 * refused wherever its error is, as Sluice's full decode does).
 *
 * <p>Decoding refuses what Sluice's source refuses, with the same reasons: not JSON, JSON
 * that is not an object, no {@code timestamp}, a {@code timestamp} that is not an RFC 3339
 * string, or one outside years 0000 to 9999. The later steps' failures (filter, map,
 * aggregate input) are checked by {@link #requireUrl()} and {@link #requireLatency()} where
 * the pipeline reaches them, so an event filtered out first is never a dead letter, as in
 * Sluice.
 */
public final class PageView {
    private static final JsonFactory JSON = JsonFactory.builder()
            .streamReadConstraints(StreamReadConstraints.defaults())
            .build();

    /** Event time, epoch milliseconds. */
    public final long timestamp;
    /** The url field when it is a string, else null. */
    public final String url;
    /** What the url field was when it was not a string: "missing" or a JSON type. */
    private final String urlProblem;
    /** status == 200 (an integer 200 or the double 200.0), as CEL compares numbers. */
    public final boolean ok;
    /** The status field is missing: CEL's `event.status == 200` fails (filter-error). */
    public final boolean statusMissing;
    /** latencyMs when it is an integer. */
    public final long latencyInteger;
    /** latencyMs when it is a non-integer number. */
    public final double latencyDouble;
    /** 0: missing, 1: integer, 2: double, 3: not a number. */
    public final byte latencyKind;

    private PageView(long timestamp, String url, String urlProblem, boolean ok, boolean statusMissing,
                     long latencyInteger, double latencyDouble, byte latencyKind) {
        this.timestamp = timestamp;
        this.url = url;
        this.urlProblem = urlProblem;
        this.ok = ok;
        this.statusMissing = statusMissing;
        this.latencyInteger = latencyInteger;
        this.latencyDouble = latencyDouble;
        this.latencyKind = latencyKind;
    }

    /** The key (Sluice's map `page: event.url` then keyBy `event.page`). */
    public String requireUrl() {
        if (url != null) {
            return url;
        }
        if ("missing".equals(urlProblem)) {
            throw new DeadLetter(DeadLetter.MAP_ERROR, "map page: no such key: url");
        }
        throw new DeadLetter(DeadLetter.KEY_UNSUPPORTED_TYPE, "the key is " + urlProblem + ", not a string");
    }

    /** The average's input (Sluice's aggregate `avg of event.latencyMs`). */
    public Latency requireLatency() {
        switch (latencyKind) {
            case 1: return Latency.ofInteger(latencyInteger);
            case 2: return Latency.ofDouble(latencyDouble);
            case 0: throw new DeadLetter(DeadLetter.MAP_ERROR, "map latencyMs: no such key: latencyMs");
            default: throw new DeadLetter(DeadLetter.AGGREGATE_NOT_NUMBER, "aggregate avgLatencyMs: latencyMs is not a number");
        }
    }

    /** Decodes one record's value; throws {@link DeadLetter} for what Sluice's source refuses. */
    public static PageView decode(byte[] bytes) {
        if (bytes == null) {
            throw new DeadLetter(DeadLetter.DECODE_INVALID_JSON, "empty record (null value)");
        }
        try (JsonParser parser = JSON.createParser(bytes)) {
            JsonToken first = parser.nextToken();
            if (first == null) {
                throw new DeadLetter(DeadLetter.DECODE_INVALID_JSON, "EOF while parsing a value");
            }
            if (first != JsonToken.START_OBJECT) {
                parser.skipChildren();
                requireEnd(parser);
                throw new DeadLetter(DeadLetter.DECODE_NOT_AN_OBJECT, "the record is JSON but not an object");
            }
            String timestampText = null;
            String timestampType = "missing";
            String url = null;
            String urlProblem = "missing";
            boolean statusMissing = true;
            boolean ok = false;
            long latencyInteger = 0;
            double latencyDouble = 0;
            byte latencyKind = 0;
            JsonToken token;
            while ((token = parser.nextToken()) == JsonToken.FIELD_NAME) {
                String name = parser.currentName();
                JsonToken value = parser.nextToken();
                switch (name) {
                    case "timestamp":
                        if (value == JsonToken.VALUE_STRING) {
                            timestampText = parser.getText();
                            timestampType = null;
                        } else {
                            timestampText = null;
                            timestampType = typeName(value);
                            parser.skipChildren();
                        }
                        break;
                    case "url":
                        if (value == JsonToken.VALUE_STRING) {
                            url = parser.getText();
                            urlProblem = null;
                        } else {
                            url = null;
                            urlProblem = typeName(value);
                            parser.skipChildren();
                        }
                        break;
                    case "status":
                        statusMissing = false;
                        if (value == JsonToken.VALUE_NUMBER_INT) {
                            ok = parser.getNumberType() == JsonParser.NumberType.INT && parser.getIntValue() == 200;
                        } else if (value == JsonToken.VALUE_NUMBER_FLOAT) {
                            ok = parser.getDoubleValue() == 200.0;
                        } else {
                            ok = false;
                            parser.skipChildren();
                        }
                        break;
                    case "latencyMs":
                        if (value == JsonToken.VALUE_NUMBER_INT && parser.getNumberType() != JsonParser.NumberType.BIG_INTEGER) {
                            latencyInteger = parser.getLongValue();
                            latencyKind = 1;
                        } else if (value == JsonToken.VALUE_NUMBER_INT || value == JsonToken.VALUE_NUMBER_FLOAT) {
                            latencyDouble = parser.getDoubleValue();
                            latencyKind = 2;
                        } else {
                            latencyKind = 3;
                            parser.skipChildren();
                        }
                        break;
                    default:
                        parser.skipChildren();
                }
            }
            if (token != JsonToken.END_OBJECT) {
                throw new DeadLetter(DeadLetter.DECODE_INVALID_JSON, "unexpected end of the object");
            }
            requireEnd(parser);
            if (timestampText == null) {
                if ("missing".equals(timestampType)) {
                    throw new DeadLetter(DeadLetter.EVENT_TIME_MISSING, "no event-time field timestamp");
                }
                throw new DeadLetter(DeadLetter.EVENT_TIME_INVALID, "timestamp is " + timestampType + ", not an RFC 3339 string");
            }
            long timestamp = parseRfc3339(timestampText);
            return new PageView(timestamp, url, urlProblem, ok, statusMissing,
                    latencyInteger, latencyDouble, latencyKind);
        } catch (IOException error) {
            // Jackson's parse errors (JsonParseException, StreamConstraintsException, EOF).
            String message = error instanceof JsonProcessingException
                    ? ((JsonProcessingException) error).getOriginalMessage()
                    : error.getMessage();
            throw new DeadLetter(DeadLetter.DECODE_INVALID_JSON, String.valueOf(message));
        }
    }

    private static void requireEnd(JsonParser parser) throws IOException {
        if (parser.nextToken() != null) {
            throw new DeadLetter(DeadLetter.DECODE_INVALID_JSON, "trailing characters after the JSON value");
        }
    }

    private static String typeName(JsonToken token) {
        switch (token) {
            case START_OBJECT: return "an object";
            case START_ARRAY: return "an array";
            case VALUE_NUMBER_INT:
            case VALUE_NUMBER_FLOAT: return "a number";
            case VALUE_TRUE:
            case VALUE_FALSE: return "a bool";
            case VALUE_NULL: return "null";
            default: return String.valueOf(token);
        }
    }

    // ---- RFC 3339 ----

    private static final long MIN_MILLIS = -62_167_219_200_000L; // 0000-01-01T00:00:00Z
    private static final long MAX_MILLIS = 253_402_300_799_999L; // 9999-12-31T23:59:59.999Z

    /**
     * Epoch milliseconds of an RFC 3339 date-time (fractions below a millisecond are
     * dropped, as Sluice does). The common shape {@code YYYY-MM-DDTHH:MM:SS[.f+](Z|±HH:MM)}
     * is read by hand; anything else goes through java.time, which also accepts lower-case
     * {@code t} and {@code z}.
     */
    public static long parseRfc3339(String text) {
        long fast = parseFast(text);
        long millis;
        if (fast != Long.MIN_VALUE) {
            millis = fast;
        } else {
            try {
                OffsetDateTime time = OffsetDateTime.parse(text.replace('t', 'T').replace('z', 'Z'),
                        DateTimeFormatter.ISO_OFFSET_DATE_TIME);
                millis = time.toInstant().toEpochMilli();
            } catch (DateTimeParseException | ArithmeticException error) {
                throw new DeadLetter(DeadLetter.EVENT_TIME_INVALID, "timestamp " + text + " is not RFC 3339");
            } catch (DateTimeException error) {
                throw new DeadLetter(DeadLetter.EVENT_TIME_OUT_OF_RANGE, "timestamp " + text + " is out of range");
            }
        }
        if (millis < MIN_MILLIS || millis > MAX_MILLIS) {
            throw new DeadLetter(DeadLetter.EVENT_TIME_OUT_OF_RANGE, "timestamp " + text + " is outside years 0000 to 9999");
        }
        return millis;
    }

    /** The hand-written path; Long.MIN_VALUE when the text is not of that shape. */
    private static long parseFast(String s) {
        int n = s.length();
        if (n < 20 || s.charAt(4) != '-' || s.charAt(7) != '-' || s.charAt(10) != 'T'
                || s.charAt(13) != ':' || s.charAt(16) != ':') {
            return Long.MIN_VALUE;
        }
        int year = digits(s, 0, 4);
        int month = digits(s, 5, 2);
        int day = digits(s, 8, 2);
        int hour = digits(s, 11, 2);
        int minute = digits(s, 14, 2);
        int second = digits(s, 17, 2);
        if ((year | month | day | hour | minute | second) < 0 || month < 1 || month > 12 || day < 1
                || day > daysInMonth(year, month) || hour > 23 || minute > 59 || second > 59) {
            return Long.MIN_VALUE;
        }
        int i = 19;
        int millis = 0;
        if (s.charAt(i) == '.') {
            i++;
            int start = i;
            while (i < n && s.charAt(i) >= '0' && s.charAt(i) <= '9') {
                if (i - start < 3) {
                    millis = millis * 10 + (s.charAt(i) - '0');
                }
                i++;
            }
            int count = i - start;
            if (count == 0) {
                return Long.MIN_VALUE;
            }
            for (int k = count; k < 3; k++) {
                millis *= 10;
            }
        }
        if (i >= n) {
            return Long.MIN_VALUE;
        }
        long offsetSeconds;
        char zone = s.charAt(i);
        if (zone == 'Z' && i + 1 == n) {
            offsetSeconds = 0;
        } else if ((zone == '+' || zone == '-') && i + 6 == n && s.charAt(i + 3) == ':') {
            int offsetHours = digits(s, i + 1, 2);
            int offsetMinutes = digits(s, i + 4, 2);
            if (offsetHours < 0 || offsetMinutes < 0 || offsetHours > 23 || offsetMinutes > 59) {
                return Long.MIN_VALUE;
            }
            offsetSeconds = (offsetHours * 3600L + offsetMinutes * 60L) * (zone == '+' ? 1 : -1);
        } else {
            return Long.MIN_VALUE;
        }
        long days = daysFromCivil(year, month, day);
        long seconds = days * 86_400L + hour * 3600L + minute * 60L + second - offsetSeconds;
        return seconds * 1000L + millis;
    }

    private static int digits(String s, int from, int count) {
        int value = 0;
        for (int i = from; i < from + count; i++) {
            char c = s.charAt(i);
            if (c < '0' || c > '9') {
                return -1;
            }
            value = value * 10 + (c - '0');
        }
        return value;
    }

    private static int daysInMonth(int year, int month) {
        switch (month) {
            case 2: return (year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)) ? 29 : 28;
            case 4: case 6: case 9: case 11: return 30;
            default: return 31;
        }
    }

    /** Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm). */
    static long daysFromCivil(long year, int month, int day) {
        year -= month <= 2 ? 1 : 0;
        long era = Math.floorDiv(year, 400);
        long yearOfEra = year - era * 400;
        long dayOfYear = (153L * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1;
        long dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear;
        return era * 146_097 + dayOfEra - 719_468;
    }
}
