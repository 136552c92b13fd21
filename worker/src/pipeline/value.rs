//! Conversions between decoded JSON and CEL values, built directly (no serde round trip).

use std::collections::HashMap;
use std::sync::Arc;

use cel::Value as CelValue;
use cel::objects::{Key, Map as CelMap};
use serde_json::{Map, Number, Value};

/// The CEL value of a JSON value: integers become `int` (or `uint` above `i64::MAX`),
/// other numbers `double`.
pub fn json_to_cel(value: &Value) -> CelValue {
    match value {
        Value::Null => CelValue::Null,
        Value::Bool(boolean) => CelValue::Bool(*boolean),
        Value::Number(number) => number_to_cel(number),
        Value::String(text) => CelValue::String(Arc::new(text.clone())),
        Value::Array(items) => CelValue::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Value::Object(fields) => object_to_cel(fields.iter()),
    }
}

/// A CEL map of the given fields.
pub fn object_to_cel<'a>(fields: impl Iterator<Item = (&'a String, &'a Value)>) -> CelValue {
    let map: HashMap<Key, CelValue> = fields
        .map(|(name, value)| (Key::String(Arc::new(name.clone())), json_to_cel(value)))
        .collect();
    CelValue::Map(CelMap { map: Arc::new(map) })
}

fn number_to_cel(number: &Number) -> CelValue {
    if let Some(integer) = number.as_i64() {
        CelValue::Int(integer)
    } else if let Some(unsigned) = number.as_u64() {
        CelValue::UInt(unsigned)
    } else {
        CelValue::Float(number.as_f64().unwrap_or(f64::NAN))
    }
}

/// Why a CEL result cannot be written as JSON.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the result has CEL type {type_name}, which has no JSON form")]
pub struct NotJson {
    /// The CEL type.
    pub type_name: String,
}

/// The JSON form of a CEL result: timestamps become RFC 3339 strings; NaN, infinities,
/// durations, bytes and functions have none.
pub fn cel_to_json(value: &CelValue) -> Result<Value, NotJson> {
    let not_json = || NotJson {
        type_name: value.type_of().to_string(),
    };
    Ok(match value {
        CelValue::Null => Value::Null,
        CelValue::Bool(boolean) => Value::Bool(*boolean),
        CelValue::Int(integer) => Value::from(*integer),
        CelValue::UInt(unsigned) => Value::from(*unsigned),
        CelValue::Float(float) => Value::Number(Number::from_f64(*float).ok_or_else(not_json)?),
        CelValue::String(text) => Value::String(text.as_str().to_string()),
        CelValue::List(items) => {
            Value::Array(items.iter().map(cel_to_json).collect::<Result<_, _>>()?)
        }
        CelValue::Map(map) => {
            let mut fields = Map::new();
            for (key, item) in map.map.iter() {
                let name = match key {
                    Key::String(text) => text.as_str().to_string(),
                    Key::Int(integer) => integer.to_string(),
                    Key::Uint(unsigned) => unsigned.to_string(),
                    Key::Bool(boolean) => boolean.to_string(),
                };
                fields.insert(name, cel_to_json(item)?);
            }
            Value::Object(fields)
        }
        CelValue::Timestamp(time) => Value::String(time.to_rfc3339()),
        _ => return Err(not_json()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_survives_a_round_trip_through_cel() {
        let values = [
            json!(null),
            json!(true),
            json!(-3),
            json!(u64::MAX),
            json!(2.5),
            json!("text"),
            json!([1, "a", [false]]),
            json!({"a": {"b": [1.5, null]}, "c": "d"}),
        ];
        for value in values {
            assert_eq!(
                cel_to_json(&json_to_cel(&value)),
                Ok(value.clone()),
                "{value}"
            );
        }
    }

    #[test]
    fn refuses_values_with_no_json_form() {
        let cases = [
            CelValue::Float(f64::NAN),
            CelValue::Float(f64::INFINITY),
            CelValue::Bytes(Arc::new(vec![1])),
        ];
        for value in cases {
            assert!(cel_to_json(&value).is_err(), "{value:?}");
        }
    }
}
