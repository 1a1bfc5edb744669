//! Protobuf records (Confluent-framed) into Arrow.
//!
//! The registry holds `.proto` source; it is compiled in-process with protox
//! (imports from the schema's registry references, Google's well-known types
//! built in) into prost-reflect descriptors. The Confluent frame carries, after the
//! schema id, the message-index array (zigzag varints: a count, then the path of
//! indexes into the file's message types and their nested types; a single `0` byte
//! means the first message). Each record is parsed with prost-reflect and its
//! fields are appended straight to Arrow column builders.
//!
//! Mapping: `int32`/`sint32`/`sfixed32` -> int; `int64`/`sint64`/`sfixed64`,
//! `uint32`/`fixed32` -> long; `uint64`/`fixed64` -> long (a value above
//! 2^63-1 is rejected, not wrapped); `float`, `double`, `bool`, `string`; `bytes`
//! -> binary; enums -> the value's name; messages -> structs; `repeated` -> arrays;
//! `map<K, V>` -> maps; `oneof` members -> nullable fields of which one is set;
//! `google.protobuf.Timestamp` -> UTC timestamp; the wrapper types
//! (`StringValue`, `Int64Value`, ..) -> nullable scalars. Fields with presence
//! (messages, `optional`, oneof members) are nullable; proto3 scalars without it
//! are not (an unset one reads as its default, as in every protobuf reader).

use crate::decode::Reason;
use std::collections::HashMap;

use deltalake::arrow::array::{
    ArrayBuilder, BinaryBuilder, BooleanBuilder, Float32Builder, Float64Builder, Int32Builder,
    Int64Builder, ListBuilder, MapBuilder, RecordBatch, StringBuilder, StructBuilder,
    TimestampMicrosecondBuilder,
};
use deltalake::arrow::datatypes::{DataType as A, Field, Fields, Schema as ArrowSchema};
use deltalake::kernel::engine::arrow_conversion::TryIntoArrow;
use deltalake::kernel::{ArrayType, DataType, MapType, StructField, StructType};
use prost_reflect::{DynamicMessage, Kind, MapKey, MessageDescriptor, ReflectMessage, Value};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};

use crate::decode::registry::framed::FramedDecoder;
use crate::decode::registry::split_frame;

mod append;

use append::append_message;

const ROOT_FILE: &str = "tributary_registry_schema.proto";
const MAX_DEPTH: usize = 32;

struct Sources(HashMap<String, String>);

impl FileResolver for Sources {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match self.0.get(name) {
            Some(src) => File::from_source(name, src),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// Compile registry `.proto` source (plus its references, by import name) and
/// return the file's top-level messages in declaration order.
pub fn compile(text: &str, imports: &[(String, String)]) -> Result<Vec<MessageDescriptor>, Reason> {
    let mut files: HashMap<String, String> = imports.iter().cloned().collect();
    files.insert(ROOT_FILE.to_owned(), text.to_owned());
    let mut chain = ChainFileResolver::new();
    chain.add(Sources(files));
    chain.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(chain);
    compiler.include_imports(true);
    compiler
        .open_file(ROOT_FILE)
        .map_err(|e| Reason::from(format!("the .proto does not compile: {e}")))?;
    let pool = compiler.descriptor_pool();
    let file = pool
        .get_file_by_name(ROOT_FILE)
        .ok_or("compiled file missing")?;
    Ok(file.messages().collect())
}

/// Read the message-index array after the schema id; returns the path and the
/// remaining bytes (the message).
pub fn message_indexes(buf: &[u8]) -> Result<(Vec<usize>, &[u8]), Reason> {
    fn varint(buf: &mut &[u8]) -> Result<i64, Reason> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = buf.split_first().ok_or("message indexes end early")?;
            *buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(((v >> 1) as i64) ^ -((v & 1) as i64));
            }
        }
        Err(Reason::from("message index varint too long"))
    }
    let mut rest = buf;
    let count = varint(&mut rest)?;
    if count == 0 {
        return Ok((vec![0], rest));
    }
    if !(1..=MAX_DEPTH as i64).contains(&count) {
        return Err(Reason::from(format!("bad message-index count {count}")));
    }
    let mut path = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let i = varint(&mut rest)?;
        path.push(
            usize::try_from(i).map_err(|_| Reason::from(format!("negative message index {i}")))?,
        );
    }
    Ok((path, rest))
}

