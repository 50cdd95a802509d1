//! GGUF files, the format llama.cpp loads: parsing with validation, memory-mapped reading,
//! decoding to f32 in ranges, checksums; writing is in [`write`], the block formats in
//! [`quants`].
//!
//! Layout (GGUF specification, ggml `docs/gguf.md`, version 3; version 2 reads the same way):
//! the magic `GGUF`, u32 version, u64 tensor count, u64 key-value count; the key-value pairs
//! (key: u64 length + UTF-8 bytes; u32 value type; the value, where a string is a u64 length +
//! bytes and an array a u32 element type, a u64 count and the elements); the tensor infos
//! (name; u32 dimension count; that many u64 dimensions, innermost first; u32 ggml type; u64
//! offset from the start of the data section, a multiple of the alignment); padding to the
//! alignment (`general.alignment`, default 32); the data section. All little-endian.
//!
//! Shapes are exposed outermost first, as safetensors and numpy order them: GGUF's `ne0` is
//! the last dimension. The `gguf` Python package reverses them the same way.
//!
//! Validation follows the safetensors reader's standards: every count and length is bounded
//! (by a fixed limit and by the bytes left), strings are UTF-8, keys and tensor names are
//! unique, every tensor's size is its dimensions' product times its type's size (checked
//! arithmetic; block types need `ne0` a multiple of 32), every offset is aligned, inside the
//! file and overlaps no other tensor. The parser is pure (bytes in, header out) so that it can
//! be fuzzed (`fuzz/fuzz_targets/gguf.rs`); no input makes it panic.

pub mod quants;
mod value;
pub mod write;

use crate::checksum;
use crate::dtype::{DType, decode_f32};
use crate::error::{Error, Result};
use memmap2::Mmap;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

pub(crate) use value::put_str;
pub use value::{Value, ValueType};
pub use write::{GgufWriter, TensorSpec};

/// The magic bytes at the start of every GGUF file.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// The version engram writes.
pub const VERSION: u32 = 3;
/// Data alignment without a `general.alignment` key.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// The key that sets the data alignment (a u32 power of two).
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// The key of engram's per-tensor checksums: a string, the same JSON object as in the
/// safetensors files engram writes ([`crate::checksum`]).
pub const CHECKSUM_KEY: &str = checksum::KEY;

/// Longest key or tensor name in bytes (llama.cpp itself limits tensor names to 63 bytes).
pub const MAX_NAME_BYTES: usize = 64 << 10;
/// Longest string value in bytes.
pub const MAX_STRING_BYTES: usize = 256 << 20;
/// Most key-value pairs in one file.
pub const MAX_KVS: u64 = 1 << 16;
/// Most tensors in one file.
pub const MAX_TENSORS: u64 = 1 << 20;
/// Most values in all metadata together, array elements included (a tokenizer's vocabulary,
/// scores and merges are a few hundred thousand).
pub const MAX_VALUES: usize = 1 << 23;
/// Deepest nesting of arrays.
pub const MAX_DEPTH: usize = 8;
/// Most dimensions of a tensor (GGML_MAX_DIMS).
pub const MAX_DIMS: usize = 4;

/// The tensor types engram reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
}

