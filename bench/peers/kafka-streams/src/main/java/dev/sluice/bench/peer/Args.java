package dev.sluice.bench.peer;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

/** `--name value` and `--flag` arguments; repeated names keep every value. */
final class Args {
    private final Map<String, List<String>> values = new HashMap<>();
    private final Set<String> flags = new HashSet<>();
    private final Set<String> read = new HashSet<>();

    Args(String[] arguments, Set<String> flagNames) {
        for (int i = 0; i < arguments.length; i++) {
            String argument = arguments[i];
            if (!argument.startsWith("--")) {
                throw new IllegalArgumentException("unexpected argument " + argument);
            }
            String name = argument.substring(2);
            int equals = name.indexOf('=');
            if (equals > 0) {
                values.computeIfAbsent(name.substring(0, equals), k -> new ArrayList<>()).add(name.substring(equals + 1));
            } else if (flagNames.contains(name)) {
                flags.add(name);
            } else if (i + 1 < arguments.length) {
                values.computeIfAbsent(name, k -> new ArrayList<>()).add(arguments[++i]);
            } else {
                throw new IllegalArgumentException("--" + name + " needs a value");
            }
        }
    }

    boolean flag(String name) {
        read.add(name);
        return flags.contains(name);
    }

    String string(String name, String fallback) {
        read.add(name);
        List<String> list = values.get(name);
        return list == null ? fallback : list.get(list.size() - 1);
    }

    String required(String name) {
        String value = string(name, null);
        if (value == null) {
            throw new IllegalArgumentException("--" + name + " is required");
        }
        return value;
    }

    List<String> all(String name) {
        read.add(name);
        return values.getOrDefault(name, List.of());
    }

    long number(String name, long fallback) {
        String value = string(name, null);
        try {
            return value == null ? fallback : Long.parseLong(value);
        } catch (NumberFormatException error) {
            throw new IllegalArgumentException("--" + name + " must be an integer, not " + value);
        }
    }

    /** Fails on names no one read (typos). */
    void done() {
        for (String name : values.keySet()) {
            if (!read.contains(name)) {
                throw new IllegalArgumentException("unknown option --" + name);
            }
        }
        for (String name : flags) {
            if (!read.contains(name)) {
                throw new IllegalArgumentException("unknown option --" + name);
            }
        }
    }

    static String defaultBootstrap() {
        String fromEnvironment = System.getenv("SLUICE_KAFKA_BOOTSTRAP");
        return fromEnvironment == null || fromEnvironment.isEmpty() ? "127.0.0.1:9092" : fromEnvironment;
    }
}
