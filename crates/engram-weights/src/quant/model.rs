//! Quantizing a whole checkpoint, streamed, into engram's packed low-bit safetensors layout
//! (docs/quantization.md), and dequantizing it back to float.
//!
//! A quantized tensor `W` becomes `W.qweight` (U8, `[rows, packed row bytes]`, see [`pack`]),
//! `W.scales` (F32 or F16, `[rows, blocks per row]`, or `[1, 1]` per tensor) and, for
//! asymmetric grids, `W.zeros` (U8, same shape). The `engram.quant` metadata entry holds the
//! method, the settings and, per tensor, its original shape and dtype and its exponent.
//! Biases, norms, embeddings (names with `embed`, `wte`, `wpe`) and other 1-D tensors stay in
//! float unless `quantize_all`; non-float tensors are copied (and refused by `quantize_all`).
//! Tensors are visited one at a time, in chunks of whole rows in parallel, so memory is a
//! few chunks per thread whatever the model; the output commits atomically.

use super::pack::{pack_row, row_bytes, unpack_row};
use super::{Block, Quantizer, Scope, Spec, Stats, by_name, decode_rows, encode_rows, rows_cols};
use crate::stream::CHUNK_ELEMS;
use engram_ckpt::{DType, Error, Model, ModelWriter, Result, TensorSpec, TensorView, WriteOptions};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The metadata key of a quantized checkpoint.
pub const META_KEY: &str = "engram.quant";
/// Version of the layout.
pub const FORMAT: u32 = 1;

/// What the `engram.quant` metadata entry holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantMeta {
    pub format: u32,
    pub method: String,
    pub bits: u32,
    /// `tensor`, `channel` or `group`.
    pub scope: String,
    /// The group size (scope `group` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<usize>,
    pub symmetric: bool,
    /// `F32` or `F16`.
    pub scale_dtype: String,
    pub tensors: BTreeMap<String, TensorMeta>,
}

/// One quantized tensor's entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorMeta {
    pub shape: Vec<usize>,
    pub dtype: String,
    /// The exponent (1 for every method but PowerQuant).
    pub a: f32,
}

/// Settings of one quantization run.
#[derive(Clone, Debug)]
pub struct Options {
    pub spec: Spec,
    /// Quantize every float tensor, biases, norms and embeddings included.
    pub quantize_all: bool,
    /// Metadata of the output (provenance).
    pub metadata: BTreeMap<String, String>,
}

/// What happened to one tensor.
#[derive(Clone, Debug, Serialize)]
pub struct TensorReport {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
    /// `None` when the tensor was kept as it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantized: Option<QuantizedReport>,
    /// Why the tensor was kept (when it was).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept: Option<String>,
    /// Bytes of the tensor in the input and in the output (codes, scales, zeros).
    pub bytes_in: u64,
    pub bytes_out: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct QuantizedReport {
    /// The exponent chosen (PowerQuant) or 1.
    pub a: f32,
    /// ‖W − Ŵ‖² / ‖W‖² (0 for a zero tensor).
    pub rel_error: f64,
    pub rows: usize,
    pub cols: usize,
    pub blocks: usize,
}

/// The report of a quantization run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub method: String,
    pub spec: Spec,
    pub tensors: Vec<TensorReport>,
    pub quantized: usize,
    pub kept: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Stored bits per quantized weight, scales and zeros counted.
    pub bits_per_weight: f64,
}

/// Whether a model is already in engram's quantized layout.
pub fn is_quantized(model: &Model) -> bool {
    model.metadata().contains_key(META_KEY)
}

/// Names that hold embeddings, kept in float by default (card: engram choice).
pub fn is_embedding(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("embed") || n.contains("wte") || n.contains("wpe")
}

/// The companion tensors of quantized tensor `name`.
pub fn companions(name: &str) -> [String; 3] {
    [
        format!("{name}.qweight"),
        format!("{name}.scales"),
        format!("{name}.zeros"),
    ]
}

