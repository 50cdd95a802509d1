//! Weight patches: Robust Weight Signatures (extract, quantize, apply with a scale, remove).
//! Paper: Robust Weight Signatures: Gaining Robustness as Easy as Patching Weights? (arXiv 2302.12480); card: methods/patching.md.
//!
//! A patch is δ = θ_c − θ_pre over selected tensors, optionally with the clean fine-tuning
//! direction a = θ_clean − θ_pre projected out (per tensor: δ − (⟨δ,a⟩/⟨a,a⟩)·a, skipped where
//! ⟨a,a⟩ is 0), optionally quantized per tensor to L uniform min–max levels (stored as U8 codes
//! plus a `NAME.__range` F32 [min, max]; max = min stores a constant). Applying adds
//! Σ α_c·δ_c to the clean model; removing subtracts it. Each patch is processed one tensor at
//! a time (a few tensors in memory).
//!
//! **Scales.** Patches applied together without scales of their own each get α_c = α/n, n the
//! number of patches applied together and α = 1 by default ([`default_scale`]; the card's
//! default, as the reference `model_patching.py`). Explicit per-patch scales are allowed.
//! The scales applied are recorded, with each patch's fingerprint, in the output's
//! `engram.patches` metadata; removing a patch without a scale of its own subtracts the net
//! scale recorded for it ([`recorded_scale`]), so `remove` undoes exactly what `apply` did.
//!
//! **BatchNorm** (card step 7, engram default). A BatchNorm layer is recognised by name
//! ([`BnLayers`]): module `P` is one when the model has `P.running_mean` or `P.running_var`
//! (PyTorch's names; Keras' `P.moving_mean` / `P.moving_variance` likewise). Then
//! - `P.weight` and `P.bias` are its affine parameters: patched like weights (δ, projection,
//!   quantization) when the selection covers them;
//! - its running statistics are carried as differences from the clean model, μ_c − μ_clean
//!   and var_c − var_clean (from θ_pre when no clean model is given), never projected, and mix
//!   linearly on apply: μ = μ_clean + Σ_c α_c·(μ_c − μ_clean), likewise the variance. A mix
//!   that would leave a variance ≤ 0 (or not finite) is refused, naming the tensor, before
//!   anything is written;
//! - `P.num_batches_tracked` is never patched (the model's counter is copied unchanged);
//! - counting `--first-layers` by modules, a BatchNorm module belongs to the layer before it
//!   (the previous non-BN module in model order) and does not count as a layer of its own; a
//!   BatchNorm module with no layer before it counts as one. Names with a layer number
//!   (`layers.N.`) are counted by that number as before.
//!
//! Re-estimating the running statistics on a calibration batch (the card's option) needs a
//! forward pass of the model, which this crate does not have: it is not offered.

use crate::merge::engine::layer_index;
use crate::tv::{CombineReport, FINGERPRINT_KEY, Term, combine, fingerprint};
use engram_ckpt::{DType, Error, Model, ModelWriter, Result, TensorSpec, WriteOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub const RANGE_SUFFIX: &str = ".__range";
/// Metadata key of the fingerprint of the clean model a patch was extracted with (`--clean`).
pub const CLEAN_FINGERPRINT_KEY: &str = "patch.clean_fingerprint";

/// Suffixes of a BatchNorm layer's running mean (PyTorch, Keras).
const BN_MEAN: [&str; 2] = ["running_mean", "moving_mean"];
/// Suffixes of a BatchNorm layer's running variance (PyTorch, Keras).
const BN_VAR: [&str; 2] = ["running_var", "moving_variance"];
/// The suffix of PyTorch's batch counter: never patched.
const BN_COUNT: &str = "num_batches_tracked";

/// What a tensor is to a BatchNorm layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnRole {
    /// Not a BatchNorm tensor (or not recognised as one).
    None,
    /// `weight` or `bias` of a BatchNorm layer: patched like weights.
    Affine,
    /// The running mean: carried as μ_c − μ_clean, mixed linearly.
    Mean,
    /// The running variance: carried as var_c − var_clean, mixed linearly, kept positive.
    Var,
    /// `num_batches_tracked`: never patched.
    Count,
}

/// The BatchNorm layers of a model, recognised by name: module `P` is one when the model
/// has `P.running_mean` or `P.running_var` (or Keras' `moving_mean` / `moving_variance`).
#[derive(Clone, Debug, Default)]
pub struct BnLayers {
    modules: BTreeSet<String>,
}

fn split_module(name: &str) -> (&str, &str) {
    name.rsplit_once('.').unwrap_or(("", name))
}

impl BnLayers {
    pub fn of(m: &Model) -> BnLayers {
        BnLayers::from_names(m.tensors().map(|v| v.name().to_string()))
    }

    pub fn from_names(names: impl IntoIterator<Item = String>) -> BnLayers {
        let modules = names
            .into_iter()
            .filter_map(|n| {
                let (module, last) = split_module(&n);
                (BN_MEAN.contains(&last) || BN_VAR.contains(&last)).then(|| module.to_string())
            })
            .collect();
        BnLayers { modules }
    }

    /// Whether `module` (a name without its last component) is a BatchNorm layer.
    pub fn is_bn_module(&self, module: &str) -> bool {
        self.modules.contains(module)
    }

    pub fn role(&self, name: &str) -> BnRole {
        let (module, last) = split_module(name);
        if !self.modules.contains(module) {
            return BnRole::None;
        }
        match last {
            l if BN_MEAN.contains(&l) => BnRole::Mean,
            l if BN_VAR.contains(&l) => BnRole::Var,
            BN_COUNT => BnRole::Count,
            "weight" | "bias" | "gamma" | "beta" => BnRole::Affine,
            _ => BnRole::None,
        }
    }
}

