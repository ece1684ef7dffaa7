//! `deploy/` checked against the Millrace it deploys.
//!
//! `scripts/check-deploy` validates the Kubernetes objects against the
//! Kubernetes schemas and the alert rules with promtool; neither knows
//! Millrace. These tests do:
//!
//! - every config carried in a ConfigMap is one Millrace accepts, and the
//!   workload that mounts it agrees with it: the ports it listens on are the
//!   container's ports (on 0.0.0.0, or the kubelet's probes and Prometheus
//!   could not reach them), the probes ask `/readyz` and `/healthz` on the
//!   operations port, the grace period outlasts the config's shutdown
//!   timeout, a pipeline's state directory is its volume and its instance
//!   id the pod's name; every Service, PodDisruptionBudget and reference
//!   finds what it names;
//! - every metric the alert rules and the Grafana dashboard query is one
//!   that a running pipeline, gateway and schema registry export (a renamed
//!   metric would otherwise leave an alert that can never fire).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use millrace_integration_tests::gateway::{Sse, token_for};
use millrace_integration_tests::registry::Registry;
use millrace_integration_tests::{
    Millrace, create_topics, millrace_cli, produce_to, producer, read_committed, repo_root, unique,
};
use serde_json::Value;

/// Every object of every manifest under `dir` (kustomization files aside),
/// with the file it came from.
fn objects(dir: &Path) -> anyhow::Result<Vec<(PathBuf, Value)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.ends_with(".yaml") || name == "kustomization.yaml" {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        out.extend(
            docs.into_iter()
                .filter(|d| !d.is_null())
                .map(|d| (path.clone(), d)),
        );
    }
    Ok(out)
}

fn kind(o: &Value) -> &str {
    o["kind"].as_str().unwrap_or("")
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or("")
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// `host:port` → (host, port).
fn listen(value: &Value, what: &str) -> (String, u64) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not set in the config"));
    let (host, port) = text
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{what}: `{text}` is not host:port"));
    (host.to_string(), port.parse().expect("a port number"))
}

fn seconds(value: &Value, default: Duration) -> Duration {
    value
        .as_str()
        .map(|s| humantime::parse_duration(s).expect("a duration"))
        .unwrap_or(default)
}

