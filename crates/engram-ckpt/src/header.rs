//! Parsing and validation of a safetensors header.
//!
//! Layout: 8 bytes little-endian header length N, N bytes of JSON, then the data section.
//! The JSON maps tensor names to `{dtype, shape, data_offsets: [start, end]}` (offsets
//! relative to the data section) plus an optional `__metadata__` map of strings.
//!
//! Our own parser rather than the `safetensors` crate's: we need an error that names the
//! tensor and the defect for every check, duplicate-name detection (a JSON map silently keeps
//! the last duplicate), and the FP8 dtypes. It is pure (bytes in, header out) so that it can
//! be fuzzed (`fuzz/fuzz_targets/header.rs`).

use crate::dtype::DType;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};

/// Headers larger than this are refused (the reference implementation uses the same bound).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Byte range within the data section.
    pub start: usize,
    pub end: usize,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Header {
    /// Tensors in data-section order.
    pub tensors: Vec<TensorInfo>,
    pub metadata: BTreeMap<String, String>,
    /// Offset of the data section from the start of the file (8 + N).
    pub data_start: usize,
}

/// A defect found in a header; the caller adds the file name.
#[derive(Clone, Debug, PartialEq)]
pub struct HeaderError {
    pub tensor: Option<String>,
    pub msg: String,
}

fn err(msg: impl Into<String>) -> HeaderError {
    HeaderError {
        tensor: None,
        msg: msg.into(),
    }
}

fn terr(name: &str, msg: impl Into<String>) -> HeaderError {
    HeaderError {
        tensor: Some(name.to_string()),
        msg: msg.into(),
    }
}

/// Reads the header length from the first 8 bytes and checks it against the file size.
pub fn header_len(prefix: &[u8], file_len: u64) -> Result<usize, HeaderError> {
    if file_len == 0 {
        return Err(err("file is empty (0 bytes); not a safetensors file"));
    }
    if file_len < 8 || prefix.len() < 8 {
        return Err(err(format!(
            "file is {file_len} bytes, too short for the 8-byte safetensors header length"
        )));
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&prefix[..8]);
    let n = u64::from_le_bytes(a);
    if n == 0 {
        return Err(err(
            "header length is 0; a safetensors header holds at least '{}'",
        ));
    }
    if n > MAX_HEADER_BYTES {
        return Err(err(format!(
            "header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit (corrupt or not a safetensors file)"
        )));
    }
    if n > file_len - 8 {
        return Err(err(format!(
            "header length {n} runs past the end of the file ({} bytes after the length field)",
            file_len - 8
        )));
    }
    Ok(n as usize)
}

