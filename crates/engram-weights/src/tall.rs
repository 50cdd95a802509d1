//! TALL masks (task localization) and Consensus merging.
//! Paper: Localizing Task Information for Improved Model Merging and Compression (arXiv 2405.07813); card: methods/merging.md.
//!
//! τ_MTL is Σ_t τ_t (unscaled) or its TIES version (top-k over the whole model, elected sign,
//! disjoint sum). The mask of task t is m_t = 1{|τ_t| > λ_t·|τ_MTL − τ_t|}, strict as in the
//! reference code, so a weight no task moved is in no mask. Task t is rebuilt as
//! θ₀ + m_t ⊙ τ_MTL; Consensus keeps the weights at least k masks share:
//! θ₀ + α·(1{Σ_t m_t ≥ k} ⊙ τ_MTL). Everything streams chunk by chunk.
//!
//! The TIES recipe's thresholds take one histogram pass; mask statistics and the models
//! built from the masks (Consensus, rebuilt tasks) finish them during their own pass, as
//! TIES merging does ([`crate::merge::onepass`]): positions where some model's |τ| lies in
//! its threshold's bucket wait, and are counted or patched once the pass has given the exact
//! thresholds. Other visitors (bundles, whose masks are coded chunk by chunk) get the exact
//! thresholds from a second histogram pass first.

use crate::merge::onepass::{Deferred, LIMITS, Selection};
use crate::merge::{ModelDeltas, TensorJob, TrimScope, elected, sign_vote};
use crate::select::keep_ranks;
use crate::stream::Chunk;
use engram_ckpt::avx2_dispatch;
use engram_ckpt::dtype::round_through;
use engram_ckpt::{DType, Error, Model, Result};
use rayon::prelude::*;
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
    /// The TIES recipe's per-model |τ| thresholds, and the selection finishing them while
    /// they are provisional.
    cuts: Mutex<Cuts>,
}

/// Per model |τ| threshold of the TIES recipe (`None`: all kept): exact while `pending` is
/// `None`, else provisional until a pass resolves `pending`.
#[derive(Clone)]
struct Cuts {
    thresholds: Vec<Option<f32>>,
    pending: Option<Selection>,
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
    /// the base lacks, and for the TIES recipe runs the histogram pass of each model's global
    /// threshold (one streaming pass for all models; see the module's note).
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
        let models_len = models.len();
        let mut tall = Tall {
            base,
            models,
            tasks,
            recipe,
            lambdas,
            tensors,
            cuts: Mutex::new(Cuts {
                thresholds: vec![None; models_len],
                pending: None,
            }),
        };
        if let MtlRecipe::Ties { density } = recipe {
            tall.ties_selection(density)?;
        }
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

