//! What a merge is asked to do. Only the method and the models are required; everything else
//! has a default (the method's own parameter defaults, mergekit's per-tensor trimming), so a
//! caller states only what it changes.

use super::params::ParamSource;
use super::{MergeMethod, TrimScope};
use engram_ckpt::{DType, Model};

pub struct MergeRequest<'a> {
    pub method: &'static dyn MergeMethod,
    pub base: Option<&'a Model>,
    pub models: Vec<&'a Model>,
    /// Global and per-model parameters; a model without its own map takes the global ones.
    pub params: ParamSource,
    pub scope: TrimScope,
    pub seed: u64,
    /// Output dtype of float tensors; default: the template model's dtype per tensor.
    pub out_dtype: Option<DType>,
    /// Keep the base's tensor where a model lacks it, instead of failing.
    pub allow_missing: bool,
    /// Fail if an output value is NaN or infinite.
    pub check_finite: bool,
    pub max_shard_bytes: Option<u64>,
    /// Let magnitude trims (ties per tensor) finish their thresholds during the merge pass
    /// where few positions would wait for them ([`super::onepass`]); off: a second
    /// selection pass first. The output is the same either way.
    pub one_pass: bool,
}

impl<'a> MergeRequest<'a> {
    /// A merge of `models` onto `base` with `method` and the defaults: no parameters (the
    /// method's defaults), trimming per tensor, seed 0, the template's dtypes, every tensor
    /// required in every model, non-finite outputs refused, one output file.
    pub fn new(
        method: &'static dyn MergeMethod,
        base: Option<&'a Model>,
        models: Vec<&'a Model>,
    ) -> Self {
        MergeRequest {
            method,
            base,
            models,
            params: ParamSource::default(),
            scope: TrimScope::Tensor,
            seed: 0,
            out_dtype: None,
            allow_missing: false,
            check_finite: true,
            max_shard_bytes: None,
            one_pass: true,
        }
    }

    /// The parameters a merge reads, for a progress bar: the base's, else the first model's.
    pub fn total_params(&self) -> u64 {
        self.base
            .or(self.models.first().copied())
            .map_or(0, |m| m.param_count())
    }

    pub fn with_params(mut self, params: ParamSource) -> Self {
        self.params = params;
        self
    }

    pub fn with_scope(mut self, scope: TrimScope) -> Self {
        self.scope = scope;
        self
    }

    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    pub fn with_out_dtype(mut self, out_dtype: Option<DType>) -> Self {
        self.out_dtype = out_dtype;
        self
    }

    pub fn with_allow_missing(mut self, allow_missing: bool) -> Self {
        self.allow_missing = allow_missing;
        self
    }

    pub fn with_check_finite(mut self, check_finite: bool) -> Self {
        self.check_finite = check_finite;
        self
    }

    pub fn with_one_pass(mut self, one_pass: bool) -> Self {
        self.one_pass = one_pass;
        self
    }

    pub fn with_max_shard_bytes(mut self, max_shard_bytes: Option<u64>) -> Self {
        self.max_shard_bytes = max_shard_bytes;
        self
    }
}
