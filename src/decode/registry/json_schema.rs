//! JSON Schema records (Confluent-framed JSON) into Arrow: the registry's JSON
//! Schema becomes a Delta schema, and the JSON after the 5-byte header goes through
//! arrow-json's tape decoder for that schema, like plain JSON does.
//!
//! Mapping: `integer` -> long, `number` -> double, `boolean`, `string` (with
//! `format: date` -> date, `format: date-time` -> UTC timestamp), `object` with
//! `properties` -> struct, `object` with only `additionalProperties` -> map of
//! string to that, `array` -> array of `items`. A property is nullable unless it is
//! in `required` and its type excludes `null` (`["string", "null"]`, or a
//! `oneOf`/`anyOf` of `null` and one type). `enum` and `const` of strings are
//! strings. Local `$ref`s (`#/definitions/..`, `#/$defs/..`) are followed. Any
//! other union has no Delta type and is refused with the field named.

use crate::decode::Reason;
use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::{Schema as ArrowSchema, SchemaRef};
use deltalake::arrow::json::reader::{Decoder as TapeDecoder, ReaderBuilder};
use deltalake::kernel::engine::arrow_conversion::TryIntoArrow;
use deltalake::kernel::{ArrayType, DataType, MapType, StructField, StructType};
use serde_json::Value;

use crate::decode::registry::framed::FramedDecoder;
use crate::decode::registry::split_frame;

/// The Delta struct for a JSON Schema document whose root is an object.
pub fn to_delta(text: &str) -> Result<StructType, Reason> {
    let root: Value = serde_json::from_str(text)
        .map_err(|e| Reason::from(format!("JSON Schema is not JSON: {e}")))?;
    let DataType::Struct(s) = convert(&root, &root, "", 0)?.0 else {
        return Err(Reason::from(
            "the JSON Schema's root is not an object with properties",
        ));
    };
    Ok(*s)
}

/// (type, may be null)
fn convert(
    schema: &Value,
    root: &Value,
    path: &str,
    depth: usize,
) -> Result<(DataType, bool), Reason> {
    let at = |msg: &str| at_path(path, msg);
    if depth > 32 {
        return Err(at("schema nests deeper than 32 levels (a recursive $ref?)"));
    }
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let target = r
            .strip_prefix("#/")
            .map(|p| p.split('/').try_fold(root, |v, k| v.get(k)))
            .and_then(|v| v)
            .ok_or_else(|| {
                at(&format!(
                    "cannot resolve $ref `{r}` (only local refs are followed)"
                ))
            })?;
        return convert(target, root, path, depth + 1);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema.get(key).and_then(Value::as_array) {
            let non_null: Vec<&Value> = options
                .iter()
                .filter(|o| o.get("type").and_then(Value::as_str) != Some("null"))
                .collect();
            return match non_null.as_slice() {
                [one] => Ok((convert(one, root, path, depth + 1)?.0, options.len() > 1)),
                _ => Err(at(&format!(
                    "`{key}` of several non-null types has no Delta equivalent"
                ))),
            };
        }
    }
    let (ty, nullable) = match schema.get("type") {
        Some(Value::String(t)) => (t.as_str(), false),
        Some(Value::Array(types)) => {
            let names: Vec<&str> = types.iter().filter_map(Value::as_str).collect();
            let non_null: Vec<&str> = names.iter().copied().filter(|t| *t != "null").collect();
            match non_null.as_slice() {
                [one] => (*one, names.len() > 1),
                _ => {
                    return Err(at(&format!("a type of {names:?} has no Delta equivalent")));
                }
            }
        }
        None if schema.get("enum").is_some() || schema.get("const").is_some() => ("string", false),
        None if schema.get("properties").is_some() => ("object", false),
        _ => return Err(at("no `type`")),
    };
    let data_type = match ty {
        "integer" => DataType::LONG,
        "number" => DataType::DOUBLE,
        "boolean" => DataType::BOOLEAN,
        "string" => match schema.get("format").and_then(Value::as_str) {
            Some("date") => DataType::DATE,
            Some("date-time") => DataType::TIMESTAMP,
            _ => DataType::STRING,
        },
        "array" => {
            let items = schema
                .get("items")
                .ok_or_else(|| at("array without `items`"))?;
            let (element, element_null) = convert(items, root, &format!("{path}[]"), depth + 1)?;
            DataType::Array(Box::new(ArrayType::new(element, element_null)))
        }
        "object" => object_type(schema, root, path, depth)?,
        other => return Err(at(&format!("type `{other}` has no Delta equivalent"))),
    };
    Ok((data_type, nullable))
}

/// The reason, at the field `path` (the root when empty).
fn at_path(path: &str, msg: &str) -> Reason {
    Reason(if path.is_empty() {
        msg.to_owned()
    } else {
        format!("field `{path}`: {msg}")
    })
}

/// An `object` schema: a struct of its properties (required ones non-null), or a
/// map of an `additionalProperties` schema.
fn object_type(schema: &Value, root: &Value, path: &str, depth: usize) -> Result<DataType, Reason> {
    let at = |msg: &str| at_path(path, msg);
    Ok(match schema.get("properties").and_then(Value::as_object) {
        Some(props) => {
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut fields = Vec::with_capacity(props.len());
            for (name, prop) in props {
                let child = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                let (t, null) = convert(prop, root, &child, depth + 1)?;
                fields.push(StructField::new(
                    name,
                    t,
                    null || !required.contains(&name.as_str()),
                ));
            }
            if fields.is_empty() {
                return Err(at("object without properties"));
            }
            DataType::Struct(Box::new(
                StructType::try_new(fields).map_err(|e| at(&e.to_string()))?,
            ))
        }
        None => match schema.get("additionalProperties") {
            Some(v @ Value::Object(_)) => {
                let (value, value_null) = convert(v, root, &format!("{path}.value"), depth + 1)?;
                DataType::Map(Box::new(MapType::new(DataType::STRING, value, value_null)))
            }
            _ => {
                return Err(at(
                    "object without `properties` or an `additionalProperties` schema",
                ));
            }
        },
    })
}

