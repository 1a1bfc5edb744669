//! Which storage errors are worth retrying, and what to tell the operator about
//! the ones that are not.
//!
//! delta-rs reports object-store errors typed where it can, but some paths
//! (listing the log, the kernel's reads) flatten them into a message string. The
//! classification of those messages lives here and only here
//! (`flattened_store_error_retryable`, `refused_by_storage`), tested against
//! the texts delta-rs and object_store produce; everything else classifies by type.

use deltalake::DeltaTableError;

/// Whether a commit lost to another writer's commit that touched what it read
/// or removed (planning it again on the new version may succeed). A racing
/// commit holding one of our app ids is not one: that makes the commit stale.
pub fn is_conflict(e: &DeltaTableError) -> bool {
    use deltalake::kernel::transaction::{CommitConflictError, TransactionError};
    matches!(
        e,
        DeltaTableError::Transaction {
            source: TransactionError::CommitConflict(c)
        } if !matches!(c, CommitConflictError::ConcurrentTransaction)
    )
}

/// Whether a delta-rs error is transient: storage or network trouble rather than
/// a problem with the table or the data.
pub fn is_retryable(e: &DeltaTableError) -> bool {
    use deltalake::kernel::transaction::TransactionError;
    use deltalake::parquet::errors::ParquetError;
    if refused_by_storage(&e.to_string()) {
        return false;
    }
    match e {
        DeltaTableError::ObjectStore { source } => store_retryable(source),
        // The Parquet writer streams to the object store: an upload failing under it
        // surfaces as a Parquet error wrapping the object-store (or I/O) error.
        DeltaTableError::Parquet {
            source: ParquetError::External(inner),
        } => {
            let store = inner
                .downcast_ref::<deltalake::ObjectStoreError>()
                .or_else(|| {
                    inner
                        .downcast_ref::<std::io::Error>()
                        .and_then(|io| io.get_ref())
                        .and_then(|e| e.downcast_ref::<deltalake::ObjectStoreError>())
                });
            store.is_none_or(store_retryable)
        }
        // The kernel reads the log: an object store failing under it arrives wrapped.
        DeltaTableError::KernelError(k) => kernel_retryable(k),
        DeltaTableError::Io { .. } => true,
        DeltaTableError::Transaction { source } => matches!(
            source,
            TransactionError::ObjectStore { .. }
                | TransactionError::MaxCommitAttempts(_)
                | TransactionError::LogStoreError { .. }
        ),
        // Ours, typed and marked permanent (crate::fault); delta-rs' own
        // GenericErrors are I/O around the log.
        DeltaTableError::GenericError { .. } => !crate::fault::is_permanent(e),
        DeltaTableError::Generic(message) => flattened_store_error_retryable(message),
        _ => false,
    }
}

/// Whether a kernel object-store error that delta-rs flattened into
/// `DeltaTableError::Generic(String)` is transient.
///
/// delta-rs turns the kernel's error into a string when it lists the log for the
/// latest version (the first step of every commit), so an S3 outage arrives here as
/// text, e.g. "Error interacting with object store: Generic S3 error: Error
/// performing list request: ... error sending request". The prefixes come from the
/// kernel's and object_store's `Display` impls; the non-transient ones mirror
/// [`store_retryable`].
fn flattened_store_error_retryable(message: &str) -> bool {
    const KERNEL_STORE: &str = "Error interacting with object store: ";
    // "Operation " covers both "Operation not supported" and "Operation .. not yet
    // implemented"; "The operation lacked" both permission and authentication.
    const PERMANENT: [&str; 5] = [
        "Object at location ",
        "Encountered object with invalid path",
        "Operation ",
        "The operation lacked",
        "Configuration key: ",
    ];
    message
        .strip_prefix(KERNEL_STORE)
        .is_some_and(|store| !PERMANENT.iter().any(|p| store.starts_with(p)))
}

/// Whether the storage server refused the request for good: refused credentials
/// or permissions, or a bucket that does not exist.
///
/// object_store types these as `PermissionDenied`, `Unauthenticated` or `NotFound`
/// for object requests, but a LIST (how delta-rs and the kernel find the log's
/// versions) comes back as `Generic` with the HTTP status only in its text, and
/// object_store's `RetryError`, which holds the status, is not public. So the text
/// is read, and only for the status line object_store writes
/// ("Server returned non-2xx status code: 403 Forbidden: <body>").
fn refused_by_storage(message: &str) -> bool {
    const STATUS: &str = "status code: ";
    message.match_indices(STATUS).any(|(i, _)| {
        let status = &message[i + STATUS.len()..];
        status.starts_with("401 ")
            || status.starts_with("403 ")
            || (status.starts_with("404 ") && status.contains("NoSuchBucket"))
    })
}

