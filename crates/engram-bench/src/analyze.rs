//! The spectra of a model's weight matrices (`engram analyze`; docs/json.md, "engram
//! analyze"): singular values, KappaTune's condition number κ, effective and stable rank,
//! norms, and with `lift_masks` LIFT's principal-weight masks written beside. Card:
//! shared/methods/selective_finetuning.md (LIFT, KappaTune).
//!
//! Float tensors with two or more dimensions are read as `out × rest` matrices; the others
//! are listed as skipped. Tensors stream one at a time per worker thread (decoded to f32,
//! analysed, dropped, their file pages released), so memory stays near threads × the largest
//! matrix's working set. The command line and the Python module both run it here.

use anyhow::{Context, Result, bail};
use engram_ckpt::{DType, Error as CkptError, Model, ModelWriter, TensorSpec, TensorView};
use engram_weights::spectral::{
    SpectralOptions, Spectrum, lift_budget, matrix_dims, spectrum, spectrum_and_principal,
};
use engram_weights::spelling::Spelling;
use rayon::prelude::*;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Instant;

/// What to analyse and how (the command line's defaults: [`AnalyzeOptions::new`]).
#[derive(Clone, Debug)]
pub struct AnalyzeOptions {
    /// The model as the user named it, recorded in the masks' provenance.
    pub source: String,
    /// Every singular value in the JSON.
    pub values: bool,
    pub max_dim: usize,
    pub max_values: usize,
    pub top_k: usize,
    pub seed: u64,
    /// Only tensors whose name contains one of these (all if empty).
    pub include: Vec<String>,
    /// Not tensors whose name contains one of these.
    pub exclude: Vec<String>,
    /// Where to write LIFT's masks.
    pub lift_masks: Option<PathBuf>,
    pub filter_rank: usize,
    pub lift_rank: usize,
    /// No mask for tensors whose name contains one of these (they are still analysed).
    pub lift_exclude: Vec<String>,
}

impl AnalyzeOptions {
    /// The defaults of `engram analyze` for the model `source`.
    pub fn new(source: String) -> AnalyzeOptions {
        AnalyzeOptions {
            source,
            values: false,
            max_dim: 4096,
            max_values: 1 << 26,
            top_k: 32,
            seed: 0,
            include: Vec::new(),
            exclude: Vec::new(),
            lift_masks: None,
            filter_rank: 8,
            lift_rank: 8,
            lift_exclude: Vec::new(),
        }
    }

    /// The checks made before the model is opened; `spelling` names the options.
    pub fn check(&self, spelling: Spelling) -> Result<()> {
        if self.top_k == 0 {
            bail!("{} must be at least 1", spelling.name("top_k"));
        }
        if self.lift_masks.is_some() && (self.filter_rank == 0 || self.lift_rank == 0) {
            bail!(
                "{} and {} must be at least 1",
                spelling.name("filter_rank"),
                spelling.name("lift_rank")
            );
        }
        Ok(())
    }

    pub fn spectral(&self) -> SpectralOptions {
        SpectralOptions {
            max_dim: self.max_dim,
            max_values: self.max_values,
            top_k: self.top_k,
            seed: self.seed,
            ..SpectralOptions::default()
        }
    }

    /// Why tensor `t` is not analysed, or `None` when it is.
    fn skip_reason(&self, t: &TensorView) -> Option<&'static str> {
        if !t.dtype().is_float() {
            Some("not a float tensor")
        } else if t.shape().len() < 2 {
            Some("fewer than 2 dimensions")
        } else if matrix_dims(t.shape()).is_none() {
            Some("empty")
        } else if !self.include.is_empty() && !contains_any(t.name(), &self.include) {
            Some("not matched by --include")
        } else if contains_any(t.name(), &self.exclude) {
            Some("matched by --exclude")
        } else {
            None
        }
    }

    fn masked(&self, name: &str) -> bool {
        self.lift_masks.is_some() && !contains_any(name, &self.lift_exclude)
    }
}

