//! Linear average (model soups): θ = Σ_i w_i·θ_i / Σ_i w_i (no division with normalize off).
//! Paper: Model soups (arXiv 2203.05482); card: methods/merging.md.

use super::params::{INT8_MASK, NORMALIZE, WEIGHT};
use super::{Chunk, ChunkKernel, MergeMethod, ParamSpec, TensorJob};
use engram_ckpt::Result;

pub struct Linear;

const PARAMS: &[ParamSpec] = &[WEIGHT, NORMALIZE, INT8_MASK];

impl MergeMethod for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn summary(&self) -> &'static str {
        "weighted average of the models (the base is not used)"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn needs_base(&self) -> bool {
        false
    }
    fn prepare<'a>(&self, job: &'a TensorJob<'a>) -> Result<Box<dyn ChunkKernel + 'a>> {
        let w: Vec<f32> = job
            .model_params
            .iter()
            .map(|p| p.value(PARAMS, "weight") as f32)
            .collect();
        let scale = if job.global.flag(PARAMS, "normalize") {
            1.0 / job.weight_sum(&w)?
        } else {
            1.0
        };
        Ok(Box::new(move |c: &Chunk, out: &mut [f32]| {
            for (k, o) in out.iter_mut().enumerate() {
                *o = scale * c.models.iter().zip(&w).map(|(m, w)| w * m[k]).sum::<f32>();
            }
        }))
    }
}
