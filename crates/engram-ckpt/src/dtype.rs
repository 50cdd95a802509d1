//! Element types of safetensors files and their conversion to and from f32.
//!
//! Every float dtype is delivered to the weight-space code as f32 and written back from f32;
//! integer and boolean tensors are only ever copied byte for byte.

use crate::fp8;
use half::f16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    F8E4M3,
    F8E5M2,
    I64,
    I32,
    I16,
    I8,
    U64,
    U32,
    U16,
    U8,
    Bool,
}

impl DType {
    pub const ALL: [DType; 15] = [
        DType::F64,
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::F8E4M3,
        DType::F8E5M2,
        DType::I64,
        DType::I32,
        DType::I16,
        DType::I8,
        DType::U64,
        DType::U32,
        DType::U16,
        DType::U8,
        DType::Bool,
    ];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 | DType::U64 => 8,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::F8E4M3 | DType::F8E5M2 | DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// The name used in safetensors headers.
    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "F64",
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F8E4M3 => "F8_E4M3",
            DType::F8E5M2 => "F8_E5M2",
            DType::I64 => "I64",
            DType::I32 => "I32",
            DType::I16 => "I16",
            DType::I8 => "I8",
            DType::U64 => "U64",
            DType::U32 => "U32",
            DType::U16 => "U16",
            DType::U8 => "U8",
            DType::Bool => "BOOL",
        }
    }

    /// Parses a header name; also accepts the lower-case forms users type on the command line
    /// (`bf16`, `f8_e4m3`, `fp8_e4m3`, `float32`).
    pub fn parse(s: &str) -> Option<DType> {
        let up = s.to_ascii_uppercase();
        let up = match up.as_str() {
            "FLOAT32" | "FP32" => "F32",
            "FLOAT16" | "FP16" | "HALF" => "F16",
            "BFLOAT16" => "BF16",
            "FLOAT64" | "FP64" | "DOUBLE" => "F64",
            "FP8_E4M3" | "F8E4M3" | "E4M3" => "F8_E4M3",
            "FP8_E5M2" | "F8E5M2" | "E5M2" => "F8_E5M2",
            other => other,
        };
        DType::ALL.into_iter().find(|d| d.name() == up)
    }

    /// A float dtype by name (`f32`, `bf16`, `f8_e4m3`, ...), as users give an output dtype;
    /// integer and boolean types are refused. The message is the one every front end shows.
    pub fn parse_float(s: &str) -> std::result::Result<DType, String> {
        match DType::parse(s) {
            Some(d) if d.is_float() => Ok(d),
            Some(d) => Err(format!(
                "dtype {d} is not a float type; use f32, f16, bf16, f64, f8_e4m3 or f8_e5m2"
            )),
            None => Err(format!(
                "unknown dtype '{s}'; use f32, f16, bf16, f64, f8_e4m3 or f8_e5m2"
            )),
        }
    }

    pub fn is_float(self) -> bool {
        matches!(
            self,
            DType::F64 | DType::F32 | DType::F16 | DType::BF16 | DType::F8E4M3 | DType::F8E5M2
        )
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Decodes `bytes` (little-endian elements of `dtype`) into `out`, one f32 per element.
/// `bytes.len()` must equal `out.len() * dtype.size()`; callers slice both accordingly.
pub fn decode_f32(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    debug_assert_eq!(bytes.len(), out.len() * dtype.size());
    match dtype {
        // `as_chunks`: see `decode_f32_vec`.
        DType::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.as_chunks::<4>().0) {
                *o = f32::from_le_bytes(*b);
            }
        }
        DType::BF16 => decode_bf16(bytes, out),
        DType::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.as_chunks::<2>().0) {
                *o = f16::from_bits(u16::from_le_bytes(*b)).to_f32();
            }
        }
        DType::F64 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                *o = f64::from_le_bytes(a) as f32;
            }
        }
        DType::F8E4M3 => {
            let lut = fp8::e4m3_table();
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = lut[b as usize];
            }
        }
        DType::F8E5M2 => {
            let lut = fp8::e5m2_table();
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = lut[b as usize];
            }
        }
        DType::I64 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                *o = i64::from_le_bytes(a) as f32;
            }
        }
        DType::I32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32;
            }
        }
        DType::I16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = i16::from_le_bytes([b[0], b[1]]) as f32;
            }
        }
        DType::I8 => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = b as i8 as f32;
            }
        }
        DType::U64 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                *o = u64::from_le_bytes(a) as f32;
            }
        }
        DType::U32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32;
            }
        }
        DType::U16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = u16::from_le_bytes([b[0], b[1]]) as f32;
            }
        }
        DType::U8 | DType::Bool => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = b as f32;
            }
        }
    }
}

