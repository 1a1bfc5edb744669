"""A foreign writer for the merge-on-read tests: the Python deltalake package
(delta-rs) appends to a table tributary writes, between its windows.

  python foreign_append.py TABLE_URI FROM_KEY TO_KEY TO_EVENT_ID

Reads the live row of Kafka key FROM_KEY through deltalake's DataFusion reader
(QueryBuilder: its pyarrow reader refuses tables with deletion vectors) and
appends two rows: that row unchanged (a duplicate of a key the table holds)
and a copy under key TO_KEY with event_id TO_EVENT_ID. For s3:// URIs the
TRIBUTARY_TEST_S3_ENDPOINT server is used with test credentials. Prints the
table's version after the append.
"""

import os
import sys

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, QueryBuilder, write_deltalake


def storage_options(uri):
    if not uri.startswith("s3://"):
        return None
    return {
        "AWS_ENDPOINT_URL": os.environ["TRIBUTARY_TEST_S3_ENDPOINT"],
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
        "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false",
        "AWS_S3_ALLOW_UNSAFE_RENAME": "true",
    }


def main():
    uri, from_key, to_key, to_event = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    opts = storage_options(uri)
    dt = DeltaTable(uri, storage_options=opts)
    reader = QueryBuilder().register("t", dt)
    rows = pa.table(
        reader.execute(f"SELECT * FROM t WHERE CAST(_key AS STRING) = '{from_key}'").read_all()
    )
    if rows.num_rows != 1:
        sys.exit(f"expected one live row of key {from_key}, found {rows.num_rows}")
    key_type = rows.schema.field("_key").type
    new_key = to_key.encode() if pa.types.is_binary(key_type) or pa.types.is_large_binary(key_type) else to_key
    copy = rows.set_column(
        rows.schema.get_field_index("_key"), rows.schema.field("_key"), pa.array([new_key], key_type)
    )
    copy = copy.set_column(
        copy.schema.get_field_index("event_id"),
        copy.schema.field("event_id"),
        pc.cast(pa.array([to_event]), copy.schema.field("event_id").type),
    )
    both = pa.concat_tables([rows, copy])
    write_deltalake(dt, both, mode="append", storage_options=opts)
    print(DeltaTable(uri, storage_options=opts).version())


if __name__ == "__main__":
    main()
