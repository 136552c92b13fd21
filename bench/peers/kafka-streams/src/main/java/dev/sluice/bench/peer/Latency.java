package dev.sluice.bench.peer;

/**
 * The average's input after the map step: what the pipeline carries from the keyBy to the
 * window (and so what crosses the repartition topic: the url is the record key). Integers
 * and doubles are kept apart, as Sluice's accumulator keeps them.
 */
public final class Latency {
    public final boolean isDouble;
    public final long integer;
    public final double real;

    private Latency(boolean isDouble, long integer, double real) {
        this.isDouble = isDouble;
        this.integer = integer;
        this.real = real;
    }

    public static Latency ofInteger(long value) {
        return new Latency(false, value, 0);
    }

    public static Latency ofDouble(double value) {
        return new Latency(true, 0, value);
    }
}
