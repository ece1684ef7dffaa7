"""Confluent's Python SchemaRegistryClient (confluent-kafka) against
`millrace registry`.

Usage: registry_client.py <registry url> <unique prefix>

Run by integration-tests/tests/registry.rs. Registers and evolves schemas,
reads them back every way the client offers, checks compatibility, changes
levels, deletes softly and permanently, and serializes a record with the
client's AvroSerializer (auto-registration) and reads it back with its
AvroDeserializer. Exits non-zero at the first failed check.
"""

import json
import sys

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

CHECKS = 0


def check(condition, what):
    global CHECKS
    if not condition:
        raise AssertionError(what)
    CHECKS += 1


def expect_error(call, status, code, what):
    try:
        call()
    except SchemaRegistryError as e:
        check(
            (e.http_status_code, e.error_code) == (status, code),
            f"{what}: expected HTTP {status} / {code}, got {e}",
        )
        return
    raise AssertionError(f"{what}: expected HTTP {status} / {code}, got success")


def record(*fields):
    return json.dumps(
        {"type": "record", "name": "Vital", "namespace": "millrace.py", "fields": list(fields)}
    )


DEVICE = {"name": "device", "type": "string"}
HR = {"name": "hr", "type": "int", "default": 0}
SPO2 = {"name": "spo2", "type": "int"}


def main():
    url, prefix = sys.argv[1], sys.argv[2]
    # A client per phase, so answers come from the registry, not from the
    # client's caches.
    client = SchemaRegistryClient({"url": url})
    subject = f"{prefix}-vitals-value"

    v1 = Schema(record(DEVICE), "AVRO")
    id1 = client.register_schema(subject, v1)
    fresh = SchemaRegistryClient({"url": url})
    check(fresh.register_schema(subject, v1) == id1, "the same schema gets the same id")

    got = fresh.get_schema(id1)
    check(json.loads(got.schema_str) == json.loads(v1.schema_str), "get_schema returns the schema")
    check(got.schema_type == "AVRO", "schema type")
    got = SchemaRegistryClient({"url": url}).get_schema(id1, subject_name=subject)
    check(json.loads(got.schema_str) == json.loads(v1.schema_str), "get_schema with a subject")

    latest = fresh.get_latest_version(subject)
    check((latest.schema_id, latest.version, latest.subject) == (id1, 1, subject), "latest version")

    v2 = Schema(record(DEVICE, HR), "AVRO")
    check(fresh.test_compatibility(subject, v2) is True, "v2 is backward compatible")
    check(fresh.test_compatibility(subject, v2, version=1) is True, "v2 against version 1")
    check(fresh.test_compatibility_all_versions(subject, v2) is True, "v2 against all versions")
    id2 = SchemaRegistryClient({"url": url}).register_schema(subject, v2)
    check(id2 != id1, "a new schema gets a new id")

    phase = SchemaRegistryClient({"url": url})
    version2 = phase.get_version(subject, 2)
    check((version2.schema_id, version2.version) == (id2, 2), "get_version")
    check(phase.get_version(subject, "latest").version == 2, "get_version latest")
    check(phase.get_versions(subject) == [1, 2], "get_versions")
    found = phase.lookup_schema(subject, v1)
    check((found.version, found.schema_id) == (1, id1), "lookup_schema finds version 1")
    check(subject in phase.get_subjects(), "get_subjects")
    check("AVRO" in phase.get_schema_types(), "get_schema_types")
    check(phase.get_subjects_by_schema_id(id1) == [subject], "get_subjects_by_schema_id")
    versions = phase.get_schema_versions(id1)
    check([(v.subject, v.version) for v in versions] == [(subject, 1)], "get_schema_versions")

    # An incompatible evolution: a field without a default.
    v3 = Schema(record(DEVICE, HR, SPO2), "AVRO")
    check(phase.test_compatibility(subject, v3) is False, "v3 is not backward compatible")
    expect_error(lambda: phase.register_schema(subject, v3), 409, 409, "registering v3")
    check(phase.get_compatibility() == "BACKWARD", "global level")
    expect_error(lambda: phase.get_compatibility(subject), 404, 40408, "no subject level yet")
    check(phase.set_compatibility(subject, "none")["compatibility"] == "NONE", "set_compatibility")
    check(phase.get_compatibility(subject) == "NONE", "get_compatibility")
    id3 = phase.register_schema(subject, v3)
    check(id3 not in (id1, id2), "v3 registered under NONE")
    check(phase.set_compatibility(level="FULL")["compatibility"] == "FULL", "global level set")
    check(SchemaRegistryClient({"url": url}).get_compatibility() == "FULL", "global level read")
    phase.set_compatibility(level="BACKWARD")

    # Errors.
    errors = SchemaRegistryClient({"url": url})
    expect_error(lambda: errors.get_schema(987654), 404, 40403, "unknown id")
    expect_error(lambda: errors.get_latest_version(f"{prefix}-none"), 404, 40401, "unknown subject")
    expect_error(lambda: errors.get_version(subject, 99), 404, 40402, "unknown version")
    expect_error(
        lambda: errors.register_schema(subject, Schema('{"type": "recrd"}', "AVRO")),
        422,
        42201,
        "invalid schema",
    )
    expect_error(
        lambda: errors.lookup_schema(subject, Schema(record(SPO2), "AVRO")),
        404,
        40403,
        "lookup of an unregistered schema",
    )

    # Deletes, soft then permanent (the client sends deleted=True).
    deletes = SchemaRegistryClient({"url": url})
    check(deletes.delete_version(subject, 3) == 3, "soft delete_version")
    check(deletes.get_versions(subject) == [1, 2], "soft-deleted version hidden")
    check(deletes.get_versions(subject, deleted=True) == [1, 2, 3], "deleted=True shows it")
    check(deletes.delete_version(subject, 3, permanent=True) == 3, "permanent delete_version")
    check(deletes.get_versions(subject, deleted=True) == [1, 2], "permanently gone")
    check(deletes.delete_subject(subject) == [1, 2], "soft delete_subject")
    check(subject not in deletes.get_subjects(), "soft-deleted subject hidden")
    check(subject in deletes.get_subjects(deleted=True), "deleted=True lists it")
    check(deletes.delete_subject(subject, permanent=True) == [1, 2], "permanent delete_subject")
    check(subject not in deletes.get_subjects(deleted=True), "subject gone")

    # The client's serializer registers on first use (TopicNameStrategy);
    # its deserializer fetches the writer's schema by id.
    serde = SchemaRegistryClient({"url": url})
    topic = f"{prefix}-readings"
    serializer = AvroSerializer(serde, record(DEVICE, HR))
    context = SerializationContext(topic, MessageField.VALUE)
    reading = {"device": "d-7", "hr": 72}
    data = serializer(reading, context)
    check(data[0] == 0, "Confluent wire format: magic byte 0")
    schema_id = int.from_bytes(data[1:5], "big")
    check(
        SchemaRegistryClient({"url": url}).get_latest_version(f"{topic}-value").schema_id == schema_id,
        "auto-registered under <topic>-value",
    )
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": url}))
    check(deserializer(data, context) == reading, "round trip through the registry")

    print(f"all checks passed ({CHECKS})")


if __name__ == "__main__":
    main()
