//! LoRA adapters (Hu et al. 2021, arXiv 2106.09685; card shared/methods/selective_finetuning.md,
//! "LoRA (baseline)"): extraction from a fine-tune by truncated SVD, merge-and-unload, merging.
//!
//! - [`extract`]: per targeted matrix, ΔW = W_ft − W_base and its best rank-r approximation
//!   U_r·S_r·V_rᵀ (exact SVD up to a size, the randomized range finder above), written as a PEFT
//!   adapter with B = U_r·√S_r and A = √S_r·V_rᵀ, α = r (scale 1); the captured energy
//!   Σ_{i≤r} σ_i² / ‖ΔW‖²_F of every matrix is reported (it is exact on both paths: the
//!   approximation is the projection of ΔW onto the span of U_r), and every tensor left out.
//! - [`apply`]: W + m·s·B·A in f32 (PEFT's merge-and-unload), rounded to an explicit dtype, the
//!   rounding error of every changed tensor recorded.
//! - [`expand`]: one adapter as f32 tensors of the modules several adapters touch, the input of
//!   any merge method (`engram lora merge --method`).
//! - [`recombine`]: Σ_i w_i·s_i·B_i·A_i of several adapters, recompressed to one adapter of a
//!   given rank by an exact SVD of the stacked factors (QR of each side, SVD of the small core).
//!
//! Card pitfalls kept: the scale is α/r (α/√r with rsLoRA), not α, and is stored with the
//! adapter; merging then quantizing differs from quantizing then adding the adapter.

use crate::quant::{sq_diff, sq_norm};
use crate::spectral::{SpectralOptions, truncated_svd};
use engram_ckpt::dtype::round_through;
use engram_ckpt::names::glob;
use engram_ckpt::peft::{
    Adapter, AdapterConfig, AdapterWriter, LoraModule, ModuleKind, ModuleSpec,
};
use engram_ckpt::{DType, Error, Model, ModelWriter, Result, TensorSpec, WriteOptions};
use faer::Mat;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Names of embedding tables, which PEFT adapts with another layout (not extracted).
const EMBEDDING_PARTS: &[&str] = &[
    "embed_tokens",
    "wte",
    "wpe",
    "word_embeddings",
    "position_embeddings",
    "token_type_embeddings",
    "tok_embeddings",
    "embed_positions",
];

/// Whether `module` names an embedding table.
pub fn is_embedding(module: &str) -> bool {
    module
        .split('.')
        .any(|p| EMBEDDING_PARTS.contains(&p) || p == "embeddings")
}

/// What [`extract`] is asked to do.
#[derive(Clone, Debug)]
pub struct ExtractOptions {
    /// The rank r (a matrix with a smaller side than r gets that side as its rank).
    pub rank: usize,
    /// Module-name globs (`*` any run of characters) to extract; empty: every linear weight.
    pub targets: Vec<String>,
    /// Module-name globs to leave out.
    pub exclude: Vec<String>,
    /// The adapter's α; default r (scale 1).
    pub alpha: Option<f64>,
    /// The factors' dtype; default: the fine-tune's dtype of the first extracted matrix.
    pub dtype: Option<DType>,
    /// Exact SVD for matrices whose smaller side is at most `svd.max_dim` (and with at most
    /// `svd.max_values` entries); randomized (oversample, power iterations, seed) above. The
    /// default, 4·(r + oversample), takes the randomized range finder wherever the rank is a
    /// small part of the matrix: measured on a 205M-parameter model (77 matrices of smaller
    /// side 1024) at r = 128, exact SVD 25 s and relative error 0.09952, randomized with 4
    /// power iterations 9.9 s and 0.09973 (2 iterations: 7.7 s, 0.10052).
    pub svd: SpectralOptions,
}

