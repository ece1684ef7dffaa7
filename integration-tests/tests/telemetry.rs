//! The telemetry kit end to end on the real broker: `millrace gen` writes
//! ECG waveforms of a small fleet, the heart-rate pipeline (`rpeaks`) and
//! the alert pipeline (`threshold`) run as in `config/`, and the committed
//! results agree with the generator's ground truth: heart rates within
//! ±2 bpm, and an alert for the injected tachycardia.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use millrace_integration_tests::{
    Millrace, bootstrap, create_topics, millrace_bin, millrace_cli, progress, read_committed,
    unique, write_config,
};
use rdkafka::message::Message;

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

#[test]
fn heart_rates_match_the_generator_and_the_episode_raises_an_alert() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let name = unique("telemetry");
    let (waves, vitals, beats, alerts) = (
        format!("{name}-waveforms"),
        format!("{name}-vitals"),
        format!("{name}-heart-rate"),
        format!("{name}-alerts"),
    );
    rt.block_on(create_topics(&[
        (&waves, 2),
        (&vitals, 2),
        (&beats, 2),
        (&alerts, 1),
    ]))?;
    let dir = tempfile::tempdir()?;
    let config = |text: &str| {
        text.replace("telemetry-waveforms", &waves)
            .replace("telemetry-heart-rate", &beats)
            .replace("telemetry-alerts", &alerts)
            .replace("pipeline: telemetry-", &format!("pipeline: {name}-"))
            .replace("127.0.0.1:9465", "127.0.0.1:{ops_port}")
            .replace("127.0.0.1:9466", "127.0.0.1:{ops_port}")
            + &format!("state: {{dir: {}}}\n", dir.path().display())
    };
    let root = millrace_integration_tests::repo_root();
    let heart = std::fs::read_to_string(root.join("config/telemetry-heart-rate.yaml"))?;
    let alerting = std::fs::read_to_string(root.join("config/telemetry-hr-alerts.yaml"))?;
    // As a user would: `topics create` makes the dead-letter topics.
    for text in [&heart, &alerting] {
        let (_dir, path, _) = write_config(&config(text))?;
        let path = path.to_string_lossy().to_string();
        let (code, _, err) = millrace_cli(&["topics", "create", "--config", &path], true)?;
        assert_eq!(code, 0, "topics create: {err}");
    }
    let mut heart = Millrace::start(&config(&heart))?;
    let mut alerting = Millrace::start(&config(&alerting))?;

    // Three monitors; the third has a 165 bpm episode from 20 s to 50 s.
    let truth_file = dir.path().join("truth.json");
    let seconds = 34;
    let generator = Command::new(millrace_bin())
        .args([
            "gen",
            "--devices",
            "3",
            "--anomaly-every",
            "3",
            "--silence-every",
            "0",
        ])
        .args(["--seed", "5", "--duration", &format!("{seconds}s")])
        .args(["--waveform-topic", &waves, "--vitals-topic", &vitals])
        .arg("--truth")
        .arg(&truth_file)
        .env("MILLRACE_BOOTSTRAP", bootstrap())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    assert!(
        generator.status.success(),
        "gen failed: {}",
        String::from_utf8_lossy(&generator.stderr)
    );
    progress("telemetry: generator done");
    let truth: serde_json::Value = serde_json::from_slice(&std::fs::read(&truth_file)?)?;
    let start = truth["start_ms"].as_i64().unwrap_or_default();

    // Wait until the last seconds' beats are committed.
    let deadline = Instant::now() + Duration::from_secs(60);
    let beat_values = loop {
        let values: Vec<serde_json::Value> = read_committed(&beats)?
            .iter()
            .filter_map(|m| serde_json::from_slice(m.payload().unwrap_or_default()).ok())
            .collect();
        let latest = values
            .iter()
            .filter_map(|v| v["t"].as_i64())
            .max()
            .unwrap_or(0);
        if latest >= start + (seconds - 3) * 1_000 || Instant::now() > deadline {
            break values;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut by_device: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for v in &beat_values {
        if let (Some(d), Some(t), Some(hr)) = (
            v["device"].as_str(),
            v["t"].as_i64(),
            v["hr_rolling"].as_f64(),
        ) {
            by_device
                .entry(d.to_string())
                .or_default()
                .push((t - start, hr));
        }
    }
    let devices = truth["devices"].as_array().cloned().unwrap_or_default();
    assert_eq!(devices.len(), 3);
    for device in &devices {
        let id = device["device"].as_str().unwrap_or_default();
        let base = device["base_bpm"].as_f64().unwrap_or_default();
        let beats = by_device.get(id).cloned().unwrap_or_default();
        // Steady state before any episode: 5 s to 19 s.
        let steady = median(
            beats
                .iter()
                .filter(|(t, _)| (5_000..19_000).contains(t))
                .map(|b| b.1)
                .collect(),
        );
        let steady =
            steady.unwrap_or_else(|| panic!("{id}: no beats; log:\n{}", heart.log_tail(20)));
        assert!(
            (steady - base).abs() <= 2.0,
            "{id}: rolling HR {steady} vs truth {base}"
        );
        if let Some(episode) = device["anomaly"].as_array() {
            let bpm = episode[2].as_f64().unwrap_or_default();
            let during = median(
                beats
                    .iter()
                    .filter(|(t, _)| *t >= 26_000)
                    .map(|b| b.1)
                    .collect(),
            );
            let during = during.unwrap_or_default();
            assert!(
                (during - bpm).abs() <= 2.0,
                "{id}: rolling HR {during} during the episode vs {bpm}"
            );
        }
    }
    progress("telemetry: heart rates within 2 bpm of the truth");

    let anomalous = devices
        .iter()
        .find(|d| d["anomaly"].is_array())
        .and_then(|d| d["device"].as_str())
        .unwrap_or_default()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let fired: Vec<serde_json::Value> = loop {
        let events: Vec<serde_json::Value> = read_committed(&alerts)?
            .iter()
            .filter_map(|m| serde_json::from_slice(m.payload().unwrap_or_default()).ok())
            .collect();
        if !events.is_empty() || Instant::now() > deadline {
            break events;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        fired.len(),
        1,
        "one alert: {fired:?}; log:\n{}",
        alerting.log_tail(20)
    );
    assert_eq!(fired[0]["key"], anomalous.as_str());
    assert_eq!(fired[0]["event"], "alert");
    assert_eq!(fired[0]["side"], "above");
    let since = fired[0]["since_ms"].as_i64().unwrap_or_default() - start;
    assert!(
        (20_000..27_000).contains(&since),
        "the breach began {since} ms in"
    );
    heart.stop_cleanly()?;
    alerting.stop_cleanly()?;
    Ok(())
}
