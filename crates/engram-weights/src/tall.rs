//! TALL masks (task localization) and Consensus merging.
//! Paper: Localizing Task Information for Improved Model Merging and Compression (arXiv 2405.07813); card: methods/merging.md.
//!
//! τ_MTL is Σ_t τ_t (unscaled) or its TIES version (top-k over the whole model, elected sign,
//! disjoint sum). The mask of task t is m_t = 1{|τ_t| > λ_t·|τ_MTL − τ_t|}, strict as in the
//! reference code, so a weight no task moved is in no mask. Task t is rebuilt as
//! θ₀ + m_t ⊙ τ_MTL; Consensus keeps the weights at least k masks share:
//! θ₀ + α·(1{Σ_t m_t ≥ k} ⊙ τ_MTL). Everything streams chunk by chunk.

use crate::merge::{ModelDeltas, TensorJob, TrimScope, elect_sign};
use crate::stream::{Chunk, TensorChunks};
use engram_ckpt::dtype::round_through;
use engram_ckpt::{DType, Error, Model, Result, TensorView};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

/// How τ_MTL is formed from the task vectors.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MtlRecipe {
    /// Σ_t τ_t, unscaled (Task Arithmetic).
    Sum,
    /// TIES: keep the top `density` share of each |τ_t| over the whole model, elect signs,
    /// sum the agreeing entries (dis-sum).
    Ties { density: f64 },
}

/// Default λ grid of the reference code.
pub const LAMBDA_GRID: [f32; 5] = [0.2, 0.3, 0.4, 0.5, 0.6];

/// TALL masks over a base and its fine-tunes.
pub struct Tall<'a> {
    pub base: &'a Model,
    pub models: Vec<&'a Model>,
    pub tasks: Vec<String>,
    pub recipe: MtlRecipe,
    pub lambdas: Vec<f32>,
    /// Float tensors covered by masks, in base order; other base tensors are copied.
    pub tensors: Vec<String>,
    /// Per model |τ| threshold of the TIES recipe.
    thresholds: Vec<Option<f32>>,
}

/// One chunk of τ_MTL and the task masks.
pub struct MaskChunk<'c> {
    pub index: usize,
    pub start: usize,
    pub base: &'c [f32],
    /// The task vectors τ_t, one per task.
    pub deltas: Vec<Vec<f32>>,
    pub tau: Vec<f32>,
    pub masks: Vec<Vec<bool>>,
}

impl MaskChunk<'_> {
    /// Number of masks holding element `k`.
    pub fn count(&self, k: usize) -> usize {
        self.masks.iter().filter(|m| m[k]).count()
    }
}

/// Catastrophic/selfish/shared counts (merging.md, Consensus).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MaskCounts {
    pub params: u64,
    /// τ_MTL = 0 here: no task moved the weight (counted apart from the catastrophic ones).
    pub untouched: u64,
    /// In no mask although τ_MTL ≠ 0.
    pub catastrophic: u64,
    /// In exactly one mask.
    pub selfish: u64,
    /// In two or more masks.
    pub shared: u64,
    /// Σ_t m_t histogram, index 0..=T.
    pub histogram: Vec<u64>,
    /// Share of parameters in each task's mask.
    pub mask_density: Vec<f64>,
}

impl MaskCounts {
    fn new(t: usize) -> Self {
        MaskCounts {
            histogram: vec![0; t + 1],
            mask_density: vec![0.0; t],
            ..Default::default()
        }
    }

    fn add(&mut self, o: &MaskCounts) {
        self.params += o.params;
        self.untouched += o.untouched;
        self.catastrophic += o.catastrophic;
        self.selfish += o.selfish;
        self.shared += o.shared;
        for (a, b) in self.histogram.iter_mut().zip(&o.histogram) {
            *a += b;
        }
        for (a, b) in self.mask_density.iter_mut().zip(&o.mask_density) {
            *a += b; // holds counts until `finish`
        }
    }

