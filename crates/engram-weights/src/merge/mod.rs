//! Merge methods behind a registry, with mergekit's names, parameters and semantics
//! (card: shared/methods/merging.md).
//!
//! A method sees one tensor at a time through a [`TensorJob`]: it may stream over the tensor
//! once or twice to compute statistics (top-k thresholds, norms, cosines), and then returns a
//! [`ChunkKernel`] that the engine applies to fixed chunks of the tensor in parallel. Memory is
//! thus a few chunks per thread whatever the model size, and results do not depend on the
//! thread count (chunk boundaries are fixed; random draws are keyed by seed, tensor, model and
//! chunk).

pub mod breadcrumbs;
pub mod config;
pub mod dare;
pub mod della;
pub mod engine;
pub mod linear;
pub mod model_stock;
pub mod params;
pub mod slerp;
pub mod task_arithmetic;
pub mod ties;

use crate::select::{Pieces, keep_count, kth_largest_abs_sets};
use engram_ckpt::{Result, TensorView};
pub use params::{ParamSpec, Params};
use rayon::prelude::*;
use std::ops::Range;

/// Elements per chunk (fixed: chunk boundaries feed random streams and must not move).
pub const CHUNK_ELEMS: usize = 1 << 18;

/// Where magnitude trimming (`density`) takes its top-k.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrimScope {
    /// Per tensor, as mergekit.
    Tensor,
    /// Over the whole model, as the TIES and TALL reference code.
    Model,
}

/// One tensor to merge: the base and the models' views, and resolved parameters.
pub struct TensorJob<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    /// The base model's tensor; methods with `needs_base() == false` may get `None`.
    pub base: Option<TensorView<'a>>,
    pub models: Vec<TensorView<'a>>,
    /// Per model, resolved for this tensor (weight, density, ...).
    pub model_params: Vec<Params>,
    pub global: Params,
    pub scope: TrimScope,
    /// With `TrimScope::Model`: per model, the |τ| threshold found over the whole model.
    pub model_thresholds: Option<Vec<Option<f32>>>,
    pub seed: u64,
}

/// One chunk's data, decoded to f32.
pub struct Chunk<'a> {
    /// Chunk number within the tensor (for keyed random streams).
    pub index: usize,
    /// Element offset of the chunk within the tensor.
    pub start: usize,
    /// Base values; empty when the job has no base.
    pub base: &'a [f32],
    pub models: &'a [Vec<f32>],
}

/// The per-chunk arithmetic of a method, prepared for one tensor.
pub trait ChunkKernel: Sync {
    fn merge(&self, chunk: &Chunk, out: &mut [f32]);
}

impl<F: Fn(&Chunk, &mut [f32]) + Sync> ChunkKernel for F {
    fn merge(&self, chunk: &Chunk, out: &mut [f32]) {
        self(chunk, out)
    }
}

pub trait MergeMethod: Sync {
    /// mergekit's `merge_method` name.
    fn name(&self) -> &'static str;
    /// One line for `--help` and listings.
    fn summary(&self) -> &'static str;
    fn params(&self) -> &'static [ParamSpec];
    fn needs_base(&self) -> bool {
        true
    }
    fn min_models(&self) -> usize {
        1
    }
    fn max_models(&self) -> Option<usize> {
        None
    }
    /// Whether `density` keeps the largest |τ| (so `trim_scope: model` applies).
    fn trims_by_magnitude(&self) -> bool {
        false
    }
    /// Whether chunks must hold whole rows (last dimension), e.g. for per-row ranking.
    fn row_aligned(&self) -> bool {
        false
    }
    fn prepare<'a>(&self, job: &'a TensorJob<'a>) -> Result<Box<dyn ChunkKernel + 'a>>;
}

/// Every merge method, in listing order. Adding one is one file and one line here.
pub fn registry() -> &'static [&'static dyn MergeMethod] {
    &[
        &linear::Linear,
        &task_arithmetic::TaskArithmetic,
        &ties::Ties,
        &dare::DareLinear,
        &dare::DareTies,
        &breadcrumbs::Breadcrumbs,
        &breadcrumbs::BreadcrumbsTies,
        &della::Della,
        &della::DellaLinear,
        &model_stock::ModelStock,
        &slerp::Slerp,
    ]
}

pub fn get(name: &str) -> Option<&'static dyn MergeMethod> {
    registry().iter().copied().find(|m| m.name() == name)
}