/// [`decode_f32`] into a new vector, which the common float dtypes fill without zeroing it
/// first (a streaming merge decodes every input chunk: the zeroing was a pass of its own).
pub fn decode_f32_vec(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        // `as_chunks` makes the element size a constant of the loop, which then vectorizes;
        // with `chunks_exact` the size stayed a run-time stride and the loop decoded one value
        // per iteration (a quarter of a Task Arithmetic merge's time, `perf`).
        DType::F32 => bytes
            .as_chunks::<4>()
            .0
            .iter()
            .map(|b| f32::from_le_bytes(*b))
            .collect(),
        DType::BF16 => decode_bf16_vec(bytes),
        DType::F16 => bytes
            .as_chunks::<2>()
            .0
            .iter()
            .map(|b| f16::from_bits(u16::from_le_bytes(*b)).to_f32())
            .collect(),
        _ => {
            let mut v = vec![0f32; bytes.len() / dtype.size()];
            decode_f32(dtype, bytes, &mut v);
            v
        }
    }
}

/// Encodes f32 values into `out` as little-endian elements of the float dtype `dtype`
/// (round to nearest even; FP8 saturates to its largest finite value).
/// Panics only on a programming error: a non-float dtype or mismatched lengths.
pub fn encode_f32(dtype: DType, vals: &[f32], out: &mut [u8]) {
    assert_eq!(out.len(), vals.len() * dtype.size(), "encode_f32 length");
    // `as_chunks_mut`, as in `decode_f32_vec`: a constant element size, so the loops vectorize.
    match dtype {
        DType::F32 => {
            for (o, v) in out.as_chunks_mut::<4>().0.iter_mut().zip(vals) {
                *o = v.to_le_bytes();
            }
        }
        DType::BF16 => encode_bf16(vals, out),
        DType::F16 => {
            for (o, v) in out.as_chunks_mut::<2>().0.iter_mut().zip(vals) {
                *o = f16::from_f32(*v).to_bits().to_le_bytes();
            }
        }
        DType::F64 => {
            for (o, v) in out.as_chunks_mut::<8>().0.iter_mut().zip(vals) {
                *o = (*v as f64).to_le_bytes();
            }
        }
        DType::F8E4M3 => {
            for (o, v) in out.iter_mut().zip(vals) {
                *o = fp8::encode_e4m3(*v);
            }
        }
        DType::F8E5M2 => {
            for (o, v) in out.iter_mut().zip(vals) {
                *o = fp8::encode_e5m2(*v);
            }
        }
        other => panic!("encode_f32: {other} is not a float dtype"),
    }
}

// bf16 is the common dtype of checkpoints: its loops also run 8 lanes wide where the CPU has
// AVX2 (`perf` on a Task Arithmetic merge: decoding and encoding a quarter of the samples
// with 4 lanes).
#[inline(always)]
fn decode_bf16_vec_any(bytes: &[u8]) -> Vec<f32> {
    bytes
        .as_chunks::<2>()
        .0
        .iter()
        .map(|b| f32::from_bits((u16::from_le_bytes(*b) as u32) << 16))
        .collect()
}

