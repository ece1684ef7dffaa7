//! The documentation's examples, run so they cannot rot.
//!
//! - Every YAML block in the book (`docs/src/*.md`) and in README.md is
//!   loaded with Millrace's own loaders: a pipeline with `millrace
//!   validate`, a fragment of one (a pipeline without its name, or a list
//!   of steps) inside a minimal pipeline around it, a gateway file with the
//!   gateway's loader. A block that is an `{{#include}}` of a file in
//!   `config/` is checked as that file. A YAML block that is none of these
//!   fails the test: teach it here what the block is.
//! - Every printed operator graph (a plain block starting `pipeline NAME`)
//!   is what `millrace validate` prints today for the file in `config/`
//!   whose pipeline is NAME.
//! - The tutorial (docs/src/tutorial.md) runs end to end with its own
//!   files and its own `millrace gen` command, on topics of its own: a
//!   subscriber over SSE through the gateway sees every device's running
//!   count go 1, 2, 3, ... without a gap or a repeat through a `kill -9` of
//!   the pipeline and its restart, and the final counts equal the input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use millrace_integration_tests::gateway::Sse;
use millrace_integration_tests::{
    Millrace, bootstrap, millrace_bin, millrace_cli, progress, read_committed, repo_root, unique,
};
use rdkafka::Message;
use serde_json::Value;

/// A fenced code block of a Markdown file.
struct Block {
    file: PathBuf,
    /// 1-based line of the opening fence.
    line: usize,
    /// The info string's first word (`yaml`, `sh`, or empty).
    lang: String,
    text: String,
}

impl Block {
    fn at(&self) -> String {
        format!(
            "{}:{}",
            self.file
                .strip_prefix(repo_root())
                .unwrap_or(&self.file)
                .display(),
            self.line
        )
    }
}

/// The Markdown files whose examples are checked: the book's chapters and
/// the README.
fn documents() -> anyhow::Result<Vec<PathBuf>> {
    let root = repo_root();
    let mut files = vec![root.join("README.md")];
    let mut chapters: Vec<PathBuf> = std::fs::read_dir(root.join("docs/src"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    chapters.retain(|p| p.extension().is_some_and(|e| e == "md"));
    chapters.sort();
    files.extend(chapters);
    Ok(files)
}

/// The fenced code blocks of a Markdown file (backtick fences, as the book
/// uses; a fence closes on a line of at least as many backticks).
fn blocks(file: &Path) -> anyhow::Result<Vec<Block>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
    let mut out = Vec::new();
    // The open block: (opening line, fence length, language, lines so far).
    let mut open: Option<(usize, usize, String, Vec<&str>)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let ticks = trimmed.chars().take_while(|&c| c == '`').count();
        let Some((start, fence, lang, lines)) = open.take() else {
            if ticks >= 3 {
                let info = trimmed[ticks..].trim();
                let lang = info
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .next()
                    .unwrap_or("")
                    .to_string();
                open = Some((i + 1, ticks, lang, Vec::new()));
            }
            continue;
        };
        if ticks >= fence && trimmed[ticks..].trim().is_empty() {
            out.push(Block {
                file: file.to_path_buf(),
                line: start,
                lang,
                text: lines.join("\n") + "\n",
            });
        } else {
            let mut lines = lines;
            lines.push(line);
            open = Some((start, fence, lang, lines));
        }
    }
    ensure!(
        open.is_none(),
        "{}: a code fence is never closed",
        file.display()
    );
    Ok(out)
}

/// `{{#include PATH}}` lines of a block: the included files, resolved from
/// the chapter's directory as mdBook does.
fn includes(block: &Block) -> Vec<PathBuf> {
    let dir = block.file.parent().unwrap_or(Path::new("."));
    block
        .text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let inner = l.strip_prefix("{{#include ")?.strip_suffix("}}")?;
            // `file:anchor` or `file:from:to` select part of a file.
            let path = inner.trim().split(':').next()?;
            Some(dir.join(path))
        })
        .collect()
}