/// Blocks per row, and the block length, of a `rows × cols` tensor under `spec`.
fn blocks_per_row(spec: &Spec, rows: usize, cols: usize) -> Result<(usize, usize), String> {
    let bl = spec.block_len(rows, cols)?;
    Ok(match spec.scope {
        Scope::Tensor => (0, bl),
        _ => (cols / bl.max(1), bl),
    })
}

/// Shape of the scales (and zeros) tensor.
fn scale_shape(spec: &Spec, rows: usize, bpr: usize) -> [usize; 2] {
    match spec.scope {
        Scope::Tensor => [1, 1],
        _ => [rows, bpr],
    }
}

/// Rows per chunk for rows of `cols` entries.
fn chunk_rows(cols: usize) -> usize {
    (CHUNK_ELEMS / cols.max(1)).max(1)
}

/// What is done with one input tensor.
enum Plan {
    Keep(String),
    Quantize { rows: usize, cols: usize },
}

fn plan(v: &TensorView, opts: &Options) -> Result<Plan> {
    let all = opts.quantize_all;
    if !v.dtype().is_float() {
        if all {
            return Err(Error::tensor(
                v.path,
                v.name(),
                format!(
                    "is {}, not a float tensor: it cannot be quantized (drop --quantize-all to copy it)",
                    v.dtype()
                ),
            ));
        }
        return Ok(Plan::Keep(format!("{} (not float)", v.dtype())));
    }
    if !all && v.shape().len() < 2 {
        return Ok(Plan::Keep("1-D (bias or norm)".into()));
    }
    if !all && is_embedding(v.name()) {
        return Ok(Plan::Keep("embedding".into()));
    }
    let (rows, cols) = rows_cols(v.shape());
    if rows * cols == 0 {
        return Ok(Plan::Keep("empty".into()));
    }
    opts.spec
        .block_len(rows, cols)
        .map_err(|e| Error::tensor(v.path, v.name(), e))?;
    Ok(Plan::Quantize { rows, cols })
}

/// Reads rows `[r0, r1)` of a `· × cols` tensor, refusing non-finite values.
fn read_rows(v: &TensorView, cols: usize, r0: usize, r1: usize) -> Result<Vec<f32>> {
    let mut w = vec![0f32; (r1 - r0) * cols];
    v.read_f32_into(r0 * cols, &mut w)?;
    if let Some(k) = w.iter().position(|x| !x.is_finite()) {
        return Err(Error::tensor(
            v.path,
            v.name(),
            format!(
                "element {} is {}: only finite weights can be quantized",
                r0 * cols + k,
                w[k]
            ),
        ));
    }
    Ok(w)
}

/// Row ranges of the chunks of a `rows × cols` tensor.
fn chunks(rows: usize, cols: usize) -> Vec<(usize, usize)> {
    let step = chunk_rows(cols);
    (0..rows.div_ceil(step))
        .map(|i| (i * step, ((i + 1) * step).min(rows)))
        .collect()
}

/// Receives each encoded chunk: its first row, its codes and its blocks.
type Sink<'a> = dyn Fn(usize, &[u8], &[Block]) -> Result<()> + Sync + 'a;

