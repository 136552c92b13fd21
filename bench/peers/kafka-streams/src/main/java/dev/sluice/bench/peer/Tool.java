package dev.sluice.bench.peer;

import java.io.BufferedInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterOptions;
import org.apache.kafka.clients.admin.ListOffsetsOptions;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.IsolationLevel;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.utils.Utils;

/**
 * The helpers run.sh needs, so that it needs a JDK and nothing else:
 *
 * <pre>
 * ping    --bootstrap B [--timeout-s S]            is the broker answering?
 * count   --bootstrap B --topic T                  prints "PARTITIONS RECORDS" (exit 3: no topic)
 * delete  --bootstrap B --prefix bench-peer-...    deletes the topics that start with it
 * load    --bootstrap B --topic T --input FILE --partitions P [--keyed] [--compression none|lz4]
 *         [--flush-sentinel]                        JSON lines into a new topic, fast
 * dump    --bootstrap B --topic T [--reasons]      prints a topic's committed values, one a line
 * compare --input F --expected F --actual F [--expected-dead-letters F --actual-dead-letters F]
 *         [--expected-late F --report F]           a small run against Sluice's expected files
 * </pre>
 */
public final class Tool {
    private Tool() {
    }

    public static void main(String[] arguments) throws Exception {
        if (arguments.length == 0) {
            usage("no command");
        }
        String command = arguments[0];
        Args args;
        try {
            args = new Args(Arrays.copyOfRange(arguments, 1, arguments.length), Set.of("keyed", "flush-sentinel", "reasons"));
        } catch (IllegalArgumentException error) {
            usage(error.getMessage());
            return;
        }
        int code;
        try {
            switch (command) {
                case "ping": code = ping(args); break;
                case "count": code = count(args); break;
                case "delete": code = delete(args); break;
                case "load": code = load(args); break;
                case "dump": code = dump(args); break;
                case "compare": code = Compare.run(args); break;
                default: usage("unknown command " + command); return;
            }
        } catch (IllegalArgumentException | IllegalStateException error) {
            System.err.println("tool " + command + ": " + error.getMessage());
            code = 2;
        }
        System.exit(code);
    }

    private static void usage(String problem) {
        System.err.println("tool: " + problem);
        System.err.println("usage: Tool ping|count|delete|load|dump|compare --bootstrap HOST:PORT ... (see Tool.java)");
        System.exit(64);
    }

