#!/usr/bin/env bash
# The test command: install and start the real servers (Tansu Kafka broker, moto
# S3) on loopback, run every test against them, stop the servers.
# Extra arguments go to `cargo test` (e.g. `tests/run.sh kill_9`).
set -euo pipefail
cd "$(dirname "$0")/.."
tests/prereqs.sh
source tests/servers.sh
servers_install
# The Kubernetes manifest must at least be valid YAML (PyYAML comes with moto).
"$SERVERS_VENV/bin/python" -c 'import sys, yaml; list(yaml.safe_load_all(open(sys.argv[1])))' deploy/k8s/tributary.yaml
servers_start
trap servers_stop EXIT
cargo test --all-targets -- "$@"
