//! Security settings against the real servers: server-side encryption of every
//! object written, and Kafka over TLS with a private CA.

use crate::harness::*;
use crate::ingest::start;

async fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .load()
        .await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_object_is_written_with_the_configured_server_side_encryption() {
    let s = Scenario::new("sse", 1).await;
    let produced = produce(
        &producer(&s.servers.brokers),
        &s.topic,
        (0..50u64).map(|i| (0, event(i))),
    )
    .await;
    let text = s
        .config_toml("[flush]\nmax_age = \"1s\"\n")
        .replace(
            "secret_access_key = \"test\"\n",
            "secret_access_key = \"test\"\nencryption = \"sse-kms\"\nkms_key_id = \"arn:aws:kms:us-east-1:123456789012:key/tributary-test\"\n",
        );
    let cfg = parse_config(&text);
    let mut run = start(cfg);
    run.committed(&s.topic, &last_offsets(&produced)).await;
    run.stop().await;

    let client = s3_client(&s.servers.s3).await;
    let listed = client
        .list_objects_v2()
        .bucket(&s.bucket)
        .prefix("events/")
        .send()
        .await
        .unwrap();
    let keys: Vec<String> = listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect();
    assert!(keys.iter().any(|k| k.ends_with(".parquet")), "{keys:?}");
    assert!(keys.iter().any(|k| k.contains("_delta_log/")), "{keys:?}");
    for key in &keys {
        let head = client
            .head_object()
            .bucket(&s.bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            head.server_side_encryption(),
            Some(&aws_sdk_s3::types::ServerSideEncryption::AwsKms),
            "{key}"
        );
        assert_eq!(
            head.ssekms_key_id(),
            Some("arn:aws:kms:us-east-1:123456789012:key/tributary-test"),
            "{key}"
        );
    }
    eprintln!(
        "sse: {} objects, all aws:kms with the configured key",
        keys.len()
    );
}

/// The broker is reachable only over TLS, with a certificate from a private CA:
/// `security.protocol = "SSL"` and `ssl.ca.location` in `[kafka.properties]` carry
/// the pipeline through, and the same config without the CA is refused by
/// `validate` with the certificate named as the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_over_tls_with_a_private_ca() {
    init_logs();
    let shared = servers();
    let dir = tempfile::tempdir().unwrap();
    let (ca, server_pem) = private_ca(dir.path());
    let tls_port = free_port();
    // The broker advertises the TLS port, so every connection goes through TLS.
    let broker = OwnBroker::start(&shared.s3, dir.path(), Some(tls_port)).await;
    let _tls = TlsTerminator::start(tls_port, &server_pem, &broker.brokers()).await;
    let s = Scenario {
        servers: Servers {
            brokers: format!("127.0.0.1:{tls_port}"),
            tansu: shared.tansu.clone(),
            s3: shared.s3.clone(),
        },
        topic: unique("tls"),
        bucket: unique("b").to_lowercase(),
        app_id: unique("app"),
        dir,
    };
    let client = kafka_client(&s.servers.brokers, Some(&ca));
    create_topic_via(&client, &s.topic, 2).await;
    create_bucket(&s.servers.s3, &s.bucket);
    let produced = produce(
        &producer_via(client),
        &s.topic,
        (0..200u64).map(|i| ((i % 2) as i32, event(i))),
    )
    .await;

    let tls = format!(
        "\"security.protocol\" = \"SSL\"\n\"ssl.ca.location\" = \"{}\"\n",
        ca.display()
    );
    let text = s.config_toml("[flush]\nmax_age = \"1s\"\n").replace(
        "[kafka.properties]\n",
        &format!("[kafka.properties]\n{tls}"),
    );
    let mut run = start(parse_config(&text));
    run.committed(&s.topic, &last_offsets(&produced)).await;
    run.stop().await;
    let rows = s.rows().await;
    let (lost, duplicated) = diff(&rows, &produced);
    assert_eq!((rows.len(), lost, duplicated), (200, 0, 0));

    // Without the CA the broker's certificate cannot be verified.
    let untrusted = text.replace(&format!("\"ssl.ca.location\" = \"{}\"\n", ca.display()), "");
    let path = s.dir.path().join("untrusted.toml");
    std::fs::write(&path, untrusted).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "validate must fail: {stdout}");
    // The failed check names the cause: librdkafka's refusal of the certificate.
    let fail = stdout
        .lines()
        .find(|l| l.starts_with("FAIL  kafka brokers"))
        .unwrap_or_else(|| panic!("a failed broker check: {stdout}\n{stderr}"));
    assert!(
        fail.contains("certificate verify failed"),
        "the check names the certificate: {fail}\n{stderr}"
    );
    eprintln!(
        "tls: 200 records over TLS (private CA), 0 lost, 0 duplicated; without the CA: {fail}"
    );
}
