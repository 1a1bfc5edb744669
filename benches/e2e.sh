#!/usr/bin/env bash
# End-to-end benchmark: starts the test servers (Apache Kafka and Tansu brokers,
# moto S3) on 127.0.0.1, builds the daemon and the bench driver in release mode, and runs a
# scenario (by default: pre-fill a topic, run one daemon from an empty table until
# it has caught up). Prints the report; writes it with a chart (chart.svg) to the
# run's directory. Arguments go to the driver (examples/bench/main.rs), e.g.
#   benches/e2e.sh --records 1000000 --partitions 64
#   benches/e2e.sh --partitions 4096 --rate 4096 --duration 180
#   benches/e2e.sh --tables 200 --records 2000000
#   benches/e2e.sh --replicas 4 --config fast.toml
#   benches/e2e.sh --long-log 100000
# The broker is Apache Kafka; TRIBUTARY_BENCH_BROKER=tansu runs it on Tansu.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/servers.sh
servers_install
servers_start
trap servers_stop EXIT
cargo build --release --bin tributary --example bench
target_dir="${CARGO_TARGET_DIR:-target}"
case "${TRIBUTARY_BENCH_BROKER:-kafka}" in
    kafka) brokers="$TRIBUTARY_TEST_BROKERS" broker_pid="$TRIBUTARY_TEST_KAFKA_PID" name="Apache Kafka" ;;
    tansu) brokers="$TRIBUTARY_TEST_TANSU_BROKERS" broker_pid="$TRIBUTARY_TEST_TANSU_PID" name="Tansu" ;;
    *) echo "TRIBUTARY_BENCH_BROKER is kafka or tansu" >&2; exit 2 ;;
esac
"$target_dir/release/examples/bench" \
    --brokers "$brokers" --s3 "$TRIBUTARY_TEST_S3_ENDPOINT" \
    --moto-log "$SERVERS_DIR/logs/moto.log" \
    --broker-pid "$broker_pid" --broker-name "$name" --s3-pid "$TRIBUTARY_TEST_MOTO_PID" "$@"