impl GgmlType {
    pub const ALL: [GgmlType; 5] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
    ];

    /// The type's number in a tensor info (`ggml_type`).
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q8_0 => 8,
            GgmlType::BF16 => 30,
        }
    }

    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| t.id() == id)
    }

    /// The name llama.cpp and the `gguf` package use (`Q8_0`); also the dtype name in
    /// checksums.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4_0 => "Q4_0",
        }
    }

    /// Parses a name in any case (`q8_0`, `bf16`, `f32`).
    pub fn parse(s: &str) -> Option<GgmlType> {
        let up = s.to_ascii_uppercase();
        GgmlType::ALL.into_iter().find(|t| t.name() == up)
    }

    /// Elements per block (1 for the float types).
    pub fn block_size(self) -> usize {
        if self.is_quantized() { quants::QK } else { 1 }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q8_0 => quants::Q8_0_BYTES,
            GgmlType::Q4_0 => quants::Q4_0_BYTES,
        }
    }

    pub fn is_quantized(self) -> bool {
        matches!(self, GgmlType::Q8_0 | GgmlType::Q4_0)
    }

    /// Bytes of `numel` elements (a whole number of blocks), or `None` on overflow or a
    /// partial block.
    pub fn nbytes(self, numel: usize) -> Option<usize> {
        numel
            .is_multiple_of(self.block_size())
            .then(|| (numel / self.block_size()).checked_mul(self.block_bytes()))
            .flatten()
    }

    /// The safetensors dtype of a float type.
    pub fn dtype(self) -> Option<DType> {
        match self {
            GgmlType::F32 => Some(DType::F32),
            GgmlType::F16 => Some(DType::F16),
            GgmlType::BF16 => Some(DType::BF16),
            GgmlType::Q8_0 | GgmlType::Q4_0 => None,
        }
    }

    /// The GGUF type of a safetensors float dtype that GGUF holds as it is.
    pub fn from_dtype(d: DType) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| t.dtype() == Some(d))
    }

    /// llama.cpp's `general.file_type` (`llama_ftype`) of a model mostly of this type.
    pub fn file_type(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q8_0 => 7,
            GgmlType::BF16 => 32,
        }
    }

    /// Whether a tensor of `shape` (outermost first) can be stored in this type: block types
    /// need a last dimension (`ne0`) that is a multiple of 32.
    pub fn fits_shape(self, shape: &[usize]) -> bool {
        !self.is_quantized() || shape.last().is_some_and(|d| d % quants::QK == 0)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The name of a ggml type engram does not support, for messages.
fn other_type_name(id: u32) -> &'static str {
    const NAMES: &[(u32, &str)] = &[
        (3, "Q4_1"),
        (6, "Q5_0"),
        (7, "Q5_1"),
        (9, "Q8_1"),
        (10, "Q2_K"),
        (11, "Q3_K"),
        (12, "Q4_K"),
        (13, "Q5_K"),
        (14, "Q6_K"),
        (15, "Q8_K"),
        (16, "IQ2_XXS"),
        (17, "IQ2_XS"),
        (18, "IQ3_XXS"),
        (19, "IQ1_S"),
        (20, "IQ4_NL"),
        (21, "IQ3_S"),
        (22, "IQ2_S"),
        (23, "IQ4_XS"),
        (24, "I8"),
        (25, "I16"),
        (26, "I32"),
        (27, "I64"),
        (28, "F64"),
        (29, "IQ1_M"),
        (34, "TQ1_0"),
        (35, "TQ2_0"),
        (39, "MXFP4"),
    ];
    NAMES
        .iter()
        .find(|(i, _)| *i == id)
        .map_or("unknown", |(_, n)| n)
}

/// Encodes f32 values as `ty` into `out` (`ty.nbytes(vals.len())` bytes; for block types
/// `vals` is a whole number of blocks). Err: a value the type cannot hold (block types only:
/// a non-finite value, or a block whose scale overflows f16). Float types round to nearest
/// even and never fail here; callers check their range.
pub fn encode_f32(
    ty: GgmlType,
    vals: &[f32],
    out: &mut [u8],
) -> std::result::Result<(), quants::Unrepresentable> {
    match ty {
        GgmlType::Q8_0 => quants::quantize_q8_0(vals, out),
        GgmlType::Q4_0 => quants::quantize_q4_0(vals, out),
        float => {
            let d = float.dtype().unwrap_or(DType::F32);
            crate::dtype::encode_f32(d, vals, out);
            Ok(())
        }
    }
}

/// Decodes whole blocks of `ty` (`bytes.len() == ty.nbytes(out.len())`) into `out`.
pub fn decode_blocks(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::Q8_0 => quants::dequantize_q8_0(bytes, out),
        GgmlType::Q4_0 => quants::dequantize_q4_0(bytes, out),
        float => decode_f32(float.dtype().unwrap_or(DType::F32), bytes, out),
    }
}

/// One tensor of a GGUF file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub ty: GgmlType,
    /// Outermost first (GGUF's dimensions reversed).
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

/// A parsed and validated GGUF header.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub version: u32,
    pub alignment: usize,
    /// Key-value pairs in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensors in file order.
    pub tensors: Vec<TensorInfo>,
    /// Offset of the data section from the start of the file.
    pub data_start: usize,
}

