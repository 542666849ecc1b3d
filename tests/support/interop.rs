//! The Avro reference implementations, driven from Rust: Apache Avro for
//! Java (Debian's `libavro-java`, with the machine's JDK) and fastavro (in
//! the project venv), through the helper programs in `tests/interop/`.
//! Also what the conformance tests need around them: the schema files of
//! `schemas/`, sample values for any schema, Avro's JSON encoding of a
//! value, and a stand-in for the Confluent schema registry.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use apache_avro::Schema;
use apache_avro::schema::{Name, ResolvedSchema};
use apache_avro::types::Value;
use serde_json::{Map, Value as Json, json};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// One `.avsc` file under `schemas/`.
#[derive(Debug, Clone)]
pub struct SchemaFile {
    /// Relative to `schemas/`, as the codec names it.
    pub path: String,
    pub absolute: PathBuf,
    pub json: String,
    pub schema: Schema,
    pub full_name: String,
    /// False for files under a `history/` folder.
    pub current: bool,
}

/// Every schema file in `schemas/`, today's and historic, sorted by path:
/// whatever is there, so new schemas and versions are covered unasked.
pub fn schema_files() -> Vec<SchemaFile> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("schemas/ readable") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "avsc") {
                out.push(path);
            }
        }
    }
    let root = repo().join("schemas");
    let mut paths = Vec::new();
    walk(&root, &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|absolute| {
            let path = absolute
                .strip_prefix(&root)
                .expect("under schemas/")
                .to_string_lossy()
                .into_owned();
            let json = std::fs::read_to_string(&absolute).expect("schema file readable");
            let schema = Schema::parse_str(&json).unwrap_or_else(|e| panic!("{path}: {e}"));
            let full_name = schema.name().expect("a named record").fullname(None);
            SchemaFile {
                current: !path.split('/').any(|part| part == "history"),
                path,
                absolute,
                json,
                schema,
                full_name,
            }
        })
        .collect()
}

/// The files of record `full_name`: today's first, then the historic ones.
pub fn files_of<'a>(files: &'a [SchemaFile], full_name: &str) -> Vec<&'a SchemaFile> {
    let mut of: Vec<&SchemaFile> = files.iter().filter(|f| f.full_name == full_name).collect();
    of.sort_by_key(|f| !f.current);
    of
}

/// The comma-separated schema list a helper's `decode` takes: today's
/// schema of the record (the reader), then every version (writers).
pub fn decode_candidates(files: &[SchemaFile], full_name: &str) -> String {
    files_of(files, full_name)
        .iter()
        .map(|f| f.absolute.display().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// One request to a helper: operation, schema argument, schema id, data.
pub type Request = [String; 4];

/// A helper's answer to one request.
pub type Answer = Result<String, String>;

/// A reference implementation behind a helper program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    /// Apache Avro for Java (`tests/interop/AvroInterop.java`).
    Java,
    /// fastavro (`tests/interop/fastavro_helper.py`).
    Fastavro,
}

impl Implementation {
    pub const ALL: [Implementation; 2] = [Implementation::Java, Implementation::Fastavro];

    pub fn name(self) -> &'static str {
        match self {
            Implementation::Java => "Java",
            Implementation::Fastavro => "fastavro",
        }
    }

    /// Runs `requests` in one process of the helper; one answer each.
    pub fn run(self, requests: &[Request]) -> Vec<Answer> {
        let mut command = match self {
            Implementation::Java => {
                let classes = java_classes();
                let mut c = Command::new("java");
                c.arg("-cp")
                    .arg(format!("{}:{}", classes.display(), java_classpath()))
                    .arg("AvroInterop");
                c
            }
            Implementation::Fastavro => {
                let python = fastavro_python();
                let mut c = Command::new(python);
                c.arg(repo().join("tests/interop/fastavro_helper.py"));
                c
            }
        };
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start the {} helper: {e}", self.name()));
        let mut stdin = child.stdin.take().expect("helper stdin");
        let input: String = requests
            .iter()
            .map(|r| {
                for field in &r[..3] {
                    assert!(!field.contains(['\t', '\n']), "request field {field:?}");
                }
                assert!(!r[3].contains('\n'), "request data must be one line");
                format!("{}\n", r.join("\t"))
            })
            .collect();
        // Written from a thread so a helper that answers as it reads never
        // blocks on a full pipe while we are still writing.
        let writer = std::thread::spawn(move || {
            stdin.write_all(input.as_bytes()).expect("write to helper");
        });
        let answers: Vec<Answer> = BufReader::new(child.stdout.take().expect("helper stdout"))
            .lines()
            .map(|line| {
                let line = line.expect("helper output");
                match line.split_once('\t') {
                    Some(("ok", rest)) => Ok(rest.to_string()),
                    Some((_, why)) => Err(why.to_string()),
                    None => Err(line),
                }
            })
            .collect();
        writer.join().expect("writer thread");
        let status = child.wait().expect("helper exit");
        assert!(status.success(), "the {} helper failed: {status}", self.name());
        assert_eq!(
            answers.len(),
            requests.len(),
            "the {} helper answered {} of {} requests",
            self.name(),
            answers.len(),
            requests.len()
        );
        answers
    }

    /// Runs one request.
    pub fn run_one(self, op: &str, schema: &str, id: &str, data: &str) -> Answer {
        self.run(&[request(op, schema, id, data)]).remove(0)
    }
}