    private static Admin admin(String bootstrap) {
        Properties properties = new Properties();
        properties.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        properties.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "15000");
        properties.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "10000");
        return Admin.create(properties);
    }

    static int ping(Args args) throws Exception {
        String bootstrap = args.string("bootstrap", Args.defaultBootstrap());
        long timeout = args.number("timeout-s", 10);
        args.done();
        try (Admin admin = admin(bootstrap)) {
            var cluster = admin.describeCluster(new DescribeClusterOptions().timeoutMs((int) (timeout * 1000)));
            String id = cluster.clusterId().get(timeout, TimeUnit.SECONDS);
            int brokers = cluster.nodes().get(timeout, TimeUnit.SECONDS).size();
            System.out.println("cluster " + id + ", " + brokers + " broker(s) at " + bootstrap);
            return 0;
        } catch (Exception error) {
            System.err.println("no broker answered at " + bootstrap + " within " + timeout + "s: " + error);
            return 1;
        }
    }

    static int count(Args args) throws Exception {
        String bootstrap = args.string("bootstrap", Args.defaultBootstrap());
        String topic = args.required("topic");
        args.done();
        try (Admin admin = admin(bootstrap)) {
            List<TopicPartition> partitions = Topics.partitions(admin, topic);
            if (partitions.isEmpty()) {
                return 3;
            }
            Map<TopicPartition, OffsetSpec> latest = new HashMap<>();
            Map<TopicPartition, OffsetSpec> earliest = new HashMap<>();
            partitions.forEach(p -> {
                latest.put(p, OffsetSpec.latest());
                earliest.put(p, OffsetSpec.earliest());
            });
            var end = admin.listOffsets(latest).all().get();
            var begin = admin.listOffsets(earliest).all().get();
            long records = 0;
            for (TopicPartition partition : partitions) {
                records += end.get(partition).offset() - begin.get(partition).offset();
            }
            System.out.println(partitions.size() + " " + records);
            return 0;
        }
    }

    static int delete(Args args) throws Exception {
        String bootstrap = args.string("bootstrap", Args.defaultBootstrap());
        String prefix = args.required("prefix");
        args.done();
        Topics.requirePrefix(prefix);
        try (Admin admin = admin(bootstrap)) {
            var names = Topics.names(admin, prefix);
            Topics.delete(admin, names);
            // Consumer groups of the applications (application.id = group id).
            var groups = admin.listGroups().all().get().stream()
                    .map(listing -> listing.groupId())
                    .filter(id -> id.startsWith(prefix))
                    .toList();
            for (String group : groups) {
                try {
                    admin.deleteConsumerGroups(List.of(group)).all().get();
                } catch (ExecutionException error) {
                    // Still has members (a running application, or one that did not leave):
                    // the broker drops it once its members' sessions time out and it is empty.
                    System.err.println("delete: kept consumer group " + group + ": " + error.getCause().getMessage());
                }
            }
            System.err.println("deleted " + names.size() + " topic(s) and looked at " + groups.size() + " consumer group(s) starting with " + prefix);
            return 0;
        }
    }

    private static long eventTimeOf(byte[] line) {
        try {
            return PageView.decode(line).timestamp;
        } catch (DeadLetter error) {
            return Long.MIN_VALUE;
        }
    }

    /**
     * A flush sentinel: an event one hour after the input's latest event time, past the end
     * and grace of every window. Not further: Kafka Streams' caching window store walks the
     * emitted time range one segment (a minute here) at a time, so a sentinel in year 9999
     * would keep it busy for hours.
     */
    static String sentinel(long maxEventTime, String url) {
        long time = (maxEventTime == Long.MIN_VALUE ? 0 : maxEventTime) + 3_600_000L;
        return "{\"timestamp\":\"" + java.time.Instant.ofEpochMilli(time) + "\",\"url\":\"" + url
                + "\",\"status\":200,\"latencyMs\":0}";
    }

    /** Keys of the flush sentinels: one per partition, each hashing to its partition. */
    static List<String> sentinelKeys(int partitions) {
        List<String> keys = new ArrayList<>();
        for (int partition = 0; partition < partitions; partition++) {
            for (int n = 0; ; n++) {
                String key = "/__flush__/" + n;
                if (Utils.toPositive(Utils.murmur2(key.getBytes(StandardCharsets.UTF_8))) % partitions == partition) {
                    keys.add(key);
                    break;
                }
            }
        }
        return keys;
    }

    /**
     * Loads JSON lines into a new topic: idempotent producer, acks=all, large batches,
     * lz4 or no compression. Keyed: the record key is the event's url (the partition is
     * Kafka's default, murmur2 of the key); else no key, and the records go round-robin over
     * the partitions (each partition gets every P-th line, so each keeps the file's order).
     * A line whose url cannot be read gets no key (it is a dead letter anyway).
     *
     * <p>--flush-sentinel appends, to every partition, one event an hour after the input's
     * latest event, whose url hashes to that partition: it moves every task's stream time past every
     * window, so Kafka Streams closes them all as Sluice's end of input does. Only for small
     * correctness runs.
     */
    static int load(Args args) throws Exception {
        String bootstrap = args.string("bootstrap", Args.defaultBootstrap());
        String topic = args.required("topic");
        Path input = Path.of(args.required("input"));
        int partitions = (int) args.number("partitions", 1);
        boolean keyed = args.flag("keyed");
        String compression = args.string("compression", "lz4");
        boolean sentinel = args.flag("flush-sentinel");
        args.done();
        if (!compression.equals("none") && !compression.equals("lz4")) {
            throw new IllegalArgumentException("--compression must be none or lz4");
        }
        if (!Files.isReadable(input)) {
            throw new IllegalArgumentException("cannot read " + input);
        }
        try (Admin admin = admin(bootstrap)) {
            if (!Topics.partitions(admin, topic).isEmpty()) {
                throw new IllegalStateException("topic " + topic + " already exists: delete it first (loading twice would duplicate the input)");
            }
            Topics.ensure(admin, topic, partitions);
        }
        Properties properties = new Properties();
        properties.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        properties.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        properties.put(ProducerConfig.ACKS_CONFIG, "all");
        properties.put(ProducerConfig.LINGER_MS_CONFIG, "20");
        properties.put(ProducerConfig.BATCH_SIZE_CONFIG, Integer.toString(512 * 1024));
        properties.put(ProducerConfig.BUFFER_MEMORY_CONFIG, Long.toString(256L * 1024 * 1024));
        properties.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, compression);
        properties.put(ProducerConfig.MAX_IN_FLIGHT_REQUESTS_PER_CONNECTION, "5");
        properties.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        properties.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        AtomicLong failed = new AtomicLong();
        AtomicReference<Exception> firstFailure = new AtomicReference<>();
        long started = System.nanoTime();
        long sent = 0;
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(properties);
             InputStream in = new BufferedInputStream(Files.newInputStream(input), 1 << 20)) {
            LineReader lines = new LineReader(in);
            byte[] line;
            long maxEventTime = Long.MIN_VALUE;
            while ((line = lines.next()) != null) {
                if (line.length == 0) {
                    continue;
                }
                if (sentinel) {
                    maxEventTime = Math.max(maxEventTime, eventTimeOf(line));
                }
                ProducerRecord<byte[], byte[]> record = keyed
                        ? new ProducerRecord<>(topic, urlOf(line), line)
                        : new ProducerRecord<>(topic, (int) (sent % partitions), null, line);
                producer.send(record, (metadata, exception) -> {
                    if (exception != null && failed.getAndIncrement() == 0) {
                        firstFailure.set(exception);
                    }
                });
                sent++;
                if (sent % 1_000_000 == 0) {
                    System.err.printf("load: %d records sent (%.0f/s)%n", sent, sent / ((System.nanoTime() - started) / 1e9));
                }
            }
            if (sentinel) {
                List<String> keys = sentinelKeys(partitions);
                for (int partition = 0; partition < partitions; partition++) {
                    String url = keys.get(partition);
                    byte[] value = sentinel(maxEventTime, url).getBytes(StandardCharsets.UTF_8);
                    producer.send(new ProducerRecord<>(topic, partition, url.getBytes(StandardCharsets.UTF_8), value));
                    sent++;
                }
            }
            producer.flush();
        }
        double seconds = (System.nanoTime() - started) / 1e9;
        if (failed.get() > 0) {
            System.err.println("load: " + failed.get() + " records failed, first: " + firstFailure.get());
            return 1;
        }
        System.out.printf("loaded %d records into %s (%d partitions, %s, %s) in %.1fs, %.0f records/s%n",
                sent, topic, partitions, keyed ? "keyed by url" : "no key, round-robin", compression, seconds, sent / seconds);
        return 0;
    }

    private static final byte[] URL_FIELD = "\"url\":\"".getBytes(StandardCharsets.UTF_8);

    /** The url of a JSON line: a quick scan, or the full decoder when the line is unusual. */
    static byte[] urlOf(byte[] line) {
        int at = indexOf(line, URL_FIELD);
        if (at >= 0) {
            int start = at + URL_FIELD.length;
            for (int i = start; i < line.length; i++) {
                if (line[i] == '\\') {
                    break;
                }
                if (line[i] == '"') {
                    return Arrays.copyOfRange(line, start, i);
                }
            }
        }
        try {
            String url = PageView.decode(line).url;
            return url == null ? null : url.getBytes(StandardCharsets.UTF_8);
        } catch (DeadLetter error) {
            return null;
        }
    }

    private static int indexOf(byte[] haystack, byte[] needle) {
        outer:
        for (int i = 0; i + needle.length <= haystack.length; i++) {
            for (int j = 0; j < needle.length; j++) {
                if (haystack[i + j] != needle[j]) {
                    continue outer;
                }
            }
            return i;
        }
        return -1;
    }

    /** Lines of bytes without their \n (or \r\n). */
    static final class LineReader {
        private final InputStream in;
        private final byte[] buffer = new byte[1 << 16];
        private int position;
        private int limit;
        private byte[] pending = new byte[256];

        LineReader(InputStream in) {
            this.in = in;
        }

        byte[] next() throws IOException {
            int length = 0;
            while (true) {
                if (position == limit) {
                    limit = in.read(buffer);
                    position = 0;
                    if (limit <= 0) {
                        limit = 0;
                        return length == 0 ? null : finish(length);
                    }
                }
                int start = position;
                while (position < limit && buffer[position] != '\n') {
                    position++;
                }
                int chunk = position - start;
                if (length + chunk > pending.length) {
                    pending = Arrays.copyOf(pending, Math.max(pending.length * 2, length + chunk));
                }
                System.arraycopy(buffer, start, pending, length, chunk);
                length += chunk;
                if (position < limit) {
                    position++; // the \n
                    return finish(length);
                }
            }
        }

        private byte[] finish(int length) {
            if (length > 0 && pending[length - 1] == '\r') {
                length--;
            }
            return Arrays.copyOf(pending, length);
        }
    }

    /**
     * Prints a topic's committed values (read_committed, from the beginning to the end
     * offsets seen at start), one per line, partition by partition. --reasons prefixes each
     * with its sluice-reason header and a tab (dead letters).
     */
    static int dump(Args args) throws Exception {
        String bootstrap = args.string("bootstrap", Args.defaultBootstrap());
        String topic = args.required("topic");
        boolean reasons = args.flag("reasons");
        args.done();
        List<TopicPartition> partitions;
        Map<TopicPartition, Long> end = new HashMap<>();
        try (Admin admin = admin(bootstrap)) {
            partitions = Topics.partitions(admin, topic);
            if (partitions.isEmpty()) {
                System.err.println("dump: no topic " + topic);
                return 3;
            }
            Map<TopicPartition, OffsetSpec> request = new HashMap<>();
            partitions.forEach(p -> request.put(p, OffsetSpec.latest()));
            admin.listOffsets(request, new ListOffsetsOptions(IsolationLevel.READ_COMMITTED)).all().get()
                    .forEach((partition, info) -> end.put(partition, info.offset()));
        }
        Properties properties = new Properties();
        properties.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        properties.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        properties.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        properties.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        properties.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        PrintStream out = new PrintStream(System.out, false, StandardCharsets.UTF_8);
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(properties)) {
            for (TopicPartition partition : partitions) {
                if (end.get(partition) == 0) {
                    continue;
                }
                consumer.assign(List.of(partition));
                consumer.seekToBeginning(List.of(partition));
                long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
                while (consumer.position(partition) < end.get(partition)) {
                    if (System.nanoTime() > deadline) {
                        throw new IllegalStateException("dump: " + partition + " did not reach offset " + end.get(partition));
                    }
                    for (ConsumerRecord<byte[], byte[]> record : consumer.poll(Duration.ofMillis(500))) {
                        if (record.offset() >= end.get(partition)) {
                            continue;
                        }
                        if (reasons) {
                            Header reason = record.headers().lastHeader("sluice-reason");
                            out.print(reason == null ? "-" : new String(reason.value(), StandardCharsets.UTF_8));
                            out.print('\t');
                        }
                        out.print(record.value() == null ? "null" : new String(record.value(), StandardCharsets.UTF_8));
                        out.print('\n');
                    }
                }
            }
        }
        out.flush();
        return 0;
    }
}
