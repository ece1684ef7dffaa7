package dev.millrace.bench;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import org.apache.kafka.common.errors.SerializationException;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;

/** JSON values as Jackson trees, the everyday way to read JSON in Kafka Streams. */
final class Json {
    static final ObjectMapper MAPPER = new ObjectMapper();

    static Serde<JsonNode> serde() {
        Serializer<JsonNode> ser = (topic, node) -> {
            if (node == null) {
                return null;
            }
            try {
                return MAPPER.writeValueAsBytes(node);
            } catch (IOException e) {
                throw new SerializationException(e);
            }
        };
        Deserializer<JsonNode> de = (topic, bytes) -> {
            if (bytes == null) {
                return null;
            }
            try {
                return MAPPER.readTree(bytes);
            } catch (IOException e) {
                throw new SerializationException("not JSON", e);
            }
        };
        return Serdes.serdeFrom(ser, de);
    }

    private Json() {}
}
