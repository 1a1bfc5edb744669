//! Logging: the default filter, the subscriber, and the one panic we contain.

/// Quiet defaults: delta-rs and the Delta kernel log every snapshot load at INFO.
pub const DEFAULT_FILTER: &str = "info,buoyant_kernel=warn,deltalake_core=warn,deltalake_aws=warn,\
deltalake=warn,deltalake_core::writer::stats=error,datafusion=warn,object_store=warn,aws_config=warn,aws_smithy_runtime=warn,hyper=warn";

/// Log to stderr at `level` (a filter such as `info,tributary=debug`; `RUST_LOG`
/// overrides it), as text or JSON lines.
pub fn init(level: &str, json: bool) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => tracing_subscriber::EnvFilter::new(v),
        _ => tracing_subscriber::EnvFilter::new(level),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// object_store panics ("Already shut down") when a multipart upload whose
/// completion already failed is then aborted; delta-rs does that when it discards a
/// window during a storage outage, in a task of its own that tokio catches. The
/// daemon is unharmed, so the operator gets one warning instead of a panic report
/// with a backtrace. Every other panic goes to the default hook.
pub fn contain_known_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("");
        let file = info.location().map_or("", |l| l.file());
        if is_upload_abort_after_shutdown(message, file) {
            tracing::warn!(
                "an upload that could not complete could not be aborted either (object_store:                  {message}); its parts stay until the bucket's multipart lifecycle rule removes them"
            );
        } else {
            default(info);
        }
    }));
}

fn is_upload_abort_after_shutdown(message: &str, file: &str) -> bool {
    message == "Already shut down" && file.contains("object_store") && file.ends_with("buffered.rs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_object_stores_abort_after_shutdown_panic_is_contained() {
        let file = "/root/.cargo/registry/src/x/object_store-0.13.2/src/buffered.rs";
        assert!(is_upload_abort_after_shutdown("Already shut down", file));
        assert!(!is_upload_abort_after_shutdown("index out of bounds", file));
        assert!(!is_upload_abort_after_shutdown(
            "Already shut down",
            "src/pipeline.rs"
        ));
    }
}