impl ExtractOptions {
    pub fn new(rank: usize) -> ExtractOptions {
        ExtractOptions {
            rank,
            targets: Vec::new(),
            exclude: Vec::new(),
            alpha: None,
            dtype: None,
            svd: SpectralOptions {
                max_dim: rank.saturating_add(10).saturating_mul(4),
                max_values: 1 << 24,
                top_k: rank,
                oversample: 10,
                power_iters: 4,
                seed: 0,
            },
        }
    }
}

/// One extracted matrix.
#[derive(Clone, Debug, Serialize)]
pub struct ModuleReport {
    pub module: String,
    pub shape: [usize; 2],
    pub rank: usize,
    /// ‖ΔW‖_F.
    pub delta_norm: f64,
    /// Σ_{i≤r} σ_i² / ‖ΔW‖²_F.
    pub energy: f64,
    /// ‖ΔW − ΔW_r‖_F / ‖ΔW‖_F = √(1 − energy).
    pub rel_error: f64,
    /// Exact SVD (else randomized).
    pub exact: bool,
}

/// A tensor the adapter does not carry, and why.
#[derive(Clone, Debug, Serialize)]
pub struct LeftOut {
    pub tensor: String,
    pub shape: Vec<usize>,
    pub reason: String,
    /// ‖W_ft − W_base‖_F / ‖W_base‖_F where both models hold it (what the adapter loses).
    pub rel_change: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExtractReport {
    pub rank: usize,
    pub alpha: f64,
    pub dtype: String,
    pub modules: Vec<ModuleReport>,
    /// Energy captured over all extracted matrices: Σ captured / Σ ‖ΔW‖²_F.
    pub energy: f64,
    /// Matrices whose ΔW is exactly zero (not in the adapter).
    pub unchanged: Vec<String>,
    pub left_out: Vec<LeftOut>,
    pub adapter_params: u64,
    pub adapter_bytes: u64,
}

/// The plan of an extraction: the modules and what is left out, before any SVD.
struct Plan {
    modules: Vec<(String, [usize; 2])>,
    left_out: Vec<(String, Vec<usize>, String)>,
}

fn plan_extract(base: &Model, ft: &Model, o: &ExtractOptions) -> Result<Plan> {
    let mut modules = Vec::new();
    let mut left_out = Vec::new();
    for t in ft.tensors() {
        let name = t.name();
        let shape = t.shape().to_vec();
        let Some(b) = base.get(name) else {
            left_out.push((name.into(), shape, "not in the base".into()));
            continue;
        };
        if b.shape() != t.shape() {
            return Err(Error::tensor(
                ft.source(),
                name,
                format!(
                    "shape {:?} differs from the base's {:?}",
                    t.shape(),
                    b.shape()
                ),
            ));
        }
        if !t.dtype().is_float() || !b.dtype().is_float() {
            left_out.push((name.into(), shape, "not a float tensor".into()));
            continue;
        }
        let module = name.strip_suffix(".weight");
        let reason = match module {
            _ if shape.len() != 2 => "not a matrix (a norm, bias or convolution)",
            None => "a matrix not named <module>.weight",
            Some(m) if is_embedding(m) => {
                "an embedding table (PEFT adapts embeddings with another layout; not extracted)"
            }
            Some(m) if !o.targets.is_empty() && !o.targets.iter().any(|p| glob(p, m)) => {
                "not matched by the targets"
            }
            Some(m) if o.exclude.iter().any(|p| glob(p, m)) => "excluded",
            Some(m) => {
                modules.push((m.to_string(), [shape[0], shape[1]]));
                continue;
            }
        };
        left_out.push((name.into(), shape, reason.into()));
    }
    for t in base.tensors() {
        if ft.get(t.name()).is_none() {
            left_out.push((
                t.name().into(),
                t.shape().to_vec(),
                "not in the fine-tune".into(),
            ));
        }
    }
    for p in &o.exclude {
        if !ft
            .names()
            .filter_map(|n| n.strip_suffix(".weight"))
            .any(|m| glob(p, m))
        {
            return Err(Error::Invalid(format!(
                "exclude pattern '{p}' matches no module of {} (module names are tensor names without '.weight')",
                ft.source().display()
            )));
        }
    }
    for p in &o.targets {
        if !modules.iter().any(|(m, _)| glob(p, m)) {
            return Err(Error::Invalid(format!(
                "target '{p}' matches no linear weight of {} (module names are tensor names without '.weight')",
                ft.source().display()
            )));
        }
    }
    Ok(Plan { modules, left_out })
}

/// The whole tensor as f32; its pages are then given back (see `TensorView::release`), so
/// that resident memory stays a few tensors however large the model.
fn read_once(t: &engram_ckpt::TensorView) -> Result<Vec<f32>> {
    let v = t.to_f32()?;
    t.release(0, t.numel());
    Ok(v)
}

fn delta(base: &Model, ft: &Model, name: &str) -> Result<Vec<f32>> {
    let mut d = read_once(&ft.require(name)?)?;
    let b = read_once(&base.require(name)?)?;
    for (x, y) in d.iter_mut().zip(&b) {
        *x -= y;
    }
    if let Some(i) = d.iter().position(|x| !x.is_finite()) {
        return Err(Error::tensor(
            ft.source(),
            name,
            format!("the difference to the base is not finite at element {i}"),
        ));
    }
    Ok(d)
}

/// One module's factors and report.
struct Factors {
    a: Vec<f32>,
    b: Vec<f32>,
    report: ModuleReport,
}

/// B = U_r·√S_r / √s and A = √S_r·V_rᵀ / √s, so that s·B·A = U_r·S_r·V_rᵀ.
fn split(u: &Mat<f64>, sv: &[f64], v: &Mat<f64>, scale: f64) -> (Vec<f32>, Vec<f32>) {
    let (m, n, r) = (u.nrows(), v.nrows(), sv.len());
    let root: Vec<f64> = sv.iter().map(|s| (s / scale).sqrt()).collect();
    let mut b = vec![0f32; m * r];
    for i in 0..m {
        for j in 0..r {
            b[i * r + j] = (u[(i, j)] * root[j]) as f32;
        }
    }
    let mut a = vec![0f32; r * n];
    for j in 0..r {
        for c in 0..n {
            a[j * n + c] = (root[j] * v[(c, j)]) as f32;
        }
    }
    (a, b)
}

/// Extracts a rank-`o.rank` LoRA adapter of `ft` against `base` into the PEFT folder `out`.
pub fn extract(
    base: &Model,
    ft: &Model,
    out: &Path,
    o: &ExtractOptions,
    metadata: &BTreeMap<String, String>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ExtractReport> {
    if o.rank == 0 {
        return Err(Error::Invalid("rank must be at least 1".into()));
    }
    let alpha = o.alpha.unwrap_or(o.rank as f64);
    if !(alpha.is_finite() && alpha > 0.0) {
        return Err(Error::Invalid(format!(
            "alpha must be positive, not {alpha}"
        )));
    }
    let plan = plan_extract(base, ft, o)?;
    // ΔW of every module, in parallel; zero ones are dropped before the adapter is declared.
    let svd = SpectralOptions {
        top_k: o.rank,
        ..o.svd.clone()
    };
    let results: Vec<Option<Factors>> = plan
        .modules
        .par_iter()
        .map(|(m, [rows, cols])| -> Result<Option<Factors>> {
            let name = format!("{m}.weight");
            let d = delta(base, ft, &name)?;
            progress((rows * cols) as u64);
            let total = sq_norm(&d);
            if total == 0.0 {
                return Ok(None);
            }
            let r = o.rank.min(*rows).min(*cols);
            let (u, sv, v) = truncated_svd(&d, *rows, *cols, r, &svd)
                .map_err(|e| Error::tensor(ft.source(), &name, e))?;
            let captured: f64 = sv.iter().map(|s| s * s).sum();
            let energy = (captured / total).min(1.0);
            let a_r = if r == o.rank {
                alpha
            } else {
                alpha * r as f64 / o.rank as f64
            };
            let (a, b) = split(&u, &sv, &v, a_r / r as f64);
            Ok(Some(Factors {
                a,
                b,
                report: ModuleReport {
                    module: m.clone(),
                    shape: [*rows, *cols],
                    rank: r,
                    delta_norm: total.sqrt(),
                    energy,
                    rel_error: (1.0 - energy).max(0.0).sqrt(),
                    exact: svd.exact(*rows, *cols),
                },
            }))
        })
        .collect::<Result<_>>()?;
    let mut unchanged = Vec::new();
    let mut factors = Vec::new();
    for ((m, _), f) in plan.modules.iter().zip(results) {
        match f {
            Some(f) => factors.push(f),
            None => unchanged.push(m.clone()),
        }
    }
    if factors.is_empty() {
        return Err(Error::Invalid(format!(
            "{} does not differ from {} in any extracted matrix: nothing to extract",
            ft.source().display(),
            base.source().display()
        )));
    }
    let dtype = match o.dtype {
        Some(d) => d,
        None => ft
            .require(&format!("{}.weight", factors[0].report.module))?
            .dtype(),
    };
    let specs: Vec<ModuleSpec> = factors
        .iter()
        .map(|f| ModuleSpec {
            name: f.report.module.clone(),
            rank: f.report.rank,
            weight_shape: f.report.shape,
        })
        .collect();
    let mut config = AdapterConfig::new(
        o.rank,
        alpha,
        specs.iter().map(|s| s.name.clone()).collect(),
    );
    config.base_model_name_or_path = Some(base.source().display().to_string());
    let rank = o.rank;
    let w = AdapterWriter::create(
        out,
        config,
        &specs,
        &|r| alpha * r as f64 / rank as f64,
        dtype,
        metadata.clone(),
    )?;
    for (s, f) in specs.iter().zip(&factors) {
        w.write(s, &f.a, &f.b)?;
    }
    w.finish()?;
    let adapter_params: u64 = factors.iter().map(|f| (f.a.len() + f.b.len()) as u64).sum();
    let (cap, tot) = factors.iter().fold((0.0, 0.0), |(c, t), f| {
        let d2 = f.report.delta_norm * f.report.delta_norm;
        (c + f.report.energy * d2, t + d2)
    });
    let mut left_out = Vec::new();
    for (tensor, shape, reason) in plan.left_out {
        if ft.get(&tensor).is_some() {
            progress(shape.iter().product::<usize>() as u64);
        }
        let rel_change = match (base.get(&tensor), ft.get(&tensor)) {
            (Some(b), Some(f)) if b.dtype().is_float() && f.dtype().is_float() => {
                let bv = read_once(&b)?;
                let fv = read_once(&f)?;
                let d = sq_diff(&fv, &bv);
                let n = sq_norm(&bv);
                Some(if n > 0.0 { (d / n).sqrt() } else { d.sqrt() })
            }
            _ => None,
        };
        left_out.push(LeftOut {
            tensor,
            shape,
            reason,
            rel_change,
        });
    }
    Ok(ExtractReport {
        rank: o.rank,
        alpha,
        dtype: dtype.name().into(),
        modules: factors.into_iter().map(|f| f.report).collect(),
        energy: if tot > 0.0 { cap / tot } else { 1.0 },
        unchanged,
        left_out,
        adapter_params,
        adapter_bytes: adapter_params * dtype.size() as u64,
    })
}

/// s·B·A of one module as a row-major matrix of the base weight's shape (out × in), in f32.
pub fn module_delta(adapter: &Adapter, m: &LoraModule) -> Result<Vec<f32>> {
    let a = adapter.tensor(&m.a)?;
    let b = adapter.tensor(&m.b)?;
    let (ra, rb) = (a.shape(), b.shape());
    let av = a.to_f32()?;
    let bv = b.to_f32()?;
    let am = Mat::<f32>::from_fn(ra[0], ra[1], |i, j| av[i * ra[1] + j]);
    let bm = Mat::<f32>::from_fn(rb[0], rb[1], |i, j| bv[i * rb[1] + j]);
    let prod = &bm * &am; // rb[0] × ra[1]
    let s = m.scaling as f32;
    let transpose = m.kind == ModuleKind::Embedding || adapter.config.fan_in_fan_out;
    let [rows, cols] = m.weight_shape;
    let mut out = vec![0f32; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            let v = if transpose {
                prod[(j, i)]
            } else {
                prod[(i, j)]
            };
            out[i * cols + j] = s * v;
        }
    }
    Ok(out)
}

/// Checks that every module and saved tensor of `adapter` has its tensor in `base`, with the
/// shape the factors imply.
fn check_fits(base: &Model, adapter: &Adapter) -> Result<()> {
    for m in &adapter.modules {
        let w = m.weight_name();
        let Some(t) = base.get(&w) else {
            return Err(Error::Invalid(format!(
                "{}: module '{}' has no tensor '{w}' in the base {}",
                adapter.dir.display(),
                m.name,
                base.source().display()
            )));
        };
        if t.shape() != m.weight_shape || !t.dtype().is_float() {
            return Err(Error::tensor(
                base.source(),
                &w,
                format!(
                    "{} {:?} does not fit the adapter {}, whose factors give {:?}",
                    t.dtype().name(),
                    t.shape(),
                    adapter.dir.display(),
                    m.weight_shape
                ),
            ));
        }
    }
    for (file, name) in &adapter.saved {
        let s = adapter.tensor(file)?;
        match base.get(name) {
            Some(t) if t.shape() == s.shape() && t.dtype().is_float() => {}
            _ => {
                return Err(Error::tensor(
                    &adapter.dir,
                    file,
                    format!(
                        "a saved module whose base tensor '{name}' is missing or differs in shape"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// What [`apply`] is asked to do.
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// The output's float dtype; `None`: each tensor keeps the base's dtype.
    pub dtype: Option<DType>,
    /// Multiplier m of the adapter's update (1: as trained; 0.5: half).
    pub multiplier: f64,
}

/// One tensor the adapter changed.
#[derive(Clone, Debug, Serialize)]
pub struct Applied {
    pub tensor: String,
    pub dtype: String,
    /// ‖round(W′) − W′‖_F / ‖W′‖_F, W′ = W + m·s·B·A computed in f32.
    pub rel_rounding_error: f64,
    pub max_rounding_error: f64,
    /// ‖m·s·B·A‖_F / ‖W‖_F.
    pub rel_update: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ApplyReport {
    pub dtype: Option<String>,
    pub multiplier: f64,
    pub applied: Vec<Applied>,
    /// Base tensors replaced by the adapter's saved modules.
    pub replaced: Vec<String>,
    /// Tensors written unchanged.
    pub kept: usize,
}

/// The new values of tensor `name` (f32), if the adapter touches it.
fn updated(
    base: &Model,
    adapter: &Adapter,
    name: &str,
    multiplier: f64,
) -> Result<Option<(Vec<f32>, f64)>> {
    if let Some((file, _)) = adapter.saved.iter().find(|(_, n)| n == name) {
        return Ok(Some((adapter.tensor(file)?.to_f32()?, f64::NAN)));
    }
    let Some(m) = adapter.modules.iter().find(|m| m.weight_name() == name) else {
        return Ok(None);
    };
    let mut w = read_once(&base.require(name)?)?;
    let d = module_delta(adapter, m)?;
    let mult = multiplier as f32;
    let w_norm = sq_norm(&w);
    let mut d_norm = 0f64;
    for (x, y) in w.iter_mut().zip(&d) {
        let u = mult * y;
        d_norm += u as f64 * u as f64;
        *x += u;
    }
    if let Some(i) = w.iter().position(|x| !x.is_finite()) {
        return Err(Error::tensor(
            base.source(),
            name,
            format!("not finite at element {i} after adding the adapter"),
        ));
    }
    let rel = if w_norm > 0.0 {
        (d_norm / w_norm).sqrt()
    } else {
        d_norm.sqrt()
    };
    Ok(Some((w, rel)))
}

/// Writes `base` with `adapter` merged in (merge-and-unload) to `out`.
pub fn apply(
    base: &Model,
    adapter: &Adapter,
    out: &Path,
    o: &ApplyOptions,
    metadata: &BTreeMap<String, String>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ApplyReport> {
    if !o.multiplier.is_finite() {
        return Err(Error::Invalid(format!(
            "multiplier must be finite, not {}",
            o.multiplier
        )));
    }
    if let Some(d) = o.dtype
        && !d.is_float()
    {
        return Err(Error::Invalid(format!(
            "output dtype {} is not a float dtype",
            d.name()
        )));
    }
    check_fits(base, adapter)?;
    let specs: Vec<TensorSpec> = base
        .tensors()
        .map(|t| {
            let dt = match o.dtype {
                Some(d) if t.dtype().is_float() => d,
                _ => t.dtype(),
            };
            TensorSpec::new(t.name(), dt, t.shape())
        })
        .collect();
    let opts = WriteOptions {
        max_shard_bytes: None,
        metadata: metadata.clone(),
    };
    let writer = ModelWriter::create(out, specs, &opts)?;
    let names: Vec<&str> = base.names().collect();
    let results: Vec<Option<Applied>> = names
        .par_iter()
        .map(|&name| -> Result<Option<Applied>> {
            let t = base.require(name)?;
            let dt = writer.spec(name).map_or(t.dtype(), |s| s.dtype);
            let res = match updated(base, adapter, name, o.multiplier)? {
                None if dt == t.dtype() => {
                    writer.write_bytes(name, t.bytes)?;
                    t.release(0, t.numel());
                    None
                }
                None => {
                    writer.write_f32(name, &read_once(&t)?)?;
                    None
                }
                Some((w, rel_update)) => {
                    let mut r = w.clone();
                    round_through(dt, &mut r);
                    let (mut e2, mut emax) = (0f64, 0f64);
                    for (a, b) in r.iter().zip(&w) {
                        let e = (*a as f64 - *b as f64).abs();
                        e2 += e * e;
                        emax = emax.max(e);
                    }
                    let n = sq_norm(&w);
                    writer.write_f32(name, &w)?;
                    Some(Applied {
                        tensor: name.into(),
                        dtype: dt.name().into(),
                        rel_rounding_error: if n > 0.0 { (e2 / n).sqrt() } else { 0.0 },
                        max_rounding_error: emax,
                        rel_update,
                    })
                }
            };
            progress(t.numel() as u64);
            Ok(res)
        })
        .collect::<Result<_>>()?;
    writer.finish(base.side_files())?;
    let mut applied = Vec::new();
    let mut replaced = Vec::new();
    let mut kept = 0;
    for a in results {
        match a {
            Some(a) if a.rel_update.is_nan() => replaced.push(a.tensor),
            Some(a) => applied.push(a),
            None => kept += 1,
        }
    }
    Ok(ApplyReport {
        dtype: o.dtype.map(|d| d.name().into()),
        multiplier: o.multiplier,
        applied,
        replaced,
        kept,
    })
}

/// The base tensors any of `adapters` changes, in the base's order.
pub fn touched(base: &Model, adapters: &[&Adapter]) -> Result<Vec<String>> {
    for a in adapters {
        check_fits(base, a)?;
    }
    Ok(base
        .names()
        .filter(|n| {
            adapters.iter().any(|a| {
                a.modules.iter().any(|m| m.weight_name() == *n)
                    || a.saved.iter().any(|(_, s)| s == n)
            })
        })
        .map(String::from)
        .collect())
}

/// Writes `base` + `adapter` restricted to `tensors` (the union [`touched`] gives), in f32:
/// one input of a merge of several adapters' task vectors (with the base kept wherever no
/// model holds a tensor). A tensor the adapter does not change is the base's, so its task
/// vector is zero there.
pub fn expand(
    base: &Model,
    adapter: &Adapter,
    tensors: &[String],
    out: &Path,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    check_fits(base, adapter)?;
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|n| {
            let t = base.require(n)?;
            Ok(TensorSpec::new(n.clone(), DType::F32, t.shape()))
        })
        .collect::<Result<_>>()?;
    let opts = WriteOptions {
        max_shard_bytes: None,
        metadata: metadata.clone(),
    };
    let writer = ModelWriter::create(out, specs, &opts)?;
    tensors.par_iter().try_for_each(|n| -> Result<()> {
        let w = match updated(base, adapter, n, 1.0)? {
            Some((w, _)) => w,
            None => base.require(n)?.to_f32()?,
        };
        writer.write_f32(n, &w)
    })?;
    writer.finish(&[])?;
    Ok(())
}

/// One module of a recombined adapter.
#[derive(Clone, Debug, Serialize)]
pub struct Recombined {
    pub module: String,
    pub shape: [usize; 2],
    /// Σ of the inputs' ranks.
    pub stacked_rank: usize,
    pub rank: usize,
    /// Σ_{i≤r} σ_i² / ‖Σ_j w_j·s_j·B_j·A_j‖²_F (exact).
    pub energy: f64,
    /// ‖Σ_j w_j·s_j·B_j·A_j‖_F.
    pub norm: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RecombineReport {
    pub rank: usize,
    pub weights: Vec<f64>,
    pub modules: Vec<Recombined>,
    /// Σ captured / Σ ‖ΔW‖²_F over the modules.
    pub energy: f64,
}

/// X = Q·R with Q's columns orthonormal (rows × min(rows, k)) and R = Qᵀ·X.
fn qr(x: &Mat<f64>) -> (Mat<f64>, Mat<f64>) {
    let q = x.qr().compute_thin_Q();
    let r = q.transpose() * x;
    (q, r)
}

/// Σ_i w_i·s_i·B_i·A_i of `adapters` as one adapter of rank `rank` in `out`.
pub fn recombine(
    adapters: &[(&Adapter, f64)],
    rank: usize,
    dtype: DType,
    out: &Path,
    metadata: &BTreeMap<String, String>,
) -> Result<RecombineReport> {
    if rank == 0 {
        return Err(Error::Invalid("rank must be at least 1".into()));
    }
    if adapters.is_empty() {
        return Err(Error::Invalid("no adapters to recombine".into()));
    }
    // The union of modules, in first-appearance order, with each adapter's module.
    let mut order: Vec<(String, [usize; 2])> = Vec::new();
    for (a, w) in adapters {
        if !w.is_finite() {
            return Err(Error::Invalid(format!(
                "{}: weight {w} is not finite",
                a.dir.display()
            )));
        }
        if a.config.fan_in_fan_out {
            return Err(Error::Invalid(format!(
                "{}: fan_in_fan_out adapters are not recombined (apply them instead)",
                a.dir.display()
            )));
        }
        if let Some((f, _)) = a.saved.first() {
            return Err(Error::Invalid(format!(
                "{}: holds a saved full tensor ({f}); recombination makes LoRA factors only \
                 (merge through task vectors instead)",
                a.dir.display()
            )));
        }
        for m in &a.modules {
            if m.kind != ModuleKind::Linear {
                return Err(Error::Invalid(format!(
                    "{}: module '{}' is an embedding; only linear modules are recombined",
                    a.dir.display(),
                    m.name
                )));
            }
            match order.iter().find(|(n, _)| *n == m.name) {
                Some((_, s)) if *s != m.weight_shape => {
                    return Err(Error::Invalid(format!(
                        "module '{}': {} gives shape {:?}, another adapter {:?}",
                        m.name,
                        a.dir.display(),
                        m.weight_shape,
                        s
                    )));
                }
                Some(_) => {}
                None => order.push((m.name.clone(), m.weight_shape)),
            }
        }
    }
    let results: Vec<(Recombined, Vec<f32>, Vec<f32>)> = order
        .par_iter()
        .map(|(name, [rows, cols])| -> Result<_> {
            // B_cat = [w_i·s_i·B_i] (rows × K), A_cat = [A_i] stacked (K × cols).
            let mut bs: Vec<(Vec<f32>, usize, f64)> = Vec::new();
            let mut as_: Vec<Vec<f32>> = Vec::new();
            for (a, w) in adapters {
                if let Some(m) = a.module(name) {
                    bs.push((a.tensor(&m.b)?.to_f32()?, m.rank, w * m.scaling));
                    as_.push(a.tensor(&m.a)?.to_f32()?);
                }
            }
            let k: usize = bs.iter().map(|b| b.1).sum();
            let mut bcat = Mat::<f64>::zeros(*rows, k);
            let mut acat_t = Mat::<f64>::zeros(*cols, k);
            let mut off = 0;
            for ((b, r, f), a) in bs.iter().zip(&as_) {
                for i in 0..*rows {
                    for j in 0..*r {
                        bcat[(i, off + j)] = b[i * r + j] as f64 * f;
                    }
                }
                for j in 0..*r {
                    for c in 0..*cols {
                        acat_t[(c, off + j)] = a[j * cols + c] as f64;
                    }
                }
                off += r;
            }
            let (qb, rb) = qr(&bcat);
            let (qa, ra) = qr(&acat_t);
            let core = &rb * ra.transpose();
            let svd = core
                .thin_svd()
                .map_err(|e| Error::Invalid(format!("module '{name}': SVD failed: {e:?}")))?;
            let sv: Vec<f64> = svd.S().column_vector().iter().copied().collect();
            let r = rank.min(sv.len()).min(*rows).min(*cols);
            let total: f64 = sv.iter().map(|s| s * s).sum();
            let captured: f64 = sv[..r].iter().map(|s| s * s).sum();
            let u = &qb * svd.U().subcols(0, r);
            let v = &qa * svd.V().subcols(0, r);
            let (a, b) = split(&u, &sv[..r], &v, 1.0);
            Ok((
                Recombined {
                    module: name.clone(),
                    shape: [*rows, *cols],
                    stacked_rank: k,
                    rank: r,
                    energy: if total > 0.0 { captured / total } else { 1.0 },
                    norm: total.sqrt(),
                },
                a,
                b,
            ))
        })
        .collect::<Result<_>>()?;
    let specs: Vec<ModuleSpec> = results
        .iter()
        .map(|(r, _, _)| ModuleSpec {
            name: r.module.clone(),
            rank: r.rank,
            weight_shape: r.shape,
        })
        .collect();
    let mut config = AdapterConfig::new(
        rank,
        rank as f64,
        specs.iter().map(|s| s.name.clone()).collect(),
    );
    config.base_model_name_or_path = adapters[0].0.config.base_model_name_or_path.clone();
    let w = AdapterWriter::create(out, config, &specs, &|r| r as f64, dtype, metadata.clone())?;
    for (s, (_, a, b)) in specs.iter().zip(&results) {
        w.write(s, a, b)?;
    }
    w.finish()?;
    let modules: Vec<Recombined> = results.into_iter().map(|r| r.0).collect();
    let (cap, tot) = modules.iter().fold((0.0, 0.0), |(c, t), m| {
        (c + m.energy * m.norm * m.norm, t + m.norm * m.norm)
    });
    let energy = if tot > 0.0 { cap / tot } else { 1.0 };
    Ok(RecombineReport {
        rank,
        weights: adapters.iter().map(|(_, w)| *w).collect(),
        modules,
        energy,
    })
}

pub mod request;
#[cfg(test)]
mod tests;
