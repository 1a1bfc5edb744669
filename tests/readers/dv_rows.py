"""Read a table with deletion vectors with readers we did not write, and print
each one's rows as JSON: {"duckdb": [[id, v], ...], "deltalake_datafusion": ...}.

  python dv_rows.py TABLE_URI

DuckDB's delta extension reads deletion vectors through delta-kernel-rs; the
Python deltalake package (delta-rs) reads them only through its DataFusion
QueryBuilder (its pyarrow readers refuse such a table), which is what is used.
"""

import json
import os
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


def main():
    uri = sys.argv[1]
    print(json.dumps({"duckdb": duckdb_rows(uri), "deltalake_datafusion": deltalake_rows(uri)}))


if __name__ == "__main__":
    main()
