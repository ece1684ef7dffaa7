//! The systems compared and how each is started for a workload: Millrace
//! (the release `millrace` binary), the Kafka Streams peer
//! (`bench/peers/kafka-streams`, on the JVM) and the two pass-through loops
//! that stand for the broker's limit (the peer's plain Java clients, and
//! this crate's librdkafka loop in `millrace-bench passthrough`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use crate::Millrace;
use crate::process::{App, Engine};

/// Partitions of every input topic (Millrace's benchmark pipeline uses 4).
pub const PARTITIONS: i32 = 4;
/// Tumbling window size.
pub const WINDOW_MS: i64 = 10_000;
/// Millrace's `lateness` (its `grace` is 0). A window `[start, end)` closes
/// once a task has seen an event time `>= end + CLOSE_AFTER_MS`; Kafka
/// Streams gets this as its grace period, which closes the same windows
/// (see the peer's `WindowApp`).
pub const CLOSE_AFTER_MS: i64 = 1_000;
/// Commit interval of both systems.
pub const COMMIT_MS: u64 = 100;

/// Processing guarantee of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Guarantee {
    ExactlyOnce,
    AtLeastOnce,
}

impl Guarantee {
    pub fn label(self) -> &'static str {
        match self {
            Guarantee::ExactlyOnce => "exactly-once",
            Guarantee::AtLeastOnce => "at-least-once",
        }
    }
    /// In topic and group names.
    pub fn short(self) -> &'static str {
        match self {
            Guarantee::ExactlyOnce => "eos",
            Guarantee::AtLeastOnce => "alo",
        }
    }
    fn millrace(self) -> &'static str {
        match self {
            Guarantee::ExactlyOnce => "exactly_once",
            Guarantee::AtLeastOnce => "at_least_once",
        }
    }
    fn streams(self) -> &'static str {
        match self {
            Guarantee::ExactlyOnce => "exactly_once_v2",
            Guarantee::AtLeastOnce => "at_least_once",
        }
    }
}

/// A system under benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    Millrace,
    KafkaStreams,
    /// Plain Java consumer + producer copying records.
    PassJava,
    /// Plain librdkafka consumer + producer copying records.
    PassRdkafka,
}

impl System {
    pub fn label(self) -> &'static str {
        match self {
            System::Millrace => "Millrace",
            System::KafkaStreams => "Kafka Streams",
            System::PassJava => "pass-through, Java client",
            System::PassRdkafka => "pass-through, librdkafka",
        }
    }
    /// In topic and group names.
    pub fn short(self) -> &'static str {
        match self {
            System::Millrace => "mr",
            System::KafkaStreams => "ks",
            System::PassJava => "pj",
            System::PassRdkafka => "pr",
        }
    }
}

/// How to run the Kafka Streams peer: a `java` command over its compiled
/// classes and the classpath Maven wrote.
pub struct Peer {
    java: PathBuf,
    java_opts: Vec<String>,
    classpath: String,
}

impl Peer {
    /// Finds the peer built in `dir` (`mvn compile dependency:build-classpath`,
    /// which `bench/run` does).
    pub fn locate(dir: &Path, java: PathBuf, java_opts: Vec<String>) -> anyhow::Result<Peer> {
        let classes = dir.join("target/classes");
        let listed = dir.join("target/classpath.txt");
        anyhow::ensure!(
            classes.join("dev/millrace/bench/Main.class").exists(),
            "the Kafka Streams peer is not built: run `mvn -q compile \
             dependency:build-classpath` in {}",
            dir.display()
        );
        let deps = std::fs::read_to_string(&listed)
            .with_context(|| format!("reading {}", listed.display()))?;
        Ok(Peer {
            java,
            java_opts,
            classpath: format!("{}:{}", classes.display(), deps.trim()),
        })
    }

    /// `java -version`'s first line, for the report.
    pub fn java_version(&self) -> String {
        std::process::Command::new(&self.java)
            .arg("-version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .next()
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "unknown Java".into())
    }

    /// The JVM options in use, for the report.
    pub fn java_opts(&self) -> String {
        self.java_opts.join(" ")
    }

    /// Starts `Main <command> --name value ...`.
    fn start(
        &self,
        command: &str,
        options: &[(&str, String)],
        log: PathBuf,
    ) -> anyhow::Result<App> {
        let mut args = self.java_opts.clone();
        args.extend([
            "-cp".to_string(),
            self.classpath.clone(),
            "dev.millrace.bench.Main".to_string(),
            command.to_string(),
        ]);
        for (name, value) in options {
            args.push(format!("--{name}"));
            args.push(value.clone());
        }
        App::start(&self.java, args, log)
    }
}

/// A started system and what its run needs to watch it.
pub struct Running {
    pub engine: Box<dyn Engine>,
    /// Consumer group whose committed offsets show progress.
    pub group: String,
    /// Its local state, removed on drop.
    pub state: tempfile::TempDir,
}

/// Where the systems come from and where their logs go.
pub struct Launcher {
    pub peer: Peer,
    /// `millrace-bench` itself, which runs the librdkafka pass-through.
    pub bench_bin: PathBuf,
    /// The run's directory: logs, and every system's local state.
    pub logs: PathBuf,
}

