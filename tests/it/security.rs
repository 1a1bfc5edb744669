//! Security settings against the real servers: server-side encryption of every
//! object written.

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
