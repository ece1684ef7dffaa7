package dev.millrace.bench;

import java.time.Duration;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;

/** Configures and runs a Kafka Streams topology the way the benchmark compares it with Millrace. */
final class Streams {
    /**
     * Options: {@code --bootstrap}, {@code --app-id}, {@code --guarantee} (exactly_once_v2 or
     * at_least_once), {@code --state-dir}, {@code --threads} (default 1: Millrace processes on one
     * thread), {@code --commit-ms} (default 100, as Millrace's benchmark pipeline), {@code
     * --instance-id} (static membership, for the restart runs), {@code --session-timeout-ms}.
     */
    static void run(Topology topology, Args args) throws InterruptedException {
        Properties props = new Properties();
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args.get("bootstrap"));
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, args.get("app-id"));
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, guarantee(args.get("guarantee")));
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, args.getLong("commit-ms", 100));
        props.put(StreamsConfig.STATE_DIR_CONFIG, args.get("state-dir"));
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, (int) args.getLong("threads", 1));
        // A fresh application reads its input from the start, as Millrace's groups do.
        props.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        String instance = args.get("instance-id", "");
        if (!instance.isEmpty()) {
            props.put(StreamsConfig.consumerPrefix(ConsumerConfig.GROUP_INSTANCE_ID_CONFIG), instance);
        }
        String session = args.get("session-timeout-ms", "");
        if (!session.isEmpty()) {
            props.put(StreamsConfig.consumerPrefix(ConsumerConfig.SESSION_TIMEOUT_MS_CONFIG), session);
        }

        KafkaStreams streams = new KafkaStreams(topology, props);
        CountDownLatch done = new CountDownLatch(1);
        // The driver reads these lines from the log to know when the application runs.
        streams.setStateListener((now, before) -> {
            System.out.println("state " + now);
            System.out.flush();
            if (now == KafkaStreams.State.NOT_RUNNING || now == KafkaStreams.State.ERROR) {
                done.countDown();
            }
        });
        streams.setUncaughtExceptionHandler(e -> {
            e.printStackTrace();
            return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        Runtime.getRuntime()
                .addShutdownHook(new Thread(() -> {
                    streams.close(Duration.ofSeconds(30));
                    done.countDown();
                }));
        streams.start();
        done.await();
    }

    private static String guarantee(String name) {
        return switch (name) {
            case "exactly_once", "exactly_once_v2" -> StreamsConfig.EXACTLY_ONCE_V2;
            case "at_least_once" -> StreamsConfig.AT_LEAST_ONCE;
            default -> throw new IllegalArgumentException("--guarantee must be exactly_once_v2 or at_least_once");
        };
    }

    private Streams() {}
}
