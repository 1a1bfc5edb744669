"""Read a Delta table written by tributary with engines we did not write, and
compare every row with the records that were produced.

  python compare.py TABLE_URI EXPECTED_JSONL
  python compare.py --only spark_delta TABLE_URI EXPECTED_JSONL

Readers: DuckDB with its delta extension (pinned wheels, loaded from the wheel's
extension directory, no downloads), Sail (pysail) through real PySpark code over
Spark Connect (`spark.read.format("delta").load(uri)`), and Spark itself with
Delta Lake's jars (`local[1]` on loopback, S3A), run by the interpreter of its own
venv (TRIBUTARY_TEST_SPARK_PYTHON, jars in TRIBUTARY_TEST_SPARK_JARS) with
`--only spark_delta`, and Trino through its Delta Lake connector (the server
tests/servers.sh starts, TRIBUTARY_TEST_TRINO, over its REST API). For s3:// URIs the TRIBUTARY_TEST_S3_ENDPOINT server is used
with path-style requests and test credentials. Prints one JSON summary line; exits
1 on any difference.
"""

import datetime as dt
import decimal
import json
import os
import socket
import subprocess
import sys
import time

SCALE = decimal.Decimal("0.01")


def canon_ts(v):
    if v is None:
        return None
    if isinstance(v, str):
        v = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
    if v.tzinfo is None:  # Spark returns session-time-zone naive values; the session is UTC
        v = v.replace(tzinfo=dt.timezone.utc)
    return v.astimezone(dt.timezone.utc).isoformat(timespec="microseconds")


def canon_date(v):
    if v is None:
        return None
    return v if isinstance(v, str) else v.isoformat()


def canon_dec(v):
    return None if v is None else str(decimal.Decimal(str(v)).quantize(SCALE))


def canon_map(v):
    if v is None:
        return None
    if isinstance(v, list):  # some readers give [(k, v)] or [{"key":..,"value":..}]
        v = dict((e["key"], e["value"]) if isinstance(e, dict) else e for e in v)
    return sorted(v.items())


def canon_struct(v):
    if v is None:
        return None
    if hasattr(v, "asDict"):
        v = v.asDict(recursive=True)
    return {"os": v.get("os"), "version": v.get("version")}


def canon(r):
    return (
        r["_partition"], r["_offset"], r["id"], r.get("country"), canon_dec(r.get("amount")),
        canon_ts(r.get("ts")), canon_date(r.get("day")),
        None if r.get("score") is None else float(r["score"]),
        r.get("flag"), None if r.get("tags") is None else list(r["tags"]),
        canon_map(r.get("attrs")), canon_struct(r.get("device")), canon_ts(r.get("_timestamp")) is not None,
    )


def expected_rows(path):
    rows = []
    with open(path) as f:
        for line in f:
            rows.append(canon(json.loads(line)))
    return sorted(rows, key=lambda r: (r[0], r[1]))


COLUMNS = ["_partition", "_offset", "id", "country", "amount", "ts", "day", "score", "flag",
           "tags", "attrs", "device", "_timestamp"]


def s3_endpoint():
    return os.environ["TRIBUTARY_TEST_S3_ENDPOINT"]


