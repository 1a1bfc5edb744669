//! Protobuf messages into Arrow builders, field by field.

use super::*;

fn builder<'a, T: 'static>(b: &'a mut dyn ArrayBuilder, what: &str) -> Result<&'a mut T, Reason> {
    b.as_any_mut()
        .downcast_mut::<T>()
        .ok_or_else(|| Reason(format!("internal: no {what} builder")))
}

/// Append the fields of `msg` to the children of `s` (not `s`'s own validity).
pub(super) fn append_message(
    s: &mut StructBuilder,
    fields: &Fields,
    msg: &DynamicMessage,
) -> Result<(), Reason> {
    for (i, (field, pf)) in fields.iter().zip(msg.descriptor().fields()).enumerate() {
        let value = if pf.supports_presence() && !msg.has_field(&pf) {
            None
        } else {
            Some(msg.get_field(&pf))
        };
        let child = s
            .field_builders_mut()
            .get_mut(i)
            .ok_or("internal: missing child builder")?;
        append_value(child.as_mut(), field, &pf.kind(), value.as_deref())
            .map_err(|e| Reason::from(format!("field `{}`: {e}", pf.name())))?;
    }
    Ok(())
}

fn append_value(
    b: &mut dyn ArrayBuilder,
    field: &Field,
    kind: &Kind,
    value: Option<&Value>,
) -> Result<(), Reason> {
    match (field.data_type(), value) {
        (A::Struct(children), v) => {
            let s = builder::<StructBuilder>(b, "struct")?;
            match v {
                Some(Value::Message(m)) => {
                    append_message(s, children, m)?;
                    s.append(true);
                }
                None => {
                    append_nulls(s, children)?;
                    s.append_null();
                }
                Some(other) => {
                    return Err(Reason::from(format!("expected a message, got {other:?}")));
                }
            }
        }
        (A::List(element), v) => {
            let l = builder::<ListBuilder<Box<dyn ArrayBuilder>>>(b, "list")?;
            match v {
                Some(Value::List(items)) => {
                    for item in items {
                        append_value(l.values().as_mut(), element, kind, Some(item))?;
                    }
                    l.append(true);
                }
                None => l.append(false),
                Some(other) => return Err(Reason::from(format!("expected a list, got {other:?}"))),
            }
        }
        (A::Map(entries, _), v) => append_map(b, entries, kind, v)?,
        (_, Some(Value::Message(wrapper))) => append_wrapper(b, field, kind, wrapper)?,
        (t, v) => append_scalar(b, t, kind, v)?,
    }
    Ok(())
}

/// A map field: entries sorted by key (Arrow maps keep order; Protobuf's do not).
fn append_map(
    b: &mut dyn ArrayBuilder,
    entries: &Field,
    kind: &Kind,
    v: Option<&Value>,
) -> Result<(), Reason> {
    let A::Struct(kv) = entries.data_type() else {
        return Err(Reason::from("internal: map entries are not a struct"));
    };
    let Kind::Message(entry) = kind else {
        return Err(Reason::from("internal: map without entry message"));
    };
    let (kf, vf) = (entry.map_entry_key_field(), entry.map_entry_value_field());
    let m = builder::<MapBuilder<Box<dyn ArrayBuilder>, Box<dyn ArrayBuilder>>>(b, "map")?;
    match v {
        Some(Value::Map(map)) => {
            let mut sorted: Vec<(&MapKey, &Value)> = map.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            for (k, val) in sorted {
                let key: Value = k.clone().into();
                append_value(m.keys().as_mut(), &kv[0], &kf.kind(), Some(&key))?;
                append_value(m.values().as_mut(), &kv[1], &vf.kind(), Some(val))?;
            }
            m.append(true).map_err(|e| Reason::from(e.to_string()))?;
        }
        None => m.append(false).map_err(|e| Reason::from(e.to_string()))?,
        Some(other) => return Err(Reason::from(format!("expected a map, got {other:?}"))),
    }
    Ok(())
}

/// A message in a scalar column: `google.protobuf.Timestamp` or a wrapper type.
fn append_wrapper(
    b: &mut dyn ArrayBuilder,
    field: &Field,
    kind: &Kind,
    wrapper: &DynamicMessage,
) -> Result<(), Reason> {
    let Kind::Message(md) = kind else {
        return Err(Reason::from("internal: message without descriptor"));
    };
    if md.full_name() == "google.protobuf.Timestamp" {
        let secs = wrapper
            .get_field_by_name("seconds")
            .and_then(|v| v.as_i64())
            .unwrap_or(0);
        let nanos = wrapper
            .get_field_by_name("nanos")
            .and_then(|v| v.as_i32())
            .unwrap_or(0);
        let micros = secs
            .checked_mul(1_000_000)
            .and_then(|m| m.checked_add(i64::from(nanos) / 1000))
            .ok_or("timestamp out of range")?;
        builder::<TimestampMicrosecondBuilder>(b, "timestamp")?.append_value(micros);
    } else {
        let inner = wrapper.get_field_by_name("value");
        let inner_kind = md
            .get_field_by_name("value")
            .map(|f| f.kind())
            .ok_or("internal: wrapper without value")?;
        append_value(b, field, &inner_kind, inner.as_deref())?;
    }
    Ok(())
}

pub(super) fn append_nulls(s: &mut StructBuilder, fields: &Fields) -> Result<(), Reason> {
    for (i, f) in fields.iter().enumerate() {
        let child = s
            .field_builders_mut()
            .get_mut(i)
            .ok_or("internal: missing child builder")?;
        match f.data_type() {
            A::Struct(children) => {
                let c = builder::<StructBuilder>(child.as_mut(), "struct")?;
                append_nulls(c, children)?;
                c.append_null();
            }
            A::List(_) => {
                builder::<ListBuilder<Box<dyn ArrayBuilder>>>(child.as_mut(), "list")?.append(false)
            }
            A::Map(_, _) => builder::<MapBuilder<Box<dyn ArrayBuilder>, Box<dyn ArrayBuilder>>>(
                child.as_mut(),
                "map",
            )?
            .append(false)
            .map_err(|e| Reason::from(e.to_string()))?,
            t => append_scalar(child.as_mut(), t, &Kind::Bool, None)?,
        }
    }
    Ok(())
}

fn append_scalar(
    b: &mut dyn ArrayBuilder,
    t: &A,
    kind: &Kind,
    v: Option<&Value>,
) -> Result<(), Reason> {
    match t {
        A::Boolean => {
            builder::<BooleanBuilder>(b, "bool")?.append_option(v.and_then(Value::as_bool))
        }
        A::Int32 => builder::<Int32Builder>(b, "int")?.append_option(v.and_then(Value::as_i32)),
        A::Int64 => {
            let n =
                match v {
                    None => None,
                    Some(Value::I64(n)) => Some(*n),
                    Some(Value::I32(n)) => Some(i64::from(*n)),
                    Some(Value::U32(n)) => Some(i64::from(*n)),
                    Some(Value::U64(n)) => Some(i64::try_from(*n).map_err(|_| {
                        Reason::from(format!("uint64 {n} does not fit a long column"))
                    })?),
                    Some(other) => {
                        return Err(Reason::from(format!("expected an integer, got {other:?}")));
                    }
                };
            builder::<Int64Builder>(b, "long")?.append_option(n);
        }
        A::Float32 => {
            builder::<Float32Builder>(b, "float")?.append_option(v.and_then(Value::as_f32))
        }
        A::Float64 => {
            builder::<Float64Builder>(b, "double")?.append_option(v.and_then(Value::as_f64))
        }
        A::Binary => {
            builder::<BinaryBuilder>(b, "binary")?.append_option(v.and_then(Value::as_bytes))
        }
        A::Utf8 => {
            let s = builder::<StringBuilder>(b, "string")?;
            match (v, kind) {
                (None, _) => s.append_null(),
                (Some(Value::String(x)), _) => s.append_value(x),
                (Some(Value::EnumNumber(n)), Kind::Enum(e)) => match e.get_value(*n) {
                    Some(ev) => s.append_value(ev.name()),
                    None => s.append_value(n.to_string()),
                },
                (Some(other), _) => {
                    return Err(Reason::from(format!("expected a string, got {other:?}")));
                }
            }
        }
        A::Timestamp(_, _) => {
            builder::<TimestampMicrosecondBuilder>(b, "timestamp")?.append_option(None::<i64>)
        }
        other => return Err(Reason::from(format!("internal: no builder for {other}"))),
    }
    Ok(())
}