/// Runs `millrace validate` on a pipeline file from the repository root
/// (schema paths in configs are relative to the working directory), with
/// the instance id fixed so the printed graph does not depend on the host.
fn validate_file(path: &Path) -> anyhow::Result<String> {
    let output = Command::new(millrace_bin())
        .args(["validate", "--config"])
        .arg(path)
        .current_dir(repo_root())
        .env_remove("MILLRACE_BOOTSTRAP")
        .env_remove("MILLRACE_REGISTRY_URL")
        .env("MILLRACE_INSTANCE_ID", "docs-host")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "{} refused ({}):\n{stdout}{}",
        path.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

/// Validates pipeline text by writing it to a file of its own.
fn validate_text(text: &str, at: &str) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("example.yaml");
    std::fs::write(&path, text)?;
    validate_file(&path).with_context(|| format!("the YAML block at {at}:\n{text}"))
}

/// Checks a gateway file with the gateway's own loader.
fn check_gateway(text: &str, at: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, text)?;
    let env = |name: &str| match name {
        "MILLRACE_GATEWAY_SECRET" => Some("k".repeat(32)),
        _ => None,
    };
    let config = millrace::gateway::config::parse(text, &path, &env)
        .map_err(|e| anyhow::anyhow!("the gateway block at {at}: {e}"))?;
    let issues = millrace::gateway::config::validate(&config);
    ensure!(
        issues.is_empty(),
        "the gateway block at {at}: {issues:?}\n{text}"
    );
    Ok(())
}

/// The names of the tables a list of steps joins with (`join.table`).
fn joined_tables(steps: &Value) -> Vec<String> {
    steps
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["join"]["table"].as_str().map(str::to_string))
        .collect()
}

/// Indents every line of `text` by `n` spaces.
fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| format!("{pad}{l}\n"))
        .collect::<String>()
}

/// Checks one YAML block (or included file) as what it is.
fn check_yaml(text: &str, at: &str) -> anyhow::Result<()> {
    let value: Value =
        serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("{at}: not YAML: {e}"))?;
    if value.get("pipeline").is_some() {
        validate_text(text, at)?;
    } else if value.get("gateway").is_some()
        || (value.get("topics").is_some_and(Value::is_array) && value.get("sources").is_none())
    {
        // A gateway file, or the part of one a chapter shows (the
        // dashboard's topics): it needs a name and an auth mode to load.
        let mut full = String::new();
        if value.get("gateway").is_none() {
            full.push_str("gateway: docs-example\n");
        }
        if value.get("auth").is_none() {
            full.push_str("auth:\n  mode: open\n");
        }
        full.push_str(text);
        check_gateway(&full, at)?;
    } else if value.get("sources").is_some() || value.get("steps").is_some() {
        // A pipeline shown without its name (e.g. the Avro chapter's).
        validate_text(&format!("pipeline: docs-example\n{text}"), at)?;
    } else if value.as_array().is_some_and(|steps| {
        steps
            .iter()
            .all(|s| s.as_object().is_some_and(|o| o.len() == 1))
    }) {
        // A list of steps: inside a pipeline with one source and one sink,
        // and the tables its joins name.
        let mut pipeline = String::from("pipeline: docs-steps\nsources:\n  - topic: docs-in\n");
        for table in joined_tables(&value) {
            pipeline.push_str(&format!("  - topic: docs-{table}\n    table: {table}\n"));
        }
        pipeline.push_str("sinks:\n  out:\n    topic: docs-out\nsteps:\n");
        pipeline.push_str(&indent(text, 2));
        validate_text(&pipeline, at)?;
    } else {
        bail!(
            "the YAML block at {at} is not a pipeline, a list of steps or a gateway file: \
             teach integration-tests/tests/docs.rs what it is\n{text}"
        );
    }
    Ok(())
}