/// Decoding state for one registered JSON Schema.
pub struct JsonWriterSchema {
    arrow: SchemaRef,
    batch_size: usize,
    decoder: TapeDecoder,
    rows: usize,
    /// The Delta schema of the decoded columns.
    pub delta: StructType,
}

impl std::fmt::Debug for JsonWriterSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonWriterSchema").finish_non_exhaustive()
    }
}

fn build(arrow: &SchemaRef, batch_size: usize) -> Result<TapeDecoder, Reason> {
    ReaderBuilder::new(arrow.clone())
        .with_batch_size(batch_size)
        .build_decoder()
        .map_err(|e| Reason::from(e.to_string()))
}

impl JsonWriterSchema {
    /// Parse the registry's JSON Schema text.
    pub fn new(id: u32, text: &str, batch_size: usize) -> Result<Self, Reason> {
        let delta =
            to_delta(text).map_err(|e| Reason::from(format!("JSON Schema id {id}: {e}")))?;
        let arrow: ArrowSchema = (&delta)
            .try_into_arrow()
            .map_err(|e| Reason::from(format!("JSON Schema id {id}: {e}")))?;
        let arrow = std::sync::Arc::new(arrow);
        let batch_size = batch_size.max(1);
        Ok(Self {
            decoder: build(&arrow, batch_size)?,
            arrow,
            batch_size,
            rows: 0,
            delta,
        })
    }
}

impl FramedDecoder for JsonWriterSchema {
    const FORMAT: &'static str = "JSON";

    fn feed(&mut self, value: &[u8]) -> Result<(), Reason> {
        let (_, payload) = split_frame(value)?;
        crate::decode::feed_one(&mut self.decoder, payload)?;
        self.rows += 1;
        Ok(())
    }

    fn is_full(&self) -> bool {
        self.rows >= self.batch_size
    }

    fn flush(&mut self) -> Result<Option<RecordBatch>, Reason> {
        self.rows = 0;
        self.decoder
            .flush()
            .map_err(|e| Reason::from(e.to_string()))
    }

    fn reset(&mut self) -> Result<(), Reason> {
        self.rows = 0;
        self.decoder = build(&self.arrow, self.batch_size)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_schema_maps_to_delta_types() {
        let s = to_delta(
            r##"{"type":"object","required":["id","ts"],"properties":{
                "id":{"type":"integer"},
                "ts":{"type":"string","format":"date-time"},
                "day":{"type":["string","null"],"format":"date"},
                "score":{"type":"number"},
                "tags":{"type":"array","items":{"type":"string"}},
                "attrs":{"type":"object","additionalProperties":{"type":"integer"}},
                "address":{"$ref":"#/definitions/Address"},
                "kind":{"enum":["a","b"]},
                "note":{"oneOf":[{"type":"null"},{"type":"string"}]}},
              "definitions":{"Address":{"type":"object","properties":{"zip":{"type":"string"}}}}}"##,
        )
        .unwrap();
        let ty = |n: &str| serde_json::to_value(s.field(n).unwrap().data_type()).unwrap();
        assert_eq!(ty("id"), "long");
        assert!(!s.field("id").unwrap().is_nullable());
        assert_eq!(ty("ts"), "timestamp");
        assert_eq!(ty("day"), "date");
        assert!(s.field("day").unwrap().is_nullable());
        assert_eq!(ty("score"), "double");
        assert_eq!(ty("tags")["type"], "array");
        assert_eq!(ty("attrs")["type"], "map");
        assert_eq!(ty("address")["type"], "struct");
        assert_eq!(ty("kind"), "string");
        assert_eq!(ty("note"), "string");
        let err = to_delta(r#"{"type":"object","properties":{"x":{"type":["string","integer"]}}}"#)
            .unwrap_err();
        assert!(err.0.contains("field `x`"), "{err}");
    }

    #[test]
    fn framed_json_decodes_and_bad_records_are_isolated() {
        let mut w = JsonWriterSchema::new(
            3,
            r#"{"type":"object","required":["id"],"properties":{"id":{"type":"integer"},"name":{"type":"string"}}}"#,
            100,
        )
        .unwrap();
        let frame = |json: &str| {
            let mut v = vec![0, 0, 0, 0, 3];
            v.extend_from_slice(json.as_bytes());
            v
        };
        let values = [
            frame(r#"{"id":1,"name":"a"}"#),
            frame(r#"{"id":"#),
            frame(r#"{"name":"no id"}"#),
            frame(r#"{"id":4}"#),
        ];
        let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let out = crate::decode::registry::framed::decode_run(&mut w, &refs).unwrap();
        assert_eq!(out.good, [0, 3]);
        assert_eq!(out.bad.iter().map(|b| b.0).collect::<Vec<_>>(), [1, 2]);
        assert!(out.bad.iter().all(|(_, r)| r.starts_with("invalid JSON")));
    }
}
