//! The reply values this crate reads (`COMMAND` replies) and builds (`ACL GETUSER`, `ACL LOG`).
//!
//! A plain tree, so the crate needs no protocol library: the proxy converts its RESP2/RESP3
//! frames to and from it. Maps and sets are kept apart from arrays because RESP3 shows them
//! apart; in RESP2 a map is a flat array of key, value, key, value and a set is an array.

/// One RESP value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bulk(Vec<u8>),
    Simple(String),
    Error(String),
    Integer(i64),
    /// RESP3 double; Redis 7.0 sends it as a bulk string (`%.17g`) to RESP2 clients.
    Double(f64),
    Null,
    Array(Vec<Value>),
    Set(Vec<Value>),
    Map(Vec<(Value, Value)>),
}

impl Value {
    pub fn bulk(bytes: impl Into<Vec<u8>>) -> Value {
        Value::Bulk(bytes.into())
    }

    /// The bytes of a bulk or simple string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bulk(b) => Some(b),
            Value::Simple(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Value::Integer(i) => Some(*i),
            Value::Bulk(_) | Value::Simple(_) => std::str::from_utf8(self.as_bytes()?).ok()?.parse().ok(),
            _ => None,
        }
    }

    /// The elements of an array or a set.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) | Value::Set(items) => Some(items),
            _ => None,
        }
    }

    /// The value under `field` in a RESP3 map or a RESP2 flat field/value array.
    pub fn field(&self, field: &str) -> Option<&Value> {
        match self {
            Value::Map(pairs) => {
                { pairs.iter().find(|(k, _)| k.as_bytes().is_some_and(|k| k.eq_ignore_ascii_case(field.as_bytes()))) }
                    .map(|(_, v)| v)
            }
            Value::Array(items) => items
                .chunks_exact(2)
                .find(|pair| pair[0].as_bytes().is_some_and(|k| k.eq_ignore_ascii_case(field.as_bytes())))
                .map(|pair| &pair[1]),
            _ => None,
        }
    }
}