#[test]
fn every_yaml_example_in_the_book_and_the_readme_loads() -> anyhow::Result<()> {
    let mut checked = 0;
    for file in documents()? {
        for block in blocks(&file)? {
            if !matches!(block.lang.as_str(), "yaml" | "yml") {
                continue;
            }
            let included = includes(&block);
            if included.is_empty() {
                check_yaml(&block.text, &block.at())?;
            } else {
                for path in included {
                    let text = std::fs::read_to_string(&path).with_context(|| {
                        format!(
                            "{}: includes {}, which is missing",
                            block.at(),
                            path.display()
                        )
                    })?;
                    check_yaml(&text, &format!("{} ({})", block.at(), path.display()))?;
                }
            }
            checked += 1;
        }
    }
    progress(&format!("{checked} YAML blocks load"));
    // The README's pipeline, the configuration chapter's, the steps', the
    // Avro chapter's, the tutorial's: fewer would mean the extraction broke.
    ensure!(checked >= 6, "only {checked} YAML blocks found");
    Ok(())
}

/// The file in `config/` whose pipeline is `name`.
fn config_of_pipeline(name: &str) -> anyhow::Result<PathBuf> {
    for entry in std::fs::read_dir(repo_root().join("config"))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let value: Value = serde_saphyr::from_str(&std::fs::read_to_string(&path)?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if value["pipeline"].as_str() == Some(name) {
            return Ok(path);
        }
    }
    bail!("no file in config/ has `pipeline: {name}`")
}

#[test]
fn every_printed_operator_graph_is_what_validate_prints() -> anyhow::Result<()> {
    let mut checked = 0;
    for file in documents()? {
        for block in blocks(&file)? {
            let Some(name) = block
                .text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("pipeline "))
            else {
                continue;
            };
            if !block.lang.is_empty() && block.lang != "text" {
                continue;
            }
            let printed = validate_file(&config_of_pipeline(name.trim())?)?;
            // validate ends with `<file>: ok`, which names the file it was
            // given: left out of the comparison (the README leaves it out).
            let graph: String = printed
                .lines()
                .filter(|l| !l.ends_with(": ok"))
                .map(|l| l.replace("docs-host", "<host>") + "\n")
                .collect();
            let shown: String = block
                .text
                .lines()
                .filter(|l| !l.ends_with(": ok"))
                .map(|l| format!("{l}\n"))
                .collect();
            assert_eq!(
                shown,
                graph,
                "{}: the printed graph differs from what `millrace validate` prints",
                block.at()
            );
            checked += 1;
        }
    }
    ensure!(checked >= 2, "only {checked} printed graphs found");
    Ok(())
}

/// The tutorial's `millrace gen ...` command (continued over `\` line
/// ends), as arguments after `gen`.
fn tutorial_gen_args(tutorial: &str) -> anyhow::Result<Vec<String>> {
    let mut command = String::new();
    let mut lines = tutorial.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("millrace gen ") else {
            continue;
        };
        let mut part = rest.to_string();
        while part.ends_with('\\') {
            part.pop();
            command.push_str(&part);
            command.push(' ');
            part = lines.next().unwrap_or("").trim().to_string();
        }
        command.push_str(&part);
        break;
    }
    ensure!(
        !command.is_empty(),
        "the tutorial has no `millrace gen` command"
    );
    // Drop a trailing comment and shell redirections.
    let command = command.split(" #").next().unwrap_or("");
    Ok(command
        .split_whitespace()
        .take_while(|w| !w.starts_with('>') && !w.starts_with('&'))
        .map(str::to_string)
        .collect())
}

/// The value after `--flag` in a list of arguments.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