/// The container port named `port` (a probe's or Service's target).
fn named_port(container: &Value, port: &Value) -> Option<u64> {
    if let Some(n) = port.as_u64() {
        return Some(n);
    }
    container["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == *port)
        .and_then(|p| p["containerPort"].as_u64())
}

/// The config file a container reads (`--config <path>`), found through
/// the pod's volumes: (file name, text).
fn config_of(
    container: &Value,
    pod: &Value,
    config_maps: &BTreeMap<String, Value>,
) -> Option<(String, String)> {
    let args: Vec<&str> = container["args"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let at = args.iter().position(|a| *a == "--config")?;
    let path = Path::new(args.get(at + 1)?);
    let mount = container["volumeMounts"]
        .as_array()?
        .iter()
        .find(|m| path.starts_with(m["mountPath"].as_str().unwrap_or("/nowhere")))
        .unwrap_or_else(|| panic!("{}: nothing is mounted there", path.display()));
    let inside = path
        .strip_prefix(mount["mountPath"].as_str().unwrap_or_default())
        .expect("under the mount")
        .to_str()
        .expect("utf-8");
    let volume = pod["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("volume {} is not declared", mount["name"]));
    // A ConfigMap volume holds its keys as files; a projected one maps
    // keys to paths.
    let mut sources = Vec::new();
    if let Some(cm) = volume["configMap"]["name"].as_str() {
        sources.push((cm.to_string(), inside.to_string()));
    }
    for source in volume["projected"]["sources"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let cm = source["configMap"]["name"].as_str().unwrap_or_default();
        for item in source["configMap"]["items"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if item["path"].as_str() == Some(inside) {
                let key = item["key"].as_str().unwrap_or_default();
                sources.push((cm.to_string(), key.to_string()));
            }
        }
    }
    let (cm, key) = sources
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{}: no ConfigMap provides it", path.display()));
    let text = config_maps
        .get(&cm)
        .unwrap_or_else(|| panic!("ConfigMap {cm} does not exist"))["data"][&key]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap {cm} has no key {key}"))
        .to_string();
    Some((key, text))
}

/// Checks one config with Millrace's own loaders; returns it as a value.
fn accepted(subcommand: &str, file_name: &str, text: &str) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(file_name);
    std::fs::write(&path, text)?;
    let env = |name: &str| match name {
        "MILLRACE_GATEWAY_SECRET" => Some("k".repeat(32)),
        "MILLRACE_BOOTSTRAP" => Some("kafka:9092".into()),
        _ => None,
    };
    match subcommand {
        "run" | "topics" => {
            let (code, out, err) = millrace_cli(
                &["validate", "--config", path.to_str().unwrap_or("")],
                false,
            )?;
            anyhow::ensure!(code == 0, "{file_name} refused:\n{out}{err}");
        }
        "gateway" => {
            let config = millrace::gateway::config::parse(text, &path, &env)
                .map_err(|e| anyhow::anyhow!("{file_name}: {e}"))?;
            let issues = millrace::gateway::config::validate(&config);
            anyhow::ensure!(issues.is_empty(), "{file_name}: {issues:?}");
        }
        "registry" => {
            let config = millrace::registry::config::RegistryConfig::parse(text, &path, &env)
                .map_err(|e| anyhow::anyhow!("{file_name}: {e}"))?;
            let issues = config.validate();
            anyhow::ensure!(issues.is_empty(), "{file_name}: {issues:?}");
        }
        other => anyhow::bail!("a container runs `millrace {other}` with a config"),
    }
    serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("{file_name}: {e}"))
}

/// What a component's config says about the pod around it.
struct Expect {
    /// Ports it listens on, each of which must be on 0.0.0.0 and a
    /// container port.
    listens: Vec<(String, u64)>,
    /// The port serving /metrics, /healthz and /readyz.
    ops: u64,
    shutdown: Duration,
}

fn expect(subcommand: &str, config: &Value) -> Option<Expect> {
    match subcommand {
        "run" => {
            let http = listen(&config["http"]["listen"], "http.listen");
            Some(Expect {
                ops: http.1,
                listens: vec![http],
                shutdown: seconds(&config["shutdown"]["timeout"], Duration::from_secs(30)),
            })
        }
        "gateway" => {
            let api = listen(&config["http"]["listen"], "http.listen");
            let ops = if config["http"]["ops_listen"].is_null() {
                api.clone()
            } else {
                listen(&config["http"]["ops_listen"], "http.ops_listen")
            };
            Some(Expect {
                ops: ops.1,
                listens: vec![api, ops],
                shutdown: seconds(&config["shutdown"]["timeout"], Duration::from_secs(10)),
            })
        }
        "registry" => {
            let api = listen(&config["listen"], "listen");
            Some(Expect {
                ops: api.1,
                listens: vec![api],
                shutdown: seconds(&config["shutdown_timeout"], Duration::from_secs(10)),
            })
        }
        _ => None,
    }
}

#[test]
fn the_manifests_carry_configs_millrace_accepts_and_agree_with_them() -> anyhow::Result<()> {
    let root = repo_root().join("deploy/kubernetes");
    let mut all = objects(&root.join("base"))?;
    all.extend(objects(&root.join("demo"))?);
    let config_maps: BTreeMap<String, Value> = all
        .iter()
        .filter(|(_, o)| kind(o) == "ConfigMap")
        .map(|(_, o)| (name(o).to_string(), o.clone()))
        .collect();
    let workloads: Vec<&Value> = all
        .iter()
        .map(|(_, o)| o)
        .filter(|o| matches!(kind(o), "StatefulSet" | "Deployment"))
        .collect();
    let mut checked_configs = BTreeSet::new();

    for w in &workloads {
        let wname = name(w);
        let pod_labels = &w["spec"]["template"]["metadata"]["labels"];
        let pod = &w["spec"]["template"]["spec"];
        assert!(
            labels_match(&w["spec"]["selector"]["matchLabels"], pod_labels),
            "{wname}: its selector does not select its own pods"
        );
        let containers: Vec<&Value> = pod["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(pod["containers"].as_array().into_iter().flatten())
            .collect();
        for c in &containers {
            // kustomize's `images:` rewrites this name: nothing else may be used.
            assert_eq!(c["image"], "millrace", "{wname}: image");
            let subcommand = c["args"][0].as_str().unwrap_or_default().to_string();
            for env in c["env"].as_array().into_iter().flatten() {
                if let Some(cm) = env["valueFrom"]["configMapKeyRef"]["name"].as_str() {
                    let key = env["valueFrom"]["configMapKeyRef"]["key"]
                        .as_str()
                        .unwrap_or("");
                    assert!(
                        config_maps
                            .get(cm)
                            .is_some_and(|m| !m["data"][key].is_null()),
                        "{wname}: env {} reads {cm}/{key}, which does not exist",
                        env["name"]
                    );
                }
            }
            let Some((file, text)) = config_of(c, pod, &config_maps) else {
                continue;
            };
            let config = accepted(&subcommand, &file, &text)?;
            checked_configs.insert(format!("{wname}: millrace {subcommand} {file}"));
            let Some(expect) = expect(&subcommand, &config) else {
                continue;
            };
            for (host, port) in &expect.listens {
                assert_eq!(
                    host, "0.0.0.0",
                    "{wname}: listens on {host}:{port}, unreachable from outside the pod"
                );
                assert!(
                    c["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|p| p["containerPort"].as_u64() == Some(*port)),
                    "{wname}: port {port} of the config is not a container port"
                );
            }
            for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
                let get = &c[probe]["httpGet"];
                assert_eq!(get["path"], path, "{wname}: {probe}");
                assert_eq!(
                    named_port(c, &get["port"]),
                    Some(expect.ops),
                    "{wname}: {probe} does not ask the operations port"
                );
            }
            let annotations = &w["spec"]["template"]["metadata"]["annotations"];
            assert_eq!(
                annotations["prometheus.io/port"].as_str(),
                Some(expect.ops.to_string().as_str()),
                "{wname}: Prometheus would scrape another port than /metrics"
            );
            let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
            assert!(
                Duration::from_secs(grace) > expect.shutdown,
                "{wname}: grace period {grace} s does not outlast shutdown {:?}",
                expect.shutdown
            );
            if kind(w) == "StatefulSet" {
                let dir = config["state"]["dir"].as_str().unwrap_or_default();
                let claim = w["spec"]["volumeClaimTemplates"][0]["metadata"]["name"].clone();
                assert!(
                    c["volumeMounts"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|m| m["name"] == claim && m["mountPath"] == dir),
                    "{wname}: state.dir {dir} is not its persistent volume"
                );
                assert_eq!(
                    config["kafka"]["static_membership"], true,
                    "{wname}: a StatefulSet pod gets its partitions back only with static membership"
                );
                assert_eq!(
                    config["shutdown"]["leave_group"], false,
                    "{wname}: a rolling restart should not move the pod's partitions away and back"
                );
                assert!(
                    c["env"].as_array().into_iter().flatten().any(|e| {
                        e["name"] == "MILLRACE_INSTANCE_ID"
                            && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
                    }),
                    "{wname}: the instance id must be the pod's name"
                );
                let service = w["spec"]["serviceName"].as_str().unwrap_or_default();
                assert!(
                    all.iter().any(|(_, o)| kind(o) == "Service"
                        && name(o) == service
                        && o["spec"]["clusterIP"] == "None"),
                    "{wname}: serviceName {service} is not a headless Service"
                );
            }
        }
    }

    // Services and disruption budgets select pods that exist, on ports
    // that exist.
    for (_, o) in &all {
        let selector = match kind(o) {
            "Service" => &o["spec"]["selector"],
            "PodDisruptionBudget" => &o["spec"]["selector"]["matchLabels"],
            _ => continue,
        };
        let target = workloads
            .iter()
            .find(|w| labels_match(selector, &w["spec"]["template"]["metadata"]["labels"]))
            .unwrap_or_else(|| panic!("{} {} selects no workload", kind(o), name(o)));
        if kind(o) == "Service" {
            let container = &target["spec"]["template"]["spec"]["containers"][0];
            for port in o["spec"]["ports"].as_array().into_iter().flatten() {
                assert!(
                    named_port(container, &port["targetPort"]).is_some(),
                    "Service {}: targetPort {} is not a port of {}",
                    name(o),
                    port["targetPort"],
                    name(target)
                );
            }
        }
    }

    // Every component kind is covered, so a manifest that stops passing
    // `--config` cannot slip out of these checks.
    let covered: Vec<&String> = checked_configs.iter().collect();
    for needed in [
        "millrace run",
        "millrace gateway",
        "millrace registry",
        "millrace topics",
    ] {
        assert!(
            covered.iter().any(|c| c.contains(needed)),
            "no `{needed}` config checked: {covered:?}"
        );
    }
    Ok(())
}

/// The metric names a PromQL-bearing file mentions (Millrace's own and the
/// standard process metrics).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in ["millrace_", "process_"] {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let before = text.len() - rest.len() + at;
            let preceded = text[..before]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            if !preceded && name.len() > prefix.len() {
                names.insert(name);
            }
        }
    }
    names
}

