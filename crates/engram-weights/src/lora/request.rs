//! `engram lora extract|apply|merge` as both front ends (the CLI and the Python module) run
//! them: the request with its defaults and checks, the provenance recorded, the JSON returned.

use super::{
    ApplyOptions, ApplyReport, ExtractOptions, ExtractReport, RecombineReport, apply, expand,
    extract, recombine, touched,
};
use engram_ckpt::peft::Adapter;
use engram_ckpt::{DType, Error, Model, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Opens a model and verifies the checksums engram records.
fn open(path: &Path) -> Result<Model> {
    let m = Model::open(path)?;
    m.verify()?;
    Ok(m)
}

/// A float dtype by name (`f32`, `bf16`, ...), as `--dtype` takes it.
pub fn float_dtype(s: &str) -> Result<DType> {
    DType::parse_float(s).map_err(Error::Invalid)
}

/// `engram lora extract`.
#[derive(Clone, Debug, Serialize)]
pub struct ExtractRequest {
    pub base: PathBuf,
    pub model: PathBuf,
    pub rank: usize,
    pub targets: Vec<String>,
    pub exclude: Vec<String>,
    pub alpha: Option<f64>,
    pub dtype: Option<String>,
    /// Exact SVD up to this smaller side; `None`: 4·(rank + oversample).
    pub exact_below: Option<usize>,
    pub power_iters: usize,
    pub oversample: usize,
    pub seed: u64,
}

/// What `engram lora extract --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Extracted {
    pub engram_lora_extract: u32,
    pub params: ExtractRequest,
    pub seconds: f64,
    pub report: ExtractReport,
}

impl ExtractRequest {
    /// The defaults: every linear weight, α = rank, the fine-tune's dtype, exact SVD up to a
    /// smaller side of 4·(rank + 10), randomized above with 4 power iterations and 10 extra
    /// columns, seed 0.
    pub fn new(base: PathBuf, model: PathBuf, rank: usize) -> ExtractRequest {
        ExtractRequest {
            base,
            model,
            rank,
            targets: Vec::new(),
            exclude: Vec::new(),
            alpha: None,
            dtype: None,
            exact_below: None,
            power_iters: 4,
            oversample: 10,
            seed: 0,
        }
    }

    /// The library's options, every value checked.
    pub fn options(&self) -> Result<ExtractOptions> {
        if self.rank == 0 {
            return Err(Error::Invalid("rank must be at least 1".into()));
        }
        if self.oversample > 4096 || self.power_iters > 64 {
            return Err(Error::Invalid(format!(
                "oversample {} / power_iters {}: at most 4096 extra columns and 64 power iterations",
                self.oversample, self.power_iters
            )));
        }
        if self.rank > 1 << 20 {
            return Err(Error::Invalid(format!(
                "rank {} is beyond any matrix side engram reads (at most 2^20)",
                self.rank
            )));
        }
        if self.exact_below == Some(0) {
            return Err(Error::Invalid("exact_below must be at least 1".into()));
        }
        if let Some(a) = self.alpha
            && !(a.is_finite() && a > 0.0)
        {
            return Err(Error::Invalid(format!("alpha must be positive, not {a}")));
        }
        for p in self.targets.iter().chain(&self.exclude) {
            if p.is_empty() {
                return Err(Error::Invalid("an empty module pattern".into()));
            }
        }
        let mut o = ExtractOptions::new(self.rank);
        o.targets = self.targets.clone();
        o.exclude = self.exclude.clone();
        o.alpha = self.alpha;
        o.dtype = self.dtype.as_deref().map(float_dtype).transpose()?;
        o.svd.max_dim = self
            .exact_below
            .unwrap_or(self.rank.saturating_add(self.oversample).saturating_mul(4));
        o.svd.power_iters = self.power_iters;
        o.svd.oversample = self.oversample;
        o.svd.seed = self.seed;
        Ok(o)
    }

    /// Extracts into `out`; `progress` gets parameter counts (of the fine-tune's `total`).
    pub fn run(
        &self,
        out: &Path,
        command: &str,
        total: &dyn Fn(u64),
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Extracted> {
        let o = self.options()?;
        let (base, ft) = (open(&self.base)?, open(&self.model)?);
        total(ft.param_count());
        let params = serde_json::to_value(self).unwrap_or_default();
        let md = engram_ckpt::provenance(command, &params);
        let t0 = std::time::Instant::now();
        let report = extract(&base, &ft, out, &o, &md, progress)?;
        Ok(Extracted {
            engram_lora_extract: 1,
            params: self.clone(),
            seconds: t0.elapsed().as_secs_f64(),
            report,
        })
    }
}

/// `engram lora apply`.
#[derive(Clone, Debug, Serialize)]
pub struct ApplyRequest {
    pub base: PathBuf,
    pub adapter: PathBuf,
    /// A float dtype or `base` (each tensor keeps the base's).
    pub dtype: String,
    pub multiplier: f64,
}

/// What `engram lora apply --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Applied {
    pub engram_lora_apply: u32,
    pub params: ApplyRequest,
    pub report: ApplyReport,
}