/// The scale of each of `n` patches applied together without scales of their own: α/n
/// (card step 5; α = 1 by default). An error for n = 0, a non-finite α, or α = 0 (the
/// patches would have no effect).
pub fn default_scale(alpha: f32, n: usize) -> Result<f32> {
    if n == 0 {
        return Err(Error::Invalid("no patch to apply".into()));
    }
    if !alpha.is_finite() {
        return Err(Error::Invalid(format!("--scale {alpha} must be finite")));
    }
    if alpha == 0.0 {
        return Err(Error::Invalid(
            "--scale 0 has no effect: the patches would not change the model".into(),
        ));
    }
    Ok(alpha / n as f32)
}

/// Metadata key of the record of applied patches (a JSON list of
/// `{"patch", "fingerprint", "alpha"}`; removals are recorded with a negative α).
pub const APPLIED_KEY: &str = "engram.patches";

/// The net scale `model` records for `patch` (applied minus removed, [`APPLIED_KEY`]),
/// matched by the patch's fingerprint (by path for records without one); an error if the
/// model records none or the patch was already removed.
pub fn recorded_scale(model: &Model, patch: &Patch) -> Result<f32> {
    let bad = |why: String| {
        Err(Error::format(
            model.source(),
            format!(
                "{why} for the patch {}; give its scale as PATCH:ALPHA",
                patch.model.source().display()
            ),
        ))
    };
    let md = model.metadata();
    let Some(raw) = md.get(APPLIED_KEY) else {
        return bad(format!("records no applied patches ({APPLIED_KEY})"));
    };
    let Ok(serde_json::Value::Array(list)) = serde_json::from_str::<serde_json::Value>(raw) else {
        return bad(format!("{APPLIED_KEY} is not a list"));
    };
    let fp = fingerprint(&patch.model);
    let path = patch.model.source().display().to_string();
    let mut net = 0f64;
    let mut found = false;
    for e in &list {
        let same = match e.get("fingerprint").and_then(|f| f.as_str()) {
            Some(f) => f == fp,
            None => e.get("patch").and_then(|p| p.as_str()) == Some(path.as_str()),
        };
        if !same {
            continue;
        }
        let Some(a) = e
            .get("alpha")
            .and_then(|a| a.as_f64())
            .filter(|a| a.is_finite())
        else {
            return bad(format!(
                "{APPLIED_KEY} holds an entry without a finite alpha"
            ));
        };
        net += a;
        found = true;
    }
    if !found {
        return bad(format!("{APPLIED_KEY} does not record this patch"));
    }
    if net == 0.0 {
        return bad("the patch was applied and removed already (net scale 0)".into());
    }
    Ok(net as f32)
}

/// Which tensors a patch covers.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Name patterns ([`glob_match`]: a substring without `*`, an anchored glob with);
    /// empty = all tensors.
    pub include: Vec<String>,
    /// Only the first k layers: by layer number where names carry one (`layers.N.`),
    /// otherwise the first k distinct modules (name without its last component) in model
    /// order, a BatchNorm module counted with the layer before it ([`BnLayers`]).
    pub first_layers: Option<usize>,
}

/// Whether the tensor name `s` is covered by the `--include` pattern `pat`: with `*`, the
/// anchored glob [`engram_ckpt::names::glob`]; without, a substring of the name. A patch
/// selects a region of the network (`--include conv`: every convolution), and `--include`
/// has always read a bare word as a part of the name (`engram patch extract --help`).
fn glob_match(pat: &str, s: &str) -> bool {
    if pat.contains('*') {
        engram_ckpt::names::glob(pat, s)
    } else {
        s.contains(pat)
    }
}