/// The metric names in a `/metrics` body: samples and declared families.
fn exported(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter_map(|l| {
            let l = l.strip_prefix("# TYPE ").unwrap_or(l);
            if l.starts_with('#') {
                return None;
            }
            l.split(['{', ' ']).next().map(str::to_string)
        })
        .filter(|n| !n.is_empty())
        .collect()
}

#[test]
fn every_metric_the_alerts_and_the_dashboard_query_is_exported() -> anyhow::Result<()> {
    let root = repo_root().join("deploy");
    let mut wanted = metric_names(&std::fs::read_to_string(
        root.join("prometheus/millrace-alerts.yaml"),
    )?);
    wanted.extend(metric_names(&std::fs::read_to_string(
        root.join("grafana/millrace.json"),
    )?));
    // The test file's own series are inputs, not queries.
    assert!(
        wanted.contains("millrace_consumer_lag") && wanted.contains("process_open_fds"),
        "{wanted:?}"
    );

    let rt = tokio::runtime::Runtime::new()?;
    let name = unique("deploy-metrics");
    let (input, output) = (format!("{name}-in"), format!("{name}-out"));
    let dead = format!("{output}-dead");
    rt.block_on(create_topics(&[(&input, 2), (&output, 2), (&dead, 1)]))?;

    // A stateful pipeline with a dead letter, so that every labelled
    // pipeline metric has a sample.
    let state = tempfile::tempdir()?;
    let mut pipeline = Millrace::start(&format!(
        r#"
pipeline: deploy-metrics
sources: [{{topic: {input}}}]
steps:
  - reduce: {{}}
sinks: {{out: {{topic: {output}}}}}
dead_letter: {{topic: {dead}}}
state: {{dir: {dir}}}
commit: {{interval: 50ms}}
http: {{listen: "127.0.0.1:{{ops_port}}"}}
"#,
        dir = state.path().display()
    ))?;
    pipeline.wait_ready(Duration::from_secs(60))?;
    rt.block_on(produce_to(
        &producer(),
        &input,
        &[
            ("a".to_string(), 0, br#"{"v": 1}"#.to_vec()),
            ("b".to_string(), 1, b"not json".to_vec()),
        ],
    ))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while read_committed(&dead)?.is_empty() || read_committed(&output)?.is_empty() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no output; log:\n{}",
            pipeline.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A gateway with a subscriber that received a record, and a refused
    // request.
    let mut gateway = Millrace::start_gateway(&millrace_integration_tests::gateway::gateway_yaml(
        &format!("  - topic: {output}"),
        "",
    ))?;
    gateway.wait_ready(Duration::from_secs(60))?;
    let base = format!("http://127.0.0.1:{}", gateway.ops_port);
    let token = token_for(&[&output]);
    rt.block_on(async {
        let url = format!("{base}/v1/topics/{output}/sse?start=earliest");
        let mut sse = Sse::open(&url, &[("authorization", &format!("Bearer {token}"))])
            .await?
            .map_err(|(s, b)| anyhow::anyhow!("{s} {b}"))?;
        anyhow::ensure!(sse.next(Duration::from_secs(30)).await?.is_some());
        let refused = reqwest::get(&url).await?.status().as_u16();
        anyhow::ensure!(refused == 401, "{refused}");
        Ok(())
    })?;

    // A registry that took a write.
    let registry = Registry::start(&unique("_schemas-deploy"))?;
    registry.register(
        &format!("{name}-value"),
        r#"{"type":"record","name":"R","fields":[{"name":"v","type":"long"}]}"#,
    )?;

    // Consumer lag comes from librdkafka's statistics, every 5 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !pipeline
        .get("/metrics")?
        .1
        .contains("millrace_consumer_lag{")
    {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no consumer lag reported; log:\n{}",
            pipeline.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let bodies = [
        ("pipeline", pipeline.get("/metrics")?.1),
        ("gateway", gateway.get("/metrics")?.1),
        (
            "registry",
            reqwest::blocking::get(format!("{}/metrics", registry.url()))?.text()?,
        ),
    ];
    let mut have = BTreeSet::new();
    for (component, body) in &bodies {
        assert!(
            body.contains(&format!("millrace_build_info{{component=\"{component}\"")),
            "{component} does not export millrace_build_info"
        );
        have.extend(exported(body));
    }
    let missing: Vec<&String> = wanted.iter().filter(|m| !have.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "deploy/ queries metrics that no Millrace component exports: {missing:?}"
    );
    pipeline.stop_cleanly()?;
    drop(gateway);
    Ok(())
}
