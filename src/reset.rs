//! `millrace reset`: rewinds a pipeline so its next run reprocesses from a
//! chosen point and rebuilds its state consistently: the group's offsets
//! move, the changelog topics and the local state are deleted. Dry run by
//! default; refuses while the group has live members.
//!
//! The steps are ordered so that stopping after any of them (a crash, a
//! broker error) leaves something the next `millrace run` either handles
//! correctly or refuses with a clear message, and running the same reset
//! again finishes the job:
//! 1. delete this machine's local state (alone, harmless: the next run
//!    restores it from the changelogs, which still match the offsets);
//! 2. delete the changelog topics and wait until the broker no longer
//!    lists them (from here on `run` refuses: the group has offsets but
//!    its changelogs are missing);
//! 3. commit the new offsets;
//! 4. create the changelogs again, empty. Their new topic ids make every
//!    other instance's local copy of the old state stale, so it is wiped
//!    at its next restore (see `state::restore`).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{PipelineConfig, StartPosition};
use crate::pipeline::Pipeline;
use crate::runtime::admin_client_config;
use crate::state::rocks::TaskDb;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Where to reset to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetTo {
    /// A start position: earliest, latest or a time.
    Position(StartPosition),
    /// Explicit offsets: `topic:partition:offset`, comma-separated.
    Offsets(Vec<(String, i32, i64)>),
}

impl ResetTo {
    /// Parses `earliest`, `latest`, a time, or `topic:partition:offset,...`.
    pub fn parse(text: &str) -> Result<ResetTo, String> {
        if text.contains(':') && !text.contains('T') {
            let mut offsets = Vec::new();
            for part in text.split(',') {
                let fields: Vec<&str> = part.trim().rsplitn(3, ':').collect();
                let [offset, partition, topic] = fields[..] else {
                    return Err(format!("`{part}` is not topic:partition:offset"));
                };
                let partition = partition
                    .parse()
                    .map_err(|_| format!("`{partition}` in `{part}` is not a partition number"))?;
                let offset = offset
                    .parse()
                    .map_err(|_| format!("`{offset}` in `{part}` is not an offset"))?;
                offsets.push((topic.to_string(), partition, offset));
            }
            return Ok(ResetTo::Offsets(offsets));
        }
        StartPosition::parse(text).map(ResetTo::Position)
    }
}

/// Plans (and with `execute`, applies) a reset; returns the report to print.
pub async fn reset(
    config: &PipelineConfig,
    pipeline: &Pipeline,
    to: &ResetTo,
    execute: bool,
) -> anyhow::Result<String> {
    let group = config.group_id();
    let consumer: BaseConsumer = admin_client_config(config)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the consumer")?;

    let groups = consumer
        .fetch_group_list(Some(&group), TIMEOUT)
        .context("describing the group")?;
    if let Some(g) = groups.groups().first()
        && !g.members().is_empty()
    {
        bail!(
            "group {group} has {} live member(s); stop every instance of the pipeline first",
            g.members().len()
        );
    }

    let mut target = TopicPartitionList::new();
    for source in &config.sources {
        let metadata = consumer
            .fetch_metadata(Some(&source.topic), TIMEOUT)
            .with_context(|| format!("reading metadata of {}", source.topic))?;
        let partitions = metadata
            .topics()
            .first()
            .map(|t| t.partitions().len() as i32)
            .unwrap_or(0);
        if partitions == 0 {
            bail!("topic {} does not exist", source.topic);
        }
        for p in 0..partitions {
            // Tables are rebuilt whole (their stores are deleted with the
            // rest of the state), so they always go back to the start.
            if source.table.is_some() {
                let low = consumer.fetch_watermarks(&source.topic, p, TIMEOUT)?.0;
                target.add_partition_offset(&source.topic, p, Offset::Offset(low))?;
                continue;
            }
            let offset = match to {
                ResetTo::Position(StartPosition::Earliest) => {
                    Offset::Offset(consumer.fetch_watermarks(&source.topic, p, TIMEOUT)?.0)
                }
                ResetTo::Position(StartPosition::Latest) => {
                    Offset::Offset(consumer.fetch_watermarks(&source.topic, p, TIMEOUT)?.1)
                }
                ResetTo::Position(StartPosition::Timestamp(ms)) => {
                    let mut one = TopicPartitionList::new();
                    one.add_partition_offset(&source.topic, p, Offset::Offset(*ms))?;
                    let found = consumer.offsets_for_times(one, TIMEOUT)?;
                    match found.elements().first().map(|e| e.offset()) {
                        Some(Offset::Offset(n)) if n >= 0 => Offset::Offset(n),
                        _ => {
                            Offset::Offset(consumer.fetch_watermarks(&source.topic, p, TIMEOUT)?.1)
                        }
                    }
                }
                ResetTo::Offsets(list) => match list
                    .iter()
                    .find(|(t, part, _)| t == &source.topic && *part == p)
                {
                    Some((_, _, o)) => Offset::Offset(*o),
                    None => continue,
                },
            };
            target.add_partition_offset(&source.topic, p, offset)?;
        }
    }
    if let ResetTo::Offsets(list) = to {
        for (topic, partition, _) in list {
            if target.find_partition(topic, *partition).is_none() {
                bail!("{topic}:{partition} is not a partition of the pipeline's sources");
            }
        }
    }
    let current = consumer
        .committed_offsets(target.clone(), TIMEOUT)
        .context("reading committed offsets")?;

    let mut report = String::new();
    let verb = if execute {
        "reset"
    } else {
        "would reset (dry run; add --execute)"
    };
    writeln!(report, "group {group}: {verb}")?;
    for e in target.elements() {
        let was = current
            .find_partition(e.topic(), e.partition())
            .map(|c| c.offset())
            .unwrap_or(Offset::Invalid);
        writeln!(
            report,
            "  {}[{}] {} -> {}",
            e.topic(),
            e.partition(),
            show(was),
            show(e.offset())
        )?;
    }
    let changelogs = crate::admin::changelog_topics(config, pipeline);
    let state_dir = config.state.dir.join(&group);
    if state_dir.exists() {
        writeln!(report, "  delete local state {}", state_dir.display())?;
    }
    for topic in &changelogs {
        writeln!(
            report,
            "  delete and recreate changelog topic {topic} (empty)"
        )?;
    }
    if !execute {
        return Ok(report);
    }
    let again = "run the same reset again to finish";

    failpoint("reset:start")?;
    TaskDb::destroy(&state_dir).with_context(|| format!("deleting local state; {again}"))?;
    failpoint("reset:local-state")?;
    if !changelogs.is_empty() {
        delete_topics(config, &changelogs)
            .await
            .with_context(|| format!("deleting changelog topics; {again}"))?;
    }
    failpoint("reset:changelogs-deleted")?;
    consumer
        .commit(&target, CommitMode::Sync)
        .with_context(|| format!("committing the new offsets; {again}"))?;
    failpoint("reset:offsets")?;
    if !changelogs.is_empty() {
        let partitions = source_partitions(&consumer, &config.sources[0].topic)?;
        let names: Vec<&String> = changelogs.iter().collect();
        crate::admin::create_changelog_topics(config, &names, partitions)
            .await
            .with_context(|| format!("creating the changelog topics again; {again}"))?;
        let admin: AdminClient<DefaultClientContext> = admin_client_config(config).create()?;
        wait_until_listed(&admin, &changelogs, true)
            .await
            .with_context(|| format!("waiting for the new changelog topics; {again}"))?;
    }
    writeln!(report, "done")?;
    Ok(report)
}