impl Selection {
    /// Names of `m`'s float tensors that the selection covers, in model order. A BatchNorm
    /// layer's `num_batches_tracked` is never covered.
    pub fn select(&self, m: &Model) -> Vec<String> {
        let bn = BnLayers::of(m);
        let names: Vec<&str> = m
            .tensors()
            .filter(|v| v.dtype().is_float())
            .map(|v| v.name())
            .filter(|n| bn.role(n) != BnRole::Count)
            .collect();
        let by_index = names.iter().any(|n| layer_index(n).is_some());
        // Layers counted by module: a BatchNorm module joins the layer before it.
        let mut layers: Vec<&str> = Vec::new();
        let mut layer_of: BTreeMap<&str, usize> = BTreeMap::new();
        names
            .into_iter()
            .filter(|n| self.include.is_empty() || self.include.iter().any(|p| glob_match(p, n)))
            .filter(|n| match self.first_layers {
                None => true,
                Some(k) if by_index => layer_index(n).is_some_and(|i| i < k),
                Some(k) => {
                    let module = n.rsplit_once('.').map_or(*n, |(a, _)| a);
                    let layer = match layer_of.get(module) {
                        Some(&l) => l,
                        None => {
                            let l = match layers.len() {
                                n if n > 0 && bn.is_bn_module(module) => n - 1,
                                _ => {
                                    layers.push(module);
                                    layers.len() - 1
                                }
                            };
                            layer_of.insert(module, l);
                            l
                        }
                    };
                    layer < k
                }
            })
            .map(str::to_string)
            .collect()
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PatchReport {
    pub tensors: Vec<String>,
    pub params: u64,
    /// Tensors where the projection was skipped because ⟨a,a⟩ = 0.
    pub projection_skipped: Vec<String>,
    /// BatchNorm running statistics carried as differences from the clean model (from θ_pre
    /// without one), unprojected.
    pub bn_statistics: Vec<String>,
    pub bytes: u64,
    /// Bytes of the same tensors stored in full as the corrupted model's dtype.
    pub full_copy_bytes: u64,
}

/// Quantizes to `levels` uniform min–max levels; returns codes, min, max.
pub fn quantize(x: &[f32], levels: u32) -> (Vec<u8>, f32, f32) {
    let min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if x.is_empty() || max <= min {
        let c = if x.is_empty() { 0.0 } else { min };
        return (vec![0; x.len()], c, c);
    }
    let steps = (levels - 1) as f32;
    let codes = x
        .iter()
        .map(|v| {
            (((v - min) / (max - min)) * steps)
                .round()
                .clamp(0.0, steps) as u8
        })
        .collect();
    (codes, min, max)
}

pub fn dequantize(codes: &[u8], min: f32, max: f32, levels: u32, out: &mut [f32]) {
    let step = if levels > 1 {
        (max - min) / (levels - 1) as f32
    } else {
        0.0
    };
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = min + c as f32 * step;
    }
}

/// [`crate::output::same_non_floats`], except that a BatchNorm counter (`num_batches_tracked`)
/// need only have the same dtype and shape in every input: fine-tuning advances it, and a
/// patch neither carries nor changes it.
fn same_non_floats_but_counters(first: &Model, others: &[&Model]) -> Result<()> {
    let bn = BnLayers::of(first);
    crate::output::same_non_floats_except(first, others, |name| bn.role(name) == BnRole::Count)
}

/// Extracts the patch of `corrupt` relative to `pre`, writing a safetensors file `out`.
#[allow(clippy::too_many_arguments)]
pub fn extract(
    pre: &Model,
    clean: Option<&Model>,
    corrupt: &Model,
    sel: &Selection,
    levels: Option<u32>,
    out: &Path,
    metadata: &BTreeMap<String, String>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<PatchReport> {
    if let Some(l) = levels
        && !(2..=256).contains(&l)
    {
        return Err(Error::Invalid(format!("--levels {l}: use 2 to 256 levels")));
    }
    // A patch holds float tensors only: the non-float ones must be the same in every input,
    // but for BatchNorm counters, which fine-tuning advances and a patch never touches.
    let others: Vec<&Model> = std::iter::once(pre).chain(clean).collect();
    same_non_floats_but_counters(corrupt, &others)?;
    let names = sel.select(corrupt);
    // The selection over every input covers the same tensors: one the model lacks is an
    // error, not a patch without it.
    for m in std::iter::once(pre).chain(clean) {
        if let Some(n) = sel.select(m).into_iter().find(|n| !names.contains(n)) {
            return Err(Error::tensor(
                corrupt.source(),
                &n,
                format!(
                    "missing, or not a float tensor (it is one in {}); no tensor is skipped",
                    m.source().display()
                ),
            ));
        }
    }
    if names.is_empty() {
        return Err(Error::Invalid(format!(
            "the selection covers no float tensor of {}",
            corrupt.source().display()
        )));
    }
    let mut specs = Vec::new();
    let mut full_copy_bytes = 0u64;
    for n in &names {
        let v = corrupt.require(n)?;
        for m in std::iter::once(pre).chain(clean) {
            let t = m.require(n)?;
            if t.shape() != v.shape() {
                return Err(Error::tensor(
                    m.source(),
                    n,
                    format!("shape {:?} differs from {:?}", t.shape(), v.shape()),
                ));
            }
        }
        full_copy_bytes += v.bytes.len() as u64;
        match levels {
            Some(_) => {
                specs.push(TensorSpec::new(n.clone(), DType::U8, v.shape()));
                specs.push(TensorSpec::new(
                    format!("{n}{RANGE_SUFFIX}"),
                    DType::F32,
                    &[2],
                ));
            }
            None => specs.push(TensorSpec::new(n.clone(), DType::F32, v.shape())),
        }
    }
    let mut md = metadata.clone();
    md.insert("engram.patch".into(), "rws".into());
    md.insert(
        "patch.levels".into(),
        levels.map_or("none".into(), |l| l.to_string()),
    );
    md.insert("patch.projected".into(), clean.is_some().to_string());
    md.insert(
        "patch.bn_statistics".into(),
        if clean.is_some() {
            "minus-clean"
        } else {
            "minus-pre"
        }
        .into(),
    );
    md.insert(FINGERPRINT_KEY.into(), fingerprint(pre));
    if let Some(clean) = clean {
        md.insert(CLEAN_FINGERPRINT_KEY.into(), fingerprint(clean));
    }
    let w = ModelWriter::create(
        out,
        specs,
        &WriteOptions {
            max_shard_bytes: None,
            metadata: md,
        },
    )?;
    let mut skipped = Vec::new();
    let mut bn_statistics = Vec::new();
    let bn = BnLayers::of(corrupt);
    let mut params = 0u64;
    for n in &names {
        let stats = matches!(bn.role(n), BnRole::Mean | BnRole::Var);
        // Running statistics: μ_c − μ_clean (θ_pre without a clean model), unprojected.
        let reference = match clean {
            Some(c) if stats => c,
            _ => pre,
        };
        let p = reference.require(n)?.to_f32()?;
        let mut d = corrupt.require(n)?.to_f32()?;
        for (x, b) in d.iter_mut().zip(&p) {
            *x -= b;
        }
        if stats {
            bn_statistics.push(n.clone());
        } else if let Some(clean) = clean {
            let mut a = clean.require(n)?.to_f32()?;
            for (x, b) in a.iter_mut().zip(&p) {
                *x -= b;
            }
            let aa: f64 = a.iter().map(|x| (*x as f64) * (*x as f64)).sum();
            if aa > 0.0 {
                let da: f64 = d
                    .iter()
                    .zip(&a)
                    .map(|(x, y)| (*x as f64) * (*y as f64))
                    .sum();
                let c = (da / aa) as f32;
                for (x, y) in d.iter_mut().zip(&a) {
                    *x -= c * y;
                }
            } else {
                skipped.push(n.clone());
            }
        }
        match levels {
            Some(l) => {
                let (codes, min, max) = quantize(&d, l);
                w.write_bytes(n, &codes)?;
                w.write_f32(&format!("{n}{RANGE_SUFFIX}"), &[min, max])?;
            }
            None => w.write_f32(n, &d)?,
        }
        params += d.len() as u64;
        progress(d.len() as u64);
    }
    let files = w.finish(&[])?;
    let bytes = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    Ok(PatchReport {
        tensors: names,
        params,
        projection_skipped: skipped,
        bn_statistics,
        bytes,
        full_copy_bytes,
    })
}

/// A patch opened for applying: decodes quantized tensors on the fly.
pub struct Patch {
    pub model: Model,
    pub levels: Option<u32>,
}

impl Patch {
    /// Opens a patch and verifies its checksums ([`Model::verify`]).
    pub fn open(path: &Path) -> Result<Patch> {
        let model = Model::open(path)?;
        model.verify()?;
        let md = model.metadata();
        if md.get("engram.patch").map(String::as_str) != Some("rws") {
            return Err(Error::format(
                path,
                "not an engram weight patch (no engram.patch=rws metadata)",
            ));
        }
        let levels = match md.get("patch.levels").map(String::as_str) {
            None | Some("none") => None,
            Some(s) => Some(
                s.parse::<u32>()
                    .ok()
                    .filter(|l| (2..=256).contains(l))
                    .ok_or_else(|| Error::format(path, format!("bad patch.levels '{s}'")))?,
            ),
        };
        Ok(Patch { model, levels })
    }

    /// Reads patch values of tensor `name` from element `start`; false if not covered.
    pub fn read(&self, name: &str, start: usize, out: &mut [f32]) -> Result<bool> {
        let Some(v) = self.model.get(name) else {
            return Ok(false);
        };
        match self.levels {
            None => v.read_f32_into(start, out)?,
            Some(l) => {
                let range = self
                    .model
                    .require(&format!("{name}{RANGE_SUFFIX}"))?
                    .to_f32()?;
                let (&[min, max], DType::U8) = (range.as_slice(), v.dtype()) else {
                    return Err(Error::tensor(
                        self.model.source(),
                        name,
                        "quantized patch needs U8 codes and a [min, max] range",
                    ));
                };
                let end = start + out.len();
                if end > v.numel() {
                    return Err(Error::tensor(
                        self.model.source(),
                        name,
                        "read beyond the tensor",
                    ));
                }
                dequantize(&v.bytes[start..end], min, max, l, out);
            }
        }
        Ok(true)
    }
}

impl Patch {
    /// Refuses a patch taken from another θ_pre than `model`'s (as `tv apply` refuses a task
    /// vector of another base). A patch records its θ_pre's fingerprint and, with `--clean`,
    /// the clean model's; `model` qualifies if it is either, or records the same θ_pre
    /// (every model `apply` writes does, so `remove` finds it). A patch that records no
    /// fingerprint is not checked.
    pub fn check_target(&self, model: &Model) -> Result<()> {
        let md = self.model.metadata();
        let Some(pre) = md.get(FINGERPRINT_KEY) else {
            return Ok(());
        };
        let fp = fingerprint(model);
        if *pre == fp
            || md.get(CLEAN_FINGERPRINT_KEY) == Some(&fp)
            || model.metadata().get(FINGERPRINT_KEY) == Some(pre)
        {
            return Ok(());
        }
        Err(Error::format(
            self.model.source(),
            format!(
                "was extracted against another base (fingerprint {pre}): {} is neither that base, \
                 nor the clean model of the patch, nor records it (fingerprint {fp}); use --force \
                 to apply anyway",
                model.source().display()
            ),
        ))
    }

    /// Checks every tensor of the patch against `model`: the model holds it, as a float
    /// tensor of the same shape; the patch stores it as float values, or as U8 codes with a
    /// `[min, max]` range; nothing in the patch is left unused.
    fn check_tensors(&self, model: &Model) -> Result<()> {
        let src = self.model.source();
        for v in self.model.tensors() {
            let (name, range) = match v.name().strip_suffix(RANGE_SUFFIX) {
                Some(n) => (n, true),
                None => (v.name(), false),
            };
            let bad = |msg: String| Err(Error::tensor(src, v.name(), msg));
            let Some(t) = model.get(name) else {
                return bad(format!("not in the model {}", model.source().display()));
            };
            if !t.dtype().is_float() {
                return bad(format!(
                    "the model's tensor is {}, not a float type",
                    t.dtype()
                ));
            }
            let want = match (range, self.levels) {
                (true, None) => return bad("a quantization range in an unquantized patch".into()),
                (true, Some(_)) => (vec![2], "F32", v.dtype() == DType::F32),
                (false, Some(_)) => (t.shape().to_vec(), "U8", v.dtype() == DType::U8),
                (false, None) => (t.shape().to_vec(), "a float type", v.dtype().is_float()),
            };
            if v.shape() != want.0.as_slice() {
                return bad(format!("shape {:?}, expected {:?}", v.shape(), want.0));
            }
            if !want.2 {
                return bad(format!("dtype {}, expected {}", v.dtype(), want.1));
            }
            if range && self.model.get(name).is_none() {
                return bad("a quantization range without its codes".into());
            }
            if self.levels.is_some() && !range {
                self.model.require(&format!("{name}{RANGE_SUFFIX}"))?;
            }
        }
        Ok(())
    }
}

/// Refuses a mix that would leave a BatchNorm running variance of `model` ≤ 0 or not finite:
/// computes each covered variance as [`combine`] does (the model's values, then each patch
/// times `sign·α` in order, in f32), before anything is written.
fn check_variances(model: &Model, patches: &[(Patch, f32)], sign: f32) -> Result<()> {
    // Lowering the scales is the way back only when positive scales are applied; a removal
    // or a negative scale may need them raised, lowered or of the other sign.
    let advice = if sign > 0.0 && patches.iter().all(|(_, a)| *a > 0.0) {
        "lower their scales"
    } else {
        "change their scales"
    };
    let bn = BnLayers::of(model);
    for v in model.tensors().filter(|v| bn.role(v.name()) == BnRole::Var) {
        let name = v.name();
        if !patches.iter().any(|(p, _)| p.model.get(name).is_some()) {
            continue;
        }
        let mut acc: Vec<f32> = v.to_f32()?;
        let mut buf = vec![0f32; acc.len()];
        for (p, alpha) in patches {
            if p.read(name, 0, &mut buf)? {
                let coef = sign * alpha;
                for (a, b) in acc.iter_mut().zip(&buf) {
                    *a += coef * b;
                }
            }
        }
        if let Some((i, x)) = acc
            .iter()
            .enumerate()
            .find(|(_, x)| **x <= 0.0 || !x.is_finite())
        {
            return Err(Error::tensor(
                model.source(),
                name,
                format!(
                    "a BatchNorm running variance would be {x} at element {i} after the \
                     patches (it must stay positive); {advice}"
                ),
            ));
        }
    }
    Ok(())
}

/// Applies (sign +1) or removes (sign −1) patches, each with its scale, to `model`. Every
/// patch must fit `model` tensor by tensor, and come from its θ_pre unless `force`
/// ([`Patch::check_target`]); a BatchNorm running variance must stay positive. The scales
/// are recorded with each patch's fingerprint ([`APPLIED_KEY`], [`recorded_scale`]).
pub fn apply(
    model: &Model,
    patches: &[(Patch, f32)],
    sign: f32,
    force: bool,
    out: &Path,
    metadata: &BTreeMap<String, String>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<CombineReport> {
    for (p, _) in patches {
        if !force {
            p.check_target(model)?;
        }
        p.check_tensors(model)?;
    }
    if let Some((p, a)) = patches.iter().find(|(_, a)| !a.is_finite()) {
        return Err(Error::format(
            p.model.source(),
            format!("scale {a} is not a finite number"),
        ));
    }
    if let Some((p, _)) = patches.iter().find(|(_, a)| *a == 0.0) {
        return Err(Error::format(
            p.model.source(),
            "scale 0 has no effect: the patch would not change the model",
        ));
    }
    check_variances(model, patches, sign)?;
    let decoders: Vec<Box<crate::tv::Decode<'_>>> = patches
        .iter()
        .map(|(p, _)| Box::new(move |n: &str, s: usize, o: &mut [f32]| p.read(n, s, o)) as Box<_>)
        .collect();
    let mut terms = vec![Term::new(model, 1.0)];
    for ((p, alpha), d) in patches.iter().zip(&decoders) {
        terms.push(Term {
            model: &p.model,
            coef: sign * alpha,
            decode: Some(d.as_ref()),
        });
    }
    // Record what was applied, on top of what the input model already records.
    let mut applied: Vec<serde_json::Value> = model
        .metadata()
        .get(APPLIED_KEY)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    for (p, alpha) in patches {
        applied.push(serde_json::json!({
            "patch": p.model.source().display().to_string(),
            "fingerprint": fingerprint(&p.model),
            "alpha": sign * alpha,
        }));
    }
    let mut md = metadata.clone();
    // The output descends from the same θ_pre: `remove` and further patches accept it.
    let pre = patches
        .iter()
        .find_map(|(p, _)| p.model.metadata().get(FINGERPRINT_KEY).cloned());
    if let Some(fp) = pre.or_else(|| model.metadata().get(FINGERPRINT_KEY).cloned()) {
        md.insert(FINGERPRINT_KEY.into(), fp);
    }
    md.insert(
        APPLIED_KEY.into(),
        serde_json::Value::Array(applied).to_string(),
    );
    combine(
        &terms,
        out,
        None,
        false,
        &md,
        model.side_files(),
        true,
        progress,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{random_family, values};

    const SHAPES: &[(&str, &[usize])] = &[
        ("layers.0.conv.weight", &[16, 3, 3, 3]),
        ("layers.0.conv.bias", &[16]),
        ("layers.1.conv.weight", &[16, 16, 3, 3]),
        ("layers.2.fc.weight", &[10, 64]),
    ];

    #[test]
    fn selection_by_layers_and_patterns() {
        let dir = tempfile::tempdir().unwrap();
        let (base, _) = random_family(dir.path(), SHAPES, 0, 1);
        let s = Selection {
            include: vec![],
            first_layers: Some(1),
        };
        assert_eq!(
            s.select(&base),
            vec!["layers.0.conv.weight", "layers.0.conv.bias"]
        );
        let s = Selection {
            include: vec!["*.weight".into()],
            first_layers: Some(2),
        };
        assert_eq!(
            s.select(&base),
            vec!["layers.0.conv.weight", "layers.1.conv.weight"]
        );
        assert!(glob_match("layers.*.bias", "layers.0.conv.bias"));
        assert!(!glob_match("layers.*.bias", "layers.0.conv.weight"));
        // Without `*` a substring; with `*` anchored at both ends.
        assert!(glob_match("conv", "layers.0.conv.bias") && !glob_match("fc", "layers.0.w"));
        assert!(!glob_match("conv*", "layers.0.conv.bias"));
    }

    #[test]
    fn projection_removes_the_clean_direction_and_apply_remove_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let (pre, ms) = random_family(dir.path(), SHAPES, 2, 5);
        let (clean, corrupt) = (&ms[0], &ms[1]);
        let sel = Selection {
            include: vec![],
            first_layers: Some(2),
        };
        let p = dir.path().join("p.safetensors");
        let rep = extract(
            &pre,
            Some(clean),
            corrupt,
            &sel,
            None,
            &p,
            &BTreeMap::new(),
            &|_| {},
        )
        .unwrap();
        assert_eq!(rep.tensors.len(), 3);
        let patch = Patch::open(&p).unwrap();
        for n in &rep.tensors {
            let d = values(&patch.model, n);
            let a: Vec<f32> = values(clean, n)
                .iter()
                .zip(values(&pre, n))
                .map(|(x, y)| x - y)
                .collect();
            let dot: f64 = d
                .iter()
                .zip(&a)
                .map(|(x, y)| (*x as f64) * (*y as f64))
                .sum();
            assert!(dot.abs() < 1e-4, "{n}: residual {dot}");
        }
        let patched = dir.path().join("patched");
        apply(
            clean,
            &[(patch, 0.7)],
            1.0,
            false,
            &patched,
            &BTreeMap::new(),
            &|_| {},
        )
        .unwrap();
        let patched_m = Model::open(&patched).unwrap();
        let rec: serde_json::Value =
            serde_json::from_str(&patched_m.metadata()["engram.patches"]).unwrap();
        assert!(
            (rec[0]["alpha"].as_f64().unwrap() - 0.7).abs() < 1e-6,
            "{rec}"
        );
        let back = dir.path().join("back");
        apply(
            &patched_m,
            &[(Patch::open(&p).unwrap(), 0.7)],
            -1.0,
            false,
            &back,
            &BTreeMap::new(),
            &|_| {},
        )
        .unwrap();
        let back = Model::open(&back).unwrap();
        for (n, _) in SHAPES {
            for (x, y) in values(&back, n).iter().zip(values(clean, n)) {
                assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "{n}");
            }
        }
        // Untouched deep layer stays bit-identical.
        assert!(values(&back, "layers.2.fc.weight") == values(clean, "layers.2.fc.weight"));
    }

    /// A patch goes onto its θ_pre, its clean model, or a model that records its θ_pre;
    /// another model is refused (unless forced), and so is a patch that does not fit.
    #[test]
    fn patches_check_their_target() {
        let dir = tempfile::tempdir().unwrap();
        let (pre, ms) = random_family(&dir.path().join("a"), SHAPES, 3, 7);
        let (other, _) = random_family(&dir.path().join("b"), SHAPES, 0, 8);
        let p = dir.path().join("p.safetensors");
        let sel = Selection::default();
        let md = BTreeMap::new();
        extract(&pre, Some(&ms[0]), &ms[1], &sel, None, &p, &md, &|_| {}).unwrap();
        let patch = Patch::open(&p).unwrap();
        for ok in [&pre, &ms[0]] {
            patch.check_target(ok).unwrap();
        }
        for bad in [&ms[2], &other] {
            let e = patch.check_target(bad).unwrap_err().to_string();
            assert!(e.contains("another base") && e.contains("--force"), "{e}");
        }
        let out = dir.path().join("forced");
        apply(&other, &[(patch, 1.0)], 1.0, true, &out, &md, &|_| {}).unwrap();
        // The output records θ_pre, so the patch can be removed from it.
        Patch::open(&p)
            .unwrap()
            .check_target(&Model::open(&out).unwrap())
            .unwrap();

        let (small, _) = random_family(&dir.path().join("c"), &SHAPES[..2], 0, 9);
        let e = apply(
            &small,
            &[(Patch::open(&p).unwrap(), 1.0)],
            1.0,
            true,
            &dir.path().join("x"),
            &md,
            &|_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("layers.1.conv.weight") && e.contains("not in the model"),
            "{e}"
        );
        assert!(!dir.path().join("x").exists());
    }

    #[test]
    fn quantized_patches_stay_within_half_a_step() {
        let dir = tempfile::tempdir().unwrap();
        let (pre, ms) = random_family(dir.path(), SHAPES, 1, 6);
        let sel = Selection::default();
        let p = dir.path().join("q.safetensors");
        let rep = extract(
            &pre,
            None,
            &ms[0],
            &sel,
            Some(16),
            &p,
            &BTreeMap::new(),
            &|_| {},
        )
        .unwrap();
        assert!(rep.bytes < rep.full_copy_bytes);
        let patch = Patch::open(&p).unwrap();
        for (n, shape) in SHAPES {
            let exact: Vec<f32> = values(&ms[0], n)
                .iter()
                .zip(values(&pre, n))
                .map(|(x, y)| x - y)
                .collect();
            let mut got = vec![0f32; shape.iter().product()];
            assert!(patch.read(n, 0, &mut got).unwrap());
            let (min, max) = exact
                .iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
            let half_step = (max - min) / 15.0 / 2.0;
            for (g, e) in got.iter().zip(&exact) {
                assert!((g - e).abs() <= half_step * 1.0001, "{n}");
            }
        }
        // A constant tensor quantizes to that constant.
        let (codes, min, max) = quantize(&[0.5, 0.5], 4);
        let mut out = [0f32; 2];
        dequantize(&codes, min, max, 4, &mut out);
        assert_eq!(out, [0.5, 0.5]);
    }

    /// A small CNN with BatchNorm, named as PyTorch names it, no layer numbers: conv1, bn1,
    /// conv2, bn2, fc. `f(name, i)` gives the float values; num_batches_tracked is I64.
    fn bn_model(path: &Path, f: &dyn Fn(&str, usize) -> f32) -> Model {
        let shapes: &[(&str, &[usize])] = &[
            ("conv1.weight", &[4, 1, 3, 3]),
            ("conv1.bias", &[4]),
            ("bn1.weight", &[4]),
            ("bn1.bias", &[4]),
            ("bn1.running_mean", &[4]),
            ("bn1.running_var", &[4]),
            ("bn1.num_batches_tracked", &[]),
            ("conv2.weight", &[4, 4, 3, 3]),
            ("bn2.weight", &[4]),
            ("bn2.bias", &[4]),
            ("bn2.running_mean", &[4]),
            ("bn2.running_var", &[4]),
            ("bn2.num_batches_tracked", &[]),
            ("fc.weight", &[3, 4]),
            ("fc.bias", &[3]),
        ];
        let specs: Vec<TensorSpec> = shapes
            .iter()
            .map(|(n, s)| {
                let dt = if n.ends_with("num_batches_tracked") {
                    DType::I64
                } else {
                    DType::F32
                };
                TensorSpec::new(*n, dt, s)
            })
            .collect();
        let w = ModelWriter::create(path, specs.clone(), &WriteOptions::default()).unwrap();
        for s in &specs {
            if s.dtype == DType::I64 {
                // Fine-tuning advances the counter: it differs between models.
                let count = 1000 + f(&s.name, 0).abs() as i64 * 100;
                w.write_bytes(&s.name, &count.to_le_bytes()).unwrap();
            } else {
                let v: Vec<f32> = (0..s.numel()).map(|i| f(&s.name, i)).collect();
                w.write_f32(&s.name, &v).unwrap();
            }
        }
        w.finish(&[]).unwrap();
        Model::open(path).unwrap()
    }

    /// θ_pre, θ_clean and two corruption models; variances stay near 1, everything else
    /// differs per model and per element.
    fn bn_family(dir: &Path) -> (Model, Model, Vec<Model>) {
        let val = |k: u64| {
            move |name: &str, i: usize| {
                let r = crate::rng::Rng::keyed(k, name, i as u64).normal();
                if name.ends_with("running_var") {
                    1.0 + 0.1 * r.abs() + 0.05 * k as f32
                } else if name.ends_with("num_batches_tracked") {
                    10.0 * k as f32
                } else {
                    0.3 * r + 0.01 * k as f32
                }
            }
        };
        let pre = bn_model(&dir.join("pre.safetensors"), &val(0));
        let clean = bn_model(&dir.join("clean.safetensors"), &val(1));
        let cs = (2..4)
            .map(|k| bn_model(&dir.join(format!("c{k}.safetensors")), &val(k)))
            .collect();
        (pre, clean, cs)
    }

    #[test]
    fn batchnorm_layers_are_recognised_by_name_and_count_with_the_layer_before() {
        let dir = tempfile::tempdir().unwrap();
        let (pre, _, _) = bn_family(dir.path());
        let bn = BnLayers::of(&pre);
        assert_eq!(bn.role("bn1.weight"), BnRole::Affine);
        assert_eq!(bn.role("bn1.running_mean"), BnRole::Mean);
        assert_eq!(bn.role("bn2.running_var"), BnRole::Var);
        assert_eq!(bn.role("bn1.num_batches_tracked"), BnRole::Count);
        assert_eq!(bn.role("conv1.weight"), BnRole::None);
        assert_eq!(bn.role("fc.bias"), BnRole::None);
        let first = |k| {
            Selection {
                include: vec![],
                first_layers: Some(k),
            }
            .select(&pre)
        };
        // bn1 belongs to conv1, bn2 to conv2: one layer is conv1 and bn1 (no counter).
        assert_eq!(
            first(1),
            [
                "conv1.weight",
                "conv1.bias",
                "bn1.weight",
                "bn1.bias",
                "bn1.running_mean",
                "bn1.running_var"
            ]
        );
        assert_eq!(first(2).len(), 6 + 5);
        assert!(first(2).iter().all(|n| !n.starts_with("fc.")));
        assert_eq!(first(3).len(), 6 + 5 + 2);
        // A counter stored as a float is not patched either.
        let names = [
            "m.running_var",
            "m.num_batches_tracked",
            "m.weight",
            "x.weight",
        ];
        let bn = BnLayers::from_names(names.map(String::from));
        assert_eq!(bn.role("m.num_batches_tracked"), BnRole::Count);
        assert_eq!(bn.role("m.weight"), BnRole::Affine);
        assert_eq!(bn.role("x.weight"), BnRole::None);
        // A BatchNorm module first in the model counts as a layer of its own.
        let first_bn = dir.path().join("bn-first.safetensors");
        crate::testutil::write_model(
            &first_bn,
            DType::F32,
            &[
                ("bn0.running_mean", &[2]),
                ("bn0.running_var", &[2]),
                ("conv.weight", &[2, 2]),
            ],
            &|_, _| 1.0,
        );
        let m = Model::open(&first_bn).unwrap();
        let sel = Selection {
            include: vec![],
            first_layers: Some(1),
        };
        assert_eq!(sel.select(&m), ["bn0.running_mean", "bn0.running_var"]);
    }

    #[test]
    fn default_scale_is_alpha_over_the_number_of_patches() {
        assert_eq!(default_scale(1.0, 1).unwrap(), 1.0);
        assert_eq!(default_scale(1.0, 2).unwrap(), 0.5);
        assert_eq!(default_scale(1.5, 3).unwrap(), 0.5);
        assert!(default_scale(1.0, 0).is_err());
        let e = default_scale(f32::NAN, 2).unwrap_err().to_string();
        assert!(e.contains("--scale"), "{e}");
        // α = 0 would write the model unchanged.
        for z in [0.0, -0.0] {
            let e = default_scale(z, 2).unwrap_err().to_string();
            assert!(e.contains("--scale 0") && e.contains("no effect"), "{e}");
        }
    }

    /// The card's engram default: affine parameters patched like weights (projected),
    /// running statistics carried as μ_c − μ_clean and mixed linearly with α_c = 1/n, the
    /// counter and the deeper layers untouched; removal with the recorded scales restores
    /// the clean model.
    #[test]
    fn batchnorm_statistics_mix_linearly_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (pre, clean, cs) = bn_family(dir.path());
        let sel = Selection {
            include: vec![],
            first_layers: Some(1),
        };
        let md = BTreeMap::new();
        let paths: Vec<_> = (0..2)
            .map(|k| dir.path().join(format!("p{k}.safetensors")))
            .collect();
        for (c, p) in cs.iter().zip(&paths) {
            let rep = extract(&pre, Some(&clean), c, &sel, None, p, &md, &|_| {}).unwrap();
            assert_eq!(rep.bn_statistics, ["bn1.running_mean", "bn1.running_var"]);
            assert!(!rep.tensors.iter().any(|n| n.contains("num_batches")));
            let patch = Patch::open(p).unwrap();
            // Statistics: exactly corrupt − clean; the affine weight: projected (orthogonal to
            // the clean direction), so not corrupt − pre.
            for n in ["bn1.running_mean", "bn1.running_var"] {
                let want: Vec<f32> = values(c, n)
                    .iter()
                    .zip(values(&clean, n))
                    .map(|(x, y)| x - y)
                    .collect();
                assert_eq!(values(&patch.model, n), want, "{n}");
            }
            let d = values(&patch.model, "bn1.weight");
            let a: Vec<f32> = values(&clean, "bn1.weight")
                .iter()
                .zip(values(&pre, "bn1.weight"))
                .map(|(x, y)| x - y)
                .collect();
            let dot: f32 = d.iter().zip(&a).map(|(x, y)| x * y).sum();
            assert!(dot.abs() < 1e-5, "bn1.weight not projected: {dot}");
        }
        let alpha = default_scale(1.0, 2).unwrap();
        let open = || -> Vec<(Patch, f32)> {
            paths
                .iter()
                .map(|p| (Patch::open(p).unwrap(), alpha))
                .collect()
        };
        let on = dir.path().join("on");
        apply(&clean, &open(), 1.0, false, &on, &md, &|_| {}).unwrap();
        let on = Model::open(&on).unwrap();
        for n in ["bn1.running_mean", "bn1.running_var"] {
            let (c0, c1, cl) = (values(&cs[0], n), values(&cs[1], n), values(&clean, n));
            for (i, got) in values(&on, n).iter().enumerate() {
                let want = cl[i] + 0.5 * (c0[i] - cl[i]) + 0.5 * (c1[i] - cl[i]);
                assert!((got - want).abs() <= 1e-6, "{n}[{i}]: {got} vs {want}");
            }
        }
        for n in ["bn1.num_batches_tracked", "bn2.num_batches_tracked"] {
            assert_eq!(
                on.require(n).unwrap().bytes,
                clean.require(n).unwrap().bytes
            );
        }
        for n in [
            "conv2.weight",
            "bn2.weight",
            "bn2.running_mean",
            "bn2.running_var",
        ] {
            assert_eq!(
                values(&on, n),
                values(&clean, n),
                "{n} is outside the patch"
            );
        }
        // The applied scales are recorded and removal takes them back.
        for p in &paths {
            assert_eq!(
                recorded_scale(&on, &Patch::open(p).unwrap()).unwrap(),
                alpha
            );
        }
        let scales: Vec<(Patch, f32)> = paths
            .iter()
            .map(|p| {
                let patch = Patch::open(p).unwrap();
                let a = recorded_scale(&on, &patch).unwrap();
                (patch, a)
            })
            .collect();
        let back = dir.path().join("back");
        apply(&on, &scales, -1.0, false, &back, &md, &|_| {}).unwrap();
        let back = Model::open(&back).unwrap();
        for v in clean.tensors().filter(|v| v.dtype().is_float()) {
            let n = v.name();
            for (x, y) in values(&back, n).iter().zip(values(&clean, n)) {
                assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "{n}");
            }
        }
        let e = recorded_scale(&back, &Patch::open(&paths[0]).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("removed already"), "{e}");
        let e = recorded_scale(&clean, &Patch::open(&paths[0]).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("PATCH:ALPHA"), "{e}");
    }