impl Launcher {
    /// Starts `system` on the windowed aggregate (or, for the pass-through
    /// systems, the copy loop) from `input` to `output`. `name` is the run's
    /// unique prefix: pipeline, application id and group names start with it,
    /// and so do the internal topics the system creates.
    pub fn window(
        &self,
        system: System,
        guarantee: Guarantee,
        name: &str,
        input: &str,
        output: &str,
    ) -> anyhow::Result<Running> {
        let state = tempfile::tempdir_in(&self.logs)?;
        let log = self.logs.join(format!("{name}.log"));
        let bootstrap = crate::bootstrap().to_string();
        let running = |engine: Box<dyn Engine>, group: String, state| Running {
            engine,
            group,
            state,
        };
        Ok(match system {
            System::Millrace => {
                dead_letter_topic(name)?;
                let yaml = format!(
                    r#"
pipeline: {name}
sources: [{{topic: {input}}}]
steps:
  - window:
      type: tumbling
      size: {WINDOW_MS}ms
      time: value.t
      value: value.hr
      aggregates: [count, sum, min, max, mean]
      lateness: {CLOSE_AFTER_MS}ms
      emit: final
sinks: {{out: {{topic: {output}}}}}
commit: {{interval: {COMMIT_MS}ms, guarantee: {guarantee}}}
state: {{dir: {dir}}}
http: {{listen: "127.0.0.1:{{ops_port}}"}}
"#,
                    guarantee = guarantee.millrace(),
                    dir = state.path().display()
                );
                running(
                    Box::new(Millrace::start(&yaml)?),
                    format!("millrace-{name}"),
                    state,
                )
            }
            System::KafkaStreams => {
                let app = self.peer.start(
                    "window",
                    &[
                        ("bootstrap", bootstrap),
                        ("app-id", name.to_string()),
                        ("guarantee", guarantee.streams().to_string()),
                        ("state-dir", state.path().display().to_string()),
                        ("commit-ms", COMMIT_MS.to_string()),
                        ("input", input.to_string()),
                        ("output", output.to_string()),
                        ("size-ms", WINDOW_MS.to_string()),
                        ("grace-ms", CLOSE_AFTER_MS.to_string()),
                    ],
                    log,
                )?;
                running(Box::new(app), name.to_string(), state)
            }
            System::PassJava => {
                let app = self.peer.start(
                    "passthrough",
                    &[
                        ("bootstrap", bootstrap),
                        ("group", name.to_string()),
                        (
                            "transactional",
                            (guarantee == Guarantee::ExactlyOnce).to_string(),
                        ),
                        ("commit-ms", COMMIT_MS.to_string()),
                        ("input", input.to_string()),
                        ("output", output.to_string()),
                    ],
                    log,
                )?;
                running(Box::new(app), name.to_string(), state)
            }
            System::PassRdkafka => {
                let args = vec![
                    "passthrough".to_string(),
                    "--group".into(),
                    name.to_string(),
                    "--input".into(),
                    input.to_string(),
                    "--output".into(),
                    output.to_string(),
                    "--commit-ms".into(),
                    COMMIT_MS.to_string(),
                    format!("--transactional={}", guarantee == Guarantee::ExactlyOnce),
                ];
                let app = App::start(&self.bench_bin, args, log)?;
                running(Box::new(app), name.to_string(), state)
            }
        })
    }

    /// Starts `system` (Millrace or Kafka Streams) on the stream–table join
    /// of the restart runs, exactly-once, with static group membership so a
    /// restarted instance takes its partitions back without waiting for the
    /// dead one's session to expire.
    pub fn join(
        &self,
        system: System,
        name: &str,
        stream: &str,
        table: &str,
        output: &str,
    ) -> anyhow::Result<Running> {
        let state = tempfile::tempdir_in(&self.logs)?;
        let log = self.logs.join(format!("{name}.log"));
        match system {
            System::Millrace => {
                dead_letter_topic(name)?;
                let yaml = format!(
                    r#"
pipeline: {name}
sources:
  - topic: {stream}
  - topic: {table}
    table: rows
steps:
  - join: {{table: rows, into: row}}
  - project: [n, row.row]
sinks: {{out: {{topic: {output}}}}}
commit: {{interval: {COMMIT_MS}ms, guarantee: exactly_once}}
kafka:
  instance_id: bench
  static_membership: true
  consumer_properties: {{session.timeout.ms: "{SESSION_TIMEOUT_MS}"}}
state: {{dir: {dir}}}
http: {{listen: "127.0.0.1:{{ops_port}}"}}
"#,
                    dir = state.path().display()
                );
                Ok(Running {
                    engine: Box::new(Millrace::start(&yaml)?),
                    group: format!("millrace-{name}"),
                    state,
                })
            }
            System::KafkaStreams => {
                let app = self.peer.start(
                    "join",
                    &[
                        ("bootstrap", crate::bootstrap().to_string()),
                        ("app-id", name.to_string()),
                        ("guarantee", Guarantee::ExactlyOnce.streams().to_string()),
                        ("state-dir", state.path().display().to_string()),
                        ("commit-ms", COMMIT_MS.to_string()),
                        ("instance-id", "bench".to_string()),
                        ("session-timeout-ms", SESSION_TIMEOUT_MS.to_string()),
                        ("stream", stream.to_string()),
                        ("table", table.to_string()),
                        ("output", output.to_string()),
                    ],
                    log,
                )?;
                Ok(Running {
                    engine: Box::new(app),
                    group: name.to_string(),
                    state,
                })
            }
            other => anyhow::bail!("{} does not run the join", other.label()),
        }
    }
}

/// Creates Millrace's dead-letter topic (`<pipeline>-dead-letter`), which
/// it expects to exist. Nothing is dead-lettered in these runs.
fn dead_letter_topic(pipeline: &str) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(crate::create_topics(&[(
            &format!("{pipeline}-dead-letter"),
            PARTITIONS,
        )]))
}

/// `session.timeout.ms` of both systems in the restart runs.
const SESSION_TIMEOUT_MS: u64 = 10_000;

/// How long a system may take to start and join its group.
pub const START_WITHIN: Duration = Duration::from_secs(120);
