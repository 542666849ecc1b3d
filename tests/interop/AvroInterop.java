// Java side of the Avro conformance suite (tests/avro_interop.rs), written
// against Apache Avro's reference implementation as JVM producers and
// consumers use it (Debian's libavro-java). Compiled by the test with javac
// into target/; reads requests from stdin, one per line, four tab-separated
// fields, and answers each with one line: "ok<TAB>result" or "err<TAB>why".
//
//   fingerprint       SCHEMA  -   -     the single-object fingerprint bytes as
//                                       BinaryMessageEncoder writes them (hex)
//   encode            SCHEMA  -   JSON  BinaryMessageEncoder's single-object
//                                       encoding (hex) of a datum given in
//                                       Avro's JSON encoding
//   encode-confluent  SCHEMA  ID  JSON  Confluent framing: 00, the id, the datum
//   decode            SCHEMAS -   HEX   BinaryMessageDecoder reading with the
//                                       first schema of the comma-separated
//                                       list (today's) and accepting every one
//                                       as writer schema (history included);
//                                       answers FULLNAME<TAB>JSON
//   decode-confluent  SCHEMA  ID  HEX   Confluent-framed bytes written with ID
//
// Datums go in and out in Avro's JSON encoding, so the Rust driver compares
// values. No logical-type conversions are registered: timestamp-millis is
// the long and date the int the specification puts on the wire.

import java.io.BufferedReader;
import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Map;

import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.io.EncoderFactory;
import org.apache.avro.io.JsonEncoder;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;

public final class AvroInterop {
    private static final Map<String, Schema> SCHEMAS = new HashMap<>();

    private static Schema load(String path) throws Exception {
        Schema schema = SCHEMAS.get(path);
        if (schema == null) {
            schema = new Schema.Parser().parse(new File(path));
            SCHEMAS.put(path, schema);
        }
        return schema;
    }

    private static GenericRecord fromJson(Schema schema, String json) throws Exception {
        GenericDatumReader<GenericRecord> reader = new GenericDatumReader<>(schema);
        return reader.read(null, DecoderFactory.get().jsonDecoder(schema, json));
    }

    private static String toJson(Schema schema, Object datum) throws Exception {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        JsonEncoder encoder = EncoderFactory.get().jsonEncoder(schema, out);
        new GenericDatumWriter<Object>(schema).write(datum, encoder);
        encoder.flush();
        return out.toString(StandardCharsets.UTF_8.name());
    }

    private static byte[] datum(Schema schema, GenericRecord record) throws Exception {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        BinaryEncoder encoder = EncoderFactory.get().binaryEncoder(out, null);
        new GenericDatumWriter<GenericRecord>(schema).write(record, encoder);
        encoder.flush();
        return out.toByteArray();
    }

    private static String handle(String op, String schemaArg, String id, String data) throws Exception {
        switch (op) {
            case "fingerprint": {
                long fp = SchemaNormalization.parsingFingerprint64(load(schemaArg));
                return hex(ByteBuffer.allocate(8).order(java.nio.ByteOrder.LITTLE_ENDIAN).putLong(fp).array());
            }
            case "encode": {
                Schema schema = load(schemaArg);
                BinaryMessageEncoder<GenericRecord> encoder = new BinaryMessageEncoder<>(GenericData.get(), schema);
                ByteBuffer encoded = encoder.encode(fromJson(schema, data));
                byte[] bytes = new byte[encoded.remaining()];
                encoded.get(bytes);
                return hex(bytes);
            }
            case "encode-confluent": {
                Schema schema = load(schemaArg);
                byte[] body = datum(schema, fromJson(schema, data));
                ByteBuffer framed = ByteBuffer.allocate(5 + body.length);
                framed.put((byte) 0).putInt(Integer.parseInt(id)).put(body);
                return hex(framed.array());
            }
            case "decode": {
                String[] paths = schemaArg.split(",");
                BinaryMessageDecoder<GenericRecord> decoder = new BinaryMessageDecoder<>(GenericData.get(), load(paths[0]));
                for (int i = 1; i < paths.length; i++) {
                    decoder.addSchema(load(paths[i]));
                }
                GenericRecord record = decoder.decode(unhex(data));
                return record.getSchema().getFullName() + "\t" + toJson(record.getSchema(), record);
            }
            case "decode-confluent": {
                Schema schema = load(schemaArg);
                ByteBuffer framed = ByteBuffer.wrap(unhex(data));
                if (framed.get() != 0 || framed.getInt() != Integer.parseInt(id)) {
                    throw new IllegalArgumentException("not Confluent framing with schema id " + id);
                }
                GenericDatumReader<GenericRecord> reader = new GenericDatumReader<>(schema);
                GenericRecord record = reader.read(null,
                    DecoderFactory.get().binaryDecoder(framed.array(), 5, framed.remaining(), null));
                return toJson(schema, record);
            }
            default:
                throw new IllegalArgumentException("unknown operation " + op);
        }
    }

    private static String hex(byte[] bytes) {
        StringBuilder s = new StringBuilder();
        for (byte b : bytes) {
            s.append(String.format("%02x", b & 0xff));
        }
        return s.toString();
    }

    private static byte[] unhex(String hex) {
        byte[] out = new byte[hex.length() / 2];
        for (int i = 0; i < out.length; i++) {
            out[i] = (byte) Integer.parseInt(hex.substring(2 * i, 2 * i + 2), 16);
        }
        return out;
    }

    public static void main(String[] args) throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        PrintStream out = new PrintStream(System.out, true, StandardCharsets.UTF_8.name());
        String line;
        while ((line = in.readLine()) != null) {
            if (line.isEmpty()) {
                continue;
            }
            String answer;
            try {
                String[] f = line.split("\t", 4);
                answer = "ok\t" + handle(f[0], f[1], f[2], f[3]);
            } catch (Exception e) {
                // One bad request must not hide the answers to the others.
                answer = "err\t" + (e.getClass().getSimpleName() + ": " + e.getMessage()).replace('\n', ' ');
            }
            out.println(answer);
        }
    }
}