    /// A mix that would make a running variance ≤ 0 is refused, naming the tensor, and
    /// nothing is written; a smaller scale is accepted.
    #[test]
    fn a_variance_mix_that_is_not_positive_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let var = |v: f32| {
            move |name: &str, _: usize| {
                if name.ends_with("running_var") {
                    v
                } else {
                    0.1
                }
            }
        };
        let pre = bn_model(&dir.path().join("pre.safetensors"), &var(1.0));
        let c = bn_model(&dir.path().join("c.safetensors"), &var(0.25));
        let p = dir.path().join("p.safetensors");
        let sel = Selection {
            include: vec!["bn1.*".into()],
            first_layers: None,
        };
        extract(&pre, None, &c, &sel, None, &p, &BTreeMap::new(), &|_| {}).unwrap();
        // 1 + 2·(0.25 − 1) = −0.5.
        let out = dir.path().join("bad");
        let e = apply(
            &pre,
            &[(Patch::open(&p).unwrap(), 2.0)],
            1.0,
            false,
            &out,
            &BTreeMap::new(),
            &|_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("bn1.running_var") && e.contains("positive"),
            "{e}"
        );
        assert!(e.contains("lower their scales"), "{e}");
        assert!(!out.exists());
        // A scale of 0 changes nothing: refused, naming the patch, nothing written.
        let e = apply(
            &pre,
            &[(Patch::open(&p).unwrap(), 0.0)],
            1.0,
            false,
            &out,
            &BTreeMap::new(),
            &|_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("scale 0 has no effect") && e.contains("p.safetensors"),
            "{e}"
        );
        assert!(!out.exists());
        // 1 + 1.25·(−0.75) = 0.0625 > 0.
        let ok = dir.path().join("ok");
        apply(
            &pre,
            &[(Patch::open(&p).unwrap(), 1.25)],
            1.0,
            false,
            &ok,
            &BTreeMap::new(),
            &|_| {},
        )
        .unwrap();
        let v = values(&Model::open(&ok).unwrap(), "bn1.running_var");
        assert!(v.iter().all(|x| (x - 0.0625).abs() < 1e-6), "{v:?}");
        // Removing more than was applied is refused as well.
        let e = apply(
            &Model::open(&ok).unwrap(),
            &[(Patch::open(&p).unwrap(), -1.0)],
            -1.0,
            false,
            &dir.path().join("bad2"),
            &BTreeMap::new(),
            &|_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bn1.running_var"), "{e}");
        // Lowering is not the way back for a removal (or a negative scale).
        assert!(e.contains("change their scales"), "{e}");
        assert!(!e.contains("lower"), "{e}");
    }
}