def read_duckdb(uri):
    import duckdb
    import duckdb_ext
    ext = os.path.join(list(duckdb_ext.__path__)[0], "extensions")
    con = duckdb.connect(config={"autoinstall_known_extensions": False,
                                 "autoload_known_extensions": False,
                                 "extension_directory": ext})
    for e in ("httpfs", "aws", "delta"):
        con.execute(f"LOAD {e}")
    con.execute("SET TimeZone = 'UTC'")
    if uri.startswith("s3://"):
        ep = s3_endpoint().removeprefix("http://")
        con.execute(f"CREATE SECRET s3 (TYPE s3, KEY_ID 'test', SECRET 'test', REGION 'us-east-1', "
                    f"ENDPOINT '{ep}', URL_STYLE 'path', USE_SSL false)")
    cur = con.execute(f"SELECT {', '.join(COLUMNS)} FROM delta_scan('{uri}')")
    names = [d[0] for d in cur.description]
    return [canon(dict(zip(names, row))) for row in cur.fetchall()]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def read_spark(uri):
    port = free_port()
    env = dict(os.environ)
    if uri.startswith("s3://"):
        env.update(AWS_ENDPOINT_URL=s3_endpoint(), AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                   AWS_REGION="us-east-1", AWS_ALLOW_HTTP="true", AWS_VIRTUAL_HOSTED_STYLE_REQUEST="false")
    sail = os.path.join(os.path.dirname(sys.executable), "sail")
    server = subprocess.Popen([sail, "spark", "server", "--ip", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("the Sail Spark Connect server did not start")
                time.sleep(0.1)
        import warnings
        warnings.simplefilter("ignore")
        from pyspark.sql import SparkSession
        spark = SparkSession.builder.remote(f"sc://127.0.0.1:{port}").getOrCreate()
        spark.conf.set("spark.sql.session.timeZone", "UTC")
        df = spark.read.format("delta").load(uri).select(*COLUMNS)
        rows = [canon(r.asDict(recursive=False)) for r in df.collect()]
        spark.stop()
        return rows
    finally:
        server.terminate()
        server.wait(timeout=30)


def read_spark_delta(uri):
    import glob
    from pyspark.sql import SparkSession
    jars = sorted(glob.glob(os.path.join(os.environ["TRIBUTARY_TEST_SPARK_JARS"], "*.jar")))
    b = (SparkSession.builder.master("local[1]").appName("tributary-readers")
         .config("spark.jars", ",".join(jars))
         .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
         .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
         .config("spark.sql.session.timeZone", "UTC")
         .config("spark.ui.enabled", "false")
         .config("spark.ui.showConsoleProgress", "false")
         .config("spark.driver.host", "127.0.0.1")
         .config("spark.driver.bindAddress", "127.0.0.1")
         .config("spark.driver.memory", "1g"))
    if uri.startswith("s3://"):
        s3a = {"endpoint": s3_endpoint(), "endpoint.region": "us-east-1", "path.style.access": "true",
               "connection.ssl.enabled": "false", "access.key": "test", "secret.key": "test",
               "aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"}
        for k, v in s3a.items():
            b = b.config(f"spark.hadoop.fs.s3a.{k}", v)
        uri = "s3a://" + uri.removeprefix("s3://")
    spark = b.getOrCreate()
    try:
        df = spark.read.format("delta").load(uri).select(*COLUMNS)
        return [canon(r.asDict(recursive=False)) for r in df.collect()]
    finally:
        spark.stop()


def to_millis(r):
    """A canonical row with its `ts` rounded to milliseconds (half up, as Trino does)."""
    ts = r[5]
    if ts is not None:
        ts = dt.datetime.fromisoformat(ts)
        us = ts.microsecond
        ts = ts.replace(microsecond=0) + dt.timedelta(milliseconds=(us + 500) // 1000)
        ts = ts.isoformat(timespec="microseconds")
    return r[:5] + (ts,) + r[6:]


def trino(sql):
    """Run `sql` on the Trino server of TRIBUTARY_TEST_TRINO over its REST API:
    (column names, rows)."""
    import urllib.request
    base = os.environ["TRIBUTARY_TEST_TRINO"]
    req = urllib.request.Request(base + "/v1/statement", data=sql.encode(),
                                 headers={"X-Trino-User": "tributary", "X-Trino-Time-Zone": "UTC"})
    r = json.load(urllib.request.urlopen(req, timeout=60))
    columns, rows = None, []
    while True:
        if "error" in r:
            raise RuntimeError(f"trino: {r['error'].get('message')} in {sql}")
        columns = r.get("columns", columns)
        rows.extend(r.get("data", []))
        if "nextUri" not in r:
            return [c["name"] for c in columns or []], rows
        r = json.load(urllib.request.urlopen(r["nextUri"], timeout=60))


def wait_trino(deadline_s=180):
    """The server starts beside the tests (tests/servers.sh); wait until it serves."""
    import urllib.request
    deadline = time.time() + deadline_s
    while True:
        try:
            info = json.load(urllib.request.urlopen(os.environ["TRIBUTARY_TEST_TRINO"] + "/v1/info", timeout=5))
            if not info.get("starting", True):
                return
        except OSError:
            pass
        if time.time() > deadline:
            raise RuntimeError(f"Trino did not serve within {deadline_s} s")
        time.sleep(0.5)


def read_trino(uri):
    """Trino (Athena's engine) through its Delta Lake connector: the table
    registered in the file metastore under a name of its own, then read."""
    wait_trino()
    name = "t_" + "".join(c if c.isalnum() else "_" for c in uri.split("://", 1)[-1]).lower() + f"_{os.getpid()}"
    trino("CREATE SCHEMA IF NOT EXISTS delta.readers")
    trino(f"CALL delta.system.register_table(schema_name => 'readers', table_name => '{name}', "
          f"table_location => '{uri}')")
    try:
        names, rows = trino(f"SELECT {', '.join(COLUMNS)} FROM delta.readers.{name}")
    finally:
        trino(f"CALL delta.system.unregister_table(schema_name => 'readers', table_name => '{name}')")
    out = []
    for row in rows:
        r = dict(zip(names, row))
        for c in ("ts", "_timestamp"):  # "2025-02-19 21:20:00.123000 UTC"
            if isinstance(r.get(c), str):
                r[c] = r[c].replace(" UTC", "+00:00")
        if isinstance(r.get("device"), list):  # a row's fields, in the schema's order
            r["device"] = dict(zip(("os", "version"), r["device"]))
        out.append(canon(r))
    return out


def spark_delta_in_its_venv(uri, expected_path):
    """The spark_delta summary from Spark's own interpreter."""
    # Not the Spark Connect settings pyspark-client left in this process's
    # environment for Sail: this Spark runs in the child itself.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_REMOTE", "SPARK_CONNECT", "SPARK_LOCAL_REMOTE"))}
    env.update(SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=os.environ["TRIBUTARY_TEST_SPARK_PYTHON"])
    out = subprocess.run([os.environ["TRIBUTARY_TEST_SPARK_PYTHON"], __file__, "--only", "spark_delta",
                          uri, expected_path], env=env, capture_output=True, text=True, timeout=600)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])["spark_delta"]
    except (IndexError, ValueError, KeyError):
        return {"mismatches": -1, "error": out.stderr[-4000:]}


def compare(name, got, want):
    got = sorted(got, key=lambda r: (r[0], r[1]))
    mismatches = [(g, w) for g, w in zip(got, want) if g != w]
    out = {"rows": len(got), "expected": len(want), "mismatches": len(mismatches) + abs(len(got) - len(want))}
    if mismatches:
        out["first"] = {"got": repr(mismatches[0][0]), "want": repr(mismatches[0][1])}
    return out


def main():
    args = sys.argv[1:]
    if args[0] == "--only":
        engine, uri, expected_path = args[1:]
        assert engine == "spark_delta", engine
        result = {"spark_delta": compare("spark_delta", read_spark_delta(uri), expected_rows(expected_path))}
    else:
        uri, expected_path = args
        want = expected_rows(expected_path)
        result = {"duckdb": compare("duckdb", read_duckdb(uri), want),
                  "spark_sail": compare("spark", read_spark(uri), want),
                  "spark_delta": spark_delta_in_its_venv(uri, expected_path),
                  # Trino's Delta Lake connector reads `timestamp` as timestamp(3) with
                  # time zone: milliseconds (Athena's engine, so Athena too).
                  "trino": compare("trino", read_trino(uri), [to_millis(r) for r in want])}
    print(json.dumps(result))
    sys.exit(0 if all(r["mismatches"] == 0 for r in result.values()) else 1)


if __name__ == "__main__":
    main()
