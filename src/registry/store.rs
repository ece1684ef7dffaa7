//! The registry's state in memory: subjects and their versions, schemas by
//! id, compatibility levels. It is only ever changed by applying records of
//! the `_schemas` topic in offset order ([`Store::apply`]), so every
//! instance that has read the same prefix of the topic holds the same
//! state, and a restart rebuilds it by replaying. No I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::compat::CompatibilityLevel;
use super::error::RegistryError;
use super::records::{Record, Reference, SchemaValue};
use super::schema::identity;

/// Ids and versions are Java `int`s in Confluent's API.
const MAX_ID: u32 = i32::MAX as u32;

/// One version of a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionEntry {
    pub id: u32,
    /// Soft-deleted: hidden unless asked for with `deleted=true`.
    pub deleted: bool,
}

/// A schema's content, shared by every (subject, version) that uses its id.
#[derive(Debug, Clone)]
pub struct SchemaEntry {
    pub schema: String,
    pub schema_type: String,
    pub references: Vec<Reference>,
    /// See [`identity`].
    pub identity: String,
    /// The (subject, version) pairs that use this id.
    users: BTreeSet<(String, u32)>,
}

/// `latest` (or `-1`) or a version number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSpec {
    Latest,
    Number(u32),
}

impl VersionSpec {
    /// Parses a version as it appears in a URL; anything but `latest`,
    /// `-1` or 1..=2^31-1 is error 42202.
    pub fn parse(text: &str) -> Result<VersionSpec, RegistryError> {
        if text == "latest" || text == "-1" {
            return Ok(VersionSpec::Latest);
        }
        match text.parse::<u32>() {
            Ok(n) if (1..=MAX_ID).contains(&n) => Ok(VersionSpec::Number(n)),
            _ => Err(RegistryError::InvalidVersion(text.to_string())),
        }
    }
}

/// A version found by a query.
#[derive(Debug, Clone, Copy)]
pub struct Found<'a> {
    pub subject: &'a str,
    pub version: u32,
    pub id: u32,
    pub deleted: bool,
    pub schema: &'a SchemaEntry,
}

/// What applying a record did, for the reader's log.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Changed,
    /// The record was valid but contradicts the state (e.g. an id already
    /// bound to another schema) and was skipped, as Confluent skips it.
    Skipped(String),
}

/// The state. See the module docs.
#[derive(Debug)]
pub struct Store {
    subjects: BTreeMap<String, BTreeMap<u32, VersionEntry>>,
    schemas: HashMap<u32, SchemaEntry>,
    by_identity: HashMap<String, u32>,
    subject_levels: BTreeMap<String, CompatibilityLevel>,
    global_level: Option<CompatibilityLevel>,
    /// The level when the topic sets no global one (`compatibility` in the
    /// registry's configuration).
    default_level: CompatibilityLevel,
    /// The highest id seen in any record, NOOP marks included.
    max_id: u32,
    /// The value of the latest NOOP record.
    last_mark: Option<u32>,
}

impl Store {
    pub fn new(default_level: CompatibilityLevel) -> Store {
        Store {
            subjects: BTreeMap::new(),
            schemas: HashMap::new(),
            by_identity: HashMap::new(),
            subject_levels: BTreeMap::new(),
            global_level: None,
            default_level,
            max_id: 0,
            last_mark: None,
        }
    }

    /// Applies one record of the topic.
    pub fn apply(&mut self, record: Record) -> Applied {
        match record {
            Record::Schema {
                subject,
                version,
                value: Some(value),
            } => self.put_version(subject, version, value),
            Record::Schema {
                subject,
                version,
                value: None,
            } => {
                self.remove_version(&subject, version);
                Applied::Changed
            }
            Record::Config { subject, level } => {
                match (subject, level) {
                    (None, level) => self.global_level = level,
                    (Some(s), Some(level)) => {
                        self.subject_levels.insert(s, level);
                    }
                    (Some(s), None) => {
                        self.subject_levels.remove(&s);
                    }
                }
                Applied::Changed
            }
            Record::DeleteSubject { subject, version } => {
                if let Some(versions) = self.subjects.get_mut(&subject) {
                    for (_, entry) in versions.range_mut(..=version) {
                        entry.deleted = true;
                    }
                }
                Applied::Changed
            }
            Record::ClearSubject { subject } => {
                let deleted: Vec<u32> = self
                    .subjects
                    .get(&subject)
                    .map(|versions| {
                        versions
                            .iter()
                            .filter(|(_, e)| e.deleted)
                            .map(|(v, _)| *v)
                            .collect()
                    })
                    .unwrap_or_default();
                for version in deleted {
                    self.remove_version(&subject, version);
                }
                Applied::Changed
            }
            Record::Noop { max_id } => {
                self.last_mark = max_id;
                if let Some(id) = max_id {
                    self.max_id = self.max_id.max(id);
                }
                Applied::Changed
            }
            Record::Ignored { .. } => Applied::Changed,
        }
    }