impl ApplyRequest {
    pub fn options(&self) -> Result<ApplyOptions> {
        let dtype = match self.dtype.as_str() {
            "base" => None,
            d => Some(float_dtype(d)?),
        };
        if !self.multiplier.is_finite() {
            return Err(Error::Invalid(format!(
                "multiplier must be a finite number, not {}",
                self.multiplier
            )));
        }
        Ok(ApplyOptions {
            dtype,
            multiplier: self.multiplier,
        })
    }

    pub fn run(
        &self,
        out: &Path,
        command: &str,
        total: &dyn Fn(u64),
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Applied> {
        let o = self.options()?;
        let base = open(&self.base)?;
        let adapter = Adapter::open(&self.adapter)?;
        total(base.param_count());
        let params = serde_json::to_value(self).unwrap_or_default();
        let md = engram_ckpt::provenance(command, &params);
        let report = apply(&base, &adapter, out, &o, &md, progress)?;
        Ok(Applied {
            engram_lora_apply: 1,
            params: self.clone(),
            report,
        })
    }
}

/// `engram lora merge --rank R`: the adapters recombined into one.
#[derive(Clone, Debug, Serialize)]
pub struct RecombineRequest {
    pub base: PathBuf,
    pub adapters: Vec<PathBuf>,
    pub rank: usize,
    /// One per adapter (empty: 1 each).
    pub weights: Vec<f64>,
    pub dtype: String,
}

/// What `engram lora merge --rank R --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Recombination {
    pub engram_lora_merge: u32,
    pub params: RecombineRequest,
    pub report: RecombineReport,
}

/// The per-adapter weights: as given (one each), or 1 each when none are given.
pub fn adapter_weights(weights: &[f64], n: usize) -> Result<Vec<f64>> {
    if weights.is_empty() {
        return Ok(vec![1.0; n]);
    }
    if weights.len() != n {
        return Err(Error::Invalid(format!(
            "{} weights for {n} adapters",
            weights.len()
        )));
    }
    Ok(weights.to_vec())
}

impl RecombineRequest {
    pub fn run(&self, out: &Path, command: &str) -> Result<Recombination> {
        if self.rank == 0 {
            return Err(Error::Invalid("rank must be at least 1".into()));
        }
        let dtype = float_dtype(&self.dtype)?;
        let weights = adapter_weights(&self.weights, self.adapters.len())?;
        let adapters = self
            .adapters
            .iter()
            .map(|p| Adapter::open(p))
            .collect::<Result<Vec<_>>>()?;
        // Every adapter is checked against the base before anything is written.
        let base = open(&self.base)?;
        touched(&base, &adapters.iter().collect::<Vec<_>>())?;
        let params = RecombineRequest {
            weights: weights.clone(),
            ..self.clone()
        };
        let md =
            engram_ckpt::provenance(command, &serde_json::to_value(&params).unwrap_or_default());
        let pairs: Vec<_> = adapters.iter().zip(weights).collect();
        let report = recombine(&pairs, self.rank, dtype, out, &md)?;
        Ok(Recombination {
            engram_lora_merge: 1,
            params,
            report,
        })
    }
}

/// Refuses a merge method that takes no base: a merge of adapters is a merge of their task
/// vectors against the base.
pub fn check_merge_method(method: &str) -> Result<()> {
    match crate::merge::get(method) {
        Some(m) if !m.needs_base() => Err(Error::Invalid(format!(
            "{method} takes no base, and a merge of adapters is a merge of their task vectors \
             against the base: use task_arithmetic, ties, dare_*, breadcrumbs*, della* or \
             model_stock"
        ))),
        _ => Ok(()),
    }
}

/// The adapters' expanded models (f32, only the tensors some adapter changes), staged beside
/// `out` for the merge that writes `out`: the folder goes when the returned [`Staged`] is
/// dropped, and a later run removes it if this one is killed. Returns it with the models'
/// paths, in the adapters' order.
pub fn stage_expanded(
    base: &Path,
    adapters: &[PathBuf],
    out: &Path,
    command: &str,
) -> Result<(engram_ckpt::Staged, Vec<PathBuf>)> {
    let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let stage = engram_ckpt::Staged::new(&out.with_file_name(format!(".{name}.lora-inputs")))?;
    let paths = expand_adapters(base, adapters, stage.path(), command)?;
    Ok((stage, paths))
}

/// The adapters' expanded models for a merge over their task vectors: each written to
/// `dir/adapter-<i>` in f32, holding the tensors some adapter changes (the base's values
/// where this one does not). Returns the folders, in the adapters' order.
fn expand_adapters(
    base: &Path,
    adapters: &[PathBuf],
    dir: &Path,
    command: &str,
) -> Result<Vec<PathBuf>> {
    if adapters.is_empty() {
        return Err(Error::Invalid("no adapters to merge".into()));
    }
    let opened = adapters
        .iter()
        .map(|p| Adapter::open(p))
        .collect::<Result<Vec<_>>>()?;
    let base_m = open(base)?;
    let tensors = touched(&base_m, &opened.iter().collect::<Vec<_>>())?;
    let md = engram_ckpt::provenance(command, &serde_json::json!({"adapters": adapters}));
    let mut out = Vec::new();
    for (i, ad) in opened.iter().enumerate() {
        let p = dir.join(format!("adapter-{i}"));
        expand(&base_m, ad, &tensors, &p, &md)?;
        out.push(p);
    }
    Ok(out)
}