fn contains_any(name: &str, pats: &[String]) -> bool {
    pats.iter().any(|p| name.contains(p.as_str()))
}

/// One analysed matrix.
pub struct Row {
    pub index: usize,
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub spectrum: Spectrum,
    /// LIFT's K, when a mask was written for this tensor.
    pub lift_k: Option<usize>,
}

/// A tensor left out, and why.
pub struct Skipped {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub reason: &'static str,
}

/// The tensors picked and skipped, and the masks' file declared (names, shapes) and opened
/// for the workers to fill: everything decided before the first matrix is read.
pub struct Plan<'m> {
    model: &'m Model,
    opts: &'m AnalyzeOptions,
    picked: Vec<usize>,
    skipped: Vec<Skipped>,
    masks: Option<ModelWriter>,
}

impl<'m> Plan<'m> {
    /// `command` is recorded as the masks' provenance.
    pub fn new(model: &'m Model, opts: &'m AnalyzeOptions, command: &str) -> Result<Plan<'m>> {
        let mut picked = Vec::new();
        let mut skipped = Vec::new();
        for (i, t) in model.tensors().enumerate() {
            match opts.skip_reason(&t) {
                None => picked.push(i),
                Some(reason) => skipped.push(Skipped {
                    name: t.name().to_string(),
                    dtype: t.dtype(),
                    shape: t.shape().to_vec(),
                    reason,
                }),
            }
        }
        let masks = match &opts.lift_masks {
            Some(path) => {
                let specs: Vec<TensorSpec> = picked
                    .iter()
                    .map(|&i| model.tensor_at(i))
                    .filter(|t| opts.masked(t.name()))
                    .map(|t| TensorSpec::new(t.name(), DType::Bool, t.shape()))
                    .collect();
                if specs.is_empty() {
                    bail!(
                        "--lift-masks: no tensor left to mask (every analysed tensor is excluded)"
                    );
                }
                let sp = opts.spectral();
                let md = engram_ckpt::provenance(
                    command,
                    &json!({
                        "source": opts.source,
                        "method": "lift",
                        "filter_rank": opts.filter_rank,
                        "lift_rank": opts.lift_rank,
                        "max_dim": sp.max_dim,
                        "oversample": sp.oversample,
                        "power_iters": sp.power_iters,
                        "seed": sp.seed,
                    }),
                );
                Some(
                    engram_weights::output::writer(path, specs, &md)
                        .with_context(|| format!("creating {}", path.display()))?,
                )
            }
            None => None,
        };
        Ok(Plan {
            model,
            opts,
            picked,
            skipped,
            masks,
        })
    }

    /// The parameters of the analysed matrices.
    pub fn params(&self) -> u64 {
        self.picked
            .iter()
            .map(|&i| self.model.tensor_at(i).numel() as u64)
            .sum()
    }

    /// Analyses the picked matrices in parallel, largest first; `progress` gets the
    /// parameters of each matrix done. `seconds` counts from `started`.
    pub fn run(self, started: Instant, progress: &(dyn Fn(u64) + Sync)) -> Result<Analysis> {
        let (model, opts) = (self.model, self.opts);
        let sp = opts.spectral();
        // Largest work first, so that a big embedding does not start last on an idle pool.
        let mut order = self.picked.clone();
        let cost = |i: usize| {
            let t = model.tensor_at(i);
            matrix_dims(t.shape()).map_or(0.0, |(m, n)| m as f64 * n as f64 * m.min(n) as f64)
        };
        order.sort_by(|&x, &y| cost(y).total_cmp(&cost(x)).then(x.cmp(&y)));
        let params = self.params();
        let masks = self.masks;
        let mut rows = order
            .par_iter()
            .map(|&i| {
                let t = model.tensor_at(i);
                let w = masks.as_ref().filter(|_| opts.masked(t.name()));
                let row = analyse(&t, i, &sp, opts, w)?;
                progress(t.numel() as u64);
                Ok(row)
            })
            .collect::<Result<Vec<Row>>>()?;
        rows.sort_by_key(|r| r.index);
        Ok(Analysis {
            rows,
            skipped: self.skipped,
            params,
            seconds: started.elapsed().as_secs_f64(),
            masks,
        })
    }
}

