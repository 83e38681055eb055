//! Control-plane errors, and the one place where they become gRPC statuses ([`to_status`]).

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, PreconditionViolation, StatusExt};

use crate::convert::{Failure, FieldError};
use crate::store::StoreError;

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field is bad or refers to something missing.
    #[error("{0}")]
    Field(#[from] FieldError),
    /// A required field is absent.
    #[error("{0}: is required")]
    Required(&'static str),
    /// No such resource.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// Its kind.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// Create of a name that exists.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// Its kind.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The write named a revision, and the stored resource (or store) is at another.
    #[error("{subject} is at revision {actual}, not {expected}: re-read it and retry")]
    Stale {
        /// `backends/b0`, or `store`.
        subject: String,
        /// What the caller expected.
        expected: i64,
        /// What is stored.
        actual: i64,
    },
    /// A delete of something another resource refers to.
    #[error("cannot delete {subject}: {by} refers to it")]
    Referenced {
        /// `backends/b0`.
        subject: String,
        /// The referring field, as `directors/sh.members[0].backend`.
        by: String,
    },
    /// The store is between two parts of a split write.
    #[error("a write split over several transactions is in progress; retry")]
    WriteInProgress,
    /// Concurrent writers kept winning; nothing was written.
    #[error("the configuration kept changing during the write; nothing was written, retry")]
    Contended,
    /// A fenced write's fence no longer holds (the replica lost the election the write
    /// depended on); nothing was written.
    #[error("this replica no longer holds {0}; nothing was written")]
    Fenced(String),
    /// A pattern matched nothing, or one without parentheses matched several.
    #[error("{0}")]
    Pattern(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The gRPC status of an error, with google.rpc details naming the field or the failed
/// precondition.
pub fn to_status(e: &ApiError) -> Status {
    let msg = e.to_string();
    match e {
        ApiError::Field(f) => {
            // Every violation: bad values as BadRequest, missing references as
            // PreconditionFailure; the code is the first one's (bad values come first).
            let mut details = ErrorDetails::new();
            let (mut bad, mut missing) = (Vec::new(), Vec::new());
            for v in f.violations() {
                match v.failure {
                    Failure::Invalid => bad.push(FieldViolation::new(&v.field, &v.message)),
                    Failure::Precondition => missing.push(PreconditionViolation::new(
                        "REFERENCE",
                        &v.field,
                        &v.message,
                    )),
                }
            }
            if !bad.is_empty() {
                details.set_bad_request(bad);
            }
            if !missing.is_empty() {
                details.set_precondition_failure(missing);
            }
            let code = match f.failure {
                Failure::Invalid => Code::InvalidArgument,
                Failure::Precondition => Code::FailedPrecondition,
            };
            Status::with_error_details(code, msg, details)
        }
        ApiError::Required(field) => Status::with_error_details(
            Code::InvalidArgument,
            msg,
            ErrorDetails::with_bad_request_violation(*field, "is required"),
        ),
        ApiError::Pattern(_) => Status::with_error_details(
            Code::InvalidArgument,
            msg.clone(),
            ErrorDetails::with_bad_request_violation("pattern", msg),
        ),
        ApiError::NotFound { kind, name } => Status::with_error_details(
            Code::NotFound,
            msg.clone(),
            ErrorDetails::with_resource_info(*kind, name, "", msg),
        ),
        ApiError::AlreadyExists { kind, name } => Status::with_error_details(
            Code::AlreadyExists,
            msg.clone(),
            ErrorDetails::with_resource_info(*kind, name, "", msg),
        ),
        ApiError::Stale { subject, .. } => Status::with_error_details(
            Code::FailedPrecondition,
            msg.clone(),
            ErrorDetails::with_precondition_failure_violation("REVISION", subject, msg),
        ),
        ApiError::Referenced { subject, by } => Status::with_error_details(
            Code::FailedPrecondition,
            msg,
            ErrorDetails::with_precondition_failure_violation(
                "REFERENCED",
                subject,
                format!("{by} refers to it"),
            ),
        ),
        ApiError::Contended | ApiError::Fenced(_) => Status::aborted(msg),
        ApiError::WriteInProgress => Status::unavailable(msg),
        ApiError::Store(StoreError::Compacted { .. }) => Status::out_of_range(msg),
        ApiError::Store(StoreError::FutureRevision { .. }) => Status::out_of_range(msg),
        ApiError::Store(StoreError::Closed | StoreError::Unavailable(_)) => {
            Status::unavailable(msg)
        }
        ApiError::Store(StoreError::LeaseNotFound(_)) => Status::with_error_details(
            Code::FailedPrecondition,
            msg.clone(),
            ErrorDetails::with_precondition_failure_violation("LEASE", "lease", msg),
        ),
        ApiError::Store(StoreError::LeaseLimit(_)) => Status::resource_exhausted(msg),
        ApiError::Store(StoreError::Storage(_) | StoreError::Corrupt(_)) => Status::internal(msg),
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        to_status(&e)
    }
}
