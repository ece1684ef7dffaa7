//! The telemetry dashboard end to end, in a real browser: synthetic ECG from
//! four devices, written in real time, runs through three pipelines
//! (waveforms → `rpeaks` → heart rate; heart rate → `threshold` → alerts;
//! waveforms → `stale` → alerts) and the gateway to `/dashboard` in
//! headless Chromium (Debian's `chromium`, driven by `playwright-core` from
//! `integration-tests/browser/dashboard.mjs`). The page must draw every
//! waveform (canvas pixels change), show the heart rates the pipeline
//! committed, raise the alert of the device whose heart rate jumps to
//! 160 bpm, resume every stream without a gap or a repeat after a gateway
//! restart, and mark every device stale once the data stops. Saves
//! `docs/dashboard.png` (the README's and the book's picture) and a copy in a temporary
//! directory.
//!
//! Skipped only when Chromium or Node is missing and `CI` is not set.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use millrace::telemetry::ecg::{EcgSynth, HrSchedule, NoiseConfig};
use millrace::telemetry::waveform::{self, Batch};
use millrace_integration_tests::{
    BrowserTooling, Millrace, bench, browser_tooling, create_topics, group_caught_up, progress,
    read_committed, repo_root, unique,
};
use rdkafka::Message;
use rdkafka::producer::{BaseRecord, Producer};
use serde_json::Value;

