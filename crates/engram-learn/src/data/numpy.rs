//! NumPy arrays: `.npy` files (np.save) and `.npz` archives (np.savez, np.savez_compressed),
//! for the user's `kind = "npy"` and `kind = "npz"` data sets (NEP 1, the `.npy` format).
//!
//! `.npy`, versions 1.0, 2.0 and 3.0: the magic bytes `\x93NUMPY`, a version, the header's
//! length (2 bytes little-endian in 1.0, 4 after), a Python dict literal such as
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (60000, 784), }`, then the values in C
//! order. Read: booleans, integers of 1 to 8 bytes, float32 and float64, little-endian (or
//! single bytes). Refused, each with a message saying what to do: Fortran order, big-endian,
//! float16, complex, strings, objects, structured dtypes, a data length other than the
//! header announces.
//!
//! `.npz`: a ZIP archive with one `<name>.npy` entry per array, stored or deflated (the only
//! methods NumPy writes); each entry's CRC is checked as it is read.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{DataError, DataFile, read_maybe_gz};

/// An element type that engram reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 => 1,
            Dtype::U16 | Dtype::I16 => 2,
            Dtype::U32 | Dtype::I32 | Dtype::F32 => 4,
            Dtype::U64 | Dtype::I64 | Dtype::F64 => 8,
        }
    }

    /// NumPy's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "bool",
            Dtype::U8 => "uint8",
            Dtype::I8 => "int8",
            Dtype::U16 => "uint16",
            Dtype::I16 => "int16",
            Dtype::U32 => "uint32",
            Dtype::I32 => "int32",
            Dtype::U64 => "uint64",
            Dtype::I64 => "int64",
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
        }
    }

    pub fn is_integer(self) -> bool {
        !matches!(self, Dtype::Bool | Dtype::F32 | Dtype::F64)
    }
}

/// An array as stored: element type, shape, values as little-endian bytes in C order.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl NpyArray {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn words<const N: usize>(&self) -> impl Iterator<Item = [u8; N]> + '_ {
        self.data
            .chunks_exact(N)
            .map(|c| <[u8; N]>::try_from(c).unwrap_or([0; N]))
    }

    /// The values as f32: unsigned bytes scaled by 1/255 (images), float32 as stored, float64
    /// rounded to f32; `None` for any other type (the caller names what it accepts).
    pub fn features(&self) -> Option<Vec<f32>> {
        Some(match self.dtype {
            Dtype::U8 => self.data.iter().map(|&v| v as f32 / 255.0).collect(),
            Dtype::F32 => self.words::<4>().map(f32::from_le_bytes).collect(),
            Dtype::F64 => self
                .words::<8>()
                .map(|w| f64::from_le_bytes(w) as f32)
                .collect(),
            _ => return None,
        })
    }

    /// The values as integers (`None` unless the type is an integer; an unsigned 64-bit value
    /// above `i64::MAX` becomes -1, which every caller refuses as negative).
    pub fn integers(&self) -> Option<Vec<i64>> {
        Some(match self.dtype {
            Dtype::U8 => self.data.iter().map(|&v| v as i64).collect(),
            Dtype::I8 => self.data.iter().map(|&v| v as i8 as i64).collect(),
            Dtype::U16 => self
                .words::<2>()
                .map(|w| u16::from_le_bytes(w) as i64)
                .collect(),
            Dtype::I16 => self
                .words::<2>()
                .map(|w| i16::from_le_bytes(w) as i64)
                .collect(),
            Dtype::U32 => self
                .words::<4>()
                .map(|w| u32::from_le_bytes(w) as i64)
                .collect(),
            Dtype::I32 => self
                .words::<4>()
                .map(|w| i32::from_le_bytes(w) as i64)
                .collect(),
            Dtype::U64 => self
                .words::<8>()
                .map(|w| i64::try_from(u64::from_le_bytes(w)).unwrap_or(-1))
                .collect(),
            Dtype::I64 => self.words::<8>().map(i64::from_le_bytes).collect(),
            _ => return None,
        })
    }
}

const MAGIC: &[u8] = b"\x93NUMPY";

/// Parses the bytes of a `.npy` file; `path` (and, inside an archive, the entry) names it in
/// errors.
pub fn parse_npy(bytes: &[u8], path: &Path) -> Result<NpyArray, DataError> {
    let bad = |msg: String| DataError::corrupt(path, msg);
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad(
            "not a .npy file (it does not start with \\x93NUMPY)".into()
        ));
    }
    let (len, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => {
            return Err(bad(format!(
                "npy format version {v}.{} is not read (1.0, 2.0 and 3.0 are)",
                bytes[7]
            )));
        }
    };
    let end = start
        .checked_add(len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| bad(format!("truncated: its header announces {len} bytes")))?;
    let text = std::str::from_utf8(&bytes[start..end])
        .map_err(|_| bad("its header is not text".into()))?;
    let (dtype, shape) = parse_header(text).map_err(bad)?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &s| a.checked_mul(s))
        .and_then(|n| n.checked_mul(dtype.size()))
        .ok_or_else(|| bad(format!("absurd shape {shape:?}")))?;
    let have = bytes.len() - end;
    if have != n {
        return Err(bad(format!(
            "{} data: shape {} of {} needs {n} bytes, the file holds {have}",
            if have < n { "truncated" } else { "too much" },
            shape_text(&shape),
            dtype.name()
        )));
    }
    Ok(NpyArray {
        dtype,
        shape,
        data: bytes[end..].to_vec(),
    })
}

/// `(3, 28, 28)`, as NumPy writes a shape.
pub fn shape_text(shape: &[usize]) -> String {
    match shape {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A value of the header's Python literal.
#[derive(Debug, PartialEq)]
enum Lit {
    Str(String),
    Bool(bool),
    Int(u64),
    Seq(Vec<Lit>),
    Dict(Vec<(String, Lit)>),
}

struct Lexer<'a> {
    s: &'a [u8],
    at: usize,
}

impl Lexer<'_> {
    fn ws(&mut self) {
        while self.at < self.s.len() && self.s[self.at].is_ascii_whitespace() {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.at).copied()
    }

    fn eat(&mut self, c: u8) -> Result<(), String> {
        match self.peek() {
            Some(x) if x == c => {
                self.at += 1;
                Ok(())
            }
            other => Err(format!(
                "its header is not a Python dict: expected '{}' at byte {}, found {}",
                c as char,
                self.at,
                other.map_or("the end".into(), |x| format!("'{}'", x as char))
            )),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Lit, String> {
        if depth > 16 {
            return Err("its header nests too deep".into());
        }
        match self.peek() {
            Some(q @ (b'\'' | b'"')) => {
                self.at += 1;
                let from = self.at;
                while self.at < self.s.len() && self.s[self.at] != q {
                    self.at += 1;
                }
                let v = String::from_utf8_lossy(&self.s[from..self.at]).into_owned();
                self.eat(q)?;
                Ok(Lit::Str(v))
            }
            Some(open @ (b'(' | b'[' | b'{')) => {
                let close = match open {
                    b'(' => b')',
                    b'[' => b']',
                    _ => b'}',
                };
                self.at += 1;
                let (mut items, mut pairs) = (Vec::new(), Vec::new());
                while self.peek() != Some(close) {
                    if open == b'{' {
                        let Lit::Str(k) = self.value(depth + 1)? else {
                            return Err("its header has a key that is not a string".into());
                        };
                        self.eat(b':')?;
                        pairs.push((k, self.value(depth + 1)?));
                    } else {
                        items.push(self.value(depth + 1)?);
                    }
                    if self.peek() != Some(close) {
                        self.eat(b',')?;
                    }
                }
                self.eat(close)?;
                Ok(match open {
                    b'{' => Lit::Dict(pairs),
                    _ => Lit::Seq(items),
                })
            }
            _ => {
                let from = self.at;
                while self.at < self.s.len()
                    && (self.s[self.at].is_ascii_alphanumeric() || self.s[self.at] == b'_')
                {
                    self.at += 1;
                }
                let word = std::str::from_utf8(&self.s[from..self.at]).unwrap_or("");
                match word {
                    "True" => Ok(Lit::Bool(true)),
                    "False" => Ok(Lit::Bool(false)),
                    w => w
                        .trim_end_matches('L')
                        .parse()
                        .map(Lit::Int)
                        .map_err(|_| format!("its header holds '{w}', not a value .npy has")),
                }
            }
        }
    }
}

/// The element type and shape a `.npy` header declares.
fn parse_header(text: &str) -> Result<(Dtype, Vec<usize>), String> {
    let mut lx = Lexer {
        s: text.as_bytes(),
        at: 0,
    };
    let Lit::Dict(pairs) = lx.value(0)? else {
        return Err("its header is not a Python dict".into());
    };
    let get = |k: &str| pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    match get("fortran_order") {
        Some(Lit::Bool(false)) => {}
        Some(Lit::Bool(true)) => {
            return Err("the array is in Fortran order (fortran_order: True); save \
                        np.ascontiguousarray(x) instead"
                .into());
        }
        _ => return Err("its header lacks fortran_order".into()),
    }
    let dtype = match get("descr") {
        Some(Lit::Str(d)) => dtype(d)?,
        Some(Lit::Seq(_)) => {
            return Err(
                "the array has a structured dtype (named fields); save each field as \
                        its own array"
                    .into(),
            );
        }
        _ => return Err("its header lacks descr".into()),
    };
    let shape = match get("shape") {
        Some(Lit::Seq(dims)) => dims
            .iter()
            .map(|d| match d {
                Lit::Int(v) => usize::try_from(*v).map_err(|_| format!("shape size {v}")),
                _ => Err("its shape holds something other than sizes".into()),
            })
            .collect::<Result<Vec<usize>, String>>()?,
        _ => return Err("its header lacks shape".into()),
    };
    Ok((dtype, shape))
}

/// A `descr` string (`<f4`, `|u1`, ...) to a type engram reads, or why not.
fn dtype(descr: &str) -> Result<Dtype, String> {
    let (order, kind) = match descr.as_bytes().first() {
        Some(c @ (b'<' | b'>' | b'=' | b'|')) => (*c, &descr[1..]),
        _ => (b'=', descr),
    };
    let t = match kind {
        "b1" | "?" => Dtype::Bool,
        "u1" => Dtype::U8,
        "i1" => Dtype::I8,
        "u2" => Dtype::U16,
        "i2" => Dtype::I16,
        "u4" => Dtype::U32,
        "i4" => Dtype::I32,
        "u8" => Dtype::U64,
        "i8" => Dtype::I64,
        "f4" => Dtype::F32,
        "f8" => Dtype::F64,
        k => {
            let why = match k.as_bytes().first() {
                Some(b'O') => "object arrays (Python objects) are not read; save numbers",
                Some(b'U' | b'S' | b'a') => "string arrays are not read; map them to numbers",
                Some(b'f') => "only float32 and float64 are read; save x.astype('float32')",
                Some(b'c') => "complex numbers are not read",
                Some(b'M' | b'm') => "dates and times are not read",
                _ => "not an element type engram reads",
            };
            return Err(format!("dtype '{descr}': {why}"));
        }
    };
    if order == b'>' && t.size() > 1 {
        return Err(format!(
            "dtype '{descr}' is big-endian; save x.astype('<{kind}') (little-endian)"
        ));
    }
    if order == b'=' && cfg!(target_endian = "big") && t.size() > 1 {
        return Err(format!(
            "dtype '{descr}' (native order) on a big-endian machine"
        ));
    }
    Ok(t)
}

/// Reads a `.npy` file (gzip-compressed or not) of at most `limit` bytes.
pub fn read_npy(path: &Path, limit: u64) -> Result<(NpyArray, DataFile), DataError> {
    let (bytes, file) = read_maybe_gz(path, limit)?;
    Ok((parse_npy(&bytes, path)?, file))
}

/// An open `.npz` archive.
pub struct Npz {
    path: PathBuf,
    zip: zip::ZipArchive<std::io::Cursor<Vec<u8>>>,
    limit: u64,
    /// The archive's record.
    pub file: DataFile,
}

impl Npz {
    /// Opens an archive of at most `limit` bytes (each array, decompressed, at most `limit`
    /// too).
    pub fn open(path: &Path, limit: u64) -> Result<Npz, DataError> {
        let (bytes, file) = read_maybe_gz(path, limit)?;
        let zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| {
            DataError::corrupt(path, format!("not a readable .npz (ZIP) archive: {e}"))
        })?;
        Ok(Npz {
            path: path.to_path_buf(),
            zip,
            limit,
            file,
        })
    }

    /// The names of the arrays in the archive, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .zip
            .file_names()
            .filter_map(|n| n.ok().map(|s| s.into_owned()))
            .filter_map(|n| n.strip_suffix(".npy").map(String::from))
            .collect();
        v.sort();
        v
    }

    /// The array `name` (entry `name.npy`), or `None` if the archive has none.
    pub fn array(&mut self, name: &str) -> Result<Option<NpyArray>, DataError> {
        let entry = format!("{name}.npy");
        let at = self.path.join(&entry);
        let mut f = match self.zip.by_name(&entry) {
            Ok(f) => f,
            Err(zip::result::ZipError::FileNotFound) => return Ok(None),
            Err(e) => {
                return Err(DataError::corrupt(
                    &at,
                    format!(
                        "cannot read this entry ({e}); NumPy's np.savez and \
                         np.savez_compressed write stored or deflated entries"
                    ),
                ));
            }
        };
        if f.size() > self.limit {
            return Err(DataError::corrupt(
                &at,
                format!("holds more than {} bytes", self.limit),
            ));
        }
        let mut out = Vec::new();
        (&mut f)
            .take(self.limit + 1)
            .read_to_end(&mut out)
            .map_err(|e| DataError::corrupt(&at, format!("corrupt entry ({e})")))?;
        if out.len() as u64 > self.limit {
            return Err(DataError::corrupt(
                &at,
                format!("holds more than {} bytes", self.limit),
            ));
        }
        parse_npy(&out, &at).map(Some)
    }
}

/// The bytes of a `.npy` file holding `data` (little-endian bytes of `descr`) with `shape`:
/// for tests, which write their inputs themselves.
pub fn npy_bytes(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': {}, }}",
        shape_text(shape)
    );
    // NumPy pads the header with spaces to a multiple of 64 bytes, ending with a newline.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&[1, 0]);
    b.extend_from_slice(&(header.len() as u16).to_le_bytes());
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

/// The bytes of an `.npz` archive of `arrays` (name, `.npy` bytes), deflated as
/// np.savez_compressed writes them or stored as np.savez does: for tests and tools that
/// write data sets.
pub fn npz_bytes(arrays: &[(&str, Vec<u8>)], deflate: bool) -> Result<Vec<u8>, String> {
    use std::io::Write;
    let method = match deflate {
        true => zip::CompressionMethod::Deflated,
        false => zip::CompressionMethod::Stored,
    };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, bytes) in arrays {
        w.start_file(format!("{name}.npy"), opts)
            .map_err(|e| e.to_string())?;
        w.write_all(bytes).map_err(|e| e.to_string())?;
    }
    Ok(w.finish().map_err(|e| e.to_string())?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err<T>(r: Result<T, DataError>) -> String {
        r.map_or_else(|e| e.to_string(), |_| "<no error>".into())
    }

    #[test]
    fn headers_as_numpy_writes_them() -> Result<(), DataError> {
        let p = Path::new("a.npy");
        let data: Vec<u8> = [1.5f32, -2.0, 0.25, 8.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let a = parse_npy(&npy_bytes("<f4", &[2, 2], &data), p)?;
        assert_eq!((a.dtype, a.shape.clone()), (Dtype::F32, vec![2, 2]));
        assert_eq!(a.features(), Some(vec![1.5, -2.0, 0.25, 8.0]));
        assert_eq!(a.integers(), None);
        // A header exactly as NumPy 1.26 writes it for np.arange(3, dtype=np.int64).
        let mut b = b"\x93NUMPY\x01\x00v\x00".to_vec();
        let h = "{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }";
        b.extend_from_slice(format!("{h:<117}\n").as_bytes());
        for v in [0i64, 1, 2] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let a = parse_npy(&b, p)?;
        assert_eq!(a.shape, vec![3]);
        assert_eq!(a.integers(), Some(vec![0, 1, 2]));
        // Scalars, version 2 headers, u8 scaling, negative integers.
        let a = parse_npy(&npy_bytes("|u1", &[3], &[0, 51, 255]), p)?;
        assert_eq!(a.features(), Some(vec![0.0, 0.2, 1.0]));
        let mut v2 = npy_bytes("<i2", &[2], &[0xff, 0xff, 7, 0]);
        v2[6] = 2;
        let len = u16::from_le_bytes([v2[8], v2[9]]);
        v2.splice(8..10, u32::from(len).to_le_bytes());
        let a = parse_npy(&v2, p)?;
        assert_eq!(a.integers(), Some(vec![-1, 7]));
        Ok(())
    }

    #[test]
    fn refused_arrays_say_why() {
        let p = Path::new("bad.npy");
        let e = err(parse_npy(b"PK\x03\x04 not npy", p));
        assert!(e.contains("bad.npy") && e.contains("not a .npy"), "{e}");
        let mut fortran = npy_bytes("<f4", &[1], &[0; 4]);
        let at = fortran.windows(5).position(|w| w == b"False").unwrap_or(0);
        fortran.splice(at..at + 5, *b"True ");
        let e = err(parse_npy(&fortran, p));
        assert!(e.contains("Fortran"), "{e}");
        let e = err(parse_npy(&npy_bytes(">f4", &[1], &[0; 4]), p));
        assert!(e.contains("big-endian"), "{e}");
        let e = err(parse_npy(&npy_bytes("|O", &[1], &[0; 8]), p));
        assert!(e.contains("object"), "{e}");
        let e = err(parse_npy(&npy_bytes("<U3", &[1], &[0; 12]), p));
        assert!(e.contains("string"), "{e}");
        let e = err(parse_npy(&npy_bytes("<f2", &[1], &[0; 2]), p));
        assert!(e.contains("float32"), "{e}");
        let e = err(parse_npy(&npy_bytes("<f4", &[2], &[0; 4]), p));
        assert!(e.contains("truncated") && e.contains("(2,)"), "{e}");
        let e = err(parse_npy(&npy_bytes("<f4", &[1], &[0; 5]), p));
        assert!(e.contains("too much"), "{e}");
        let mut s = npy_bytes("<f4", &[1], &[0; 4]);
        s.truncate(20);
        let e = err(parse_npy(&s, p));
        assert!(e.contains("truncated"), "{e}");
        let structured = "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }";
        assert!(parse_header(structured).is_err_and(|e| e.contains("structured")));
        assert!(parse_header("{'descr': '<f4', 'shape': (1,)}").is_err());
        assert!(parse_header("{'descr': '<f4'").is_err());
        let e = err(parse_npy(
            &npy_bytes("<f4", &[usize::MAX, usize::MAX], &[]),
            p,
        ));
        assert!(e.contains("absurd"), "{e}");
    }
}