/// One pass over a tensor: every chunk is encoded with exponent `a` (and the global block
/// for per-tensor scope); `sink` receives each chunk's first row, codes and blocks. Returns
/// (‖W − Ŵ‖², ‖W‖²).
#[allow(clippy::too_many_arguments)]
fn pass(
    v: &TensorView,
    q: &dyn Quantizer,
    spec: &Spec,
    a: f32,
    rows: usize,
    cols: usize,
    global: Option<Stats>,
    sink: Option<&Sink<'_>>,
) -> Result<(f64, f64)> {
    let bl = spec
        .block_len(rows, cols)
        .map_err(|e| Error::tensor(v.path, v.name(), e))?;
    let gb = global.map(|st| q.block(&st, spec, a));
    let parts = chunks(rows, cols)
        .into_par_iter()
        .map(|(r0, r1)| -> Result<(f64, f64)> {
            let w = read_rows(v, cols, r0, r1)?;
            v.release(r0 * cols, r1 * cols);
            let mut codes = vec![0u8; w.len()];
            let blocks = encode_rows(q, spec, a, cols, bl, gb, &w, &mut codes);
            if let Some(b) = blocks.iter().find(|b| !b.scale.is_finite()) {
                return Err(Error::tensor(
                    v.path,
                    v.name(),
                    format!(
                        "a scale is {} (too large for the scale dtype: use f32 scales)",
                        b.scale
                    ),
                ));
            }
            // A zero scale is right only for a zero block; otherwise it underflowed (f16).
            let span = if blocks.len() == 1 { w.len() } else { bl };
            for (i, _) in blocks.iter().enumerate().filter(|(_, b)| b.scale == 0.0) {
                let part = &w[(i * span).min(w.len())..((i + 1) * span).min(w.len())];
                if part.iter().any(|&x| x != 0.0) {
                    return Err(Error::tensor(
                        v.path,
                        v.name(),
                        "a scale underflows to 0 in the scale dtype (weights this small need f32 scales)",
                    ));
                }
            }
            let mut back = vec![0f32; w.len()];
            decode_rows(q, spec, a, bl, &blocks, &codes, &mut back);
            if let Some(s) = sink {
                s(r0, &codes, &blocks)?;
            }
            Ok((super::sq_diff(&w, &back), super::sq_norm(&w)))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(parts
        .iter()
        .fold((0.0, 0.0), |(e, n), (pe, pn)| (e + pe, n + pn)))
}

/// Statistics of the whole tensor (per-tensor scope).
fn tensor_stats(v: &TensorView, rows: usize, cols: usize) -> Result<Stats> {
    let parts = chunks(rows, cols)
        .into_par_iter()
        .map(|(r0, r1)| {
            let w = read_rows(v, cols, r0, r1)?;
            v.release(r0 * cols, r1 * cols);
            Ok(Stats::of(&w))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(parts.into_iter().fold(Stats::default(), Stats::merge))
}

/// Quantizes `model` with `q` into `out` (one file or a folder, committed atomically).
/// `progress` is called with the number of input bytes done. Nothing is written when any
/// tensor is refused: every tensor is planned before the output is created.
pub fn quantize_model(
    model: &Model,
    q: &dyn Quantizer,
    opts: &Options,
    out: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(Report, Vec<PathBuf>)> {
    let spec = &opts.spec;
    spec.check().map_err(Error::Invalid)?;
    q.check(spec).map_err(Error::Invalid)?;
    if is_quantized(model) {
        return Err(Error::format(
            model.source(),
            "is already quantized (it has engram.quant metadata); dequantize it first",
        ));
    }
    let plans = model
        .tensors()
        .map(|v| plan(&v, opts))
        .collect::<Result<Vec<_>>>()?;
    let scale_dt = if spec.scale_f16 {
        DType::F16
    } else {
        DType::F32
    };
    let mut specs = Vec::new();
    for (v, p) in model.tensors().zip(&plans) {
        match p {
            Plan::Keep(_) => {
                // A kept tensor named like a companion would be misread by `dequantize`.
                if [".qweight", ".scales", ".zeros"]
                    .iter()
                    .any(|s| v.name().ends_with(s))
                {
                    return Err(Error::tensor(
                        model.source(),
                        v.name(),
                        "is kept in float, but its name ends like the codes, scales or zeros of a quantized tensor; rename it first",
                    ));
                }
                specs.push(TensorSpec::new(v.name(), v.dtype(), v.shape()))
            }
            Plan::Quantize { rows, cols } => {
                for c in companions(v.name()) {
                    if model.get(&c).is_some() {
                        return Err(Error::tensor(
                            model.source(),
                            &c,
                            format!(
                                "exists already, and quantizing '{}' would write it: is the model already quantized?",
                                v.name()
                            ),
                        ));
                    }
                }
                let (bpr, _) = blocks_per_row(spec, *rows, *cols).map_err(Error::Invalid)?;
                let [qw, sc, ze] = companions(v.name());
                specs.push(TensorSpec::new(
                    qw,
                    DType::U8,
                    &[*rows, row_bytes(*cols, spec.bits)],
                ));
                let ss = scale_shape(spec, *rows, bpr);
                specs.push(TensorSpec::new(sc, scale_dt, &ss));
                if !spec.symmetric {
                    specs.push(TensorSpec::new(ze, DType::U8, &ss));
                }
            }
        }
    }
    // Exponents (PowerQuant's search passes) and per-tensor statistics come first: the
    // metadata entry holds every exponent and is written with the header.
    let mut meta = QuantMeta {
        format: FORMAT,
        method: q.name().into(),
        bits: spec.bits,
        scope: match spec.scope {
            Scope::Group(_) => "group".into(),
            s => s.name(),
        },
        group: match spec.scope {
            Scope::Group(g) => Some(g),
            _ => None,
        },
        symmetric: spec.symmetric,
        scale_dtype: scale_dt.name().into(),
        tensors: BTreeMap::new(),
    };
    let mut chosen = Vec::with_capacity(plans.len());
    for (v, p) in model.tensors().zip(&plans) {
        let &Plan::Quantize { rows, cols } = p else {
            chosen.push((1.0, None));
            continue;
        };
        let global = match spec.scope {
            Scope::Tensor => Some(tensor_stats(&v, rows, cols)?),
            _ => None,
        };
        // An exponent whose scales the scale dtype cannot hold (f16 at a = 1.5, say) is a bad
        // candidate, not a failure: the final pass checks the one chosen.
        let a = q.exponent(spec, &mut |a| {
            Ok(pass(&v, q, spec, a, rows, cols, global, None).map_or(f64::INFINITY, |(e, _)| e))
        })?;
        meta.tensors.insert(
            v.name().into(),
            TensorMeta {
                shape: v.shape().to_vec(),
                dtype: v.dtype().name().into(),
                a,
            },
        );
        chosen.push((a, global));
    }
    let mut metadata = model.metadata();
    metadata.extend(opts.metadata.clone());
    metadata.insert(
        META_KEY.into(),
        serde_json::to_string(&meta).map_err(|e| Error::Invalid(e.to_string()))?,
    );
    let writer = ModelWriter::create(
        out,
        specs,
        &WriteOptions {
            max_shard_bytes: None,
            metadata,
        },
    )?;
    let mut reports = Vec::new();
    for ((v, p), (a, global)) in model.tensors().zip(&plans).zip(chosen) {
        let bytes_in = v.bytes.len() as u64;
        let mut r = TensorReport {
            name: v.name().into(),
            shape: v.shape().to_vec(),
            dtype: v.dtype().name().into(),
            quantized: None,
            kept: None,
            bytes_in,
            bytes_out: bytes_in,
        };
        match p {
            Plan::Keep(why) => {
                crate::output::copy_bytes_released(&writer, v.name(), &v)?;
                r.kept = Some(why.clone());
            }
            &Plan::Quantize { rows, cols } => {
                let (qr, bytes_out) = quantize_tensor(&writer, &v, q, spec, rows, cols, a, global)?;
                r.bytes_out = bytes_out;
                r.quantized = Some(qr);
            }
        }
        progress(bytes_in);
        reports.push(r);
    }
    let files = writer.finish(model.side_files())?;
    let quantized: Vec<&TensorReport> = reports.iter().filter(|r| r.quantized.is_some()).collect();
    let weights: u64 = quantized
        .iter()
        .map(|r| r.shape.iter().product::<usize>() as u64)
        .sum();
    let qbytes: u64 = quantized.iter().map(|r| r.bytes_out).sum();
    let report = Report {
        method: q.name().into(),
        spec: *spec,
        quantized: quantized.len(),
        kept: reports.len() - quantized.len(),
        bytes_in: reports.iter().map(|r| r.bytes_in).sum(),
        bytes_out: reports.iter().map(|r| r.bytes_out).sum(),
        bits_per_weight: if weights > 0 {
            qbytes as f64 * 8.0 / weights as f64
        } else {
            0.0
        },
        tensors: reports,
    };
    Ok((report, files))
}

/// Quantizes one tensor into the writer with exponent `a`; returns its report and output
/// bytes.
#[allow(clippy::too_many_arguments)]
fn quantize_tensor(
    w: &ModelWriter,
    v: &TensorView,
    q: &dyn Quantizer,
    spec: &Spec,
    rows: usize,
    cols: usize,
    a: f32,
    global: Option<Stats>,
) -> Result<(QuantizedReport, u64)> {
    let rb = row_bytes(cols, spec.bits);
    let (bpr, _) = blocks_per_row(spec, rows, cols).map_err(Error::Invalid)?;
    let [qw, sc, ze] = companions(v.name());
    let sink = |r0: usize, codes: &[u8], blocks: &[Block]| -> Result<()> {
        let n = codes.len() / cols;
        let mut packed = vec![0u8; n * rb];
        for (row, p) in codes.chunks(cols).zip(packed.chunks_mut(rb)) {
            pack_row(row, spec.bits, p);
        }
        w.write_bytes_at(&qw, r0 * rb, &packed)?;
        let at = if spec.scope == Scope::Tensor {
            // One block for the tensor: the first chunk writes it.
            if r0 != 0 {
                return Ok(());
            }
            0
        } else {
            r0 * bpr
        };
        let scales: Vec<f32> = blocks.iter().map(|b| b.scale).collect();
        w.write_f32_at(&sc, at, &scales)?;
        if !spec.symmetric {
            let zeros: Vec<u8> = blocks.iter().map(|b| b.zero).collect();
            w.write_bytes_at(&ze, at, &zeros)?;
        }
        Ok(())
    };
    let (err, norm) = pass(v, q, spec, a, rows, cols, global, Some(&sink))?;
    let nblocks = if spec.scope == Scope::Tensor {
        1
    } else {
        rows * bpr
    };
    let sbytes = if spec.scale_f16 { 2 } else { 4 } + if spec.symmetric { 0 } else { 1 };
    let bytes_out = (rows * rb + nblocks * sbytes) as u64;
    Ok((
        QuantizedReport {
            a,
            rel_error: if norm > 0.0 { err / norm } else { 0.0 },
            rows,
            cols,
            blocks: nblocks,
        },
        bytes_out,
    ))
}

/// The `engram.quant` entry of a quantized model, checked against the tensors it describes:
/// a method engram knows, valid settings, and companion tensors of the right dtype and shape.
pub fn read_meta(model: &Model) -> Result<QuantMeta> {
    let src = model.source();
    let md = model.metadata();
    let raw = md.get(META_KEY).ok_or_else(|| {
        Error::format(
            src,
            "is not an engram quantized model (no engram.quant metadata)",
        )
    })?;
    let bad = |m: String| Error::format(src, format!("engram.quant metadata: {m}"));
    let meta: QuantMeta = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
    if meta.format != FORMAT {
        return Err(bad(format!(
            "format {} (this engram reads {FORMAT})",
            meta.format
        )));
    }
    let spec = meta_spec(&meta).map_err(bad)?;
    let q = by_name(&meta.method).map_err(bad)?;
    spec.check().map_err(bad)?;
    q.check(&spec).map_err(bad)?;
    // Companion-named tensors must belong to a listed tensor, and zero points only to an
    // asymmetric grid: a file that lies about them is refused, not half-read.
    for v in model.tensors() {
        let n = v.name();
        for (suffix, wanted) in [
            (".qweight", true),
            (".scales", true),
            (".zeros", !spec.symmetric),
        ] {
            if let Some(base) = n.strip_suffix(suffix)
                && (!wanted || !meta.tensors.contains_key(base))
            {
                return Err(Error::tensor(
                    src,
                    n,
                    if wanted {
                        format!(
                            "looks like part of a quantized '{base}', which engram.quant does not list"
                        )
                    } else {
                        "zero points of a symmetric grid: engram.quant and the tensors disagree"
                            .into()
                    },
                ));
            }
        }
    }
    for (name, t) in &meta.tensors {
        let tbad = |m: String| Error::tensor(src, name, format!("engram.quant metadata: {m}"));
        if model.get(name).is_some() {
            return Err(tbad(
                "is listed as quantized but also stored in float".into(),
            ));
        }
        match DType::parse(&t.dtype) {
            Some(d) if d.is_float() => {}
            _ => return Err(tbad(format!("dtype '{}' is not a float dtype", t.dtype))),
        }
        let numel = t
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|&n| n > 0 && n <= u32::MAX as usize * 16)
            .ok_or_else(|| tbad(format!("shape {:?} is empty or too large", t.shape)))?;
        let (rows, cols) = rows_cols(&t.shape);
        debug_assert_eq!(rows * cols, numel);
        let ok_a = t.a.is_finite()
            && if meta.method == "power" {
                (super::power::A_MIN..=super::power::A_MAX).contains(&t.a)
            } else {
                t.a == 1.0
            };
        if !ok_a {
            return Err(tbad(format!("exponent {} is out of range", t.a)));
        }
        let (bpr, _) = blocks_per_row(&spec, rows, cols).map_err(&tbad)?;
        let ss = scale_shape(&spec, rows, bpr);
        let sdt = if spec.scale_f16 {
            DType::F16
        } else {
            DType::F32
        };
        let [qw, sc, ze] = companions(name);
        let mut want = vec![
            (qw, DType::U8, vec![rows, row_bytes(cols, spec.bits)]),
            (sc, sdt, ss.to_vec()),
        ];
        if !spec.symmetric {
            want.push((ze, DType::U8, ss.to_vec()));
        }
        for (c, dt, shape) in want {
            let v = model.get(&c).ok_or_else(|| {
                Error::tensor(
                    src,
                    &c,
                    format!("missing (the codes or scales of '{name}')"),
                )
            })?;
            if v.dtype() != dt || v.shape() != shape.as_slice() {
                return Err(Error::tensor(
                    src,
                    &c,
                    format!(
                        "is {} {:?}, but '{name}' needs {dt} {shape:?}",
                        v.dtype(),
                        v.shape()
                    ),
                ));
            }
        }
    }
    Ok(meta)
}

/// The spec a metadata entry describes.
pub fn meta_spec(meta: &QuantMeta) -> Result<Spec, String> {
    let scale_f16 = match meta.scale_dtype.as_str() {
        "F32" => false,
        "F16" => true,
        s => return Err(format!("scale dtype '{s}' (expected F32 or F16)")),
    };
    Ok(Spec {
        bits: meta.bits,
        scope: Scope::parse(&meta.scope, meta.group)?,
        symmetric: meta.symmetric,
        scale_f16,
        grid: false,
    })
}

/// Dequantizes a model in engram's quantized layout back to float: each quantized tensor
/// gets its original shape and dtype (or `dtype`), the other tensors are copied byte for
/// byte, and the `engram.quant` entry is dropped. Streams like [`quantize_model`].
pub fn dequantize_model(
    model: &Model,
    out: &Path,
    dtype: Option<DType>,
    metadata: &BTreeMap<String, String>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<PathBuf>> {
    let meta = read_meta(model)?;
    let spec = meta_spec(&meta).map_err(Error::Invalid)?;
    let q = by_name(&meta.method).map_err(Error::Invalid)?;
    let is_companion = |n: &str| {
        meta.tensors
            .keys()
            .any(|t| companions(t).iter().any(|c| c == n))
    };
    let mut specs = Vec::new();
    for v in model.tensors().filter(|v| !is_companion(v.name())) {
        specs.push(TensorSpec::new(v.name(), v.dtype(), v.shape()));
    }
    for (name, t) in &meta.tensors {
        let dt = dtype.unwrap_or_else(|| DType::parse(&t.dtype).unwrap_or(DType::F32));
        specs.push(TensorSpec::new(name, dt, &t.shape));
    }
    let mut md = model.metadata();
    md.remove(META_KEY);
    md.extend(metadata.clone());
    let writer = ModelWriter::create(
        out,
        specs.clone(),
        &WriteOptions {
            max_shard_bytes: None,
            metadata: md,
        },
    )?;
    for v in model.tensors().filter(|v| !is_companion(v.name())) {
        crate::output::copy_bytes_released(&writer, v.name(), &v)?;
        progress(v.bytes.len() as u64);
    }
    for (name, t) in &meta.tensors {
        let dt = writer.spec(name).map_or(DType::F32, |s| s.dtype);
        dequantize_tensor(model, &writer, &spec, q, name, t, dt)?;
        progress(t.shape.iter().product::<usize>() as u64 * dt.size() as u64);
    }
    writer.finish(model.side_files())
}

/// Decodes one quantized tensor into the writer, chunk by chunk.
fn dequantize_tensor(
    model: &Model,
    w: &ModelWriter,
    spec: &Spec,
    q: &dyn Quantizer,
    name: &str,
    t: &TensorMeta,
    dt: DType,
) -> Result<()> {
    let [qw, sc, ze] = companions(name);
    let (codes_v, scales_v) = (model.require(&qw)?, model.require(&sc)?);
    let zeros_v = if spec.symmetric {
        None
    } else {
        Some(model.require(&ze)?)
    };
    let (rows, cols) = rows_cols(&t.shape);
    let (bpr, bl) = blocks_per_row(spec, rows, cols).map_err(Error::Invalid)?;
    let rb = row_bytes(cols, spec.bits);
    // Symmetric grids leave the top code unused (restricted range); StatsQ uses them all.
    let top = if spec.symmetric && q.name() != "statsq" {
        2 * spec.qmax() as u8
    } else {
        (spec.levels() - 1) as u8
    };
    chunks(rows, cols).into_par_iter().try_for_each(|(r0, r1)| {
        let n = r1 - r0;
        let packed = &codes_v.bytes[r0 * rb..r1 * rb];
        let mut codes = vec![0u8; n * cols];
        for (row, p) in codes.chunks_mut(cols).zip(packed.chunks(rb)) {
            unpack_row(p, spec.bits, row);
        }
        if let Some(k) = codes.iter().position(|&c| c > top) {
            return Err(Error::tensor(
                model.source(),
                &qw,
                format!(
                    "code {} at element {} is outside the {}-bit grid",
                    codes[k],
                    r0 * cols + k,
                    spec.bits
                ),
            ));
        }
        let (b0, nb) = match spec.scope {
            Scope::Tensor => (0, 1),
            _ => (r0 * bpr, n * bpr),
        };
        let mut scales = vec![0f32; nb];
        scales_v.read_f32_into(b0, &mut scales)?;
        let zeros = zeros_v.map_or(vec![0u8; nb], |z| z.bytes[b0..b0 + nb].to_vec());
        if let Some(z) = zeros.iter().find(|&&z| z as u32 >= spec.levels()) {
            return Err(Error::tensor(
                model.source(),
                &ze,
                format!("zero point {z} is outside the {}-bit grid", spec.bits),
            ));
        }
        let blocks: Vec<Block> = scales
            .iter()
            .zip(&zeros)
            .map(|(&scale, &zero)| Block { scale, zero })
            .collect();
        if let Some(b) = blocks
            .iter()
            .find(|b| !b.scale.is_finite() || b.scale < 0.0)
        {
            return Err(Error::tensor(
                model.source(),
                &sc,
                format!("scale {} is not a finite non-negative number", b.scale),
            ));
        }
        let mut vals = vec![0f32; n * cols];
        decode_rows(q, spec, t.a, bl, &blocks, &codes, &mut vals);
        if let Some(k) = vals.iter().position(|&x| !crate::output::fits(dt, x)) {
            return Err(Error::tensor(
                model.source(),
                name,
                format!(
                    "dequantized value {} at element {} does not fit {dt}",
                    vals[k],
                    r0 * cols + k
                ),
            ));
        }
        w.write_f32_at(name, r0 * cols, &vals)
    })
}