/// Devices and their heart-rate schedules, `(start_s, bpm)`.
const DEVICES: &[(&str, &[(f64, f64)])] = &[
    ("bed-01", &[(0.0, 64.0)]),
    ("bed-02", &[(0.0, 78.0)]),
    // The injected anomaly: tachycardia from 10 s on.
    ("bed-03", &[(0.0, 72.0), (10.0, 160.0)]),
    ("bed-04", &[(0.0, 92.0)]),
];
const ANOMALY: &str = "bed-03";
const RATE: f64 = 250.0;
/// Samples per batch: a record every 200 ms.
const BATCH: usize = 50;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Writes one waveform batch per device every 200 ms, in step with the wall
/// clock, until `running` turns false.
fn produce_waveforms(topic: String, running: Arc<AtomicBool>) -> anyhow::Result<usize> {
    let producer = bench::loader()?;
    let mut synths = Vec::new();
    for (seed, (device, schedule)) in DEVICES.iter().enumerate() {
        let schedule = HrSchedule::segments(schedule.to_vec())?;
        let synth = EcgSynth::new(seed as u64 + 11, RATE, schedule, NoiseConfig::clean())?;
        synths.push((*device, synth));
    }
    let start_ms = now_ms();
    let started = Instant::now();
    let mut sent = 0;
    for n in 0u64.. {
        if !running.load(Ordering::SeqCst) {
            break;
        }
        let first_sample_ms = start_ms + (n * BATCH as u64 * 4) as i64;
        for (device, synth) in &mut synths {
            let batch = Batch {
                device: device.to_string(),
                first_sample_ms,
                sample_rate: RATE as f32,
                samples: synth.next_samples(BATCH),
            };
            let value = waveform::encode(&batch)?;
            let record = BaseRecord::to(&topic)
                .key(*device)
                .payload(&value)
                .timestamp(first_sample_ms);
            producer.send(record).map_err(|(e, _)| e)?;
            sent += 1;
        }
        producer.flush(Duration::from_secs(10))?;
        // The batch ends 200 ms after it starts: send the next one then.
        let due = Duration::from_millis((n + 1) * BATCH as u64 * 4);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    Ok(sent)
}

fn pipeline(name: &str, source: &str, steps: &str, sink: &str, dead: &str, dir: &Path) -> String {
    format!(
        r#"
pipeline: {name}
sources: [{source}]
steps:
{steps}
sinks: {{out: {{topic: {sink}}}}}
dead_letter: {{topic: {dead}}}
state: {{dir: {dir}}}
http: {{listen: "127.0.0.1:{{ops_port}}"}}
"#,
        dir = dir.display()
    )
}

/// Reads the browser script's next JSON line, failing with its phase.
fn next_line(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    phase: &str,
) -> anyhow::Result<Value> {
    let line = lines
        .next()
        .ok_or_else(|| anyhow::anyhow!("the browser script ended before phase `{phase}`"))??;
    let value: Value = serde_json::from_str(&line)?;
    anyhow::ensure!(value["phase"] == phase, "expected phase {phase}: {value}");
    Ok(value)
}

#[test]
fn dashboard_draws_waveforms_shows_heart_rates_and_raises_alerts() -> anyhow::Result<()> {
    let Some(BrowserTooling {
        chromium,
        dir: browser_dir,
    }) = browser_tooling("dashboard")?
    else {
        return Ok(());
    };

    let name = unique("dash");
    let (waves, hr, alerts, dead) = (
        format!("{name}-waveforms"),
        format!("{name}-heart-rate"),
        format!("{name}-alerts"),
        format!("{name}-dead-letters"),
    );
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(create_topics(&[
        (&waves, 2),
        (&hr, 2),
        (&alerts, 2),
        (&dead, 1),
    ]))?;

    let state = tempfile::tempdir()?;
    let hr_pipeline = format!("{name}-hr");
    let mut pipelines = [
        Millrace::start(&pipeline(
            &hr_pipeline,
            &format!("{{topic: {waves}, format: waveform}}"),
            "  - rpeaks: {}",
            &hr,
            &dead,
            state.path(),
        ))?,
        Millrace::start(&pipeline(
            &format!("{name}-threshold"),
            &format!("{{topic: {hr}}}"),
            "  - threshold: {value: value.hr_rolling, above: 140, hysteresis: 10, for: 5s}",
            &alerts,
            &dead,
            state.path(),
        ))?,
        Millrace::start(&pipeline(
            &format!("{name}-stale"),
            &format!("{{topic: {waves}, format: waveform}}"),
            "  - stale: {after: 4s}",
            &alerts,
            &dead,
            state.path(),
        ))?,
    ];
    for p in &mut pipelines {
        p.wait_ready(Duration::from_secs(60))?;
    }
    let mut gw = Millrace::start_gateway(&format!(
        r#"
gateway: dashboard-it
topics:
  - {{topic: {waves}, format: raw}}
  - {{topic: {hr}}}
  - {{topic: {alerts}}}
http:
  listen: "127.0.0.1:{{ops_port}}"
auth:
  mode: open
dashboard:
  enabled: true
  title: Ward 3 telemetry
  waveform_topic: {waves}
  heart_rate_topic: {hr}
  alerts_topic: {alerts}
"#
    ))?;
    gw.wait_ready(Duration::from_secs(60))?;
    let (status, page) = gw.get("/dashboard")?;
    assert_eq!(status, 200, "{page}");

    let running = Arc::new(AtomicBool::new(true));
    let producer = {
        let (topic, running) = (waves.clone(), running.clone());
        std::thread::spawn(move || produce_waveforms(topic, running))
    };
    let stop_producer = |running: &AtomicBool| running.store(false, Ordering::SeqCst);

    let shots = tempfile::tempdir()?;
    let copy = shots.path().join("dashboard.png");
    let readme_picture = repo_root().join("docs/dashboard.png");
    std::fs::create_dir_all(repo_root().join("docs"))?;
    let devices: Vec<&str> = DEVICES.iter().map(|(d, _)| *d).collect();
    let mut script = Command::new("node")
        .arg(browser_dir.join("dashboard.mjs"))
        .arg(format!("http://127.0.0.1:{}/dashboard", gw.ops_port))
        .arg(devices.join(","))
        .arg(ANOMALY)
        .arg(&readme_picture)
        .arg(&copy)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut to_script = script.stdin.take().expect("piped stdin");
    let mut lines = BufReader::new(script.stdout.take().expect("piped stdout")).lines();
    let logs = |gw: &Millrace, pipelines: &[Millrace]| {
        let mut text = format!("gateway log:\n{}", gw.log_tail(20));
        for p in pipelines {
            text.push_str(&format!("\npipeline log:\n{}", p.log_tail(20)));
        }
        text
    };

    // Phase 1: live.
    let live = match next_line(&mut lines, "live") {
        Ok(v) => v,
        Err(e) => {
            stop_producer(&running);
            let _ = script.kill();
            anyhow::bail!("{e}\n{}", logs(&gw, &pipelines));
        }
    };
    progress(&format!("dashboard live: {}", live["summary"]));
    assert_eq!(live["errors"], serde_json::json!([]), "page errors");
    for device in &devices {
        let (before, after) = (&live["before"][device], &live["after"][device]);
        assert!(
            before["lit"].as_u64().unwrap_or(0) > 100,
            "{device}: no trace drawn: {before}"
        );
        assert_ne!(
            before["hash"], after["hash"],
            "{device}: the trace does not move"
        );
    }
    assert_eq!(
        live["streams"],
        serde_json::json!(["wave=live", "hr=live", "alerts=live"])
    );
    assert_eq!(live["alertTile"], "active");
    assert_eq!(live["badgeColor"], "rgb(255, 77, 79)", "the badge is red");
    assert!(
        live["badges"][ANOMALY]
            .as_str()
            .is_some_and(|b| b.contains("HR > 140")),
        "{}",
        live["badges"]
    );
    for device in devices.iter().filter(|d| **d != ANOMALY) {
        assert!(
            live["badges"][device].is_null(),
            "{device}: {}",
            live["badges"]
        );
    }
    assert!(
        readme_picture.exists() && copy.exists(),
        "screenshots saved"
    );

    // Phase 2: restart the gateway; the page must resume every stream
    // exactly where it was.
    gw.stop_cleanly()?;
    gw.restart()?;
    gw.wait_ready(Duration::from_secs(60))?;
    writeln!(to_script, "restarted")?;
    let resumed = next_line(&mut lines, "resumed")?;
    // Each stream was lost at least once (the script waits for that).
    for stream in resumed["reconnects"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let count = stream
            .as_str()
            .and_then(|s| s.split_once('='))
            .and_then(|(_, n)| n.parse::<u32>().ok());
        assert!(count >= Some(1), "{}", resumed["reconnects"]);
    }
    for device in &devices {
        let c = &resumed["continuity"][device];
        assert!(c["batches"].as_u64().unwrap_or(0) > 20, "{device}: {c}");
        assert_eq!(
            (c["gaps"].as_u64(), c["repeats"].as_u64()),
            (Some(0), Some(0)),
            "{device}: the waveform did not resume exactly: {c}"
        );
    }
    progress(&format!(
        "after a gateway restart: {}",
        resumed["continuity"]
    ));

    // Phase 3: stop the data, let the pipelines catch up, compare.
    stop_producer(&running);
    let sent = producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer panicked"))??;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !group_caught_up(&format!("millrace-{hr_pipeline}"), &waves) {
        anyhow::ensure!(Instant::now() < deadline, "rpeaks did not catch up");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The last heart rates travel through the gateway's live tail.
    std::thread::sleep(Duration::from_secs(2));
    writeln!(to_script, "read")?;
    let settled = next_line(&mut lines, "settled")?;
    let mut committed: BTreeMap<String, f64> = BTreeMap::new();
    for m in read_committed(&hr)? {
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let v: Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
        if let Some(rolling) = v["hr_rolling"].as_f64() {
            committed.insert(key, rolling);
        }
    }
    for (device, schedule) in DEVICES {
        let want = committed
            .get(*device)
            .copied()
            .ok_or_else(|| anyhow::anyhow!("{device}: no heart rate committed"))?;
        let shown: f64 = settled["hr"][device]
            .as_str()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("{device}: shows {}", settled["hr"][device]))?;
        assert!(
            (shown - want.round()).abs() <= 1.0,
            "{device}: page shows {shown} bpm, the pipeline committed {want}"
        );
        // And the pipeline heard the synthetic heart.
        let truth = schedule.last().map_or(0.0, |s| s.1);
        assert!(
            (want - truth).abs() < 10.0,
            "{device}: rolling {want}, scheduled {truth}"
        );
    }
    progress(&format!(
        "{sent} batches; page heart rates {} match the committed {committed:?}",
        settled["hr"]
    ));

    // Phase 4: silence makes every device stale.
    let stale = next_line(&mut lines, "stale")?;
    assert_eq!(stale["errors"], serde_json::json!([]), "page errors");
    let status = script.wait()?;
    assert!(status.success(), "the browser script failed: {status}");
    progress(&format!(
        "stale badges: {}; screenshot: {}",
        stale["badges"],
        copy.display()
    ));
    gw.stop_cleanly()?;
    for p in &mut pipelines {
        p.stop_cleanly()?;
    }
    Ok(())
}