fn well_known(m: &MessageDescriptor) -> Option<DataType> {
    Some(match m.full_name() {
        "google.protobuf.Timestamp" => DataType::TIMESTAMP,
        "google.protobuf.DoubleValue" => DataType::DOUBLE,
        "google.protobuf.FloatValue" => DataType::FLOAT,
        "google.protobuf.Int64Value"
        | "google.protobuf.UInt64Value"
        | "google.protobuf.UInt32Value" => DataType::LONG,
        "google.protobuf.Int32Value" => DataType::INTEGER,
        "google.protobuf.BoolValue" => DataType::BOOLEAN,
        "google.protobuf.StringValue" => DataType::STRING,
        "google.protobuf.BytesValue" => DataType::BINARY,
        _ => return None,
    })
}

fn kind_type(kind: &Kind, path: &str, depth: usize) -> Result<DataType, Reason> {
    Ok(match kind {
        Kind::Double => DataType::DOUBLE,
        Kind::Float => DataType::FLOAT,
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => DataType::INTEGER,
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => DataType::LONG,
        Kind::Uint32 | Kind::Fixed32 | Kind::Uint64 | Kind::Fixed64 => DataType::LONG,
        Kind::Bool => DataType::BOOLEAN,
        Kind::String | Kind::Enum(_) => DataType::STRING,
        Kind::Bytes => DataType::BINARY,
        Kind::Message(m) => match well_known(m) {
            Some(t) => t,
            None => DataType::Struct(Box::new(message_struct(m, path, depth + 1)?)),
        },
    })
}

/// The Delta struct of a message's fields.
pub fn message_struct(
    m: &MessageDescriptor,
    prefix: &str,
    depth: usize,
) -> Result<StructType, Reason> {
    if depth > MAX_DEPTH {
        return Err(Reason::from(format!(
            "field `{prefix}`: messages nest deeper than {MAX_DEPTH} levels (a recursive message has no Delta equivalent)"
        )));
    }
    let mut fields = Vec::new();
    for f in m.fields() {
        let path = if prefix.is_empty() {
            f.name().to_owned()
        } else {
            format!("{prefix}.{}", f.name())
        };
        let (t, nullable) = if f.is_map() {
            let Kind::Message(entry) = f.kind() else {
                return Err(Reason::from(format!(
                    "field `{path}`: map without an entry message"
                )));
            };
            let key = kind_type(&entry.map_entry_key_field().kind(), &path, depth)?;
            let value_field = entry.map_entry_value_field();
            let value = kind_type(&value_field.kind(), &format!("{path}.value"), depth)?;
            let value_null = matches!(value_field.kind(), Kind::Message(_));
            (
                DataType::Map(Box::new(MapType::new(key, value, value_null))),
                false,
            )
        } else if f.is_list() {
            let element = kind_type(&f.kind(), &format!("{path}[]"), depth)?;
            (
                DataType::Array(Box::new(ArrayType::new(element, false))),
                false,
            )
        } else {
            (kind_type(&f.kind(), &path, depth)?, f.supports_presence())
        };
        fields.push(StructField::new(f.name(), t, nullable));
    }
    StructType::try_new(fields).map_err(|e| Reason::from(e.to_string()))
}

/// Decoding state for one registered Protobuf schema.
pub struct ProtoWriterSchema {
    messages: Vec<MessageDescriptor>,
    /// The message this decoder builds rows of (the first one seen).
    message: Option<MessageDescriptor>,
    arrow: Fields,
    builder: StructBuilder,
    batch_size: usize,
    /// The Delta schema of the rows (of `message`).
    pub delta: StructType,
}

impl std::fmt::Debug for ProtoWriterSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProtoWriterSchema")
            .field(
                "message",
                &self.message.as_ref().map(|m| m.full_name().to_owned()),
            )
            .finish_non_exhaustive()
    }
}

impl ProtoWriterSchema {
    /// Compile the registry's `.proto` text. The table row is the file's first
    /// message (the one the Confluent serializer's `[0]` index names); records
    /// framed with another message index are rejected.
    pub fn new(
        id: u32,
        text: &str,
        imports: &[(String, String)],
        batch_size: usize,
    ) -> Result<Self, Reason> {
        let messages = compile(text, imports)
            .map_err(|e| Reason::from(format!("Protobuf schema id {id}: {e}")))?;
        let first = messages
            .first()
            .cloned()
            .ok_or_else(|| format!("Protobuf schema id {id} declares no message"))?;
        let delta = message_struct(&first, "", 0)
            .map_err(|e| Reason::from(format!("Protobuf schema id {id}: {e}")))?;
        let arrow: ArrowSchema = (&delta)
            .try_into_arrow()
            .map_err(|e| Reason::from(format!("Protobuf schema id {id}: {e}")))?;
        let arrow = arrow.fields().clone();
        let batch_size = batch_size.max(1);
        Ok(Self {
            builder: StructBuilder::from_fields(arrow.clone(), batch_size),
            messages,
            message: Some(first),
            arrow,
            batch_size,
            delta,
        })
    }

