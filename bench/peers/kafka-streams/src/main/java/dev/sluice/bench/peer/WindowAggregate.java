package dev.sluice.bench.peer;

/**
 * The state of one url's window: views (count) and the average's parts, kept as Sluice's
 * accumulator keeps them (integer inputs summed exactly, doubles apart), so that
 * {@code avgLatencyMs} is computed the same way: (integer sum + double sum) / count.
 */
public final class WindowAggregate {
    public long views;
    public long integerSum;
    public double doubleSum;
    /** Inputs of the average (equal to views: every counted event has a latency). */
    public long latencies;

    public WindowAggregate add(Latency latency) {
        views++;
        latencies++;
        if (latency.isDouble) {
            doubleSum += latency.real;
        } else {
            // Sluice saturates its i128 sum; a long overflows only past 9.2e18 ms of latency.
            integerSum = saturatingAdd(integerSum, latency.integer);
        }
        return this;
    }

    public double average() {
        return ((double) integerSum + doubleSum) / (double) latencies;
    }

    private static long saturatingAdd(long a, long b) {
        long sum = a + b;
        if (((a ^ sum) & (b ^ sum)) < 0) {
            return a < 0 ? Long.MIN_VALUE : Long.MAX_VALUE;
        }
        return sum;
    }
}