/// Whether an object-store error is transient (not a missing object, a bad path
/// or refused credentials).
fn store_retryable(source: &deltalake::ObjectStoreError) -> bool {
    !matches!(
        source,
        deltalake::ObjectStoreError::NotFound { .. }
            | deltalake::ObjectStoreError::InvalidPath { .. }
            | deltalake::ObjectStoreError::NotSupported { .. }
            | deltalake::ObjectStoreError::NotImplemented { .. }
            | deltalake::ObjectStoreError::UnknownConfigurationKey { .. }
            | deltalake::ObjectStoreError::PermissionDenied { .. }
            | deltalake::ObjectStoreError::Unauthenticated { .. }
    )
}

fn kernel_retryable(e: &buoyant_kernel::Error) -> bool {
    use buoyant_kernel::Error as K;
    match e {
        K::ObjectStore(o) => store_retryable(o),
        K::IOError(_) => true,
        K::Backtraced { source, .. } => kernel_retryable(source),
        _ => false,
    }
}

/// A hint for storage errors that mean missing credentials or permissions.
pub fn storage_hint(message: &str) -> Option<&'static str> {
    let m = message.to_ascii_lowercase();
    if m.contains("169.254.169.254")
        || m.contains("credential")
        || m.contains("unauthenticated")
        || m.contains("invalidaccesskeyid")
        || m.contains("signaturedoesnotmatch")
    {
        Some(
            "No usable AWS credentials: set storage.access_key_id/secret_access_key (or \
             --storage-option aws_access_key_id=..), AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, \
             a profile, or an instance/pod role",
        )
    } else if m.contains("status code: 403")
        || m.contains("accessdenied")
        || m.contains("permission")
        || m.contains("403 forbidden")
    {
        Some(
            "Access denied: the credentials need s3:ListBucket, s3:GetObject and s3:PutObject on the table's bucket and prefix",
        )
    } else if m.contains("nosuchbucket") {
        Some("The bucket does not exist")
    } else if m.contains("connection refused")
        || m.contains("dns error")
        || m.contains("error sending request")
    {
        Some("The storage endpoint is unreachable: check storage.endpoint / aws_endpoint_url")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn refusals_written_into_a_list_error_text_are_permanent() {
        let list = |status: &str| {
            format!(
                "Failed to read delta log object: Generic S3 error: Error performing list request: \
                 Error performing GET http://127.0.0.1:1/b?list-type=2&prefix=t%2F_delta_log%2F in 1.2ms \
                 - Server returned non-2xx status code: {status}: <?xml version=\"1.0\"?><Error>\
                 <Code>X</Code></Error>"
            )
        };
        assert!(super::refused_by_storage(&list("403 Forbidden")));
        assert!(super::refused_by_storage(&list("401 Unauthorized")));
        assert!(super::refused_by_storage(
            &list("404 Not Found").replace("<Code>X", "<Code>NoSuchBucket")
        ));
        // A 404 of an object is typed NotFound elsewhere; here it is not a refusal.
        assert!(!super::refused_by_storage(&list("404 Not Found")));
        assert!(!super::refused_by_storage(&list("503 Service Unavailable")));
        assert!(!super::refused_by_storage(
            "Generic S3 error: error sending request: connection closed before message completed"
        ));
        // Through the classification delta-rs errors get.
        let e = deltalake::DeltaTableError::Generic(format!(
            "Error interacting with object store: {}",
            list("403 Forbidden")
        ));
        assert!(!super::is_retryable(&e));
    }

    use super::*;

    #[test]
    fn a_403_in_a_path_or_an_offset_is_not_taken_for_a_refusal() {
        let denied = "Generic S3 error: Error performing GET http://h/b/t in 2ms - \
                      Server returned non-2xx status code: 403 Forbidden: <Error/>";
        assert!(storage_hint(denied).is_some_and(|h| h.starts_with("Access denied")));
        let offset = "record t/4 offset 40312 rejected; table s3://b/events-403/";
        assert_eq!(storage_hint(offset), None);
    }

    #[test]
    fn an_s3_outage_flattened_to_text_by_delta_rs_is_retried() {
        // The error a commit returned when the S3 server was cut mid-stream (CI,
        // faults::s3_outage...): delta-rs lists the log for the latest version and
        // hands back the kernel's object-store error as a string.
        let outage = DeltaTableError::Generic(
            "Error interacting with object store: Generic S3 error: Error performing list \
             request: Error performing GET http://127.0.0.1:45765/b/events?list-type=2 in \
             2.56s, after 10 retries, max_retries: 10, retry_timeout: 180s  - HTTP error: \
             error sending request"
                .into(),
        );
        assert!(is_retryable(&outage));

        let missing = DeltaTableError::Generic(
            "Error interacting with object store: Object at location events/_delta_log/x \
             not found: No data in memory found"
                .into(),
        );
        let denied = DeltaTableError::Generic(
            "Error interacting with object store: The operation lacked the necessary \
             privileges to complete for path events/_delta_log: 403"
                .into(),
        );
        let other = DeltaTableError::Generic("Partition column day not found in schema".into());
        for permanent in [missing, denied, other] {
            assert!(!is_retryable(&permanent), "{permanent}");
        }
    }
}