/// A tensor's task vectors, one set per model, in chunks of [`CHUNK_ELEMS`].
impl Pieces for TensorJob<'_> {
    fn pieces(&self) -> usize {
        self.numel().div_ceil(CHUNK_ELEMS)
    }
    fn piece(&self, p: usize, wanted: &[bool], f: &mut dyn FnMut(usize, &[f32])) -> Result<()> {
        let start = p * CHUNK_ELEMS;
        self.deltas_over(start..(start + CHUNK_ELEMS).min(self.numel()), wanted, f)
    }
}

/// The task vectors of several tensors as one set per model (model-scope trimming): the
/// pieces are every tensor's chunks in turn.
pub struct ModelDeltas<'j, 'a> {
    jobs: &'j [TensorJob<'a>],
    /// (job, chunk within it) of each piece.
    index: Vec<(usize, usize)>,
}

impl<'j, 'a> ModelDeltas<'j, 'a> {
    pub fn new(jobs: &'j [TensorJob<'a>]) -> Self {
        let index = jobs
            .iter()
            .enumerate()
            .flat_map(|(j, job)| (0..job.pieces()).map(move |c| (j, c)))
            .collect();
        ModelDeltas { jobs, index }
    }

    /// Per model, the k-th largest |τ_i| over all the tensors for a `densities[i]` share
    /// (`None` for density ≥ 1, `+inf` when nothing is kept).
    pub fn thresholds(&self, densities: &[f64]) -> Result<Vec<Option<f32>>> {
        let total: u64 = self.jobs.iter().map(|j| j.numel() as u64).sum();
        magnitude_thresholds(self, densities, total)
    }
}

/// Per set of `s` (one per model, `total` values each), the magnitude keeping a
/// `densities[i]` share: `None` for density ≥ 1, `+inf` when nothing is kept.
fn magnitude_thresholds(s: &dyn Pieces, densities: &[f64], total: u64) -> Result<Vec<Option<f32>>> {
    let ks: Vec<Option<u64>> = densities
        .iter()
        .map(|&d| (d < 1.0).then(|| keep_count(d, total)))
        .collect();
    let found = kth_largest_abs_sets(s, &ks)?;
    Ok(ks
        .iter()
        .zip(found)
        .map(|(k, t)| k.map(|_| t.unwrap_or(f32::INFINITY)))
        .collect())
}

impl Pieces for ModelDeltas<'_, '_> {
    fn pieces(&self) -> usize {
        self.index.len()
    }
    fn piece(&self, p: usize, wanted: &[bool], f: &mut dyn FnMut(usize, &[f32])) -> Result<()> {
        let (j, c) = self.index[p];
        self.jobs[j].piece(c, wanted, f)
    }
}