    fn jobs(&self) -> Result<Vec<TensorJob<'_>>> {
        self.tensors.iter().map(|n| self.job(n)).collect()
    }

    /// The TIES recipe's histogram pass: exact thresholds when it fixes them (or when too
    /// many entries lie in the buckets, by a second pass at once), else provisional ones and
    /// the selection pending.
    fn ties_selection(&mut self, density: f64) -> Result<()> {
        if density >= 1.0 {
            return Ok(());
        }
        let n = self.models.len();
        let jobs = self.jobs()?;
        let total = jobs.iter().map(|j| j.numel() as u64).sum();
        let ks = keep_ranks(&vec![density; n], total);
        let (thresholds, pending) =
            Selection::start(&ModelDeltas::new(&jobs), &ks, total, n, LIMITS)?;
        drop(jobs);
        *self.cuts.get_mut().map_err(poisoned)? = Cuts {
            thresholds,
            pending,
        };
        Ok(())
    }

    /// The TIES recipe's exact per-model |τ| thresholds (`None`: all kept), by a second
    /// histogram pass the first time if no pass over the masks has finished them yet.
    pub fn thresholds(&self) -> Result<Vec<Option<f32>>> {
        let mut guard = self.cuts.lock().map_err(poisoned)?;
        let cuts = &mut *guard;
        if let Some(sel) = &cuts.pending {
            cuts.thresholds = sel.second_pass(&ModelDeltas::new(&self.jobs()?))?;
            cuts.pending = None;
        }
        Ok(cuts.thresholds.clone())
    }

    /// The thresholds to use now, and the selection still to finish them, if any.
    fn provisional(&self) -> Result<Cuts> {
        Ok(self.cuts.lock().map_err(poisoned)?.clone())
    }

    /// The exact thresholds from every deferred chunk of one pass over all the tensors
    /// (kept for later visits).
    fn resolve<'d>(
        &self,
        sel: &Selection,
        parts: impl Iterator<Item = &'d Deferred> + Clone,
    ) -> Result<Vec<Option<f32>>> {
        let exact = sel.resolve(parts, "the TIES recipe's thresholds")?;
        *self.cuts.lock().map_err(poisoned)? = Cuts {
            thresholds: exact.clone(),
            pending: None,
        };
        Ok(exact)
    }

    /// Visits τ_MTL and the masks of tensor `name`, chunk by chunk, in parallel (with the
    /// exact thresholds: [`Self::thresholds`]).
    pub fn visit(&self, name: &str, f: &(dyn Fn(&MaskChunk) -> Result<()> + Sync)) -> Result<()> {
        let thresholds = self.thresholds()?;
        self.job(name)?
            .chunks(false)
            .for_each(&|c: &Chunk| f(&self.mask_chunk(c, &thresholds)))
    }

    /// Like [`Self::visit`], but with provisional thresholds when `sel` is given: `f` also gets
    /// the chunk's positions that must wait for the exact ones (their masks and τ_MTL are
    /// not final), which come back, in chunk order, to be finished later.
    fn visit_deferring(
        &self,
        name: &str,
        sel: Option<&Selection>,
        thresholds: &[Option<f32>],
        f: &(dyn Fn(&MaskChunk, &[u32]) -> Result<()> + Sync),
    ) -> Result<Vec<Deferred>> {
        self.job(name)?
            .chunks(false)
            .map(&|c: &Chunk| {
                let mc = self.mask_chunk(c, thresholds);
                match sel {
                    None => f(&mc, &[]).map(|_| None),
                    Some(sel) => {
                        let d = sel.defer(c);
                        f(&mc, d.positions())?;
                        Ok(Some(d))
                    }
                }
            })
            .map(|v| v.into_iter().flatten().collect())
    }

    /// τ_MTL and the masks of chunk `c` with the given TIES thresholds.
    fn mask_chunk<'c>(&self, c: &Chunk<'c>, thresholds: &[Option<f32>]) -> MaskChunk<'c> {
        let base = c.base;
        let n = c.len;
        let deltas = task_vectors(c.models, base, n);
        let tau = self.tau_mtl(&deltas, n, thresholds);
        let masks = task_masks(&deltas, &tau, &self.lambdas);
        MaskChunk {
            index: c.index,
            start: c.start,
            base,
            deltas,
            tau,
            masks,
        }
    }

    fn tau_mtl(&self, deltas: &[Vec<f32>], n: usize, thresholds: &[Option<f32>]) -> Vec<f32> {
        match self.recipe {
            MtlRecipe::Sum => tau_sum(deltas, n),
            MtlRecipe::Ties { .. } => tau_ties(deltas, n, thresholds),
        }
    }

    /// Mask statistics per tensor and in total.
    pub fn stats(&self, progress: &(dyn Fn(u64) + Sync)) -> Result<TallStats> {
        let t = self.models.len();
        let Cuts {
            thresholds,
            pending: sel,
        } = self.provisional()?;
        let mut tensors = Vec::with_capacity(self.tensors.len());
        let mut deferred = Vec::new();
        for name in &self.tensors {
            let acc = Mutex::new(MaskCounts::new(t));
            let parts = self.visit_deferring(name, sel.as_ref(), &thresholds, &|c, wait| {
                let local = self.count(c, wait);
                progress(c.tau.len() as u64);
                acc.lock().map_err(poisoned)?.add(&local);
                Ok(())
            })?;
            deferred.push(parts);
            tensors.push(TensorCounts {
                name: name.clone(),
                counts: acc.into_inner().map_err(poisoned)?,
            });
        }
        // The positions that waited, counted with the exact thresholds.
        if let Some(sel) = &sel {
            let exact = self.resolve(sel, deferred.iter().flatten())?;
            for (parts, counts) in deferred.iter().zip(&mut tensors) {
                for d in parts {
                    let c = d.chunk();
                    counts
                        .counts
                        .add(&self.count(&self.mask_chunk(&c, &exact), &[]));
                }
            }
        }
        let mut total = MaskCounts::new(t);
        for c in &mut tensors {
            total.add(&c.counts);
            c.counts.finish();
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

    /// The counts of chunk `c` but for the positions in `skip` (ascending).
    fn count(&self, c: &MaskChunk, skip: &[u32]) -> MaskCounts {
        let mut local = MaskCounts::new(self.models.len());
        let mut skip = skip.iter().peekable();
        let mut densities = vec![0u64; self.models.len()];
        for k in 0..c.tau.len() {
            if skip.next_if(|&&p| p as usize == k).is_some() {
                continue;
            }
            let cnt = c.count(k);
            local.params += 1;
            local.histogram[cnt] += 1;
            match cnt {
                0 if c.tau[k] == 0.0 => local.untouched += 1,
                0 => local.catastrophic += 1,
                1 => local.selfish += 1,
                _ => local.shared += 1,
            }
            for (d, m) in densities.iter_mut().zip(&c.masks) {
                *d += u64::from(m[k]);
            }
        }
        for (d, n) in local.mask_density.iter_mut().zip(densities) {
            *d = n as f64;
        }
        local
    }

    /// Writes a model built chunk by chunk from (base, masks, τ_MTL): float tensors from
    /// `build`, the others copied from the base. Output dtype: `out_dtype` or the base's.
    /// `build` must work position by position (its value at a position depends only on that
    /// position's inputs, masks and τ_MTL, not on chunk numbers): positions that wait for the
    /// TIES recipe's exact thresholds are built at the end and patched in.
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
        let Cuts {
            thresholds,
            pending: sel,
        } = self.provisional()?;
        let mut deferred = Vec::new();
        for v in self.base.tensors() {
            if !v.dtype().is_float() {
                w.write_bytes(v.name(), v.bytes)?;
                continue;
            }
            let dt = out_dtype.unwrap_or(v.dtype());
            let parts = self.visit_deferring(v.name(), sel.as_ref(), &thresholds, &|c, wait| {
                let mut out = vec![0f32; c.tau.len()];
                build(c, &mut out);
                // A placeholder until the patch (finite where the base is).
                for &p in wait {
                    out[p as usize] = c.base[p as usize];
                }
                let finite =
                    |k: usize| c.base[k].is_finite() && c.deltas.iter().all(|d| d[k].is_finite());
                crate::output::check_values(dest, v.name(), dt, c.start, &out, false, &finite)?;
                progress(out.len() as u64);
                w.write_f32_at(v.name(), c.start, &out)
            })?;
            deferred.push((v.name(), dt, parts));
        }
        if let Some(sel) = &sel {
            let exact = self.resolve(sel, deferred.iter().flat_map(|(_, _, p)| p))?;
            for (name, dt, parts) in &deferred {
                parts.par_iter().try_for_each(|d| {
                    if d.positions().is_empty() {
                        return Ok(());
                    }
                    let c = self.mask_chunk(&d.chunk(), &exact);
                    let mut out = vec![0f32; c.tau.len()];
                    build(&c, &mut out);
                    for (j, (&p, &v)) in d.positions().iter().zip(&out).enumerate() {
                        let finite =
                            |_| c.base[j].is_finite() && c.deltas.iter().all(|d| d[j].is_finite());
                        let at = d.start() + p as usize;
                        crate::output::check_values(dest, name, *dt, at, &[v], false, &finite)?;
                    }
                    w.patch_f32(name, d.start(), d.positions(), &out)
                })?;
            }
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

/// τ_t = θ_t − θ₀ of a chunk (`n` values), in straight loops.
#[inline(always)]
fn task_vectors_any(models: &[Vec<f32>], base: &[f32], n: usize) -> Vec<Vec<f32>> {
    models
        .iter()
        .map(|m| {
            let mut d = vec![0f32; n];
            for ((o, &x), &b) in d.iter_mut().zip(&m[..n]).zip(&base[..n]) {
                *o = x - b;
            }
            d
        })
        .collect()
}

/// m_t = 1{|τ_t| > λ_t·|τ_MTL − τ_t|}, in straight loops.
#[inline(always)]
fn task_masks_any(deltas: &[Vec<f32>], tau: &[f32], lambdas: &[f32]) -> Vec<Vec<bool>> {
    deltas
        .iter()
        .zip(lambdas)
        .map(|(d, &l)| {
            let mut m = vec![false; tau.len()];
            for ((o, &dt), &tm) in m.iter_mut().zip(d).zip(tau) {
                *o = dt.abs() > l * (tm - dt).abs();
            }
            m
        })
        .collect()
}

avx2_dispatch!(fn task_vectors(models: &[Vec<f32>], base: &[f32], n: usize) -> Vec<Vec<f32>> = task_vectors_any;);
avx2_dispatch!(fn task_masks(deltas: &[Vec<f32>], tau: &[f32], lambdas: &[f32]) -> Vec<Vec<bool>> = task_masks_any;);

/// Σ_t τ_t per position, column by column (straight loops that vectorize), the additions in
/// the order of `Iterator::sum` from its −0.0, so the same bits as summing each position.
#[inline(always)]
fn tau_sum_any(deltas: &[Vec<f32>], n: usize) -> Vec<f32> {
    let mut out = vec![-0.0f32; n];
    for d in deltas {
        for (o, &x) in out.iter_mut().zip(&d[..n]) {
            *o += x;
        }
    }
    out
}

/// The TIES τ_MTL per position (trim by `thresholds`, elect the sign, sum the agreeing
/// entries), column by column; the same bits as one position at a time with
/// [`elect_sign`] and `Iterator::sum` (a test compares).
#[inline(always)]
fn tau_ties_any(deltas: &[Vec<f32>], n: usize, thresholds: &[Option<f32>]) -> Vec<f32> {
    let trimmed: Vec<Vec<f32>> = deltas
        .iter()
        .zip(thresholds)
        .map(|(d, t)| {
            let mut v = d[..n].to_vec();
            if let Some(t) = *t {
                // A select, as `keep` with a threshold: the loop vectorizes.
                for x in v.iter_mut() {
                    *x = if x.abs() >= t { *x } else { 0.0 };
                }
            }
            v
        })
        .collect();
    let mut sign = vec![0f32; n];
    let mut votes = vec![0f32; n];
    for d in &trimmed {
        for ((s, v), &x) in sign.iter_mut().zip(votes.iter_mut()).zip(d) {
            *s += x;
            *v += sign_vote(x);
        }
    }
    for (s, &v) in sign.iter_mut().zip(&votes) {
        *s = elected(*s, v);
    }
    // Σ over the entries that agree (non-zero, of the elected sign; a NaN agrees with none),
    // from −0.0 as `Iterator::sum`; a select rather than adding 0.0, which would turn a −0.0
    // sum into +0.0.
    let mut out = vec![-0.0f32; n];
    for d in &trimmed {
        for ((o, &x), &g) in out.iter_mut().zip(d).zip(&sign) {
            let agree = ((x > 0.0) & (g > 0.0)) | ((x < 0.0) & (g < 0.0));
            *o = if agree { *o + x } else { *o };
        }
    }
    out
}

avx2_dispatch!(fn tau_sum(deltas: &[Vec<f32>], n: usize) -> Vec<f32> = tau_sum_any;);
avx2_dispatch!(fn tau_ties(deltas: &[Vec<f32>], n: usize, thresholds: &[Option<f32>]) -> Vec<f32> = tau_ties_any;);

fn poisoned<T>(_: T) -> Error {
    Error::Invalid("a worker panicked".into())
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
            assert_eq!(tall.thresholds().unwrap()[i], Some(all[k - 1]));
        }
    }

    /// The TIES recipe finished during the pass over the masks (statistics, Consensus, a
    /// rebuilt task) gives what it gives with the exact thresholds found first, on one thread
    /// and on three, and leaves the exact thresholds behind.
    #[test]
    fn ties_recipe_in_one_pass_equals_thresholds_found_first() {
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = random_family(dir.path(), SHAPES, 3, 17);
        let new = || {
            Tall::new(
                &base,
                models.iter().collect(),
                vec!["a".into(), "b".into(), "c".into()],
                MtlRecipe::Ties { density: 0.3 },
                vec![0.3, 0.5, 0.4],
            )
            .unwrap()
        };
        let outputs = |tall: &Tall, tag: &str| {
            let stats = serde_json::to_string(&tall.stats(&|_| {}).unwrap()).unwrap();
            let mut files = Vec::new();
            for (i, build) in [
                &Tall::consensus_kernel(2, 0.7) as &(dyn Fn(&MaskChunk, &mut [f32]) + Sync),
                &Tall::reconstruct_kernel(1, DType::BF16),
            ]
            .into_iter()
            .enumerate()
            {
                let out = dir.path().join(format!("{tag}-{i}"));
                tall.write_model(&out, Some(DType::F32), &BTreeMap::new(), &|_| {}, build)
                    .unwrap();
                files.push(std::fs::read(out.join("model.safetensors")).unwrap());
            }
            (stats, files)
        };
        let first = new();
        let exact = first.thresholds().unwrap();
        let want = outputs(&first, "first");
        for threads in [1, 3] {
            let tall = new();
            assert!(
                tall.cuts.lock().unwrap().pending.is_some(),
                "the selection waits"
            );
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            // Statistics first (they finish the thresholds), then a model; and a model alone.
            let got = pool.install(|| outputs(&tall, &format!("one{threads}")));
            assert_eq!(got.0, want.0, "{threads} threads");
            assert!(got.1 == want.1, "{threads} threads");
            assert!(tall.cuts.lock().unwrap().pending.is_none());
            assert_eq!(tall.thresholds().unwrap(), exact);
            let alone = new();
            let out = dir.path().join(format!("alone{threads}"));
            pool.install(|| {
                alone.write_model(
                    &out,
                    Some(DType::F32),
                    &BTreeMap::new(),
                    &|_| {},
                    &Tall::consensus_kernel(2, 0.7),
                )
            })
            .unwrap();
            assert!(std::fs::read(out.join("model.safetensors")).unwrap() == want.1[0]);
        }
        // The provisional thresholds differ from the exact ones (the test sees the fix).
        assert_ne!(new().provisional().unwrap().thresholds, exact);
    }

    /// τ_MTL column by column has the bits of the per-position formulas (`Iterator::sum`
    /// from −0.0, [`elect_sign`]), on deltas with zeros of both signs, exact cancellations,
    /// values at the thresholds, sign ties and NaNs.
    #[test]
    fn tau_mtl_by_columns_has_the_bits_of_the_per_position_formulas() {
        use crate::merge::{elect_sign, keep};
        let pool = [
            0.0f32,
            -0.0,
            0.5,
            -0.5,
            0.25,
            -0.25,
            1.0,
            -1.0,
            0.75,
            f32::NAN,
        ];
        let mut rng = crate::rng::Rng::keyed(5, "tau", 0);
        for models in 1..=4 {
            let n = 3000;
            let deltas: Vec<Vec<f32>> = (0..models)
                .map(|_| {
                    (0..n)
                        .map(|_| pool[(rng.uniform() * pool.len() as f32) as usize % pool.len()])
                        .collect()
                })
                .collect();
            let thresholds: Vec<Option<f32>> =
                [None, Some(0.5), Some(0.25), Some(f32::INFINITY)][..models].to_vec();
            let sum: Vec<f32> = (0..n).map(|k| deltas.iter().map(|d| d[k]).sum()).collect();
            let ties: Vec<f32> = (0..n)
                .map(|k| {
                    let trimmed = deltas
                        .iter()
                        .zip(&thresholds)
                        .map(move |(d, t)| if keep(d[k], *t) { d[k] } else { 0.0 });
                    let sign = elect_sign(trimmed.clone());
                    trimmed.filter(|x| *x != 0.0 && x.signum() == sign).sum()
                })
                .collect();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&tau_sum(&deltas, n)), bits(&sum), "{models} models");
            assert_eq!(
                bits(&tau_ties(&deltas, n, &thresholds)),
                bits(&ties),
                "{models} models"
            );
        }
    }

    #[test]
    fn lambda_choice_prefers_the_smaller_on_ties() {
        let (l, curve) = choose_lambda(&[0.6, 0.2, 0.4], &mut |l| if l > 0.3 { 1.0 } else { 0.5 });
        assert_eq!(l, 0.4);
        assert_eq!(curve.len(), 3);
    }
}
