//! One tensor of a merge as a method sees it: the views of the base and the models, the
//! parameters resolved for this tensor, and the magnitude thresholds of trimming (per tensor,
//! or found over the whole model in the planning stage).

use super::params::Params;
use super::{ChunkKernel, TrimScope};
use crate::select::{Pieces, keep_ranks, kth_largest_abs_sets};
use crate::stream::{Chunk, TensorChunks, row_len};
use engram_ckpt::{Result, TensorView};

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

impl<'a> TensorJob<'a> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Length of the last dimension (1 for scalars).
    pub fn row_len(&self) -> usize {
        row_len(self.shape)
    }

    /// The tensor in fixed chunks; with `rows`, each chunk holds whole rows.
    pub fn chunks(&self, rows: bool) -> TensorChunks<'_, 'a> {
        TensorChunks::new(self.base, &self.models).rows(rows)
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

    /// Maps every chunk to a value, in parallel, in chunk order (statistics passes: L1
    /// norms, dot products), so that folding the values in order does not depend on threads.
    pub fn map_chunks<T: Send>(
        &self,
        rows: bool,
        f: &(dyn Fn(&Chunk) -> T + Sync),
    ) -> Result<Vec<T>> {
        self.chunks(rows).map(&|c| Ok(f(c)))
    }

    /// Runs `kernel` over every chunk in parallel and hands each input chunk and its result
    /// to `sink`.
    pub fn apply(
        &self,
        kernel: &dyn ChunkKernel,
        rows: bool,
        sink: &(dyn Fn(&Chunk, &[f32]) -> Result<()> + Sync),
    ) -> Result<()> {
        self.chunks(rows).for_each(&|c| {
            let mut out = vec![0f32; c.len];
            kernel.merge(c, &mut out);
            sink(c, &out)
        })
    }

    /// Σ w_i for `normalize`: a sum of (nearly) 0 cannot normalize, and is an error naming
    /// the tensor rather than a silent fall-back to no normalization (every method that
    /// divides by the sum of the weights asks here).
    pub fn weight_sum(&self, w: &[f32]) -> Result<f32> {
        let sum: f32 = w.iter().sum();
        if sum.abs() < 1e-8 {
            let path = self.base.or(self.models.first().copied()).map(|v| v.path);
            return Err(engram_ckpt::Error::tensor(
                path.unwrap_or(std::path::Path::new("")),
                self.name,
                format!(
                    "normalize: the weights {w:?} sum to 0; give weights with a nonzero sum, or normalize: 0"
                ),
            ));
        }
        Ok(sum)
    }
}

/// A tensor's task vectors, one set per model, in chunks of
/// [`CHUNK_ELEMS`](crate::stream::CHUNK_ELEMS).
impl Pieces for TensorJob<'_> {
    fn pieces(&self) -> usize {
        self.chunks(false).pieces()
    }
    fn piece(&self, p: usize, wanted: &[bool], f: &mut dyn FnMut(usize, &[f32])) -> Result<()> {
        self.chunks(false).piece(p, wanted, f)
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

impl Pieces for ModelDeltas<'_, '_> {
    fn pieces(&self) -> usize {
        self.index.len()
    }
    fn piece(&self, p: usize, wanted: &[bool], f: &mut dyn FnMut(usize, &[f32])) -> Result<()> {
        let (j, c) = self.index[p];
        self.jobs[j].piece(c, wanted, f)
    }
}

/// Per set of `s` (one per model, `total` values each), the magnitude keeping a
/// `densities[i]` share: `None` for density ≥ 1, `+inf` when nothing is kept.
fn magnitude_thresholds(s: &dyn Pieces, densities: &[f64], total: u64) -> Result<Vec<Option<f32>>> {
    let ks = keep_ranks(densities, total);
    let found = kth_largest_abs_sets(s, &ks)?;
    Ok(ks
        .iter()
        .zip(found)
        .map(|(k, t)| k.map(|_| t.unwrap_or(f32::INFINITY)))
        .collect())
}

/// Keeps `x` if its magnitude reaches the threshold of [`TensorJob::delta_thresholds`]
/// (`None` keeps all; ties at the threshold are kept).
#[inline]
pub fn keep(x: f32, threshold: Option<f32>) -> bool {
    threshold.is_none_or(|t| x.abs() >= t)
}