impl<'a> TensorJob<'a> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Length of the last dimension (1 for scalars).
    pub fn row_len(&self) -> usize {
        self.shape.last().copied().unwrap_or(1).max(1)
    }

    /// Fixed chunk ranges; with `rows`, each chunk holds whole rows.
    pub fn chunks(&self, rows: bool) -> Vec<Range<usize>> {
        let n = self.numel();
        let step = if rows {
            let r = self.row_len();
            (CHUNK_ELEMS / r).max(1) * r
        } else {
            CHUNK_ELEMS
        };
        (0..n.div_ceil(step).max(usize::from(n == 0)))
            .map(|i| i * step..((i + 1) * step).min(n))
            .collect()
    }

    /// Gives the pages of `range` back to the kernel in every view (see
    /// `TensorView::release`): streaming keeps resident memory at a few chunks.
    pub fn release(&self, range: Range<usize>) {
        for v in self.base.iter().chain(&self.models) {
            v.release(range.start, range.end);
        }
    }

    /// Decodes the base (if any) and every model over `range`.
    pub fn read(&self, range: Range<usize>) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        let n = range.len();
        let base = match &self.base {
            Some(b) => {
                let mut v = vec![0f32; n];
                b.read_f32_into(range.start, &mut v)?;
                v
            }
            None => Vec::new(),
        };
        let models = self
            .models
            .iter()
            .map(|m| {
                let mut v = vec![0f32; n];
                m.read_f32_into(range.start, &mut v)?;
                Ok(v)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((base, models))
    }

    /// Per model, the magnitude threshold for keeping a `densities[i]` share of its delta:
    /// the model-scope threshold if the run trims over the model, else the exact k-th
    /// largest |τ_i| of this tensor, all models selected together in two parallel passes
    /// (one read of every chunk per pass). `None` keeps everything (density ≥ 1); `+inf`
    /// keeps nothing. Ties at the threshold are kept (merging.md).
    pub fn delta_thresholds(&self, densities: &[f64]) -> Result<Vec<Option<f32>>> {
        if self.scope == TrimScope::Model
            && let Some(t) = &self.model_thresholds
        {
            return Ok(densities
                .iter()
                .enumerate()
                .map(|(i, &d)| {
                    if d >= 1.0 {
                        None
                    } else {
                        t.get(i).copied().flatten()
                    }
                })
                .collect());
        }
        magnitude_thresholds(self, densities, self.numel() as u64)
    }

    /// Calls `f(i, τ_i)` over `range` for every model `i` in `wanted`, decoding the base once.
    fn deltas_over(
        &self,
        range: Range<usize>,
        wanted: &[bool],
        f: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        let n = range.len();
        let mut b = Vec::new();
        if let Some(base) = &self.base {
            b = vec![0f32; n];
            base.read_f32_into(range.start, &mut b)?;
        }
        let mut d = vec![0f32; n];
        for (i, m) in self.models.iter().enumerate() {
            if !wanted.get(i).copied().unwrap_or(false) {
                continue;
            }
            m.read_f32_into(range.start, &mut d)?;
            for (x, y) in d.iter_mut().zip(&b) {
                *x -= y;
            }
            f(i, &d);
        }
        self.release(range);
        Ok(())
    }

    /// Maps every chunk (decoded as for [`TensorJob::apply`]) to a value, in parallel, and
    /// returns the values in chunk order, so that folding them in order gives the same result
    /// whatever the thread count (statistics passes: L1 norms, dot products).
    pub fn map_chunks<T: Send>(
        &self,
        rows: bool,
        f: &(dyn Fn(&Chunk) -> T + Sync),
    ) -> Result<Vec<T>> {
        self.chunks(rows)
            .into_par_iter()
            .enumerate()
            .map(|(index, r)| {
                let (base, models) = self.read(r.clone())?;
                self.release(r.clone());
                Ok(f(&Chunk {
                    index,
                    start: r.start,
                    base: &base,
                    models: &models,
                }))
            })
            .collect()
    }

    /// Runs `kernel` over every chunk in parallel and hands each finished chunk to `sink`.
    pub fn apply(
        &self,
        kernel: &dyn ChunkKernel,
        rows: bool,
        sink: &(dyn Fn(usize, &[f32]) -> Result<()> + Sync),
    ) -> Result<()> {
        self.chunks(rows)
            .into_par_iter()
            .enumerate()
            .try_for_each(|(index, r)| {
                let (base, models) = self.read(r.clone())?;
                self.release(r.clone());
                let mut out = vec![0f32; r.len()];
                kernel.merge(
                    &Chunk {
                        index,
                        start: r.start,
                        base: &base,
                        models: &models,
                    },
                    &mut out,
                );
                sink(r.start, &out)
            })
    }
}

/// Reports a non-fatal oddity of one tensor (e.g. a clamped Model Stock ratio).
/// The merge report has no warnings list yet, so this goes to stderr; routing it into
/// `MergeReport` needs a sink in [`TensorJob`] (one place to change).
pub fn warn(tensor: &str, msg: &str) {
    eprintln!("warning: tensor '{tensor}': {msg}");
}

/// Keeps `x` if its magnitude reaches the threshold (`None` keeps all).
#[inline]
pub fn keep(x: f32, threshold: Option<f32>) -> bool {
    threshold.is_none_or(|t| x.abs() >= t)
}

/// TIES sign election over weighted, trimmed deltas at one position (merging.md): the sign
/// of the sum, or if the sum is 0 the sign of the sum of signs, then +.
#[inline]
pub fn elect_sign(vals: impl Iterator<Item = f32> + Clone) -> f32 {
    let sum: f32 = vals.clone().sum();
    // The votes only count where the sum decides nothing.
    let votes = if sum == 0.0 || sum.is_nan() {
        vals.map(sign_vote).sum()
    } else {
        0.0
    };
    elected(sum, votes)
}

/// One entry's vote in [`elect_sign`]'s tie-break: its sign, 0 for a zero.
#[inline]
pub fn sign_vote(v: f32) -> f32 {
    v.signum() * f32::from(v != 0.0)
}

/// [`elect_sign`]'s rule from the signed sum and the sum of [`sign_vote`]s: the sign of the
/// sum, else (sum 0) the sign of the votes, else +. Branch-free enough to vectorize when
/// applied column by column (the GTA kernel).
#[inline]
pub fn elected(sum: f32, votes: f32) -> f32 {
    if sum > 0.0 {
        1.0
    } else if sum < 0.0 || votes < 0.0 {
        -1.0
    } else {
        1.0
    }
}