impl Header {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// A defect of a GGUF file; the caller adds the file name.
#[derive(Clone, Debug, PartialEq)]
pub struct ParseError {
    pub tensor: Option<String>,
    pub msg: String,
}

type Parsed<T> = std::result::Result<T, ParseError>;

fn err<T>(msg: impl Into<String>) -> Parsed<T> {
    Err(ParseError {
        tensor: None,
        msg: msg.into(),
    })
}

fn terr<T>(name: &str, msg: impl Into<String>) -> Parsed<T> {
    Err(ParseError {
        tensor: Some(name.to_string()),
        msg: msg.into(),
    })
}

/// A bounds-checked reader over the header bytes.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
    /// Values read so far (against [`MAX_VALUES`]).
    values: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.b.len() - self.at
    }

    fn take(&mut self, n: usize, what: &str) -> Parsed<&'a [u8]> {
        if n > self.left() {
            return err(format!(
                "header truncated: {what} at byte {} needs {n} bytes, the file has {} left",
                self.at,
                self.left()
            ));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn arr<const N: usize>(&mut self, what: &str) -> Parsed<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Parsed<u32> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }

    fn u64(&mut self, what: &str) -> Parsed<u64> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }

    /// A string of at most `max` bytes; `what` names it in errors.
    fn string(&mut self, max: usize, what: &str) -> Parsed<String> {
        let n = self.u64(what)?;
        if n > max as u64 {
            return err(format!(
                "{what} is {n} bytes long, beyond the limit of {max} (corrupt or hostile file)"
            ));
        }
        if n > self.left() as u64 {
            return err(format!(
                "{what} is {n} bytes long, but the file has {} bytes left",
                self.left()
            ));
        }
        let bytes = self.take(n as usize, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => err(format!("{what} is not valid UTF-8 ({e})")),
        }
    }

    /// A value of type `t` of key `key`, arrays nested at most [`MAX_DEPTH`] deep.
    fn value(&mut self, t: ValueType, key: &str, depth: usize) -> Parsed<Value> {
        self.values += 1;
        if self.values > MAX_VALUES {
            return err(format!(
                "metadata holds more than {MAX_VALUES} values (at key '{key}')"
            ));
        }
        let what = format!("value of key '{key}'");
        Ok(match t {
            ValueType::U8 => Value::U8(self.arr::<1>(&what)?[0]),
            ValueType::I8 => Value::I8(self.arr::<1>(&what)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.arr(&what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.arr(&what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.arr(&what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.arr(&what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.arr(&what)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.arr(&what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.arr(&what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.arr(&what)?)),
            ValueType::Bool => match self.arr::<1>(&what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return err(format!("{what}: boolean byte {b}, expected 0 or 1")),
            },
            ValueType::String => Value::String(self.string(MAX_STRING_BYTES, &what)?),
            ValueType::Array => {
                if depth >= MAX_DEPTH {
                    return err(format!("{what}: arrays nested more than {MAX_DEPTH} deep"));
                }
                let et = self.u32(&what)?;
                let et = ValueType::from_id(et).ok_or_else(|| ParseError {
                    tensor: None,
                    msg: format!("{what}: unknown array element type {et}"),
                })?;
                let n = self.u64(&what)?;
                let room = (self.left() / et.min_bytes()) as u64;
                if n > room || n > MAX_VALUES as u64 {
                    return err(format!(
                        "{what}: array of {n} elements cannot fit in the {} bytes left",
                        self.left()
                    ));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(et, key, depth + 1)?);
                }
                Value::Array(et, items)
            }
        })
    }
}

/// Parses and validates a whole GGUF file image (the header and the tensors' places; the
/// data is not read).
pub fn parse(bytes: &[u8]) -> Parsed<Header> {
    if bytes.is_empty() {
        return err("file is empty (0 bytes); not a GGUF file");
    }
    let mut c = Cursor {
        b: bytes,
        at: 0,
        values: 0,
    };
    let magic = c.take(4, "the magic")?;
    if magic != MAGIC {
        return err(format!(
            "does not start with the GGUF magic (found {:02x?}); not a GGUF file",
            magic
        ));
    }
    let raw = c.arr::<4>("the version")?;
    let version = u32::from_le_bytes(raw);
    if version == 1 {
        return err("GGUF version 1 (before August 2023) is not supported; use version 2 or 3");
    }
    if version != 2 && version != 3 {
        if matches!(u32::from_be_bytes(raw), 2 | 3) {
            return err("big-endian GGUF files are not supported");
        }
        return err(format!(
            "GGUF version {version} is not supported (engram reads versions 2 and 3)"
        ));
    }
    let n_tensors = c.u64("the tensor count")?;
    let n_kv = c.u64("the key-value count")?;
    // Each tensor info takes at least 24 bytes, each pair at least 13.
    if n_tensors > MAX_TENSORS || n_tensors > (c.left() / 24) as u64 {
        return err(format!(
            "tensor count {n_tensors} is implausible (limit {MAX_TENSORS}, and {} header bytes left)",
            c.left()
        ));
    }
    if n_kv > MAX_KVS || n_kv > (c.left() / 13) as u64 {
        return err(format!(
            "key-value count {n_kv} is implausible (limit {MAX_KVS}, and {} header bytes left)",
            c.left()
        ));
    }

    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_kv as usize);
    let mut keys = HashSet::new();
    for i in 0..n_kv {
        let key = c.string(MAX_NAME_BYTES, &format!("key {i}"))?;
        let t = c.u32(&format!("the type of key '{key}'"))?;
        let t = ValueType::from_id(t).ok_or_else(|| ParseError {
            tensor: None,
            msg: format!("key '{key}': unknown value type {t}"),
        })?;
        let v = c.value(t, &key, 0)?;
        if !keys.insert(key.clone()) {
            return err(format!("key '{key}' appears twice"));
        }
        metadata.push((key, v));
    }
    let alignment = match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some((_, Value::U32(a))) if a.is_power_of_two() => *a as usize,
        Some((_, v)) => {
            return err(format!(
                "key '{ALIGNMENT_KEY}' is {v:?}; it must be a u32 power of two"
            ));
        }
    };

    let mut tensors = Vec::with_capacity(n_tensors as usize);
    let mut names = HashSet::new();
    for i in 0..n_tensors {
        let name = c.string(MAX_NAME_BYTES, &format!("the name of tensor {i}"))?;
        if name.is_empty() {
            return err(format!("tensor {i} has an empty name"));
        }
        if !names.insert(name.clone()) {
            return terr(&name, "appears twice");
        }
        let n_dims = c.u32(&format!("the dimension count of tensor '{name}'"))?;
        if n_dims as usize > MAX_DIMS {
            return terr(
                &name,
                format!("has {n_dims} dimensions; GGUF allows at most {MAX_DIMS}"),
            );
        }
        let mut shape = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = c.u64(&format!("the dimensions of tensor '{name}'"))?;
            match usize::try_from(d) {
                Ok(d) if d <= i64::MAX as usize => shape.push(d),
                _ => return terr(&name, format!("dimension {d} is beyond range")),
            }
        }
        shape.reverse();
        let tid = c.u32(&format!("the type of tensor '{name}'"))?;
        let Some(ty) = GgmlType::from_id(tid) else {
            return terr(
                &name,
                format!(
                    "has ggml type {tid} ({}); engram reads F32, F16, BF16, Q8_0 and Q4_0",
                    other_type_name(tid)
                ),
            );
        };
        let offset = c.u64(&format!("the offset of tensor '{name}'"))?;
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| ParseError {
                tensor: Some(name.clone()),
                msg: format!("shape {shape:?} overflows the element count"),
            })?;
        if !ty.fits_shape(&shape) {
            return terr(
                &name,
                format!(
                    "is {ty} with shape {shape:?}; its last dimension must be a multiple of {}",
                    quants::QK
                ),
            );
        }
        let Some(nbytes) = ty.nbytes(numel) else {
            return terr(
                &name,
                format!("{numel} elements of {ty} overflow the byte count"),
            );
        };
        if !offset.is_multiple_of(alignment as u64) {
            return terr(
                &name,
                format!("data offset {offset} is not a multiple of the alignment {alignment}"),
            );
        }
        let end = usize::try_from(offset)
            .ok()
            .and_then(|s| s.checked_add(nbytes).map(|e| (s, e)));
        let Some((start, end)) = end.filter(|&(_, e)| e <= bytes.len()) else {
            return terr(
                &name,
                format!(
                    "data at offset {offset} ({nbytes} bytes) runs past the end of the file ({} bytes)",
                    bytes.len()
                ),
            );
        };
        tensors.push(TensorInfo {
            name,
            ty,
            shape,
            start,
            end,
        });
    }

    // The data section starts at the next multiple of the alignment.
    let data_start = c.at.next_multiple_of(alignment);
    let len = bytes.len();
    let data_start = if data_start > len && tensors.iter().all(|t| t.end == t.start) {
        len
    } else {
        data_start
    };
    let section = len.saturating_sub(data_start);
    if data_start > len && !tensors.is_empty() {
        return err(format!(
            "the data section would start at byte {data_start}, past the end of the file ({len} bytes)"
        ));
    }
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| (tensors[i].start, tensors[i].end));
    let mut prev: Option<usize> = None;
    for &i in &order {
        let t = &tensors[i];
        if t.end > section {
            return terr(
                &t.name,
                format!(
                    "data (bytes {}..{} of the data section) runs past the end of the file (the data section holds {section} bytes)",
                    t.start, t.end
                ),
            );
        }
        if t.start == t.end {
            continue;
        }
        if let Some(p) = prev
            && t.start < tensors[p].end
        {
            return terr(
                &t.name,
                format!(
                    "data (bytes {}..{}) overlaps tensor '{}' (bytes {}..{})",
                    t.start,
                    t.end,
                    crate::names::esc(&tensors[p].name),
                    tensors[p].start,
                    tensors[p].end
                ),
            );
        }
        prev = Some(i);
    }
    Ok(Header {
        version,
        alignment,
        metadata,
        tensors,
        data_start,
    })
}