crate::avx2_dispatch!(fn decode_bf16_vec(bytes: &[u8]) -> Vec<f32> = decode_bf16_vec_any;);

/// [`decode_bf16_vec_any`] into a slice (the chunk pieces of the merge kernels).
#[inline(always)]
fn decode_bf16_any(bytes: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(bytes.as_chunks::<2>().0) {
        *o = f32::from_bits((u16::from_le_bytes(*b) as u32) << 16);
    }
}

crate::avx2_dispatch!(fn decode_bf16(bytes: &[u8], out: &mut [f32]) = decode_bf16_any;);

#[inline(always)]
fn encode_bf16_any(vals: &[f32], out: &mut [u8]) {
    for (o, v) in out.as_chunks_mut::<2>().0.iter_mut().zip(vals) {
        *o = bf16_bits(*v).to_le_bytes();
    }
}

crate::avx2_dispatch!(fn encode_bf16(vals: &[f32], out: &mut [u8]) = encode_bf16_any;);

/// `half::bf16::from_f32(v).to_bits()` without branches, so that encoding loops vectorize:
/// round to nearest even; a NaN keeps its high bits with the quiet bit set.
#[inline]
pub fn bf16_bits(v: f32) -> u16 {
    let x = v.to_bits();
    let nan = (x & 0x7fff_ffff) > 0x7f80_0000;
    let up = ((x & 0x8000) != 0) & ((x & 0x17fff) != 0);
    let rounded = (x >> 16) + u32::from(up);
    (if nan { (x >> 16) | 0x40 } else { rounded }) as u16
}

