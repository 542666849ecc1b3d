"""fastavro side of the Avro conformance suite (tests/avro_interop.rs).

Reads requests from stdin, one per line, four tab-separated fields, and
answers each with one line on stdout: `ok<TAB>result` or `err<TAB>why`.

    fingerprint       SCHEMA  -   -      the CRC-64-AVRO fingerprint bytes as
                                         single-object encoding writes them (hex)
    encode            SCHEMA  -   JSON   Avro single-object encoding (hex) of the
                                         datum given in Avro's JSON encoding
    encode-confluent  SCHEMA  ID  JSON   Confluent framing (00, the id, the datum)
    decode            SCHEMAS -   HEX    single-object bytes; SCHEMAS is a comma-
                                         separated list: the first is the reader
                                         schema (today's), every one a possible
                                         writer schema; answers FULLNAME<TAB>JSON
    decode-confluent  SCHEMA  ID  HEX    Confluent-framed bytes written with id ID

Datums are given and returned in Avro's JSON encoding (unions as
{"branch": value}), so the Rust driver compares values, not Python objects.
fastavro has no single-object writer of its own; the framing is the
specification's: C3 01, the 8-byte fingerprint fastavro computes, the datum.
"""

import io
import json
import struct
import sys

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

SINGLE_OBJECT_MAGIC = b"\xc3\x01"

_schemas = {}


def load(path):
    """Parses a schema file once per process."""
    if path not in _schemas:
        with open(path, encoding="utf-8") as f:
            _schemas[path] = parse_schema(json.load(f))
    return _schemas[path]


def schema_fingerprint(schema):
    """The 8 bytes after C3 01: fastavro's CRC-64-AVRO of the parsing canonical form."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


def from_json(schema, text):
    return next(iter(fastavro.json_reader(io.StringIO(text), schema)))


def to_json(schema, datum):
    out = io.StringIO()
    fastavro.json_writer(out, schema, [datum])
    return out.getvalue().strip()


def datum_bytes(schema, datum):
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, datum)
    return out.getvalue()


def handle(op, schema_arg, schema_id, data):
    if op == "fingerprint":
        return schema_fingerprint(load(schema_arg)).hex()
    if op == "encode":
        schema = load(schema_arg)
        body = datum_bytes(schema, from_json(schema, data))
        return (SINGLE_OBJECT_MAGIC + schema_fingerprint(schema) + body).hex()
    if op == "encode-confluent":
        schema = load(schema_arg)
        body = datum_bytes(schema, from_json(schema, data))
        return (b"\x00" + struct.pack(">I", int(schema_id)) + body).hex()
    if op == "decode":
        raw = bytes.fromhex(data)
        if raw[:2] != SINGLE_OBJECT_MAGIC or len(raw) < 10:
            raise ValueError("not Avro single-object encoding")
        paths = schema_arg.split(",")
        reader = load(paths[0])
        candidates = {schema_fingerprint(load(p)): load(p) for p in paths}
        writer = candidates.get(raw[2:10])
        if writer is None:
            raise ValueError("no given schema has fingerprint " + raw[2:10].hex())
        datum = fastavro.schemaless_reader(io.BytesIO(raw[10:]), writer, reader)
        return reader["name"] + "\t" + to_json(reader, datum)
    if op == "decode-confluent":
        raw = bytes.fromhex(data)
        if raw[:1] != b"\x00" or struct.unpack(">I", raw[1:5])[0] != int(schema_id):
            raise ValueError("not Confluent framing with schema id " + schema_id)
        schema = load(schema_arg)
        datum = fastavro.schemaless_reader(io.BytesIO(raw[5:]), schema, None)
        return to_json(schema, datum)
    raise ValueError("unknown operation " + op)


def main():
    for line in sys.stdin:
        line = line.rstrip("\n")
        if not line:
            continue
        try:
            op, schema_arg, schema_id, data = line.split("\t", 3)
            answer = "ok\t" + handle(op, schema_arg, schema_id, data)
        except Exception as error:  # one bad request must not hide the others
            answer = "err\t" + (type(error).__name__ + ": " + str(error)).replace("\n", " ")
        sys.stdout.write(answer + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