pub fn request(op: &str, schema: &str, id: &str, data: &str) -> Request {
    [op.to_string(), schema.to_string(), id.to_string(), data.to_string()]
}

/// The jars of Debian's `libavro-java` and its dependencies.
const JAVA_JARS: &[&str] = &[
    "avro.jar",
    "jackson-core-asl.jar",
    "jackson-mapper-asl.jar",
    "paranamer.jar",
    "commons-compress.jar",
    "xz.jar",
    "snappy-java.jar",
    "slf4j-api.jar",
    // Silences slf4j's "no binding" warning on stderr.
    "slf4j-nop.jar",
];

pub fn java_classpath() -> String {
    let dir = Path::new("/usr/share/java");
    let jars: Vec<String> = JAVA_JARS
        .iter()
        .map(|jar| {
            let path = dir.join(jar);
            assert!(
                path.is_file(),
                "{} is missing: the Avro conformance suite needs Debian's libavro-java \
                 (`make up` installs it; or `apt-get install libavro-java`)",
                path.display()
            );
            path.display().to_string()
        })
        .collect();
    jars.join(":")
}

/// Compiles the Java helper into `target/interop-java/<source hash>/` once;
/// concurrent test processes each compile into a scratch folder and the
/// first rename wins.
fn java_classes() -> PathBuf {
    let source = repo().join("tests/interop/AvroInterop.java");
    let text = std::fs::read(&source).expect("AvroInterop.java");
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    java_classpath().hash(&mut hasher);
    let base = repo().join("target/interop-java");
    let done = base.join(format!("{:016x}", hasher.finish()));
    if done.join("AvroInterop.class").is_file() {
        return done;
    }
    let scratch = base.join(format!(
        "build-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&scratch).expect("target/interop-java");
    let output = Command::new("javac")
        .arg("-nowarn")
        .arg("-d")
        .arg(&scratch)
        .arg("-cp")
        .arg(java_classpath())
        .arg(&source)
        .output()
        .unwrap_or_else(|e| panic!("javac (the machine's JDK) could not run: {e}"));
    assert!(
        output.status.success(),
        "javac failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    if std::fs::rename(&scratch, &done).is_err() {
        // Another test compiled it first.
        let _ = std::fs::remove_dir_all(&scratch);
    }
    assert!(
        done.join("AvroInterop.class").is_file(),
        "compiled helper in {}",
        done.display()
    );
    done
}

/// The project venv's Python, which has fastavro (infra/local/requirements.txt).
pub fn fastavro_python() -> PathBuf {
    let python = repo().join(".venv/bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import fastavro"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} cannot import fastavro: run `make up`, which installs infra/local/requirements.txt",
        python.display()
    );
    python
}

/// `count` values of `schema`, all different, with the corners that tell
/// implementations apart: empty and non-ASCII strings, null and non-null
/// union branches, empty and longer arrays, negative and far-future
/// instants and dates, the extremes of int and long.
pub fn sample_values(schema: &Schema, count: usize) -> Vec<Value> {
    let resolved = ResolvedSchema::try_from(schema).expect("schema resolves");
    let names: HashMap<Name, Schema> = resolved
        .get_names()
        .iter()
        .map(|(n, s)| (n.clone(), (*s).clone()))
        .collect();
    (0..count)
        .map(|i| {
            let mut generator = Generator { names: &names, seed: i };
            generator.value(schema)
        })
        .collect()
}

struct Generator<'a> {
    names: &'a HashMap<Name, Schema>,
    /// Which sample this is; every choice is derived from it and a counter.
    seed: usize,
}

const STRINGS: &[&str] = &[
    "LAMP-01",
    "Größe: 株式会社 — “quoted” \"and\" \\ 😀",
    "",
    "line\nbreak\ttab",
];
const INTS: &[i32] = &[7, -1, i32::MAX, 0, i32::MIN];
const LONGS: &[i64] = &[1999, -42, i64::MAX, 0, 1 << 40];
/// 2025-12-01T09:40:00.123Z, the epoch, a millisecond before it, 2100-01-01.
const INSTANTS: &[i64] = &[1_764_582_000_123, 0, -1, 4_102_444_800_000];
/// 2025-12-01, the epoch, the day before, 9999-12-31.
const DATES: &[i32] = &[20_423, 0, -1, 2_932_896];