/// Whether `path` names a GGUF file (ends in `.gguf`, any case).
pub fn is_gguf_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// One GGUF file, memory-mapped and validated; tensors are borrowed views into it.
pub struct GgufFile {
    path: PathBuf,
    /// Registers the file as an input of this process while it is open.
    _input: crate::commit::OpenInput,
    mmap: Mmap,
    header: Header,
    by_name: HashMap<String, usize>,
}

impl GgufFile {
    /// Opens and validates `path` (a regular file; a FIFO or device is refused before it is
    /// opened). The data is not read: tensors are paged in on access. Checksums are checked by
    /// [`GgufFile::verify`].
    pub fn open(path: &Path) -> Result<GgufFile> {
        let meta = crate::file::regular_file(path, "a .gguf file")?;
        if meta.len() == 0 {
            return Err(Error::format(
                path,
                "file is empty (0 bytes); not a GGUF file",
            ));
        }
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let input = crate::commit::OpenInput::register(path, &meta);
        // SAFETY: the map is read-only. Another process truncating the file while we read it
        // would fault; the accepted contract of every mmap-based reader (llama.cpp's too).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let header = parse(&mmap).map_err(|e| match e.tensor {
            Some(t) => Error::tensor(path, &t, e.msg),
            None => Error::format(path, e.msg),
        })?;
        let by_name = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            path: path.to_path_buf(),
            _input: input,
            mmap,
            header,
            by_name,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    pub fn metadata(&self) -> &[(String, Value)] {
        &self.header.metadata
    }

    /// The value of metadata key `key`.
    pub fn value(&self, key: &str) -> Option<&Value> {
        self.header.get(key)
    }

    pub fn len(&self) -> usize {
        self.header.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.header.tensors.is_empty()
    }

    pub fn len_bytes(&self) -> u64 {
        self.mmap.len() as u64
    }

    /// Bytes of tensor data (padding excluded).
    pub fn data_bytes(&self) -> u64 {
        self.tensors()
            .iter()
            .map(|t| (t.end - t.start) as u64)
            .sum()
    }

    pub fn tensor_at(&self, i: usize) -> GgufTensor<'_> {
        let info = &self.header.tensors[i];
        let base = self.header.data_start;
        GgufTensor {
            info,
            bytes: &self.mmap[base + info.start..base + info.end],
            path: &self.path,
            map: &self.mmap,
        }
    }

    pub fn get(&self, name: &str) -> Option<GgufTensor<'_>> {
        self.by_name.get(name).map(|&i| self.tensor_at(i))
    }

    /// Verifies the per-tensor checksums engram stores under [`CHECKSUM_KEY`]; a file without
    /// them (written by another tool) passes. Every tensor must be listed, and every listed
    /// tensor present with the recorded name, type, shape and bytes.
    pub fn verify(&self) -> Result<()> {
        let Some(v) = self.value(CHECKSUM_KEY) else {
            return Ok(());
        };
        let text = v.as_str().ok_or_else(|| {
            Error::format(
                &self.path,
                format!("key '{CHECKSUM_KEY}' is a {:?}, not a string", v.ty()),
            )
        })?;
        let want = checksum::decode(text).map_err(|e| Error::format(&self.path, e))?;
        checksum::verify_listed(
            &self.path,
            &want,
            self.tensors().iter().map(|t| t.name.as_str()),
            &|n| self.get(n).is_some(),
            &|n| self.get(n).map(|t| t.crc()),
        )
    }
}

