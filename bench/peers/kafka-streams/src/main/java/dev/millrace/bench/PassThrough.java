package dev.millrace.bench;

import java.time.Duration;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.WakeupException;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * The broker's limit for the benchmark's bytes: a plain Java consumer and producer copying every
 * input record (key, value, timestamp) to the same partition of the output topic, with no
 * processing. With {@code --transactional true} it does what an exactly-once processor must at
 * least do: reads committed records only, produces inside a transaction and commits the consumed
 * offsets in that transaction every {@code --commit-ms} (100). Without, it flushes the producer and
 * then commits the offsets every {@code --commit-ms} (at-least-once). Client settings are the
 * Kafka 4.1 defaults.
 *
 * <p>One member per group and no rebalances after the first assignment: this is a benchmark loop,
 * not a general copier. Options: {@code --bootstrap}, {@code --input}, {@code --output}, {@code
 * --group}, {@code --transactional}, {@code --commit-ms}.
 */
final class PassThrough {
    static void run(Args args) throws InterruptedException {
        boolean transactional = Boolean.parseBoolean(args.get("transactional"));
        long commitMs = args.getLong("commit-ms", 100);
        String group = args.get("group");
        String output = args.get("output");

        Properties c = new Properties();
        c.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, args.get("bootstrap"));
        c.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        c.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
        c.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        c.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, transactional ? "read_committed" : "read_uncommitted");
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, args.get("bootstrap"));
        if (transactional) {
            p.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, group + "-txn");
        }

        AtomicBoolean stop = new AtomicBoolean();
        CountDownLatch stopped = new CountDownLatch(1);
        try (KafkaConsumer<byte[], byte[]> consumer =
                        new KafkaConsumer<>(c, new ByteArrayDeserializer(), new ByteArrayDeserializer());
                KafkaProducer<byte[], byte[]> producer =
                        new KafkaProducer<>(p, new ByteArraySerializer(), new ByteArraySerializer())) {
            Runtime.getRuntime()
                    .addShutdownHook(new Thread(() -> {
                        stop.set(true);
                        consumer.wakeup();
                        try {
                            stopped.await();
                        } catch (InterruptedException e) {
                            Thread.currentThread().interrupt();
                        }
                    }));
            consumer.subscribe(List.of(args.get("input")));
            if (transactional) {
                producer.initTransactions();
                producer.beginTransaction();
            }
            Map<TopicPartition, OffsetAndMetadata> pending = new HashMap<>();
            long lastCommit = System.currentTimeMillis();
            System.out.println("state RUNNING");
            System.out.flush();
            while (!stop.get()) {
                ConsumerRecords<byte[], byte[]> records;
                try {
                    records = consumer.poll(Duration.ofMillis(100));
                } catch (WakeupException e) {
                    break;
                }
                for (ConsumerRecord<byte[], byte[]> r : records) {
                    producer.send(new ProducerRecord<>(output, r.partition(), r.timestamp(), r.key(), r.value()));
                    pending.put(
                            new TopicPartition(r.topic(), r.partition()),
                            new OffsetAndMetadata(r.offset() + 1));
                }
                if (System.currentTimeMillis() - lastCommit >= commitMs) {
                    commit(consumer, producer, pending, transactional);
                    lastCommit = System.currentTimeMillis();
                }
            }
            commit(consumer, producer, pending, transactional);
        } finally {
            stopped.countDown();
        }
    }

    private static void commit(
            KafkaConsumer<byte[], byte[]> consumer,
            KafkaProducer<byte[], byte[]> producer,
            Map<TopicPartition, OffsetAndMetadata> pending,
            boolean transactional) {
        if (transactional) {
            if (!pending.isEmpty()) {
                producer.sendOffsetsToTransaction(pending, consumer.groupMetadata());
            }
            producer.commitTransaction();
            producer.beginTransaction();
        } else if (!pending.isEmpty()) {
            producer.flush();
            consumer.commitSync(pending);
        }
        pending.clear();
    }

    private PassThrough() {}
}