impl Generator<'_> {
    fn pick<T: Copy>(&mut self, options: &[T]) -> T {
        let choice = options[self.seed % options.len()];
        self.seed += 1;
        choice
    }

    fn value(&mut self, schema: &Schema) -> Value {
        match schema {
            Schema::Null => Value::Null,
            Schema::Boolean => Value::Boolean(self.pick(&[true, false])),
            Schema::Int => Value::Int(self.pick(INTS)),
            Schema::Long => Value::Long(self.pick(LONGS)),
            Schema::Float => Value::Float(self.pick(&[1.5f32, -0.25])),
            Schema::Double => Value::Double(self.pick(&[2.5f64, -1e10])),
            Schema::String => Value::String(self.pick(STRINGS).to_string()),
            Schema::Bytes => Value::Bytes(self.pick(&[&b"\x00\xff"[..], b""]).to_vec()),
            Schema::Date => Value::Date(self.pick(DATES)),
            Schema::TimestampMillis => Value::TimestampMillis(self.pick(INSTANTS)),
            Schema::Enum(e) => {
                let i = self.pick(&(0..e.symbols.len()).collect::<Vec<_>>());
                Value::Enum(i as u32, e.symbols[i].clone())
            }
            Schema::Array(a) => {
                let n = self.pick(&[1usize, 2, 0]);
                Value::Array((0..n).map(|_| self.value(&a.items)).collect())
            }
            Schema::Map(m) => {
                let n = self.pick(&[1usize, 0]);
                Value::Map((0..n).map(|k| (format!("k{k}"), self.value(&m.types))).collect())
            }
            Schema::Union(u) => {
                let variants = u.variants();
                let non_null: Vec<usize> = (0..variants.len()).filter(|i| variants[*i] != Schema::Null).collect();
                let null = (0..variants.len()).find(|i| variants[*i] == Schema::Null);
                let index = match (null, self.pick(&[true, false, true])) {
                    (Some(n), false) => n,
                    _ if non_null.is_empty() => null.unwrap_or(0),
                    _ => non_null[self.seed % non_null.len()],
                };
                Value::Union(index as u32, Box::new(self.value(&variants[index])))
            }
            Schema::Record(r) => Value::Record(
                r.fields
                    .iter()
                    .map(|f| (f.name.clone(), self.value(&f.schema)))
                    .collect(),
            ),
            Schema::Ref { name } => {
                let target = self.names.get(name).cloned().expect("named type defined");
                self.value(&target)
            }
            other => panic!("the conformance suite has no sample values for {other:?} yet"),
        }
    }
}

/// `value` in Avro's JSON encoding for `schema` (what Java's JsonDecoder
/// and fastavro's json_reader read): unions as `{"branch": value}`,
/// instants and dates as their numbers, enums as symbols.
pub fn avro_json(value: &Value, schema: &Schema) -> Json {
    let resolved = ResolvedSchema::try_from(schema).expect("schema resolves");
    let names: HashMap<Name, Schema> = resolved
        .get_names()
        .iter()
        .map(|(n, s)| (n.clone(), (*s).clone()))
        .collect();
    to_avro_json(value, schema, &names)
}

fn branch_name(schema: &Schema, names: &HashMap<Name, Schema>) -> String {
    match schema {
        Schema::Ref { name } => name.fullname(None),
        Schema::Record(r) => r.name.fullname(None),
        Schema::Enum(e) => e.name.fullname(None),
        Schema::Fixed(f) => f.name.fullname(None),
        Schema::Array(_) => "array".into(),
        Schema::Map(_) => "map".into(),
        Schema::Int | Schema::Date => "int".into(),
        Schema::Long | Schema::TimestampMillis => "long".into(),
        Schema::String => "string".into(),
        Schema::Boolean => "boolean".into(),
        Schema::Float => "float".into(),
        Schema::Double => "double".into(),
        Schema::Bytes => "bytes".into(),
        Schema::Null => "null".into(),
        other => panic!("no union branch name for {other:?} (known names: {})", names.len()),
    }
}