/// JSON object entries in file order, keeping duplicates so that we can refuse them.
pub(crate) struct Entries(pub(crate) Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Entries, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = m.next_entry::<String, Value>()? {
                    v.push((k, val));
                }
                Ok(Entries(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// Parses `json` (the N header bytes) and validates every tensor against a data section of
/// `data_len` bytes.
pub fn parse_header(json: &[u8], data_len: u64) -> Result<Header, HeaderError> {
    let text =
        std::str::from_utf8(json).map_err(|e| err(format!("header is not valid UTF-8: {e}")))?;
    // As the reference: the header starts with '{' (no BOM, no leading space) and is valid
    // JSON, which allows trailing spaces (the padding writers add) but not NUL bytes.
    if !text.starts_with('{') {
        return Err(err("header is not a JSON object (does not start with '{')"));
    }
    let Entries(entries) =
        serde_json::from_str(text).map_err(|e| err(format!("header is not valid JSON: {e}")))?;

    let mut seen = HashSet::new();
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, val) in entries {
        if !seen.insert(name.clone()) {
            return Err(terr(&name, "duplicate tensor name in header"));
        }
        if name == "__metadata__" {
            let Value::Object(map) = val else {
                return Err(err("__metadata__ is not a JSON object"));
            };
            for (k, v) in map {
                let Value::String(s) = v else {
                    return Err(err(format!("__metadata__ value for '{k}' is not a string")));
                };
                metadata.insert(k, s);
            }
            continue;
        }
        tensors.push(parse_tensor(&name, &val)?);
    }

    // Offsets: within the data section, matching shape x dtype size, not overlapping.
    for t in &tensors {
        let expected = t
            .shape
            .iter()
            .try_fold(t.dtype.size(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| terr(&t.name, format!("shape {:?} overflows", t.shape)))?;
        if t.end < t.start {
            return Err(terr(
                &t.name,
                format!("data_offsets [{}, {}] end before start", t.start, t.end),
            ));
        }
        if t.end as u64 > data_len {
            return Err(terr(
                &t.name,
                format!(
                    "data_offsets [{}, {}] out of bounds: the data section has {data_len} bytes",
                    t.start, t.end
                ),
            ));
        }
        if t.end - t.start != expected {
            return Err(terr(
                &t.name,
                format!(
                    "data_offsets [{}, {}] span {} bytes but shape {:?} of {} needs {expected}",
                    t.start,
                    t.end,
                    t.end - t.start,
                    t.shape,
                    t.dtype
                ),
            ));
        }
    }
    tensors.sort_by(|a, b| (a.start, a.end, &a.name).cmp(&(b.start, b.end, &b.name)));
    // Like the reference implementation, the tensors must tile the data section: each starts
    // where the previous one ends, and the last ends at the end of the file. A hole or trailing
    // bytes could carry a second payload (a polyglot file) that no tensor accounts for.
    let mut at = 0usize;
    let mut last: Option<&TensorInfo> = None;
    for t in &tensors {
        if let Some(p) = last.filter(|_| t.start < at) {
            return Err(terr(
                &t.name,
                format!(
                    "data_offsets [{}, {}] overlap tensor '{}' at [{}, {}]",
                    t.start, t.end, p.name, p.start, p.end
                ),
            ));
        }
        if t.start > at {
            return Err(terr(
                &t.name,
                format!(
                    "data_offsets [{}, {}] leave a hole of {} unindexed bytes at [{at}, {}]",
                    t.start,
                    t.end,
                    t.start - at,
                    t.start
                ),
            ));
        }
        at = t.end;
        if t.end > t.start {
            last = Some(t);
        }
    }
    if at as u64 != data_len {
        return Err(err(format!(
            "{} trailing bytes after the last tensor (data section of {data_len} bytes, tensors end at {at})",
            data_len - at as u64
        )));
    }
    Ok(Header {
        tensors,
        metadata,
        data_start: 0,
    })
}

fn parse_tensor(name: &str, val: &Value) -> Result<TensorInfo, HeaderError> {
    let Value::Object(obj) = val else {
        return Err(terr(name, "entry is not a JSON object"));
    };
    let dtype_s = obj
        .get("dtype")
        .ok_or_else(|| terr(name, "missing 'dtype'"))?
        .as_str()
        .ok_or_else(|| terr(name, "'dtype' is not a string"))?;
    let dtype = DType::ALL
        .into_iter()
        .find(|d| d.name() == dtype_s)
        .ok_or_else(|| terr(name, format!("unknown dtype '{dtype_s}'")))?;
    let shape = obj
        .get("shape")
        .ok_or_else(|| terr(name, "missing 'shape'"))?
        .as_array()
        .ok_or_else(|| terr(name, "'shape' is not an array"))?
        .iter()
        .map(|d| {
            d.as_u64()
                .and_then(|d| usize::try_from(d).ok())
                .ok_or_else(|| {
                    terr(
                        name,
                        format!("shape entry {d} is not a non-negative integer"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let offs = obj
        .get("data_offsets")
        .ok_or_else(|| terr(name, "missing 'data_offsets'"))?
        .as_array()
        .ok_or_else(|| terr(name, "'data_offsets' is not an array"))?;
    let [start, end] = offs.as_slice() else {
        return Err(terr(name, "'data_offsets' must hold exactly two numbers"));
    };
    let off = |v: &Value| {
        v.as_u64()
            .and_then(|d| usize::try_from(d).ok())
            .ok_or_else(|| {
                terr(
                    name,
                    format!("data offset {v} is not a non-negative integer"),
                )
            })
    };
    Ok(TensorInfo {
        name: name.to_string(),
        dtype,
        shape,
        start: off(start)?,
        end: off(end)?,
    })
}

/// Parses a whole file image (length prefix, header, data); the fuzz target's entry point.
pub fn parse_file_bytes(bytes: &[u8]) -> Result<Header, HeaderError> {
    let n = header_len(bytes, bytes.len() as u64)?;
    let data_len = (bytes.len() - 8 - n) as u64;
    let mut h = parse_header(&bytes[8..8 + n], data_len)?;
    h.data_start = 8 + n;
    Ok(h)
}

/// Serializes a header: tensors in the given order (their offsets already assigned), padded
/// with spaces so that the data section starts 8-byte aligned.
pub fn serialize_header(tensors: &[TensorInfo], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    if !metadata.is_empty() {
        let m: serde_json::Map<String, Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        map.insert("__metadata__".into(), Value::Object(m));
    }
    for t in tensors {
        map.insert(
            t.name.clone(),
            serde_json::json!({
                "dtype": t.dtype.name(),
                "shape": t.shape,
                "data_offsets": [t.start, t.end],
            }),
        );
    }
    let mut json = serde_json::to_vec(&Value::Object(map)).unwrap_or_default();
    // Pad to a multiple of 8 (low three bits clear).
    while (8 + json.len()) & 7 != 0 {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(json: &str, data: usize) -> Vec<u8> {
        let mut v = (json.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v.extend(std::iter::repeat_n(0u8, data));
        v
    }

    #[test]
    fn parses_a_valid_header() {
        let j = r#"{"__metadata__":{"a":"b"},"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"BF16","shape":[2],"data_offsets":[16,20]}}"#;
        let h = parse_file_bytes(&file(j, 20)).unwrap();
        assert_eq!(h.tensors.len(), 2);
        assert_eq!(h.tensors[0].name, "w");
        assert_eq!(h.metadata["a"], "b");
        assert_eq!(h.data_start, 8 + j.len());
    }

    #[test]
    fn refuses_duplicates_overlap_and_bad_sizes() {
        let dup = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        let e = parse_file_bytes(&file(dup, 8)).unwrap_err();
        assert!(e.msg.contains("duplicate"), "{e:?}");
        let ovl = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
        let e = parse_file_bytes(&file(ovl, 12)).unwrap_err();
        assert!(e.msg.contains("overlap"), "{e:?}");
        // An empty tensor inside another one is refused too (the reference refuses it), and
        // sorted between two overlapping ones it does not hide the overlap.
        let hidden = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[6,10]}}"#;
        let e = parse_file_bytes(&file(hidden, 12)).unwrap_err();
        assert!(e.msg.contains("overlap tensor 'a'"), "{e:?}");
        assert_eq!(e.tensor.as_deref(), Some("e"));
        let hidden = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[6,10]}}"#;
        let e = parse_file_bytes(&file(hidden, 10)).unwrap_err();
        assert!(e.msg.contains("overlap tensor 'a'"), "{e:?}");
        assert_eq!(e.tensor.as_deref(), Some("b"));
        let size = r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        let e = parse_file_bytes(&file(size, 8)).unwrap_err();
        assert!(e.msg.contains("needs 12"), "{e:?}");
        assert_eq!(e.tensor.as_deref(), Some("a"));
    }

    #[test]
    fn refuses_holes_and_trailing_bytes() {
        // Polyglot files: bytes no tensor accounts for, between tensors, before the first
        // one, or after the last one.
        let hole = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;
        let e = parse_file_bytes(&file(hole, 12)).unwrap_err();
        assert!(e.msg.contains("hole of 4"), "{e:?}");
        assert_eq!(e.tensor.as_deref(), Some("b"));
        let front = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        let e = parse_file_bytes(&file(front, 8)).unwrap_err();
        assert!(e.msg.contains("hole of 4"), "{e:?}");
        let tail = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let e = parse_file_bytes(&file(tail, 9)).unwrap_err();
        assert!(e.msg.contains("5 trailing bytes"), "{e:?}");
        let empty = r#"{"__metadata__":{"k":"v"}}"#;
        assert!(parse_file_bytes(&file(empty, 0)).is_ok());
        assert!(parse_file_bytes(&file(empty, 1)).is_err());
        assert!(parse_file_bytes(&file(tail, 4)).is_ok());
    }

    #[test]
    fn serialized_headers_parse_back() {
        let t = vec![TensorInfo {
            name: "x".into(),
            dtype: DType::F16,
            shape: vec![3],
            start: 0,
            end: 6,
        }];
        let mut md = BTreeMap::new();
        md.insert("k".into(), "v".into());
        let mut bytes = serialize_header(&t, &md);
        assert_eq!(bytes.len() % 8, 0);
        bytes.extend_from_slice(&[0; 6]);
        let h = parse_file_bytes(&bytes).unwrap();
        assert_eq!(h.tensors, t);
        assert_eq!(h.metadata, md);
    }
}
