//! Weight quantizers (`shared/methods/quantization.md`): round-to-nearest, PowerQuant, StatsQ
//! and the data-driven NUPES variant, one file each behind [`REGISTRY`], on plain f32 slices.
//!
//! A tensor is viewed as `rows × cols` (rows = its first dimension, the output channels of a
//! Linear `[out, in]` or Conv `[out, in, kh, kw]`; a 1-D tensor is one row). A *block* shares
//! one scale (and zero point): the whole tensor, one row, or a group of `g` entries of a row.
//! Every code is an unsigned integer below 2^bits (symmetric grids are offset by their
//! largest level), so that all methods share one packed layout ([`pack`]) and one streaming
//! driver ([`model`]).

pub mod model;
pub mod nupes;
pub mod pack;
pub mod power;
pub mod rtn;
pub mod statsq;

use serde::{Deserialize, Serialize};

/// Lowest and highest bit width.
pub const MIN_BITS: u32 = 2;
pub const MAX_BITS: u32 = 8;

/// Which entries share a scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One scale for the tensor.
    Tensor,
    /// One scale per output row.
    Channel,
    /// One scale per group of this many consecutive entries of a row.
    Group(usize),
}

impl Scope {
    /// Parses `tensor`, `channel` or `group` (the last with `group`, the group size).
    pub fn parse(s: &str, group: Option<usize>) -> Result<Scope, String> {
        match (s, group) {
            ("tensor", None) => Ok(Scope::Tensor),
            ("channel", None) => Ok(Scope::Channel),
            ("group", Some(g)) => Ok(Scope::Group(g)),
            ("group", None) => Err("scope 'group' needs a group size (--group G)".into()),
            ("tensor" | "channel", Some(_)) => Err(format!(
                "a group size is given but the scope is '{s}'; use --scope group"
            )),
            _ => Err(format!(
                "unknown scope '{s}' (expected tensor, channel or group)"
            )),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Scope::Tensor => "tensor".into(),
            Scope::Channel => "channel".into(),
            Scope::Group(g) => format!("group{g}"),
        }
    }
}

/// What to quantize with: the method's settings shared by every tensor.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    pub bits: u32,
    pub scope: Scope,
    /// Symmetric grid (RTN only may be asymmetric).
    pub symmetric: bool,
    /// Scales stored in f16 (codes are computed with the f16-rounded scale).
    pub scale_f16: bool,
    /// PowerQuant: search the exponent on a 0.05 grid instead of by golden section.
    pub grid: bool,
}

impl Spec {
    /// Symmetric, per channel, f32 scales.
    pub fn new(bits: u32, scope: Scope) -> Spec {
        Spec {
            bits,
            scope,
            symmetric: true,
            scale_f16: false,
            grid: false,
        }
    }

    /// The checks every method shares: bits in 2..=8 and a positive group size.
    pub fn check(&self) -> Result<(), String> {
        if !(MIN_BITS..=MAX_BITS).contains(&self.bits) {
            return Err(format!(
                "bits must be between {MIN_BITS} and {MAX_BITS}, not {}",
                self.bits
            ));
        }
        if let Scope::Group(0) = self.scope {
            return Err("the group size must be at least 1".into());
        }
        Ok(())
    }

    /// Largest symmetric level Q = 2^(b−1) − 1.
    pub fn qmax(&self) -> i32 {
        (1 << (self.bits - 1)) - 1
    }

    /// Number of codes 2^b.
    pub fn levels(&self) -> u32 {
        1 << self.bits
    }

    /// Entries per block for a `rows × cols` tensor; an error when a group does not divide
    /// the row.
    pub fn block_len(&self, rows: usize, cols: usize) -> Result<usize, String> {
        match self.scope {
            Scope::Tensor => Ok(rows * cols),
            Scope::Channel => Ok(cols),
            Scope::Group(g) if cols.is_multiple_of(g) => Ok(g),
            Scope::Group(g) => Err(format!(
                "the group size {g} does not divide the row length {cols}"
            )),
        }
    }

    /// Rounds a scale to what is stored.
    pub fn stored_scale(&self, s: f32) -> f32 {
        if self.scale_f16 {
            half::f16::from_f32(s).to_f32()
        } else {
            s
        }
    }
}

/// Statistics of one block, from which a method derives its parameters.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    pub max_abs: f32,
    pub min: f32,
    pub max: f32,
    pub sum_abs: f64,
    pub n: usize,
}

