package dev.sluice.bench.peer;

/**
 * An event the pipeline sets aside, with the reason Sluice gives the same event (the
 * kebab-case names of worker/src/dead_letter.rs, sent in the {@code sluice-reason} header
 * as Sluice does). Thrown by the deserializer and the stateless steps; {@link
 * DeadLetterHandler} turns it into a dead-letter record. It carries no stack trace: broken
 * records are expected (0.05% of the benchmark's input) and must stay cheap.
 */
public final class DeadLetter extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public static final String DECODE_INVALID_JSON = "decode-invalid-json";
    public static final String DECODE_NOT_AN_OBJECT = "decode-not-an-object";
    public static final String EVENT_TIME_MISSING = "event-time-missing";
    public static final String EVENT_TIME_INVALID = "event-time-invalid";
    public static final String EVENT_TIME_OUT_OF_RANGE = "event-time-out-of-range";
    public static final String FILTER_ERROR = "filter-error";
    public static final String MAP_ERROR = "map-error";
    public static final String KEY_UNSUPPORTED_TYPE = "key-unsupported-type";
    public static final String AGGREGATE_ERROR = "aggregate-error";
    public static final String AGGREGATE_NOT_NUMBER = "aggregate-not-number";

    private final String reason;

    public DeadLetter(String reason, String detail) {
        super(detail, null, false, false);
        this.reason = reason;
    }

    public String reason() {
        return reason;
    }
}