fn to_avro_json(value: &Value, schema: &Schema, names: &HashMap<Name, Schema>) -> Json {
    if let Schema::Ref { name } = schema {
        let target = names.get(name).expect("named type defined");
        return to_avro_json(value, target, names);
    }
    match (value, schema) {
        (Value::Null, _) => Json::Null,
        (Value::Boolean(b), _) => json!(b),
        (Value::Int(i) | Value::Date(i), _) => json!(i),
        (Value::Long(l) | Value::TimestampMillis(l), _) => json!(l),
        (Value::Float(f), _) => json!(f),
        (Value::Double(d), _) => json!(d),
        (Value::String(s), _) => json!(s),
        (Value::Bytes(b), _) => Json::String(b.iter().map(|byte| char::from(*byte)).collect()),
        (Value::Enum(_, symbol), _) => json!(symbol),
        (Value::Union(index, inner), Schema::Union(u)) => {
            let branch = &u.variants()[*index as usize];
            if *branch == Schema::Null {
                Json::Null
            } else {
                let mut object = Map::new();
                object.insert(branch_name(branch, names), to_avro_json(inner, branch, names));
                Json::Object(object)
            }
        }
        (Value::Array(items), Schema::Array(a)) => {
            Json::Array(items.iter().map(|v| to_avro_json(v, &a.items, names)).collect())
        }
        (Value::Map(entries), Schema::Map(m)) => Json::Object(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), to_avro_json(v, &m.types, names)))
                .collect(),
        ),
        (Value::Record(fields), Schema::Record(r)) => Json::Object(
            fields
                .iter()
                .map(|(name, v)| {
                    let field = r
                        .fields
                        .iter()
                        .find(|f| &f.name == name)
                        .unwrap_or_else(|| panic!("field {name} not in {}", r.name));
                    (name.clone(), to_avro_json(v, &field.schema, names))
                })
                .collect(),
        ),
        (value, schema) => panic!("value {value:?} does not fit schema {schema:?}"),
    }
}

/// `value` cut down to the fields `schema` has (recursively), then
/// resolved against it: what an older producer would have written.
pub fn fit_to_schema(value: Value, schema: &Schema) -> Value {
    fn cut(value: Value, schema: &Schema) -> Value {
        match (value, schema) {
            (Value::Record(fields), Schema::Record(r)) => Value::Record(
                r.fields
                    .iter()
                    .filter_map(|f| {
                        fields
                            .iter()
                            .find(|(n, _)| n == &f.name)
                            .map(|(n, v)| (n.clone(), cut(v.clone(), &f.schema)))
                    })
                    .collect(),
            ),
            (Value::Array(items), Schema::Array(a)) => {
                Value::Array(items.into_iter().map(|v| cut(v, &a.items)).collect())
            }
            (value, _) => value,
        }
    }
    cut(value, schema).resolve(schema).expect("value fits the schema")
}

/// A stand-in for the Confluent schema registry's two REST calls the codec
/// uses (register under a subject; fetch by id), because no registry runs
/// on this machine. The same schema text always gets the same id.
pub struct FakeRegistry {
    pub url: String,
    schemas: Arc<Mutex<Vec<String>>>,
}

/// Ids start here so that a confusion of id and index shows.
const FIRST_ID: usize = 101;

impl FakeRegistry {
    pub async fn start() -> Self {
        use axum::extract::{Path as UrlPath, State};
        use axum::routing::{get, post};
        type Shared = Arc<Mutex<Vec<String>>>;
        let schemas: Shared = Arc::default();
        let app = axum::Router::new()
            .route(
                "/subjects/{subject}/versions",
                post(|State(schemas): State<Shared>, body: axum::Json<Json>| async move {
                    let text = body["schema"].as_str().unwrap_or_default().to_string();
                    axum::Json(json!({ "id": register(&schemas, text) }))
                }),
            )
            .route(
                "/schemas/ids/{id}",
                get(
                    |State(schemas): State<Shared>, UrlPath(id): UrlPath<usize>| async move {
                        let found = id
                            .checked_sub(FIRST_ID)
                            .and_then(|i| schemas.lock().expect("registry lock").get(i).cloned());
                        match found {
                            Some(schema) => Ok(axum::Json(json!({ "schema": schema }))),
                            None => Err(axum::http::StatusCode::NOT_FOUND),
                        }
                    },
                ),
            )
            .with_state(schemas.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, schemas }
    }

    /// Registers `schema` as a producer's serializer would; returns its id.
    pub fn register(&self, schema: &str) -> u32 {
        register(&self.schemas, schema.to_string())
    }
}

fn register(schemas: &Mutex<Vec<String>>, text: String) -> u32 {
    let mut schemas = schemas.lock().expect("registry lock");
    let index = match schemas.iter().position(|s| *s == text) {
        Some(i) => i,
        None => {
            schemas.push(text);
            schemas.len() - 1
        }
    };
    u32::try_from(index + FIRST_ID).expect("few schemas")
}

/// Hex of bytes, lower case.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of hex.
pub fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}