    fn put_version(&mut self, subject: String, version: u32, value: SchemaValue) -> Applied {
        let id = value.id;
        let identity = identity(&value.schema_type, &value.schema, &value.references);
        if let Some(existing) = self.schemas.get(&id)
            && existing.identity != identity
        {
            return Applied::Skipped(format!(
                "id {id} already holds another schema; {subject} version {version} ignored"
            ));
        }
        // The slot may have pointed at another id before (a rewrite).
        if let Some(old) = self
            .subjects
            .get(&subject)
            .and_then(|v| v.get(&version))
            .copied()
            && old.id != id
        {
            self.unlink(old.id, &subject, version);
        }
        let entry = self.schemas.entry(id).or_insert_with(|| SchemaEntry {
            schema: value.schema,
            schema_type: value.schema_type,
            references: value.references,
            identity: identity.clone(),
            users: BTreeSet::new(),
        });
        entry.users.insert((subject.clone(), version));
        self.by_identity.entry(identity).or_insert(id);
        self.subjects.entry(subject).or_default().insert(
            version,
            VersionEntry {
                id,
                deleted: value.deleted,
            },
        );
        self.max_id = self.max_id.max(id);
        Applied::Changed
    }

    fn remove_version(&mut self, subject: &str, version: u32) {
        let Some(versions) = self.subjects.get_mut(subject) else {
            return;
        };
        let Some(entry) = versions.remove(&version) else {
            return;
        };
        if versions.is_empty() {
            self.subjects.remove(subject);
        }
        self.unlink(entry.id, subject, version);
    }

    /// Forgets that (subject, version) uses `id`; a schema nobody uses any
    /// more is forgotten (its id is not reused: `max_id` keeps it).
    fn unlink(&mut self, id: u32, subject: &str, version: u32) {
        let Some(entry) = self.schemas.get_mut(&id) else {
            return;
        };
        entry.users.remove(&(subject.to_string(), version));
        if entry.users.is_empty() {
            let identity = entry.identity.clone();
            self.schemas.remove(&id);
            if self.by_identity.get(&identity) == Some(&id) {
                self.by_identity.remove(&identity);
            }
        }
    }

    /// The highest id ever seen.
    pub fn max_id(&self) -> u32 {
        self.max_id
    }

    /// The value of the latest NOOP record (Millrace's id high-water mark).
    pub fn last_mark(&self) -> Option<u32> {
        self.last_mark
    }

    /// The id for a schema with this identity: the existing one if any
    /// subject uses it (soft-deleted versions included), else the next.
    pub fn id_for(&self, identity: &str) -> Result<u32, RegistryError> {
        match self.by_identity.get(identity) {
            Some(id) => Ok(*id),
            None if self.max_id < MAX_ID => Ok(self.max_id + 1),
            None => Err(RegistryError::Store("schema ids are exhausted".into())),
        }
    }

    /// The version a new schema of `subject` gets: one past the highest,
    /// soft-deleted versions included (versions are never reused while the
    /// subject exists).
    pub fn next_version(&self, subject: &str) -> u32 {
        self.subjects
            .get(subject)
            .and_then(|v| v.keys().next_back())
            .map_or(1, |v| v + 1)
    }

    /// Every version of a subject, soft-deleted ones included.
    pub fn all_versions(&self, subject: &str) -> Option<&BTreeMap<u32, VersionEntry>> {
        self.subjects.get(subject)
    }