/// The spectra of a model, and the masks' file written but not yet committed.
pub struct Analysis {
    pub rows: Vec<Row>,
    pub skipped: Vec<Skipped>,
    /// The parameters of the analysed matrices.
    pub params: u64,
    pub seconds: f64,
    masks: Option<ModelWriter>,
}

impl Analysis {
    /// Commits the masks' file (`opts.lift_masks`), if any: a caller with other outputs
    /// calls it when they are complete too.
    pub fn finish_masks(&mut self, opts: &AnalyzeOptions) -> Result<()> {
        if let (Some(w), Some(path)) = (self.masks.take(), &opts.lift_masks) {
            w.finish(&[])
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// The JSON report (docs/json.md, "engram analyze").
    pub fn to_json(&self, model: &Model, opts: &AnalyzeOptions) -> Value {
        let sp = opts.spectral();
        let tensors: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(&r.spectrum).unwrap_or(Value::Null);
                if let Some(o) = v.as_object_mut() {
                    if !opts.values {
                        o.remove("singular_values");
                    }
                    o.insert("name".into(), json!(r.name));
                    o.insert("dtype".into(), json!(r.dtype.name()));
                    o.insert("shape".into(), json!(r.shape));
                    if opts.lift_masks.is_some() {
                        o.insert("lift_k".into(), json!(r.lift_k));
                    }
                }
                v
            })
            .collect();
        json!({
            "engram_analyze": 1,
            "model": model.source().display().to_string(),
            "options": {
                "max_dim": sp.max_dim,
                "max_values": sp.max_values,
                "top_k": sp.top_k,
                "oversample": sp.oversample,
                "power_iters": sp.power_iters,
                "seed": sp.seed,
                "include": opts.include,
                "exclude": opts.exclude,
                "lift_masks": opts.lift_masks.as_ref().map(|p| p.display().to_string()),
                "filter_rank": opts.filter_rank,
                "lift_rank": opts.lift_rank,
                "lift_exclude": opts.lift_exclude,
            },
            "params": self.params,
            "threads": rayon::current_num_threads(),
            "tensors": tensors,
            "skipped": self.skipped.iter().map(|s| json!({
                "name": s.name, "dtype": s.dtype.name(), "shape": s.shape, "reason": s.reason,
            })).collect::<Vec<_>>(),
            "seconds": self.seconds,
        })
    }
}

/// Decodes, analyses and (with `mask`) writes the LIFT mask of one tensor; the decoded values
/// are dropped and the file pages released before returning.
fn analyse(
    t: &TensorView,
    index: usize,
    sp: &SpectralOptions,
    opts: &AnalyzeOptions,
    mask: Option<&ModelWriter>,
) -> Result<Row> {
    let (m, n) = matrix_dims(t.shape())
        .ok_or_else(|| CkptError::tensor(t.path, t.name(), "not a matrix"))?;
    let w = t.to_f32()?;
    t.release(0, t.numel());
    let terr = |e: String| CkptError::tensor(t.path, t.name(), e);
    let mut lift_k = None;
    let spectrum = if let Some(writer) = mask {
        let k = lift_budget(m, n, opts.lift_rank);
        // One SVD for the spectrum and the rank-r approximation of the mask.
        let (s, idx) = spectrum_and_principal(&w, m, n, opts.filter_rank, k, sp).map_err(terr)?;
        drop(w);
        let mut bits = vec![0u8; m * n];
        for j in idx {
            bits[j as usize] = 1;
        }
        writer.write_bytes(t.name(), &bits)?;
        lift_k = Some(k);
        s
    } else {
        spectrum(&w, m, n, sp).map_err(terr)?
    };
    Ok(Row {
        index,
        name: t.name().to_string(),
        dtype: t.dtype(),
        shape: t.shape().to_vec(),
        spectrum,
        lift_k,
    })
}
