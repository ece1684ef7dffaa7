//! Errors of the registry API, with the HTTP status and the Confluent
//! `error_code` each maps to. Clients (Confluent's, Karapace's tests, ours)
//! branch on these codes, so they follow Confluent Schema Registry.

/// An answer other than success.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    #[error("Version {0} not found.")]
    VersionNotFound(String),
    #[error("Schema {0} not found")]
    SchemaNotFound(u32),
    /// A lookup (`POST /subjects/{subject}`) found no such schema.
    #[error("Schema not found")]
    SchemaNotInSubject,
    #[error("Subject '{0}' was soft deleted. Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    #[error("Subject '{0}' Version {1} was soft deleted. Set permanent=true to delete permanently")]
    VersionSoftDeleted(String, u32),
    #[error("Subject '{0}' Version {1} was not deleted first before being permanently deleted")]
    VersionNotSoftDeleted(String, u32),
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectLevelNotConfigured(String),
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    #[error(
        "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive"
    )]
    InvalidCompatibilityLevel,
    #[error("{0}")]
    OperationNotPermitted(String),
    #[error("One or more references exist to the schema {{subject={0}, version={1}}}")]
    ReferenceExists(String, u32),
    #[error("Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]", details.join("; "))]
    Incompatible {
        subject: String,
        details: Vec<String>,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnprocessableEntity(String),
    #[error(
        "unsupported content type `{0}`: send application/vnd.schemaregistry.v1+json or application/json"
    )]
    UnsupportedMediaType(String),
    #[error("the registry has not read the schemas topic yet; retry when /readyz answers 200")]
    NotReady,
    #[error("Error in the backend data store: {0}")]
    Store(String),
    #[error("Operation timed out: {0}")]
    Timeout(String),
}

impl RegistryError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            RegistryError::SubjectNotFound(_)
            | RegistryError::VersionNotFound(_)
            | RegistryError::SchemaNotFound(_)
            | RegistryError::SchemaNotInSubject
            | RegistryError::SubjectSoftDeleted(_)
            | RegistryError::SubjectNotSoftDeleted(_)
            | RegistryError::VersionSoftDeleted(..)
            | RegistryError::VersionNotSoftDeleted(..)
            | RegistryError::SubjectLevelNotConfigured(_) => 404,
            RegistryError::Incompatible { .. } => 409,
            RegistryError::InvalidSchema(_)
            | RegistryError::InvalidVersion(_)
            | RegistryError::InvalidCompatibilityLevel
            | RegistryError::OperationNotPermitted(_)
            | RegistryError::ReferenceExists(..)
            | RegistryError::UnprocessableEntity(_) => 422,
            RegistryError::BadRequest(_) => 400,
            RegistryError::UnsupportedMediaType(_) => 415,
            RegistryError::NotReady => 503,
            RegistryError::Store(_) | RegistryError::Timeout(_) => 500,
        }
    }

    /// The Confluent `error_code`.
    pub fn code(&self) -> u32 {
        match self {
            RegistryError::SubjectNotFound(_) => 40401,
            RegistryError::VersionNotFound(_) => 40402,
            RegistryError::SchemaNotFound(_) | RegistryError::SchemaNotInSubject => 40403,
            RegistryError::SubjectSoftDeleted(_) => 40404,
            RegistryError::SubjectNotSoftDeleted(_) => 40405,
            RegistryError::VersionSoftDeleted(..) => 40406,
            RegistryError::VersionNotSoftDeleted(..) => 40407,
            RegistryError::SubjectLevelNotConfigured(_) => 40408,
            // Karapace and Confluent before 7.x answer 409 with code 409;
            // clients key on the HTTP status, which every version agrees on.
            RegistryError::Incompatible { .. } => 409,
            RegistryError::InvalidSchema(_) => 42201,
            RegistryError::InvalidVersion(_) => 42202,
            RegistryError::InvalidCompatibilityLevel => 42203,
            RegistryError::OperationNotPermitted(_) => 42205,
            RegistryError::ReferenceExists(..) => 42206,
            RegistryError::UnprocessableEntity(_) => 422,
            RegistryError::BadRequest(_) => 400,
            RegistryError::UnsupportedMediaType(_) => 415,
            RegistryError::NotReady => 503,
            RegistryError::Store(_) => 50001,
            RegistryError::Timeout(_) => 50002,
        }
    }
}