impl Stats {
    /// Statistics of `w` (finite values; eight independent lanes, so the loop vectorizes and
    /// the sum's order is fixed by the length alone).
    pub fn of(w: &[f32]) -> Stats {
        let mut s = Stats {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            ..Stats::default()
        };
        let (mut lo, mut hi, mut sum) = ([f32::INFINITY; 8], [f32::NEG_INFINITY; 8], [0f64; 8]);
        let mut it = w.chunks_exact(8);
        for c in &mut it {
            for k in 0..8 {
                lo[k] = if c[k] < lo[k] { c[k] } else { lo[k] };
                hi[k] = if c[k] > hi[k] { c[k] } else { hi[k] };
                sum[k] += c[k].abs() as f64;
            }
        }
        for &x in it.remainder() {
            lo[0] = lo[0].min(x);
            hi[0] = hi[0].max(x);
            sum[0] += x.abs() as f64;
        }
        s.min = lo.iter().copied().fold(f32::INFINITY, f32::min);
        s.max = hi.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        s.sum_abs = sum.iter().sum();
        s.n = w.len();
        s.max_abs = s.max.abs().max(s.min.abs());
        if w.is_empty() {
            s.min = 0.0;
            s.max = 0.0;
            s.max_abs = 0.0;
        }
        s
    }

    /// The statistics of two disjoint parts together.
    pub fn merge(self, o: Stats) -> Stats {
        if self.n == 0 {
            return o;
        }
        if o.n == 0 {
            return self;
        }
        Stats {
            max_abs: self.max_abs.max(o.max_abs),
            min: self.min.min(o.min),
            max: self.max.max(o.max),
            sum_abs: self.sum_abs + o.sum_abs,
            n: self.n + o.n,
        }
    }
}

/// One block's parameters: the (stored) scale and, for asymmetric grids, the zero point.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Block {
    pub scale: f32,
    pub zero: u8,
}

/// A quantizer: how a block's parameters follow from its statistics, and how values map to
/// codes and back. `a` is the tensor's exponent (1 for every method but PowerQuant).
pub trait Quantizer: Sync {
    /// The name users type (`--method`).
    fn name(&self) -> &'static str;
    /// Refuses settings the method does not support (after [`Spec::check`]).
    fn check(&self, spec: &Spec) -> Result<(), String>;
    /// Chooses the tensor's exponent; `error(a)` is the reconstruction error ‖W − Ŵ(a)‖² of
    /// the whole tensor at exponent `a`. Methods without one return 1.
    fn exponent(
        &self,
        _spec: &Spec,
        _error: &mut dyn FnMut(f32) -> Result<f64, engram_ckpt::Error>,
    ) -> Result<f32, engram_ckpt::Error> {
        Ok(1.0)
    }
    /// The block's parameters (the scale as stored, see [`Spec::stored_scale`]).
    fn block(&self, st: &Stats, spec: &Spec, a: f32) -> Block;
    /// Codes of `w` (one per entry, each below 2^bits).
    fn encode(&self, w: &[f32], b: Block, spec: &Spec, a: f32, codes: &mut [u8]);
    /// Values of `codes`.
    fn decode(&self, codes: &[u8], b: Block, spec: &Spec, a: f32, out: &mut [f32]);
}

/// The data-free quantizers, by name. NUPES needs calibration data and is called directly
/// ([`nupes`]).
pub const REGISTRY: &[&dyn Quantizer] = &[&rtn::Rtn, &power::PowerQuant, &statsq::StatsQ];

/// The quantizer called `name`; the error lists the known ones.
pub fn by_name(name: &str) -> Result<&'static dyn Quantizer, String> {
    REGISTRY
        .iter()
        .copied()
        .find(|q| q.name() == name)
        .ok_or_else(|| {
            let known: Vec<&str> = REGISTRY.iter().map(|q| q.name()).collect();
            format!(
                "unknown quantization method '{name}' (known: {})",
                known.join(", ")
            )
        })
}

/// `rows × cols` view of a shape: rows = the first dimension (1 for scalars and vectors).
pub fn rows_cols(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [n] => (1, *n),
        [r, rest @ ..] => (*r, rest.iter().product()),
    }
}