#[test]
fn the_tutorial_runs_end_to_end_and_a_kill_loses_nothing() -> anyhow::Result<()> {
    let root = repo_root();
    let tutorial = std::fs::read_to_string(root.join("docs/src/tutorial.md"))?;
    let pipeline_text = std::fs::read_to_string(root.join("config/tutorial-first-pipeline.yaml"))?;
    let gateway_text = std::fs::read_to_string(root.join("config/tutorial-gateway.yaml"))?;
    ensure!(
        tutorial.contains("{{#include ../../config/tutorial-first-pipeline.yaml}}")
            && tutorial.contains("{{#include ../../config/tutorial-gateway.yaml}}"),
        "the tutorial no longer includes the files this test runs"
    );

    // Every name the tutorial's files and command use starts with
    // `tutorial-`; this run's start with a prefix of its own, so it neither
    // meets a reader's tutorial topics nor another run's. The fixed ports
    // become free ones.
    let prefix = unique("docs-tutorial");
    let rename = |text: &str| text.replace("tutorial-", &format!("{prefix}-"));
    let pipeline_yaml = rename(&pipeline_text).replace("127.0.0.1:9470", "127.0.0.1:{ops_port}");
    let gateway_yaml = rename(&gateway_text).replace("127.0.0.1:8090", "127.0.0.1:{ops_port}");
    ensure!(
        pipeline_yaml.contains("{ops_port}") && gateway_yaml.contains("{ops_port}"),
        "the tutorial's files no longer listen on 127.0.0.1:9470 and 127.0.0.1:8090"
    );
    let pipeline: Value = serde_saphyr::from_str(&pipeline_yaml)
        .map_err(|e| anyhow::anyhow!("tutorial pipeline: {e}"))?;
    let input = pipeline["sources"][0]["topic"]
        .as_str()
        .context("the tutorial pipeline's source")?
        .to_string();
    let output = pipeline["sinks"]
        .as_object()
        .and_then(|s| s.values().next())
        .and_then(|s| s["topic"].as_str())
        .context("the tutorial pipeline's sink")?
        .to_string();

    // validate, then topics create, as the tutorial does.
    let (dir, path) = {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("pipeline.yaml");
        std::fs::write(&path, pipeline_yaml.replace("{ops_port}", "0"))?;
        (dir, path)
    };
    let path_str = path.to_string_lossy().into_owned();
    let (code, out, err) = millrace_cli(&["validate", "--config", &path_str], false)?;
    ensure!(code == 0, "validate: {out}{err}");
    let (code, out, err) = millrace_cli(&["topics", "create", "--config", &path_str], true)?;
    ensure!(code == 0, "topics create: {out}{err}");
    drop(dir);

    // The tutorial's generator command, on this run's topics, shorter and
    // faster: 30 simulated seconds per device at 3x.
    let mut gen_args = tutorial_gen_args(&tutorial)?
        .into_iter()
        .map(|a| rename(&a))
        .collect::<Vec<_>>();
    ensure!(
        flag(&gen_args, "--vitals-topic") == Some(input.as_str()),
        "the tutorial's generator writes {:?}, its pipeline reads {input}",
        flag(&gen_args, "--vitals-topic")
    );
    let devices: usize = flag(&gen_args, "--devices")
        .unwrap_or("8")
        .parse()
        .context("--devices")?;
    for (name, value) in [("--duration", "10s"), ("--speed", "3")] {
        match gen_args.iter().position(|a| a == name) {
            Some(i) => gen_args[i + 1] = value.to_string(),
            None => gen_args.extend([name.to_string(), value.to_string()]),
        }
    }
    let gen_log = tempfile::NamedTempFile::new()?;
    let mut generator = Command::new(millrace_bin())
        .arg("gen")
        .args(&gen_args)
        .env("MILLRACE_BOOTSTRAP", bootstrap())
        .stdout(Stdio::null())
        .stderr(gen_log.reopen()?)
        .spawn()
        .context("starting millrace gen")?;

    let mut run = Millrace::start(&pipeline_yaml)?;
    run.wait_ready(Duration::from_secs(60))?;
    let mut gateway = Millrace::start_gateway(&gateway_yaml)?;
    gateway.wait_ready(Duration::from_secs(60))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let url = format!(
        "http://127.0.0.1:{}/v1/topics/{output}/sse?start=earliest",
        gateway.ops_port
    );
    let mut sse = rt
        .block_on(Sse::open(&url, &[]))?
        .map_err(|(s, b)| anyhow::anyhow!("SSE refused: {s}: {b}"))?;

    // Per device, the counts received, in order.
    type Counts = BTreeMap<String, Vec<u64>>;
    let mut counts: Counts = BTreeMap::new();
    let mut receive =
        |sse: &mut Sse, until: &dyn Fn(&Counts) -> bool, within: Duration| -> anyhow::Result<()> {
            let deadline = Instant::now() + within;
            while !until(&counts) {
                let left = deadline.saturating_duration_since(Instant::now());
                ensure!(!left.is_zero(), "not received in time; so far {counts:?}");
                let Some(event) = rt.block_on(sse.next(left))? else {
                    bail!("the gateway ended the stream");
                };
                if event.event != "message" {
                    continue;
                }
                let envelope: Value = serde_json::from_str(&event.data)?;
                let value = &envelope["value"];
                let device = envelope["key"].as_str().context("a key")?.to_string();
                let readings = value["readings"].as_u64().context("readings")?;
                // The tutorial's claim, on every result: as many readings as
                // seconds between a device's first and last one.
                assert_eq!(
                    value["seconds"].as_u64(),
                    Some(readings),
                    "{device}: {value}"
                );
                counts.entry(device).or_default().push(readings);
            }
            Ok(())
        };

    // Some results, then kill -9 mid-stream and restart, as the tutorial
    // does; the generator keeps writing meanwhile.
    receive(
        &mut sse,
        &|c| c.values().map(Vec::len).sum::<usize>() >= devices * 3,
        Duration::from_secs(60),
    )?;
    progress("tutorial: kill -9 the pipeline");
    run.kill()?;
    std::thread::sleep(Duration::from_secs(2));
    run.restart()?;
    let restarted = Instant::now();
    run.wait_ready(Duration::from_secs(60))?;
    progress(&format!(
        "tutorial: ready again {:.1} s after the restart",
        restarted.elapsed().as_secs_f64()
    ));

    // The generator stops by itself; then every reading it wrote must be
    // counted, once.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = generator.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = generator.kill();
            bail!("millrace gen did not stop after its --duration");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    ensure!(
        status.success(),
        "millrace gen failed: {}",
        std::fs::read_to_string(gen_log.path()).unwrap_or_default()
    );
    let mut written: BTreeMap<String, u64> = BTreeMap::new();
    for m in read_committed(&input)? {
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        *written.entry(key).or_default() += 1;
    }
    ensure!(written.len() == devices, "input per device: {written:?}");
    let target = written.clone();
    receive(
        &mut sse,
        &|c| {
            target
                .iter()
                .all(|(d, n)| c.get(d).and_then(|v| v.last()) == Some(n))
        },
        Duration::from_secs(90),
    )?;
    for (device, seen) in &counts {
        let expected: Vec<u64> = (1..=written[device]).collect();
        assert_eq!(
            seen, &expected,
            "{device}: every count from 1 to the readings written, once, in order"
        );
    }

    // `/latest`, the tutorial's last look: the final count of every device.
    let (status, body) = gateway.get(&format!("/v1/topics/{output}/latest"))?;
    ensure!(status == 200, "/latest: {status} {body}");
    let latest: Value = serde_json::from_str(&body)?;
    let finals: BTreeMap<String, u64> = latest["records"]
        .as_array()
        .context("/latest: records")?
        .iter()
        .filter_map(|r| {
            Some((
                r["key"].as_str()?.to_string(),
                r["value"]["readings"].as_u64()?,
            ))
        })
        .collect();
    assert_eq!(finals, written, "/latest: the final count of every device");

    run.stop_cleanly()?;
    gateway.stop_cleanly()?;
    Ok(())
}