/// The checksum of a GGUF tensor: [`checksum::tensor_crc`]'s hash over its name, type name,
/// shape (outermost first) and bytes.
pub fn tensor_crc(name: &str, ty: GgmlType, shape: &[usize], bytes: &[u8]) -> u32 {
    checksum::crc_of(name, ty.name(), shape, bytes)
}

/// A borrowed tensor of a GGUF file: its info and its raw bytes.
#[derive(Clone, Copy)]
pub struct GgufTensor<'a> {
    pub info: &'a TensorInfo,
    pub bytes: &'a [u8],
    pub path: &'a Path,
    map: &'a Mmap,
}

impl<'a> GgufTensor<'a> {
    pub fn name(&self) -> &'a str {
        &self.info.name
    }
    pub fn ty(&self) -> GgmlType {
        self.info.ty
    }
    /// Outermost first.
    pub fn shape(&self) -> &'a [usize] {
        &self.info.shape
    }
    pub fn numel(&self) -> usize {
        self.info.numel()
    }

    pub fn crc(&self) -> u32 {
        tensor_crc(self.name(), self.ty(), self.shape(), self.bytes)
    }

    /// Decodes elements `[start, start + out.len())` into `out` as f32. Any range works; a
    /// range that starts or ends inside a block decodes that block whole and keeps its part.
    pub fn read_f32_into(&self, start: usize, out: &mut [f32]) -> Result<()> {
        let end = start
            .checked_add(out.len())
            .filter(|&e| e <= self.numel())
            .ok_or_else(|| {
                Error::tensor(
                    self.path,
                    self.name(),
                    format!(
                        "read of elements {start}..{} beyond its {} elements",
                        start.saturating_add(out.len()),
                        self.numel()
                    ),
                )
            })?;
        let ty = self.ty();
        let (bs, bb) = (ty.block_size(), ty.block_bytes());
        let (mut at, mut o) = (start, 0);
        while at < end {
            let (blk, within) = (at / bs, at % bs);
            let whole = (end - at) / bs;
            if within == 0 && whole > 0 {
                let n = whole * bs;
                decode_blocks(
                    ty,
                    &self.bytes[blk * bb..(blk + whole) * bb],
                    &mut out[o..o + n],
                );
                at += n;
                o += n;
            } else {
                let mut tmp = [0f32; quants::QK];
                let tmp = &mut tmp[..bs];
                decode_blocks(ty, &self.bytes[blk * bb..(blk + 1) * bb], tmp);
                let n = (bs - within).min(end - at);
                out[o..o + n].copy_from_slice(&tmp[within..within + n]);
                at += n;
                o += n;
            }
        }
        Ok(())
    }

    /// The whole tensor as f32 (one allocation of numel floats).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let mut v = vec![0f32; self.numel()];
        self.read_f32_into(0, &mut v)?;
        Ok(v)
    }

    /// Bytes of elements `[start, end)` (both multiples of the block size, or `end` the
    /// tensor's end), for copying without decoding.
    pub fn raw(&self, start: usize, end: usize) -> &'a [u8] {
        let ty = self.ty();
        let a = start / ty.block_size() * ty.block_bytes();
        let b = end.div_ceil(ty.block_size()) * ty.block_bytes();
        &self.bytes[a.min(self.bytes.len())..b.min(self.bytes.len())]
    }

    /// Unmaps the whole pages of elements `[start, end)` from this process, as
    /// [`crate::TensorView::release`] does: a hint that bounds resident memory in streaming
    /// passes; the pages stay in the page cache and fault back in unchanged.
    pub fn release(&self, start: usize, end: usize) {
        const PAGE: usize = 4096;
        let ty = self.ty();
        let end = end.min(self.numel());
        if start >= end {
            return;
        }
        let base = self.bytes.as_ptr() as usize - self.map.as_ptr() as usize;
        let lo = (base + start / ty.block_size() * ty.block_bytes()).next_multiple_of(PAGE);
        let hi = (base + end / ty.block_size() * ty.block_bytes()) / PAGE * PAGE;
        if hi > lo {
            // SAFETY: as in `TensorView::release`: a read-only shared file mapping never written
            // through; MADV_DONTNEED only drops page-table entries, later reads fault in the
            // same file contents.
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, lo, hi - lo)
            };
        }
    }
}

#[cfg(test)]
mod tests;