/// Encodes every block of a row-major run of whole rows `w` (starting at row `row0` of a
/// `rows × cols` tensor), taking each block's parameters from `global` (per-tensor scope) or
/// from its own statistics. Returns the blocks in order.
#[allow(clippy::too_many_arguments)]
pub fn encode_rows(
    q: &dyn Quantizer,
    spec: &Spec,
    a: f32,
    cols: usize,
    block_len: usize,
    global: Option<Block>,
    w: &[f32],
    codes: &mut [u8],
) -> Vec<Block> {
    let bl = if global.is_some() { cols } else { block_len };
    let mut blocks = Vec::with_capacity(w.len() / bl.max(1));
    for (x, c) in w.chunks(bl.max(1)).zip(codes.chunks_mut(bl.max(1))) {
        let b = global.unwrap_or_else(|| q.block(&Stats::of(x), spec, a));
        q.encode(x, b, spec, a, c);
        if global.is_none() {
            blocks.push(b);
        }
    }
    if let Some(b) = global {
        blocks.push(b);
    }
    blocks
}

/// Decodes a run of whole rows, block by block (`blocks` as [`encode_rows`] returned them).
pub fn decode_rows(
    q: &dyn Quantizer,
    spec: &Spec,
    a: f32,
    block_len: usize,
    blocks: &[Block],
    codes: &[u8],
    out: &mut [f32],
) {
    if blocks.len() == 1 {
        q.decode(codes, blocks[0], spec, a, out);
        return;
    }
    for ((c, o), b) in codes
        .chunks(block_len.max(1))
        .zip(out.chunks_mut(block_len.max(1)))
        .zip(blocks)
    {
        q.decode(c, *b, spec, a, o);
    }
}

/// A tensor quantized in memory: its codes (one byte each, unpacked), its blocks in row-major
/// order, and its exponent.
#[derive(Clone, Debug)]
pub struct Quantized {
    pub rows: usize,
    pub cols: usize,
    pub block_len: usize,
    pub codes: Vec<u8>,
    pub blocks: Vec<Block>,
    pub a: f32,
}

impl Quantized {
    /// The reconstruction Ŵ.
    pub fn dequantize(&self, q: &dyn Quantizer, spec: &Spec) -> Vec<f32> {
        let mut out = vec![0f32; self.codes.len()];
        decode_rows(
            q,
            spec,
            self.a,
            self.block_len,
            &self.blocks,
            &self.codes,
            &mut out,
        );
        out
    }
}

/// Quantizes a whole tensor held in memory (`w` row-major, `shape` its shape) with exponent
/// `a` (see [`Quantizer::exponent`]).
pub fn quantize_at(
    q: &dyn Quantizer,
    spec: &Spec,
    w: &[f32],
    shape: &[usize],
    a: f32,
) -> Result<Quantized, String> {
    let (rows, cols) = rows_cols(shape);
    if rows * cols != w.len() {
        return Err(format!(
            "shape {shape:?} holds {} values, not {}",
            rows * cols,
            w.len()
        ));
    }
    spec.check()?;
    q.check(spec)?;
    let block_len = spec.block_len(rows, cols)?;
    let global = (spec.scope == Scope::Tensor).then(|| q.block(&Stats::of(w), spec, a));
    let mut codes = vec![0u8; w.len()];
    let blocks = encode_rows(q, spec, a, cols, block_len, global, w, &mut codes);
    Ok(Quantized {
        rows,
        cols,
        block_len,
        codes,
        blocks,
        a,
    })
}

/// Squared reconstruction error ‖W − Ŵ(a)‖² of a tensor in memory.
pub fn error_at(
    q: &dyn Quantizer,
    spec: &Spec,
    w: &[f32],
    shape: &[usize],
    a: f32,
) -> Result<f64, String> {
    let z = quantize_at(q, spec, w, shape, a)?;
    Ok(sq_diff(w, &z.dequantize(q, spec)))
}

/// Quantizes a tensor in memory, choosing its exponent first (PowerQuant's search).
pub fn quantize(
    q: &dyn Quantizer,
    spec: &Spec,
    w: &[f32],
    shape: &[usize],
) -> Result<Quantized, String> {
    spec.check()?;
    q.check(spec)?;
    let a = q
        .exponent(spec, &mut |a| {
            error_at(q, spec, w, shape, a).map_err(engram_ckpt::Error::Invalid)
        })
        .map_err(|e| e.to_string())?;
    quantize_at(q, spec, w, shape, a)
}