/// Deletes topics and waits until the broker's metadata no longer lists
/// them: deletion is asynchronous, and a topic created again under the
/// same name before it is gone would be refused, or be the old one.
async fn delete_topics(config: &PipelineConfig, topics: &[String]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = admin_client_config(config).create()?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    for result in admin.delete_topics(&names, &options).await? {
        match result {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((name, code)) => bail!("deleting {name}: {code}"),
        }
    }
    wait_until_listed(&admin, topics, false).await
}

/// Waits until the broker's metadata lists every one of `topics`
/// (`listed`), or none of them: creation and deletion are asynchronous, and
/// the next `run` must see what reset did.
async fn wait_until_listed(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[String],
    listed: bool,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let metadata = admin
            .inner()
            .fetch_metadata(None, TIMEOUT)
            .context("reading metadata")?;
        let pending: Vec<&str> = topics
            .iter()
            .map(String::as_str)
            .filter(|name| {
                let present = metadata
                    .topics()
                    .iter()
                    .any(|t| t.name() == *name && t.error().is_none());
                present != listed
            })
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            let state = if listed { "not listed" } else { "still listed" };
            bail!("{state} after {TIMEOUT:?}: {}", pending.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn source_partitions(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<i32> {
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .with_context(|| format!("reading metadata of {topic}"))?;
    Ok(metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len() as i32))
}

/// Stops here when `MILLRACE_FAILPOINT` names this point: how the tests
/// interrupt a reset between two of its steps, as a crash would.
fn failpoint(name: &str) -> anyhow::Result<()> {
    if std::env::var("MILLRACE_FAILPOINT").is_ok_and(|v| v == name) {
        bail!("stopped at failpoint {name} (MILLRACE_FAILPOINT)");
    }
    Ok(())
}

fn show(offset: Offset) -> String {
    match offset {
        Offset::Offset(n) => n.to_string(),
        Offset::Invalid => "(none)".to_string(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_targets_parse() {
        assert_eq!(
            ResetTo::parse("earliest"),
            Ok(ResetTo::Position(StartPosition::Earliest))
        );
        assert_eq!(
            ResetTo::parse("vitals:0:42,vitals:1:7"),
            Ok(ResetTo::Offsets(vec![
                ("vitals".into(), 0, 42),
                ("vitals".into(), 1, 7)
            ]))
        );
        assert!(matches!(
            ResetTo::parse("2026-11-01T00:00:00Z"),
            Ok(ResetTo::Position(StartPosition::Timestamp(_)))
        ));
        assert!(ResetTo::parse("vitals:x:1").is_err());
        assert!(ResetTo::parse("someday").is_err());
    }
}
