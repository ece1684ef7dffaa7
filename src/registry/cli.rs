//! The `millrace registry` and `millrace schemas` commands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use tracing::error;

use super::client::{BasicAuth, ClientError, NewSchema, RegistryClient};
use super::config::{Overrides, RegistryConfig};
use super::schema::ParsedAvro;

/// Exit code for a configuration or usage the program refuses.
const EXIT_CONFIG: u8 = 2;

/// `millrace registry`.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// The registry's configuration (YAML, see config/registry.yaml);
    /// without it, defaults and flags.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address of the API, e.g. 0.0.0.0:8081 (default 127.0.0.1:8081).
    #[arg(long)]
    listen: Option<String>,
    /// Kafka bootstrap servers (default 127.0.0.1:9092).
    #[arg(long, env = "MILLRACE_BOOTSTRAP")]
    bootstrap: Option<String>,
    /// The schemas topic (default _schemas).
    #[arg(long)]
    topic: Option<String>,
}

/// `millrace schemas ...`.
#[derive(Debug, Subcommand)]
pub enum SchemasCommand {
    /// Register every `.avsc` file of a directory (each checked for
    /// compatibility by the registry) and print subject, version and id.
    Register(SchemasArgs),
    /// Dry run of `register`: parse every `.avsc` file and check it
    /// against the registry without registering anything.
    Check(SchemasArgs),
}

/// Where the schemas are and which registry to talk to.
#[derive(Debug, Args)]
pub struct SchemasArgs {
    /// Directory of `.avsc` files.
    #[arg(default_value = "schemas")]
    dir: PathBuf,
    /// Registry URL (Millrace's, Confluent's, Karapace, ...); user info in
    /// the URL is used for basic auth.
    #[arg(long, env = super::client::ENV_URL, default_value = "http://127.0.0.1:8081")]
    url: String,
    /// Basic-auth user.
    #[arg(long, env = super::client::ENV_USER)]
    user: Option<String>,
    /// Basic-auth password.
    #[arg(long, env = super::client::ENV_PASSWORD, hide_env_values = true)]
    password: Option<String>,
    /// How a file names its subject: `topic-name` (`<name>.avsc` is the
    /// subject when it ends in `-key` or `-value`, else the value subject
    /// `<name>-value` of topic `<name>`), or `record-name` (the schema's
    /// full name).
    #[arg(long, value_enum, default_value = "topic-name")]
    strategy: SubjectStrategy,
}

/// How a schema file maps to a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SubjectStrategy {
    /// Confluent's TopicNameStrategy: `vitals.avsc` is `vitals-value`;
    /// `vitals-key.avsc` and `vitals-value.avsc` are their own subjects.
    TopicName,
    /// Confluent's RecordNameStrategy: the schema's full name.
    RecordName,
}

/// The subject of a schema file under a strategy.
pub fn subject_for(
    file: &Path,
    schema: &ParsedAvro,
    strategy: SubjectStrategy,
) -> Result<String, String> {
    match strategy {
        SubjectStrategy::TopicName => {
            let stem = file
                .file_stem()
                .and_then(|s| s.to_str())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| "the file name is not valid UTF-8".to_string())?;
            if stem.ends_with("-key") || stem.ends_with("-value") {
                Ok(stem.to_string())
            } else {
                Ok(format!("{stem}-value"))
            }
        }
        SubjectStrategy::RecordName => schema.full_name().ok_or_else(|| {
            "the record-name strategy needs a named schema (record, enum or fixed)".to_string()
        }),
    }
}

/// Runs `millrace registry`.
pub fn registry(args: RegistryArgs) -> ExitCode {
    let overrides = Overrides {
        listen: args.listen,
        bootstrap: args.bootstrap,
        topic: args.topic,
    };
    let config = match RegistryConfig::load(args.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(super::server::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %format!("{e:#}"), "the registry failed");
            ExitCode::FAILURE
        }
    }
}

/// One schema file, read and parsed.
struct SchemaFile {
    path: PathBuf,
    text: String,
    subject: String,
}

