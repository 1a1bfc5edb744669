//! The command line: `validate` and the operator commands give clear messages and
//! non-zero exits for what an operator gets wrong.

use std::process::Command;

use crate::harness::*;

fn validate(config: &std::path::Path) -> (i32, String) {
    tributary(&[
        "validate",
        "--timeout",
        "3s",
        "--config",
        config.to_str().unwrap(),
    ])
}

#[tokio::test]
async fn validate_passes_on_a_working_config() {
    let s = Scenario::new("validate-ok", 2).await;
    let (code, out) = validate(&s.write_config(""));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok    kafka topics"), "{out}");
    assert!(out.contains("will be created"), "{out}");
    assert!(
        out.contains("ok    s3 write permission: wrote and deleted s3://"),
        "{out}"
    );

    // A bucket that does not exist fails the table and the write probe.
    let text = s
        .config_toml("")
        .replace(&s.bucket, "no-such-bucket-tributary");
    let path = s.dir.path().join("no-bucket.toml");
    std::fs::write(&path, text).unwrap();
    let (code, out) = validate(&path);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("FAIL  s3 write permission: cannot write"),
        "{out}"
    );
    assert!(out.contains("NoSuchBucket"), "{out}");
}

#[tokio::test]
async fn validate_reports_an_unreachable_broker() {
    let s = Scenario::new("validate-broker", 1).await;
    let text = s.config_toml("").replace(&s.servers.brokers, "127.0.0.1:1");
    let path = s.dir.path().join("bad-broker.toml");
    std::fs::write(&path, text).unwrap();
    let (code, out) = validate(&path);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("FAIL  kafka brokers: cannot reach 127.0.0.1:1"),
        "{out}"
    );
    assert!(out.contains("Check kafka.brokers"), "{out}");
    // The table check still runs and passes.
    assert!(out.contains("ok    delta table"), "{out}");
}

#[tokio::test]
async fn validate_reports_malformed_config() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "app_id = \"x\"\n[kafka]\nbrokers = \"127.0.0.1:9092\"\ntopics = [\"t\"]\nbogus = 1\n",
            "unknown field `bogus`",
        ),
        ("app_id = \"x\"\n[kafka\n", "invalid config"),
        ("app_id = \"x\"\n", "missing field `kafka`"),
    ];
    for (text, expected) in cases {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let (code, out) = validate(&path);
        assert_eq!(code, 2, "{out}");
        assert!(
            out.contains("FAIL  config") && out.contains(expected),
            "expected `{expected}` in:\n{out}"
        );
    }
    let (code, out) = validate(&dir.path().join("missing.toml"));
    assert_eq!(code, 2);
    assert!(out.contains("cannot read config file"), "{out}");
}

fn tributary(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(args)
        .env("RUST_LOG", "error")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test]
async fn operator_commands_fail_clearly() {
    let s = servers();
    let bucket = unique("b").to_lowercase();
    create_bucket(&s.s3, &bucket);
    let missing = format!("s3://{bucket}/missing");
    let endpoint = format!("aws_endpoint_url={}", s.s3);
    let common = [
        "--storage-option",
        &endpoint,
        "--storage-option",
        "aws_allow_http=true",
        "--storage-option",
        "aws_region=us-east-1",
    ];
    let creds = [
        "--storage-option",
        "aws_access_key_id=test",
        "--storage-option",
        "aws_secret_access_key=test",
    ];
    for cmd in ["compact", "vacuum", "checkpoint"] {
        let mut args = vec![cmd, missing.as_str()];
        args.extend(common);
        args.extend(creds);
        let (code, out) = tributary(&args);
        assert_eq!(code, 1, "{cmd}: {out}");
        assert!(
            out.contains(&format!("no Delta table at {missing}")),
            "{cmd}: {out}"
        );

        let (code, out) = tributary(&[cmd, "ftp://host/table"]);
        assert_eq!(code, 1, "{cmd}: {out}");
        assert!(out.contains("unsupported scheme `ftp`"), "{cmd}: {out}");

        let mut args = vec![cmd, missing.as_str()];
        args.extend(common);
        let (code, out) = tributary(&args);
        assert_eq!(code, 1, "{cmd}: {out}");
        assert!(out.contains("No usable AWS credentials"), "{cmd}: {out}");
    }
}

#[tokio::test]
async fn vacuum_below_table_retention_exits_non_zero() {
    let s = Scenario::new("vacuum-cli", 1).await;
    let cfg = s.config("");
    tributary::sink::table::open_or_create(&cfg.table, &cfg.storage, None)
        .await
        .unwrap();
    let path = s.write_config("");
    let (code, out) = tributary(&[
        "vacuum",
        "--config",
        path.to_str().unwrap(),
        "--retention",
        "1h",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("refusing to vacuum") && out.contains("--force-retention"),
        "{out}"
    );
    let (code, out) = tributary(&["vacuum", "--config", path.to_str().unwrap(), "--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("would delete 0 file(s)"), "{out}");
}
