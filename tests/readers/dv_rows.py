"""Read a table with deletion vectors with readers we did not write, and print
each one's rows as JSON: {"duckdb": [[id, v], ...], "deltalake_datafusion": ...,
"spark_delta": ...}.

  python dv_rows.py TABLE_URI
  python dv_rows.py --spark TABLE_URI     (in Spark's own venv)

Spark with Delta Lake's jars (`local[1]` on loopback) runs in the interpreter of
its own venv (TRIBUTARY_TEST_SPARK_PYTHON, jars in TRIBUTARY_TEST_SPARK_JARS),
started as a child of this script.

DuckDB's delta extension reads deletion vectors through delta-kernel-rs; the
Python deltalake package (delta-rs) reads them only through its DataFusion
QueryBuilder (its pyarrow readers refuse such a table), which is what is used.
"""

import json
import os
import subprocess
import sys


def duckdb_rows(uri):
    import duckdb
    import duckdb_ext
    ext = os.path.join(list(duckdb_ext.__path__)[0], "extensions")
    con = duckdb.connect(config={"autoinstall_known_extensions": False,
                                 "autoload_known_extensions": False,
                                 "extension_directory": ext})
    con.execute("LOAD delta")
    cur = con.execute(f"SELECT id, v FROM delta_scan('{uri}') ORDER BY id")
    return [list(r) for r in cur.fetchall()]


def deltalake_rows(uri):
    import pyarrow
    from deltalake import DeltaTable, QueryBuilder
    result = QueryBuilder().register("t", DeltaTable(uri)).execute(
        "SELECT id, v FROM t ORDER BY id").read_all()
    return [[r["id"], r["v"]] for r in pyarrow.table(result).to_pylist()]


def spark_rows(uri):
    import glob
    from pyspark.sql import SparkSession
    jars = sorted(glob.glob(os.path.join(os.environ["TRIBUTARY_TEST_SPARK_JARS"], "*.jar")))
    spark = (SparkSession.builder.master("local[1]").appName("tributary-dv-readers")
             .config("spark.jars", ",".join(jars))
             .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
             .config("spark.sql.catalog.spark_catalog",
                     "org.apache.spark.sql.delta.catalog.DeltaCatalog")
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.driver.host", "127.0.0.1")
             .config("spark.driver.bindAddress", "127.0.0.1")
             .config("spark.driver.memory", "1g")
             .getOrCreate())
    try:
        df = spark.read.format("delta").load(uri).orderBy("id")
        return [[r["id"], r["v"]] for r in df.collect()]
    finally:
        spark.stop()


def spark_in_its_venv(uri):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SPARK_REMOTE", "SPARK_CONNECT", "SPARK_LOCAL_REMOTE"))}
    python = os.environ["TRIBUTARY_TEST_SPARK_PYTHON"]
    env.update(SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=python)
    out = subprocess.run([python, __file__, "--spark", uri], env=env,
                         capture_output=True, text=True, timeout=600)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])["spark_delta"]
    except (IndexError, ValueError, KeyError):
        return {"error": out.stderr[-4000:]}


def main():
    if sys.argv[1] == "--spark":
        print(json.dumps({"spark_delta": spark_rows(sys.argv[2])}))
        return
    uri = sys.argv[1]
    print(json.dumps({"duckdb": duckdb_rows(uri), "deltalake_datafusion": deltalake_rows(uri),
                      "spark_delta": spark_in_its_venv(uri)}))


if __name__ == "__main__":
    main()