/// Runs `millrace schemas register|check`.
pub fn schemas(command: SchemasCommand) -> ExitCode {
    let (args, dry_run) = match command {
        SchemasCommand::Register(args) => (args, false),
        SchemasCommand::Check(args) => (args, true),
    };
    let auth = match (args.user, args.password) {
        (Some(user), password) => Some(BasicAuth {
            user,
            password: password.unwrap_or_default(),
        }),
        (None, Some(_)) => {
            eprintln!("error: a password without a user (--user or MILLRACE_REGISTRY_USER)");
            return ExitCode::from(EXIT_CONFIG);
        }
        (None, None) => None,
    };
    let client = match RegistryClient::new(&args.url, auth) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let paths = match avsc_files(&args.dir) {
        Ok(paths) => paths,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut failed = 0;
    let mut files = Vec::new();
    for path in paths {
        match read_schema(&path, args.strategy) {
            Ok(file) => files.push(file),
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                failed += 1;
            }
        }
    }
    for file in &files {
        let outcome = if dry_run {
            check_one(&client, file)
        } else {
            register_one(&client, file)
        };
        match outcome {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("error: {} ({}): {e}", file.path.display(), file.subject);
                failed += 1;
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} schema files failed", files.len() + failed);
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The `.avsc` files of a directory, sorted.
fn avsc_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "avsc") && p.is_file())
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(format!("no .avsc files in {}", dir.display()));
    }
    Ok(paths)
}

fn read_schema(path: &Path, strategy: SubjectStrategy) -> Result<SchemaFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let parsed =
        ParsedAvro::parse(&text, &[]).map_err(|e| format!("not a valid Avro schema: {e}"))?;
    let subject = subject_for(path, &parsed, strategy)?;
    Ok(SchemaFile {
        path: path.to_path_buf(),
        text: text.trim().to_string(),
        subject,
    })
}

fn line(status: &str, subject: &str, rest: &str) -> String {
    format!("{status:<13} {subject}  {rest}")
}

fn register_one(client: &RegistryClient, file: &SchemaFile) -> Result<String, ClientError> {
    let schema = NewSchema::avro(&file.text);
    if let Some(found) = client.lookup(&file.subject, &schema)? {
        return Ok(line(
            "unchanged",
            &file.subject,
            &format!("version {}  id {}", found.version, found.id),
        ));
    }
    let id = client.register(&file.subject, &schema)?;
    let version = client
        .lookup(&file.subject, &schema)?
        .map_or_else(|| "?".to_string(), |f| f.version.to_string());
    Ok(line(
        "registered",
        &file.subject,
        &format!("version {version}  id {id}"),
    ))
}

/// Checks a file the way registering it would: against the latest live
/// version, or every one under a transitive level.
fn check_one(client: &RegistryClient, file: &SchemaFile) -> Result<String, ClientError> {
    let schema = NewSchema::avro(&file.text);
    if let Some(found) = client.lookup(&file.subject, &schema)? {
        return Ok(line(
            "unchanged",
            &file.subject,
            &format!("version {}  id {}", found.version, found.id),
        ));
    }
    let versions = client.versions(&file.subject)?;
    let Some(latest) = versions.last().copied() else {
        return Ok(line("new subject", &file.subject, "would be version 1"));
    };
    let level = client.compatibility_level(&file.subject)?;
    let against: Vec<u32> = if level.ends_with("_TRANSITIVE") {
        versions.clone()
    } else {
        vec![latest]
    };
    let mut problems = Vec::new();
    for version in against {
        let result = client.check_compatibility(&file.subject, &version.to_string(), &schema)?;
        if !result.is_compatible {
            if result.messages.is_empty() {
                problems.push(format!("incompatible with version {version}"));
            }
            problems.extend(result.messages);
        }
    }
    if problems.is_empty() {
        Ok(line(
            "compatible",
            &file.subject,
            &format!("would be version {} ({level})", latest + 1),
        ))
    } else {
        Err(ClientError::Api {
            url: client.url().to_string(),
            status: 409,
            code: 409,
            message: format!("incompatible ({level}): {}", problems.join("; ")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_map_to_subjects() {
        let record = ParsedAvro::parse(
            r#"{"type":"record","name":"Vital","namespace":"millrace","fields":[]}"#,
            &[],
        )
        .expect("parses");
        let topic = SubjectStrategy::TopicName;
        for (file, subject) in [
            ("schemas/vitals.avsc", "vitals-value"),
            ("schemas/vitals-value.avsc", "vitals-value"),
            ("schemas/vitals-key.avsc", "vitals-key"),
        ] {
            assert_eq!(
                subject_for(Path::new(file), &record, topic).as_deref(),
                Ok(subject),
                "{file}"
            );
        }
        assert_eq!(
            subject_for(
                Path::new("schemas/x.avsc"),
                &record,
                SubjectStrategy::RecordName
            )
            .as_deref(),
            Ok("millrace.Vital")
        );
        let primitive = ParsedAvro::parse(r#""string""#, &[]).expect("parses");
        assert!(
            subject_for(
                Path::new("schemas/x.avsc"),
                &primitive,
                SubjectStrategy::RecordName
            )
            .is_err()
        );
    }
}