/// Σ (a − b)² in f64, in eight lanes (vectorizable; the order depends on the length only).
pub fn sq_diff(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            let d = x[k] as f64 - y[k] as f64;
            acc[k] += d * d;
        }
    }
    for (x, y) in ra.iter().zip(rb) {
        let d = *x as f64 - *y as f64;
        acc[0] += d * d;
    }
    acc.iter().sum()
}

/// Σ a² in f64, in eight lanes.
pub fn sq_norm(a: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let c = a.chunks_exact(8);
    let r = c.remainder();
    for x in c {
        for k in 0..8 {
            acc[k] += x[k] as f64 * x[k] as f64;
        }
    }
    for x in r {
        acc[0] += *x as f64 * *x as f64;
    }
    acc.iter().sum()
}

/// Round half to even, as NumPy and PyTorch round (`f32::round` rounds half away from zero).
/// Adding and subtracting 1.5·2^23 rounds an f32 of magnitude below 2^22 to an integer under
/// the default round-to-nearest-even mode, exactly as `round_ties_even` does, but as two
/// vectorizable additions instead of a library call (x86-64 without SSE4.1 has no rounding
/// instruction). Magnitudes are first clamped to 2^22, beyond every code range (codes are
/// clamped to at most 2^8 afterwards), so the result of every quantizer is unchanged; the sign
/// of a zero may differ, which no code depends on. NaN stays NaN.
#[inline]
pub fn round(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    const LIMIT: f32 = 4_194_304.0; // 2^22
    (x.clamp(-LIMIT, LIMIT) + MAGIC) - MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Row-major values with a bell shape and a few outliers, reproducible.
    pub fn bell(n: usize, seed: u64) -> Vec<f32> {
        let mut r = crate::rng::Rng::new(seed);
        (0..n).map(|_| r.normal() * 0.05).collect()
    }

    /// The fast rounding equals `round_ties_even` wherever codes live (and clamps beyond).
    #[test]
    fn fast_rounding_is_round_half_to_even() {
        let mut r = crate::rng::Rng::new(8);
        let mut xs: Vec<f32> = (0..200_000).map(|_| (r.uniform() - 0.5) * 600.0).collect();
        xs.extend((-600..600).map(|k| k as f32 * 0.5)); // every tie
        xs.extend([0.49999997, -0.49999997, 1.5, -2.5, 4194303.5, -4194303.5]);
        for x in xs {
            assert_eq!(round(x), x.round_ties_even(), "{x}");
        }
        assert_eq!(round(1e30), 4_194_304.0);
        assert!(round(f32::NAN).is_nan());
    }

    #[test]
    fn scopes_parse_and_groups_must_divide() {
        assert_eq!(Scope::parse("group", Some(4)).unwrap(), Scope::Group(4));
        assert!(Scope::parse("group", None).is_err());
        assert!(Scope::parse("row", None).is_err());
        let s = Spec::new(4, Scope::Group(5));
        assert!(s.block_len(3, 12).unwrap_err().contains("does not divide"));
        assert_eq!(Spec::new(4, Scope::Group(4)).block_len(3, 12), Ok(4));
        assert!(Spec::new(1, Scope::Channel).check().is_err());
        assert!(Spec::new(9, Scope::Channel).check().is_err());
        assert!(Spec::new(4, Scope::Group(0)).check().is_err());
    }

    #[test]
    fn rows_and_cols_follow_the_first_dimension() {
        assert_eq!(rows_cols(&[8, 3, 3, 3]), (8, 27));
        assert_eq!(rows_cols(&[5]), (1, 5));
        assert_eq!(rows_cols(&[]), (1, 1));
    }

    /// Every method, scope and width: codes stay below 2^bits, and more bits never give a
    /// larger error on the same tensor (the grids are nested for RTN, close for the others).
    #[test]
    fn codes_fit_and_error_falls_with_bits() {
        let w = bell(64 * 48, 3);
        for q in REGISTRY {
            for scope in [Scope::Tensor, Scope::Channel, Scope::Group(16)] {
                let mut last = f64::INFINITY;
                for bits in 2..=8 {
                    let spec = Spec::new(bits, scope);
                    let z = quantize(*q, &spec, &w, &[64, 48]).unwrap();
                    assert!(z.codes.iter().all(|&c| (c as u32) < spec.levels()));
                    let e = sq_diff(&w, &z.dequantize(*q, &spec));
                    assert!(
                        e <= last * 1.05,
                        "{} {scope:?} {bits}: {e} > {last}",
                        q.name()
                    );
                    last = e;
                }
            }
        }
    }
}
