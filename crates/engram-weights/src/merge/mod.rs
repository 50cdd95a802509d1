//! Merge methods behind a registry, with mergekit's names, parameters and semantics
//! (card: shared/methods/merging.md).
//!
//! A merge is planned ([`plan`]: checks, what to do with each tensor, model-scope thresholds)
//! and then executed ([`engine`]). A method sees one tensor at a time through a
//! [`TensorJob`]: it may stream over the tensor once or twice to compute statistics (top-k
//! thresholds, norms, cosines), and then returns a [`ChunkKernel`] that the engine applies to
//! fixed chunks of the tensor in parallel ([`crate::stream`]). Memory is thus a few chunks per
//! thread whatever the model size, and results do not depend on the thread count (chunk
//! boundaries are fixed; random draws are keyed by seed, tensor, model and chunk). The TIES,
//! DARE, DELLA and Breadcrumbs methods share one kernel ([`gta`]) and differ only in their
//! sparsifiers.

pub mod breadcrumbs;
pub mod config;
pub mod dare;
pub mod della;
pub mod engine;
pub mod gta;
pub mod job;
pub mod linear;
pub mod model_stock;
pub mod onepass;
pub mod params;
pub mod plan;
pub mod request;
pub mod slerp;
pub mod stages;
pub mod task_arithmetic;
#[cfg(test)]
pub mod testutil;
pub mod ties;

pub use crate::stream::{CHUNK_ELEMS, Chunk};
use engram_ckpt::Result;
pub use gta::{elect_sign, elected, sign_vote};
pub use job::{ModelDeltas, TensorJob, keep};
pub use params::{Domain, ParamSpec, Params};

/// Where magnitude trimming (`density`) takes its top-k.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrimScope {
    /// Per tensor, as mergekit.
    Tensor,
    /// Over the whole model, as the TIES and TALL reference code.
    Model,
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
    /// Whether the method draws random numbers (so that a seed has an effect).
    fn random(&self) -> bool {
        false
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
    /// Checks across parameters of one model, resolved for one tensor (each value already
    /// lies in its domain, [`params::ParamSource::validate`]); e.g. breadcrumbs' gamma +
    /// density ≤ 1. Out of range is an error, never clamped.
    fn check_params(&self, _p: &Params) -> std::result::Result<(), String> {
        Ok(())
    }
    fn prepare<'a>(&self, job: &'a TensorJob<'a>) -> Result<Box<dyn ChunkKernel + 'a>>;
    /// For a method whose only whole-tensor statistics are magnitude cuts of the task vectors
    /// (ties, breadcrumbs): the ranks of its selections over `total` values per model (this
    /// tensor's, or the whole model's with `trim_scope: model`). Selection j is the k-th
    /// largest |τ| of model j mod N; `None` cuts nothing. The engine then finishes the
    /// thresholds during the merge pass ([`onepass`]) and builds the kernel with
    /// [`Self::trimmed_kernel`]. `None` (the default): the engine calls [`Self::prepare`].
    fn trim_ranks(&self, _job: &TensorJob, _total: u64) -> Option<Vec<Option<u64>>> {
        None
    }
    /// The kernel for given thresholds, one per selection of [`Self::trim_ranks`] (`None`:
    /// no cut; `+inf`: nothing reaches it); it merges position by position.
    fn trimmed_kernel<'a>(
        &self,
        job: &'a TensorJob<'a>,
        _thresholds: Vec<Option<f32>>,
    ) -> Result<Box<dyn ChunkKernel + 'a>> {
        self.prepare(job)
    }
}

/// Every merge method, in listing order. Adding one is one file and one line here.
pub fn registry() -> &'static [&'static dyn MergeMethod] {
    &[
        &linear::Linear,
        &task_arithmetic::TaskArithmetic,
        &ties::Ties,
        &dare::DareLinear,
        &dare::DareTies,
        &breadcrumbs::Breadcrumbs::<false>,
        &breadcrumbs::Breadcrumbs::<true>,
        &della::Della,
        &della::DellaLinear,
        &model_stock::ModelStock,
        &slerp::Slerp,
    ]
}

pub fn get(name: &str) -> Option<&'static dyn MergeMethod> {
    registry().iter().copied().find(|m| m.name() == name)
}

/// Reports a non-fatal oddity of one tensor (e.g. a clamped Model Stock ratio).
/// The merge report has no warnings list yet, so this goes to stderr; routing it into
/// `MergeReport` needs a sink in [`TensorJob`] (one place to change).
pub fn warn(tensor: &str, msg: &str) {
    eprintln!("warning: tensor '{tensor}': {msg}");
}