    fn finish(&mut self) {
        let p = self.params.max(1) as f64;
        for d in &mut self.mask_density {
            *d /= p;
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct TensorCounts {
    pub name: String,
    #[serde(flatten)]
    pub counts: MaskCounts,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct TallStats {
    pub tasks: Vec<String>,
    pub lambdas: Vec<f32>,
    pub recipe: MtlRecipe,
    pub total: MaskCounts,
    pub tensors: Vec<TensorCounts>,
}

/// Chooses λ from `grid` by `score` (higher is better; ties go to the smaller λ), returning
/// the choice and the whole curve. engram-learn supplies validation accuracy as the score.
pub fn choose_lambda(grid: &[f32], score: &mut dyn FnMut(f32) -> f64) -> (f32, Vec<(f32, f64)>) {
    let mut sorted = grid.to_vec();
    sorted.sort_by(f32::total_cmp);
    let curve: Vec<(f32, f64)> = sorted.iter().map(|&l| (l, score(l))).collect();
    let best = curve
        .iter()
        .fold(None::<(f32, f64)>, |b, &(l, s)| match b {
            Some((_, bs)) if bs >= s => b,
            _ => Some((l, s)),
        })
        .map(|b| b.0)
        .unwrap_or(0.0);
    (best, curve)
}

impl<'a> Tall<'a> {
    /// Checks that every model has the base's float tensors with equal shapes and no tensor
    /// the base lacks, and for the
    /// TIES recipe finds each model's global threshold (one streaming pass per model).
    pub fn new(
        base: &'a Model,
        models: Vec<&'a Model>,
        tasks: Vec<String>,
        recipe: MtlRecipe,
        lambdas: Vec<f32>,
    ) -> Result<Tall<'a>> {
        if models.is_empty() {
            return Err(Error::Invalid(
                "TALL masks need at least one fine-tuned model".into(),
            ));
        }
        if tasks.len() != models.len() || lambdas.len() != models.len() {
            return Err(Error::Invalid(format!(
                "{} models but {} task names and {} lambdas",
                models.len(),
                tasks.len(),
                lambdas.len()
            )));
        }
        // Task names name folders (`tall --reconstruct`) and tensors (bundles).
        for (i, t) in tasks.iter().enumerate() {
            engram_ckpt::names::plain_name("task name", t)?;
            if tasks[..i].contains(t) {
                return Err(Error::Invalid(format!("task name '{t}' is given twice")));
            }
        }
        if let MtlRecipe::Ties { density } = recipe
            && !(density > 0.0 && density <= 1.0)
        {
            return Err(Error::Invalid(format!(
                "density {density} of the TIES recipe must be in (0, 1]"
            )));
        }
        if let Some(l) = lambdas.iter().find(|l| !l.is_finite() || **l < 0.0) {
            return Err(Error::Invalid(format!(
                "lambda {l} must be finite and >= 0"
            )));
        }
        // Non-float tensors are the base's in every rebuilt model: a fine-tune's must match.
        crate::output::same_non_floats(base, &models)?;
        let mut tensors = Vec::new();
        for v in base.tensors().filter(|v| v.dtype().is_float()) {
            for m in &models {
                let t = m.require(v.name())?;
                if t.shape() != v.shape() {
                    return Err(Error::tensor(
                        m.source(),
                        v.name(),
                        format!(
                            "shape {:?} differs from the base's {:?}",
                            t.shape(),
                            v.shape()
                        ),
                    ));
                }
            }
            tensors.push(v.name().to_string());
        }
        // A tensor of a fine-tune that the base lacks would be left out of every rebuilt
        // model: an error, never a silent loss.
        for m in &models {
            for x in m.tensors() {
                let why = match base.get(x.name()) {
                    None => "not in the base; no tensor is skipped".to_string(),
                    Some(v) if v.dtype().is_float() != x.dtype().is_float() => {
                        format!("{} here but {} in the base", x.dtype(), v.dtype())
                    }
                    Some(_) => continue,
                };
                return Err(Error::tensor(m.source(), x.name(), why));
            }
        }
        let mut tall = Tall {
            base,
            models,
            tasks,
            recipe,
            lambdas,
            tensors,
            thresholds: Vec::new(),
        };
        tall.thresholds = match recipe {
            MtlRecipe::Sum => vec![None; tall.models.len()],
            MtlRecipe::Ties { density } => tall.ties_thresholds(density)?,
        };
        Ok(tall)
    }

    fn job(&self, name: &str) -> Result<TensorJob<'_>> {
        let b = self.base.require(name)?;
        Ok(TensorJob {
            name: b.name(),
            shape: b.shape(),
            base: Some(b),
            models: self
                .models
                .iter()
                .map(|m| m.require(name))
                .collect::<Result<_>>()?,
            model_params: Vec::new(),
            global: Default::default(),
            scope: TrimScope::Model,
            model_thresholds: None,
            seed: 0,
        })
    }

    fn ties_thresholds(&self, density: f64) -> Result<Vec<Option<f32>>> {
        if density >= 1.0 {
            return Ok(vec![None; self.models.len()]);
        }
        let jobs = self
            .tensors
            .iter()
            .map(|n| self.job(n))
            .collect::<Result<Vec<_>>>()?;
        ModelDeltas::new(&jobs).thresholds(&vec![density; self.models.len()])
    }

    pub fn thresholds(&self) -> &[Option<f32>] {
        &self.thresholds
    }

    /// Visits τ_MTL and the masks of tensor `name`, chunk by chunk, in parallel.
    pub fn visit(&self, name: &str, f: &(dyn Fn(&MaskChunk) -> Result<()> + Sync)) -> Result<()> {
        let base = self.base.require(name)?;
        let models = self
            .models
            .iter()
            .map(|m| m.require(name))
            .collect::<Result<Vec<TensorView>>>()?;
        TensorChunks::new(Some(base), &models).for_each(&|c: &Chunk| {
            let base = c.base;
            let n = base.len();
            let deltas: Vec<Vec<f32>> = c
                .models
                .iter()
                .map(|m| m.iter().zip(base).map(|(x, b)| x - b).collect())
                .collect();
            let tau = self.tau_mtl(&deltas, n);
            let masks = deltas
                .iter()
                .zip(&self.lambdas)
                .map(|(d, &l)| {
                    d.iter()
                        .zip(&tau)
                        .map(|(&dt, &tm)| dt.abs() > l * (tm - dt).abs())
                        .collect()
                })
                .collect();
            f(&MaskChunk {
                index: c.index,
                start: c.start,
                base,
                deltas,
                tau,
                masks,
            })
        })
    }

    fn tau_mtl(&self, deltas: &[Vec<f32>], n: usize) -> Vec<f32> {
        match self.recipe {
            MtlRecipe::Sum => (0..n).map(|k| deltas.iter().map(|d| d[k]).sum()).collect(),
            MtlRecipe::Ties { .. } => (0..n)
                .map(|k| {
                    let trimmed = deltas.iter().zip(&self.thresholds).map(move |(d, t)| {
                        let x = d[k];
                        if t.is_none_or(|t| x.abs() >= t) {
                            x
                        } else {
                            0.0
                        }
                    });
                    let sign = elect_sign(trimmed.clone());
                    trimmed.filter(|x| *x != 0.0 && x.signum() == sign).sum()
                })
                .collect(),
        }
    }

    /// Mask statistics per tensor and in total.
    pub fn stats(&self, progress: &(dyn Fn(u64) + Sync)) -> Result<TallStats> {
        let t = self.models.len();
        let mut total = MaskCounts::new(t);
        let mut tensors = Vec::with_capacity(self.tensors.len());
        for name in &self.tensors {
            let acc = Mutex::new(MaskCounts::new(t));
            self.visit(name, &|c| {
                let mut local = MaskCounts::new(t);
                for k in 0..c.tau.len() {
                    let cnt = c.count(k);
                    local.params += 1;
                    local.histogram[cnt] += 1;
                    match cnt {
                        0 if c.tau[k] == 0.0 => local.untouched += 1,
                        0 => local.catastrophic += 1,
                        1 => local.selfish += 1,
                        _ => local.shared += 1,
                    }
                }
                for (d, m) in local.mask_density.iter_mut().zip(&c.masks) {
                    *d = m.iter().filter(|&&b| b).count() as f64;
                }
                progress(c.tau.len() as u64);
                acc.lock()
                    .map_err(|_| Error::Invalid("worker panicked".into()))?
                    .add(&local);
                Ok(())
            })?;
            let mut counts = acc
                .into_inner()
                .map_err(|_| Error::Invalid("worker panicked".into()))?;
            total.add(&counts);
            counts.finish();
            tensors.push(TensorCounts {
                name: name.clone(),
                counts,
            });
        }
        total.finish();
        Ok(TallStats {
            tasks: self.tasks.clone(),
            lambdas: self.lambdas.clone(),
            recipe: self.recipe,
            total,
            tensors,
        })
    }

    /// Writes a model built chunk by chunk from (base, masks, τ_MTL): float tensors from
    /// `build`, the others copied from the base. Output dtype: `out_dtype` or the base's.
    pub fn write_model(
        &self,
        out: &Path,
        out_dtype: Option<DType>,
        metadata: &BTreeMap<String, String>,
        progress: &(dyn Fn(u64) + Sync),
        build: &(dyn Fn(&MaskChunk, &mut [f32]) + Sync),
    ) -> Result<Vec<std::path::PathBuf>> {
        let dest = out;
        let w = crate::output::writer(
            out,
            crate::output::specs(self.base.tensors(), out_dtype),
            metadata,
        )?;
        for v in self.base.tensors() {
            if !v.dtype().is_float() {
                w.write_bytes(v.name(), v.bytes)?;
                continue;
            }
            let dt = out_dtype.unwrap_or(v.dtype());
            self.visit(v.name(), &|c| {
                let mut out = vec![0f32; c.tau.len()];
                build(c, &mut out);
                let finite =
                    |k: usize| c.base[k].is_finite() && c.deltas.iter().all(|d| d[k].is_finite());
                crate::output::check_values(dest, v.name(), dt, c.start, &out, false, &finite)?;
                progress(out.len() as u64);
                w.write_f32_at(v.name(), c.start, &out)
            })?;
        }
        w.finish(self.base.side_files())
    }

    /// θ̂_t = θ₀ + m_t ⊙ τ_MTL, with τ_MTL first rounded to `tau_dtype` (what a bundle
    /// stores) so that this equals `engram extract` of a bundle bit for bit.
    pub fn reconstruct_kernel(
        task: usize,
        tau_dtype: DType,
    ) -> impl Fn(&MaskChunk, &mut [f32]) + Sync {
        move |c: &MaskChunk, out: &mut [f32]| {
            let mut tau = c.tau.clone();
            round_through(tau_dtype, &mut tau);
            for (k, o) in out.iter_mut().enumerate() {
                *o = if c.masks[task][k] {
                    c.base[k] + tau[k]
                } else {
                    c.base[k]
                };
            }
        }
    }

    /// Consensus: θ₀ + α·(1{Σ_t m_t ≥ k} ⊙ τ_MTL).
    pub fn consensus_kernel(k: usize, alpha: f32) -> impl Fn(&MaskChunk, &mut [f32]) + Sync {
        move |c: &MaskChunk, out: &mut [f32]| {
            for (e, o) in out.iter_mut().enumerate() {
                let keep = c.count(e) >= k;
                *o = c.base[e] + if keep { alpha * c.tau[e] } else { 0.0 };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{random_family, values};

    const SHAPES: &[(&str, &[usize])] = &[("layers.0.w", &[600, 500]), ("layers.1.b", &[37])];

    fn reference_masks(
        base: &[f32],
        ms: &[Vec<f32>],
        lambdas: &[f32],
    ) -> (Vec<f32>, Vec<Vec<bool>>) {
        let tau: Vec<f32> = (0..base.len())
            .map(|k| ms.iter().map(|m| m[k] - base[k]).sum())
            .collect();
        let masks = ms
            .iter()
            .zip(lambdas)
            .map(|(m, l)| {
                (0..base.len())
                    .map(|k| {
                        let d = m[k] - base[k];
                        d.abs() > l * (tau[k] - d).abs()
                    })
                    .collect()
            })
            .collect();
        (tau, masks)
    }

    #[test]
    fn masks_stats_consensus_and_reconstruction_match_a_reference() {
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = random_family(dir.path(), SHAPES, 4, 9);
        let lambdas = vec![0.2, 0.4, 0.5, 0.6];
        let tall = Tall::new(
            &base,
            models.iter().collect(),
            (1..=4).map(|i| format!("t{i}")).collect(),
            MtlRecipe::Sum,
            lambdas.clone(),
        )
        .unwrap();
        let stats = tall.stats(&|_| {}).unwrap();
        let mut hist = vec![0u64; 5];
        let (mut cat, mut selfish, mut untouched) = (0, 0, 0);
        for (name, _) in SHAPES {
            let b = values(&base, name);
            let ms: Vec<Vec<f32>> = models.iter().map(|m| values(m, name)).collect();
            let (tau, masks) = reference_masks(&b, &ms, &lambdas);
            for k in 0..b.len() {
                let c = masks.iter().filter(|m| m[k]).count();
                hist[c] += 1;
                match c {
                    0 if tau[k] == 0.0 => untouched += 1,
                    0 => cat += 1,
                    1 => selfish += 1,
                    _ => {}
                }
            }
        }
        assert_eq!(stats.total.histogram, hist);
        assert_eq!(stats.total.catastrophic, cat);
        assert_eq!(stats.total.selfish, selfish);
        assert_eq!(stats.total.untouched, untouched);
        assert_eq!(stats.total.params, hist.iter().sum::<u64>());

        // Consensus k = 2, alpha = 0.5, against the reference formula.
        let out = dir.path().join("cons");
        tall.write_model(
            &out,
            None,
            &BTreeMap::new(),
            &|_| {},
            &Tall::consensus_kernel(2, 0.5),
        )
        .unwrap();
        let cons = Model::open(&out).unwrap();
        for (name, _) in SHAPES {
            let b = values(&base, name);
            let ms: Vec<Vec<f32>> = models.iter().map(|m| values(m, name)).collect();
            let (tau, masks) = reference_masks(&b, &ms, &lambdas);
            let got = values(&cons, name);
            for k in 0..b.len() {
                let c = masks.iter().filter(|m| m[k]).count();
                let want = b[k] + if c >= 2 { 0.5 * tau[k] } else { 0.0 };
                assert!((got[k] - want).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn a_single_task_with_lambda_zero_rebuilds_its_model() {
        // One task: τ_MTL = τ_1, so the mask holds every moved weight and θ̂ = θ_1.
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = random_family(dir.path(), SHAPES, 1, 2);
        let tall = Tall::new(
            &base,
            vec![&models[0]],
            vec!["a".into()],
            MtlRecipe::Sum,
            vec![0.0],
        )
        .unwrap();
        let out = dir.path().join("r");
        tall.write_model(
            &out,
            None,
            &BTreeMap::new(),
            &|_| {},
            &Tall::reconstruct_kernel(0, DType::F32),
        )
        .unwrap();
        let r = Model::open(&out).unwrap();
        for (name, _) in SHAPES {
            assert_eq!(values(&r, name), values(&models[0], name));
        }
    }

    #[test]
    fn ties_recipe_keeps_the_top_share_over_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = random_family(dir.path(), SHAPES, 3, 4);
        let tall = Tall::new(
            &base,
            models.iter().collect(),
            vec!["a".into(), "b".into(), "c".into()],
            MtlRecipe::Ties { density: 0.2 },
            vec![0.4; 3],
        )
        .unwrap();
        for (i, m) in models.iter().enumerate() {
            let mut all: Vec<f32> = SHAPES
                .iter()
                .flat_map(|(n, _)| {
                    let b = values(&base, n);
                    values(m, n)
                        .into_iter()
                        .zip(b)
                        .map(|(x, y)| (x - y).abs())
                        .collect::<Vec<_>>()
                })
                .collect();
            all.sort_by(|a, b| b.total_cmp(a));
            let k = (0.2 * all.len() as f64) as usize;
            assert_eq!(tall.thresholds()[i], Some(all[k - 1]));
        }
    }

    #[test]
    fn lambda_choice_prefers_the_smaller_on_ties() {
        let (l, curve) = choose_lambda(&[0.6, 0.2, 0.4], &mut |l| if l > 0.3 { 1.0 } else { 0.5 });
        assert_eq!(l, 0.4);
        assert_eq!(curve.len(), 3);
    }
}
