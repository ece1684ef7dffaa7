//! `millrace topics create`: creates the topics a pipeline reads and writes,
//! and the changelog topics of its stateful steps.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::PipelineConfig;
use crate::pipeline::Pipeline;
use crate::runtime::admin_client_config;
use crate::state::manager::changelog_topic;

/// What happened to one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    Created,
    AlreadyExists,
}

/// Every topic of the pipeline: sources, sinks and the dead-letter topic.
pub fn pipeline_topics(config: &PipelineConfig, pipeline: &Pipeline) -> Vec<String> {
    let mut topics: Vec<String> = config.sources.iter().map(|s| s.topic.clone()).collect();
    topics.extend(pipeline.output_topics());
    topics.sort();
    topics.dedup();
    topics
}

/// Creates the pipeline's topics with the partitions, replication factor
/// and topic configs of `topics:`, then its changelogs; topics that exist
/// are left alone.
pub async fn create_topics(
    config: &PipelineConfig,
    pipeline: &Pipeline,
) -> anyhow::Result<Vec<(String, TopicOutcome)>> {
    let admin: AdminClient<DefaultClientContext> = admin_client_config(config)
        .create()
        .context("creating the admin client")?;
    let names = pipeline_topics(config, pipeline);
    let new_topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| {
            let mut topic = NewTopic::new(
                name,
                config.topics.partitions,
                TopicReplication::Fixed(config.topics.replication()),
            );
            for (key, value) in &config.topics.config {
                topic = topic.set(key, value);
            }
            topic
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(new_topics.iter(), &options)
        .await
        .with_context(|| format!("creating topics on {}", config.kafka.bootstrap))?;
    let mut outcomes = Vec::new();
    for result in results {
        match result {
            Ok(name) => outcomes.push((name, TopicOutcome::Created)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                outcomes.push((name, TopicOutcome::AlreadyExists))
            }
            Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
        }
    }
    // Changelogs get one partition per task: as many as the sources have
    // (which may predate this command, with another count).
    let changelogs = changelog_topics(config, pipeline);
    if !changelogs.is_empty() {
        let first = &config.sources[0].topic;
        let metadata = admin
            .inner()
            .fetch_metadata(Some(first), Duration::from_secs(30))
            .with_context(|| format!("reading metadata of {first}"))?;
        let partitions = metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len() as i32);
        if partitions == 0 {
            anyhow::bail!("source topic {first} has no partitions");
        }
        let names: Vec<&String> = changelogs.iter().collect();
        outcomes.extend(create_changelog_topics(config, &names, partitions).await?);
    }
    Ok(outcomes)
}

/// The changelog topics of the pipeline's stateful steps (see
/// [`changelog_topic`]).
pub fn changelog_topics(config: &PipelineConfig, pipeline: &Pipeline) -> Vec<String> {
    let group = config.group_id();
    pipeline
        .stores()
        .iter()
        .map(|store| changelog_topic(&group, store))
        .collect()
}

/// Creates changelog topics: compacted (only the latest value per key
/// matters for a restore), one partition per task. Existing ones are left
/// alone.
pub async fn create_changelog_topics(
    config: &PipelineConfig,
    topics: &[&String],
    partitions: i32,
) -> anyhow::Result<Vec<(String, TopicOutcome)>> {
    let admin: AdminClient<DefaultClientContext> = admin_client_config(config)
        .create()
        .context("creating the admin client")?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                partitions,
                TopicReplication::Fixed(config.topics.replication()),
            )
            .set("cleanup.policy", "compact")
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(new_topics.iter(), &options)
        .await
        .context("creating changelog topics")?;
    let mut outcomes = Vec::new();
    for result in results {
        match result {
            Ok(name) => outcomes.push((name, TopicOutcome::Created)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                outcomes.push((name, TopicOutcome::AlreadyExists))
            }
            Err((name, code)) => anyhow::bail!("creating changelog {name}: {code}"),
        }
    }
    Ok(outcomes)
}

/// [`create_changelog_topics`] for callers outside an async runtime (the
/// pipeline thread).
pub fn create_changelogs(
    config: &PipelineConfig,
    topics: &[&String],
    partitions: i32,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for topic creation")?;
    runtime.block_on(create_changelog_topics(config, topics, partitions))?;
    Ok(())
}