    /// Subject names: live ones (at least one version not deleted), or all
    /// with `include_deleted`, or only fully soft-deleted ones with
    /// `deleted_only`.
    pub fn subjects(&self, include_deleted: bool, deleted_only: bool) -> Vec<&str> {
        self.subjects
            .iter()
            .filter(|(_, versions)| {
                let live = versions.values().any(|e| !e.deleted);
                if deleted_only {
                    !live
                } else {
                    live || include_deleted
                }
            })
            .map(|(s, _)| s.as_str())
            .collect()
    }

    /// A subject's version numbers (40401 when it has none to show).
    pub fn versions(
        &self,
        subject: &str,
        include_deleted: bool,
        deleted_only: bool,
    ) -> Result<Vec<u32>, RegistryError> {
        let versions = self
            .subjects
            .get(subject)
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_string()))?;
        let shown: Vec<u32> = versions
            .iter()
            .filter(|(_, e)| {
                if deleted_only {
                    e.deleted
                } else {
                    include_deleted || !e.deleted
                }
            })
            .map(|(v, _)| *v)
            .collect();
        if shown.is_empty() && !(include_deleted || deleted_only) {
            return Err(RegistryError::SubjectNotFound(subject.to_string()));
        }
        Ok(shown)
    }

    /// One version of a subject.
    pub fn version(
        &self,
        subject: &str,
        spec: VersionSpec,
        include_deleted: bool,
    ) -> Result<Found<'_>, RegistryError> {
        let (name, versions) = self
            .subjects
            .get_key_value(subject)
            .filter(|(_, v)| include_deleted || v.values().any(|e| !e.deleted))
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_string()))?;
        let visible = |e: &VersionEntry| include_deleted || !e.deleted;
        let (version, entry) = match spec {
            VersionSpec::Latest => versions.iter().rev().find(|(_, e)| visible(e)),
            VersionSpec::Number(n) => versions.get_key_value(&n).filter(|(_, e)| visible(e)),
        }
        .ok_or_else(|| {
            RegistryError::VersionNotFound(match spec {
                VersionSpec::Latest => "latest".to_string(),
                VersionSpec::Number(n) => n.to_string(),
            })
        })?;
        self.found(name, *version, *entry)
    }

    fn found<'a>(
        &'a self,
        subject: &'a str,
        version: u32,
        entry: VersionEntry,
    ) -> Result<Found<'a>, RegistryError> {
        let schema = self.schemas.get(&entry.id).ok_or_else(|| {
            RegistryError::Store(format!(
                "{subject} version {version} names id {} which holds no schema",
                entry.id
            ))
        })?;
        Ok(Found {
            subject,
            version,
            id: entry.id,
            deleted: entry.deleted,
            schema,
        })
    }

    /// The live versions of a subject, oldest first, with their schemas:
    /// what compatibility is checked against.
    pub fn live_versions(&self, subject: &str) -> Vec<Found<'_>> {
        let Some((name, versions)) = self.subjects.get_key_value(subject) else {
            return Vec::new();
        };
        versions
            .iter()
            .filter(|(_, e)| !e.deleted)
            .filter_map(|(v, e)| self.found(name, *v, *e).ok())
            .collect()
    }

    /// The version of `subject` holding a schema of this identity: a live
    /// one first, else (with `include_deleted`) a soft-deleted one.
    pub fn lookup(
        &self,
        subject: &str,
        identity: &str,
        include_deleted: bool,
    ) -> Result<Found<'_>, RegistryError> {
        let (name, versions) = self
            .subjects
            .get_key_value(subject)
            .filter(|(_, v)| include_deleted || v.values().any(|e| !e.deleted))
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_string()))?;
        let matches = |deleted: bool| {
            versions.iter().rev().find(|(_, e)| {
                e.deleted == deleted
                    && self
                        .schemas
                        .get(&e.id)
                        .is_some_and(|s| s.identity == identity)
            })
        };
        let hit = matches(false).or_else(|| if include_deleted { matches(true) } else { None });
        match hit {
            Some((version, entry)) => self.found(name, *version, *entry),
            None => Err(RegistryError::SchemaNotInSubject),
        }
    }

    /// The schema with this id.
    pub fn schema(&self, id: u32) -> Option<&SchemaEntry> {
        self.schemas.get(&id)
    }

    /// The (subject, version) pairs using an id, soft-deleted ones only
    /// with `include_deleted`.
    pub fn usages(&self, id: u32, include_deleted: bool) -> Vec<(&str, u32)> {
        let Some(entry) = self.schemas.get(&id) else {
            return Vec::new();
        };
        entry
            .users
            .iter()
            .filter(|(s, v)| {
                include_deleted
                    || self
                        .subjects
                        .get(s)
                        .and_then(|versions| versions.get(v))
                        .is_some_and(|e| !e.deleted)
            })
            .map(|(s, v)| (s.as_str(), *v))
            .collect()
    }

    /// Ids of live schemas whose references name (subject, version).
    pub fn referenced_by(&self, subject: &str, version: u32) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .schemas
            .iter()
            .filter(|(id, entry)| {
                entry
                    .references
                    .iter()
                    .any(|r| r.subject == subject && r.version == version)
                    && !self.usages(**id, false).is_empty()
            })
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The level that applies to a subject: its own, else the global one.
    pub fn level(&self, subject: &str) -> CompatibilityLevel {
        self.subject_level(subject)
            .unwrap_or_else(|| self.global_level())
    }

    /// The subject's own level, if set.
    pub fn subject_level(&self, subject: &str) -> Option<CompatibilityLevel> {
        self.subject_levels.get(subject).copied()
    }

    /// The global level: set through the API, else the configured default.
    pub fn global_level(&self) -> CompatibilityLevel {
        self.global_level.unwrap_or(self.default_level)
    }

    /// Whether the topic holds a global level (as opposed to the default).
    pub fn global_level_set(&self) -> Option<CompatibilityLevel> {
        self.global_level
    }

    /// Counts for the metrics: (live subjects, schemas).
    pub fn counts(&self) -> (usize, usize) {
        (self.subjects(false, false).len(), self.schemas.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::records::AVRO;

    fn schema(subject: &str, version: u32, id: u32, text: &str) -> Record {
        Record::Schema {
            subject: subject.into(),
            version,
            value: Some(SchemaValue {
                subject: subject.into(),
                version,
                id,
                schema: text.into(),
                deleted: false,
                references: vec![],
                schema_type: AVRO.into(),
            }),
        }
    }

    fn store_with(records: Vec<Record>) -> Store {
        let mut store = Store::new(CompatibilityLevel::Backward);
        for r in records {
            store.apply(r);
        }
        store
    }

    const INT: &str = r#""int""#;
    const LONG: &str = r#""long""#;

    #[test]
    fn same_content_same_id_across_subjects() {
        let store = store_with(vec![schema("a", 1, 1, INT), schema("b", 1, 1, INT)]);
        let id = identity(AVRO, " \"int\" ", &[]);
        assert_eq!(store.id_for(&id), Ok(1));
        assert_eq!(store.id_for(&identity(AVRO, LONG, &[])), Ok(2));
        assert_eq!(store.usages(1, false), vec![("a", 1), ("b", 1)]);
        assert_eq!(store.next_version("a"), 2);
        assert_eq!(store.next_version("new"), 1);
    }

    #[test]
    fn soft_delete_hides_and_permanent_delete_forgets() {
        let mut store = store_with(vec![schema("s", 1, 1, INT), schema("s", 2, 2, LONG)]);
        store.apply(Record::DeleteSubject {
            subject: "s".into(),
            version: 1,
        });
        assert_eq!(store.versions("s", false, false), Ok(vec![2]));
        assert_eq!(store.versions("s", true, false), Ok(vec![1, 2]));
        assert_eq!(store.versions("s", false, true), Ok(vec![1]));
        assert_eq!(
            store
                .version("s", VersionSpec::Latest, false)
                .unwrap()
                .version,
            2
        );
        assert!(matches!(
            store.version("s", VersionSpec::Number(1), false),
            Err(RegistryError::VersionNotFound(_))
        ));
        assert!(
            store
                .version("s", VersionSpec::Number(1), true)
                .unwrap()
                .deleted
        );
        // A soft-deleted version keeps its schema reachable by id.
        assert!(store.schema(1).is_some());
        // Soft-delete the rest: the subject disappears from listings.
        store.apply(Record::DeleteSubject {
            subject: "s".into(),
            version: 2,
        });
        assert!(store.subjects(false, false).is_empty());
        assert_eq!(store.subjects(true, false), vec!["s"]);
        assert!(matches!(
            store.versions("s", false, false),
            Err(RegistryError::SubjectNotFound(_))
        ));
        // New versions continue after the deleted ones.
        assert_eq!(store.next_version("s"), 3);
        // Permanent delete: tombstones.
        for v in [1, 2] {
            store.apply(Record::Schema {
                subject: "s".into(),
                version: v,
                value: None,
            });
        }
        assert!(store.all_versions("s").is_none());
        assert!(store.schema(1).is_none() && store.schema(2).is_none());
        assert_eq!(store.next_version("s"), 1);
        // Ids are never reused: the next one is past the deleted ones.
        assert_eq!(store.id_for(&identity(AVRO, INT, &[])), Ok(3));
    }

    #[test]
    fn the_noop_mark_keeps_ids_from_being_reused_after_compaction() {
        // After compaction the record that held id 7 is gone; only the
        // NOOP mark remembers it.
        let store = store_with(vec![
            schema("s", 1, 3, INT),
            Record::Noop { max_id: Some(7) },
        ]);
        assert_eq!(store.id_for(&identity(AVRO, LONG, &[])), Ok(8));
        assert_eq!(store.last_mark(), Some(7));
    }

    #[test]
    fn a_conflicting_id_is_skipped() {
        let mut store = store_with(vec![schema("a", 1, 1, INT)]);
        let applied = store.apply(schema("b", 1, 1, LONG));
        assert!(matches!(applied, Applied::Skipped(_)), "{applied:?}");
        assert!(store.all_versions("b").is_none());
        assert_eq!(store.schema(1).unwrap().schema, INT);
    }

    #[test]
    fn lookup_prefers_live_versions() {
        let mut store = store_with(vec![schema("s", 1, 1, INT), schema("s", 2, 2, LONG)]);
        let int = identity(AVRO, INT, &[]);
        assert_eq!(store.lookup("s", &int, false).unwrap().version, 1);
        store.apply(Record::DeleteSubject {
            subject: "s".into(),
            version: 1,
        });
        assert_eq!(
            store.lookup("s", &int, false).err(),
            Some(RegistryError::SchemaNotInSubject)
        );
        assert_eq!(store.lookup("s", &int, true).unwrap().version, 1);
        // Registered again after the soft delete: the live version wins.
        store.apply(schema("s", 3, 1, INT));
        let found = store.lookup("s", &int, true).unwrap();
        assert_eq!((found.version, found.id, found.deleted), (3, 1, false));
        assert_eq!(
            store.lookup("other", &int, false).err(),
            Some(RegistryError::SubjectNotFound("other".into()))
        );
    }

    #[test]
    fn levels_fall_back_from_subject_to_global_to_default() {
        let mut store = Store::new(CompatibilityLevel::Backward);
        assert_eq!(store.level("s"), CompatibilityLevel::Backward);
        store.apply(Record::Config {
            subject: None,
            level: Some(CompatibilityLevel::Full),
        });
        assert_eq!(store.level("s"), CompatibilityLevel::Full);
        store.apply(Record::Config {
            subject: Some("s".into()),
            level: Some(CompatibilityLevel::None),
        });
        assert_eq!(store.level("s"), CompatibilityLevel::None);
        assert_eq!(store.level("t"), CompatibilityLevel::Full);
        store.apply(Record::Config {
            subject: Some("s".into()),
            level: None,
        });
        assert_eq!(store.level("s"), CompatibilityLevel::Full);
        store.apply(Record::Config {
            subject: None,
            level: None,
        });
        assert_eq!(store.global_level(), CompatibilityLevel::Backward);
    }

    #[test]
    fn versions_parse_like_confluent() {
        assert_eq!(VersionSpec::parse("latest"), Ok(VersionSpec::Latest));
        assert_eq!(VersionSpec::parse("-1"), Ok(VersionSpec::Latest));
        assert_eq!(VersionSpec::parse("3"), Ok(VersionSpec::Number(3)));
        for bad in ["0", "-2", "abc", "2147483648", ""] {
            assert_eq!(
                VersionSpec::parse(bad),
                Err(RegistryError::InvalidVersion(bad.into())),
                "{bad}"
            );
        }
    }
}
