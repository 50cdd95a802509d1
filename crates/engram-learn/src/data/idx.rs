//! The IDX file format (LeCun's MNIST files, Fashion-MNIST, the user's `kind = "idx"` data):
//! one reader for every IDX file engram reads.
//!
//! Layout: a big-endian header — two zero bytes, a type code, the number of dimensions d,
//! then d sizes of 4 bytes each — followed by exactly the announced number of values. Only
//! unsigned bytes (type code `0x08`: magic `0x0000_08dd`) are read; other type codes,
//! a short header, truncated or over-long data are [`DataError::Corrupt`] naming the file.

use std::path::Path;

use super::DataError;

/// The IDX type code of unsigned bytes.
pub const UBYTE: u8 = 0x08;

/// An IDX array of unsigned bytes: `dims` sizes, values row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The name of an IDX type code, for messages.
fn type_name(code: u8) -> &'static str {
    match code {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0B => "16-bit integer",
        0x0C => "32-bit integer",
        0x0D => "32-bit float",
        0x0E => "64-bit float",
        _ => "unknown",
    }
}

/// Parses an (uncompressed) IDX file of unsigned bytes. `dims`, when given, is the number of
/// dimensions the file must have (3 for images, 1 for labels); `what` names the file's role
/// in messages ("images", "labels"); `path` names the file.
pub fn parse(
    bytes: &[u8],
    path: &Path,
    dims: Option<u8>,
    what: &str,
) -> Result<IdxArray, DataError> {
    let short = |header: usize| {
        DataError::corrupt(
            path,
            format!(
                "IDX {what} header needs {header} bytes, the file has {}",
                bytes.len()
            ),
        )
    };
    let least = 4 + 4 * dims.map_or(0, usize::from);
    if bytes.len() < 4 {
        return Err(short(least.max(4)));
    }
    let magic = be_u32(bytes, 0);
    if let Some(d) = dims {
        let want = u32::from(UBYTE) << 8 | u32::from(d);
        if magic != want {
            return Err(DataError::corrupt(
                path,
                format!("bad IDX magic 0x{magic:08x}, expected 0x{want:08x} (ubyte {what})"),
            ));
        }
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(DataError::corrupt(
            path,
            format!("bad IDX magic 0x{magic:08x}: not an IDX file (it starts with two zero bytes)"),
        ));
    }
    if bytes[2] != UBYTE {
        return Err(DataError::corrupt(
            path,
            format!(
                "IDX type code 0x{:02x} ({}) is not read: engram reads unsigned-byte IDX files \
                 (0x08)",
                bytes[2],
                type_name(bytes[2])
            ),
        ));
    }
    let d = usize::from(bytes[3]);
    if d == 0 {
        return Err(DataError::corrupt(
            path,
            "IDX header announces 0 dimensions",
        ));
    }
    let header = 4 + 4 * d;
    if bytes.len() < header {
        return Err(short(header));
    }
    let sizes: Vec<usize> = (0..d).map(|k| be_u32(bytes, 4 + 4 * k) as usize).collect();
    let want = sizes
        .iter()
        .try_fold(1usize, |acc, &s| acc.checked_mul(s))
        .and_then(|n| n.checked_add(header))
        .ok_or_else(|| {
            let shape: Vec<String> = sizes.iter().map(usize::to_string).collect();
            DataError::corrupt(path, format!("absurd header {}", shape.join("x")))
        })?;
    check_len(bytes.len(), want, path)?;
    Ok(IdxArray {
        dims: sizes,
        data: bytes[header..].to_vec(),
    })
}

fn check_len(have: usize, want: usize, path: &Path) -> Result<(), DataError> {
    if have < want {
        Err(DataError::corrupt(
            path,
            format!("truncated: the header announces {want} bytes, the file has {have}"),
        ))
    } else if have > want {
        Err(DataError::corrupt(
            path,
            format!(
                "{} trailing bytes after the {want} the header announces",
                have - want
            ),
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(code: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, code, dims.len() as u8];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(data);
        b
    }

    fn err(r: Result<IdxArray, DataError>) -> String {
        r.map_or_else(|e| e.to_string(), |_| "<no error>".into())
    }

    #[test]
    fn any_number_of_dimensions() -> Result<(), DataError> {
        let p = Path::new("a.idx");
        let a = parse(&idx(UBYTE, &[2, 3], &[1, 2, 3, 4, 5, 6]), p, None, "x")?;
        assert_eq!(a.dims, vec![2, 3]);
        assert_eq!(a.data, vec![1, 2, 3, 4, 5, 6]);
        let a = parse(&idx(UBYTE, &[2, 1, 2, 1], &[9; 4]), p, None, "x")?;
        assert_eq!(a.dims, vec![2, 1, 2, 1]);
        let a = parse(&idx(UBYTE, &[3], &[0, 1, 2]), p, Some(1), "labels")?;
        assert_eq!(a.data, vec![0, 1, 2]);
        Ok(())
    }

    #[test]
    fn bad_files_are_named_errors() {
        let p = Path::new("b.idx");
        let e = err(parse(&idx(0x0D, &[1], &[0; 4]), p, None, "x"));
        assert!(e.contains("b.idx") && e.contains("32-bit float"), "{e}");
        let e = err(parse(&idx(UBYTE, &[1], &[0]), p, Some(3), "images"));
        assert!(e.contains("magic") && e.contains("0x00000803"), "{e}");
        let e = err(parse(&[1, 0, 8, 1, 0, 0, 0, 0], p, None, "x"));
        assert!(e.contains("not an IDX file"), "{e}");
        let e = err(parse(&idx(UBYTE, &[], &[]), p, None, "x"));
        assert!(e.contains("0 dimensions"), "{e}");
        let e = err(parse(&idx(UBYTE, &[4], &[0; 3]), p, None, "x"));
        assert!(e.contains("truncated"), "{e}");
        let e = err(parse(&idx(UBYTE, &[2], &[0; 3]), p, None, "x"));
        assert!(e.contains("1 trailing bytes"), "{e}");
        let e = err(parse(&[0, 0, 8, 2, 0, 0], p, None, "x"));
        assert!(e.contains("header needs 12 bytes"), "{e}");
        let e = err(parse(
            &idx(UBYTE, &[u32::MAX, u32::MAX, u32::MAX], &[]),
            p,
            None,
            "x",
        ));
        assert!(e.contains("absurd") || e.contains("truncated"), "{e}");
    }
}
