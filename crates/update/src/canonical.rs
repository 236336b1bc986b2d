//! Canonical JSON (the OLPC form TUF signs): object keys sorted by their UTF-8 bytes, no
//! insignificant whitespace, strings with only `"` and `\` escaped, integers only. Two
//! implementations that agree on this form agree on every signature, which is what lets
//! the Python reference implementation verify what Rampart signs.

use serde_json::Value;

use crate::UpdateError;

/// The canonical bytes of `v`. Floating-point numbers have no canonical form and are
/// refused.
pub fn to_vec(v: &Value) -> Result<Vec<u8>, UpdateError> {
    let mut out = Vec::with_capacity(256);
    write(v, &mut out)?;
    Ok(out)
}

fn write(v: &Value, out: &mut Vec<u8>) -> Result<(), UpdateError> {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if n.is_f64() {
                return Err(UpdateError::malformed(
                    "metadata",
                    format!("{n} is not an integer; canonical JSON has integers only"),
                ));
            }
            out.extend_from_slice(n.to_string().as_bytes());
        }
        Value::String(s) => string(s, out),
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(x, out)?;
            }
            out.push(b']');
        }
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(k, out);
                out.push(b':');
                write(&o[k], out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for b in s.bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorted_compact_and_minimally_escaped() {
        let v = json!({"b": [1, true, null], "a": "x\"y\\z\n", "é": {"z": 0, "A": -5}});
        let s = String::from_utf8(to_vec(&v).expect("canonical")).expect("utf8");
        assert_eq!(
            s,
            "{\"a\":\"x\\\"y\\\\z\n\",\"b\":[1,true,null],\"é\":{\"A\":-5,\"z\":0}}"
        );
    }

    #[test]
    fn floats_are_refused() {
        assert!(to_vec(&json!({"x": 1.5})).is_err());
    }
}