/// Rounds each value to what `dtype` can represent (encode then decode), in place.
pub fn round_through(dtype: DType, vals: &mut [f32]) {
    let mut buf = vec![0u8; vals.len() * dtype.size()];
    encode_f32(dtype, vals, &mut buf);
    decode_f32(dtype, &buf, vals);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector decoder agrees with the slice decoder on every dtype.
    #[test]
    fn decode_vec_equals_decode_into() {
        let bytes: Vec<u8> = (0..64u32).map(|i| (i * 37 + 11) as u8).collect();
        for dt in [
            DType::F32,
            DType::BF16,
            DType::F16,
            DType::F64,
            DType::F8E4M3,
            DType::I32,
            DType::U8,
        ] {
            let mut want = vec![0f32; bytes.len() / dt.size()];
            decode_f32(dt, &bytes, &mut want);
            let got = decode_f32_vec(dt, &bytes);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{dt}");
        }
    }

    /// Every 16-bit pattern decodes exactly (bf16: the high half of the f32, NaN payloads
    /// kept; f16: as `half` converts it), through both decoders (their loops are vectorized
    /// now; a lane mix-up would show here), and f32 bytes come back as they were.
    #[test]
    fn every_half_pattern_decodes_exactly() {
        let bytes: Vec<u8> = (0..=u16::MAX).flat_map(|b| b.to_le_bytes()).collect();
        let bf: Vec<u32> = (0..=u16::MAX).map(|b| u32::from(b) << 16).collect();
        let hf: Vec<u32> = (0..=u16::MAX)
            .map(|b| f16::from_bits(b).to_f32().to_bits())
            .collect();
        for (dt, want) in [(DType::BF16, &bf), (DType::F16, &hf)] {
            let first_wrong = |v: &[f32]| {
                v.iter()
                    .zip(want.iter())
                    .position(|(a, b)| a.to_bits() != *b)
            };
            assert_eq!(first_wrong(&decode_f32_vec(dt, &bytes)), None, "{dt}");
            let mut into = vec![0f32; 1 << 16];
            decode_f32(dt, &bytes, &mut into);
            assert_eq!(first_wrong(&into), None, "{dt}");
        }
        let f: Vec<u32> = (0..1000u32).map(|i| i.wrapping_mul(0x9e37_79b9)).collect();
        let fb: Vec<u8> = f.iter().flat_map(|v| v.to_le_bytes()).collect();
        let got: Vec<u32> = decode_f32_vec(DType::F32, &fb)
            .iter()
            .map(|x| x.to_bits())
            .collect();
        assert_eq!(got, f);
    }

    /// The encoding loops (vectorized) put each value's bytes at its own place: a buffer
    /// encoded at once equals the values encoded one by one through `half` and `to_le_bytes`.
    #[test]
    fn encoding_a_buffer_equals_encoding_each_value() {
        let vals: Vec<f32> = (0..1027u32)
            .map(|i| f32::from_bits(i.wrapping_mul(0x9e37_79b9) ^ 0x3f80_0000))
            .collect();
        for dt in [DType::F32, DType::BF16, DType::F16, DType::F64] {
            let mut got = vec![0u8; vals.len() * dt.size()];
            encode_f32(dt, &vals, &mut got);
            let want: Vec<u8> = vals
                .iter()
                .flat_map(|&v| match dt {
                    DType::F32 => v.to_le_bytes().to_vec(),
                    DType::BF16 => half::bf16::from_f32(v).to_bits().to_le_bytes().to_vec(),
                    DType::F16 => f16::from_f32(v).to_bits().to_le_bytes().to_vec(),
                    _ => f64::from(v).to_le_bytes().to_vec(),
                })
                .collect();
            assert_eq!(got, want, "{dt}");
        }
    }

    /// The branch-free bf16 rounding is `half`'s, bit for bit: every high half with a spread
    /// of low halves (ties, halfway points, NaNs, infinities, subnormals).
    #[test]
    fn bf16_rounding_is_halfs() {
        let lows = [
            0u32, 1, 0x7fff, 0x8000, 0x8001, 0xffff, 0x4000, 0xc000, 0x1234,
        ];
        for hi in 0u32..=0xffff {
            for &lo in &lows {
                let v = f32::from_bits((hi << 16) | lo);
                assert_eq!(
                    bf16_bits(v),
                    half::bf16::from_f32(v).to_bits(),
                    "{:#x}",
                    v.to_bits()
                );
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::parse(d.name()), Some(d));
        }
        assert_eq!(DType::parse("bf16"), Some(DType::BF16));
        assert_eq!(DType::parse("fp8_e4m3"), Some(DType::F8E4M3));
        assert_eq!(DType::parse("F7"), None);
    }

    #[test]
    fn float_round_trips() {
        let vals = [0.0f32, 1.0, -2.5, 3.0e-3, 65504.0, -0.0];
        for d in [DType::F32, DType::F64, DType::F16, DType::BF16] {
            let mut bytes = vec![0u8; vals.len() * d.size()];
            encode_f32(d, &vals, &mut bytes);
            let mut back = vec![0f32; vals.len()];
            decode_f32(d, &bytes, &mut back);
            for (a, b) in vals.iter().zip(&back) {
                assert!((a - b).abs() <= a.abs() * 0.01, "{d}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn unsigned_integers_decode() {
        let mut out = [0f32; 2];
        decode_f32(DType::U16, &[0xff, 0xff, 1, 0], &mut out);
        assert_eq!(out, [65535.0, 1.0]);
        decode_f32(DType::U32, &[0, 0, 0, 0x80, 2, 0, 0, 0], &mut out);
        assert_eq!(out, [2147483648.0, 2.0]);
        let mut b = vec![0xffu8; 8];
        b.extend_from_slice(&3u64.to_le_bytes());
        decode_f32(DType::U64, &b, &mut out);
        assert_eq!(out, [u64::MAX as f32, 3.0]);
        assert!(!DType::U32.is_float());
        assert_eq!(DType::parse("u64"), Some(DType::U64));
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 lies exactly between two bf16 values: ties go to the even mantissa (1.0).
        let mut v = [1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8)];
        round_through(DType::BF16, &mut v);
        assert_eq!(v, [1.0, 1.0 + 4.0 * 2f32.powi(-8)]);
    }
}