    fn target(&self, path: &[usize]) -> Result<MessageDescriptor, Reason> {
        let mut m = self
            .messages
            .get(path[0])
            .cloned()
            .ok_or_else(|| format!("message index {} not in the schema", path[0]))?;
        for &i in &path[1..] {
            let child = m.child_messages().nth(i);
            m = child
                .ok_or_else(|| format!("nested message index {i} not in {}", m.full_name()))?;
        }
        Ok(m)
    }
}

impl FramedDecoder for ProtoWriterSchema {
    const FORMAT: &'static str = "Protobuf";

    fn feed(&mut self, value: &[u8]) -> Result<(), Reason> {
        let (_, rest) = split_frame(value)?;
        let (path, payload) = message_indexes(rest)?;
        let target = self.target(&path)?;
        let message = self.message.as_ref().expect("set in new");
        if target != *message {
            return Err(Reason::from(format!(
                "record is a {} but the table holds {}",
                target.full_name(),
                message.full_name()
            )));
        }
        let msg =
            DynamicMessage::decode(target, payload).map_err(|e| Reason::from(e.to_string()))?;
        // A failure midway leaves part of a row in the builders; the run decoder
        // resets and re-feeds the good records (framed.rs).
        append_message(&mut self.builder, &self.arrow, &msg)?;
        self.builder.append(true);
        Ok(())
    }

    fn is_full(&self) -> bool {
        self.builder.len() >= self.batch_size
    }

    fn flush(&mut self) -> Result<Option<RecordBatch>, Reason> {
        if self.builder.len() == 0 {
            return Ok(None);
        }
        Ok(Some(RecordBatch::from(self.builder.finish())))
    }

    fn reset(&mut self) -> Result<(), Reason> {
        self.builder = StructBuilder::from_fields(self.arrow.clone(), self.batch_size);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDERS: &str = include_str!("../../../../schemas/orders.proto");

    #[test]
    fn message_indexes_follow_the_confluent_encoding() {
        assert_eq!(message_indexes(&[0, 9]).unwrap(), (vec![0], &[9u8][..]));
        // count 1 (zigzag 2), index 1 (zigzag 2)
        assert_eq!(message_indexes(&[2, 2, 9]).unwrap(), (vec![1], &[9u8][..]));
        // count 2, indexes [1, 0]
        assert_eq!(message_indexes(&[4, 2, 0]).unwrap().0, vec![1, 0]);
        assert!(message_indexes(&[4, 2]).is_err());
        assert!(message_indexes(&[]).is_err());
    }

    #[test]
    fn proto_types_map_to_delta_types() {
        let messages = compile(ORDERS, &[]).unwrap();
        let s = message_struct(&messages[0], "", 0).unwrap();
        let ty = |n: &str| serde_json::to_value(s.field(n).unwrap().data_type()).unwrap();
        let nullable = |n: &str| s.field(n).unwrap().is_nullable();
        assert_eq!(ty("id"), "long");
        assert_eq!(ty("delta"), "integer");
        assert_eq!(ty("big"), "long");
        assert_eq!(ty("price"), "float");
        assert_eq!(ty("blob"), "binary");
        assert_eq!(ty("status"), "string");
        assert_eq!(ty("address")["type"], "struct");
        assert_eq!(ty("tags")["type"], "array");
        assert_eq!(ty("lines")["elementType"]["type"], "struct");
        assert_eq!(ty("attrs")["type"], "map");
        assert_eq!(ty("ts"), "timestamp");
        assert_eq!(ty("coupon"), "string");
        assert!(!nullable("id") && !nullable("name") && !nullable("status"));
        assert!(nullable("address") && nullable("note") && nullable("card") && nullable("ts"));
        assert!(nullable("coupon"));
        let recursive = compile("syntax = \"proto3\"; message N { N next = 1; }", &[]).unwrap();
        assert!(
            message_struct(&recursive[0], "", 0)
                .unwrap_err()
                .0
                .contains("recursive")
        );
    }
}
