//! Task Arithmetic: θ = θ₀ + λ·Σ_t w_t·τ_t (optionally divided by Σ w_t).
//! Paper: Editing Models with Task Arithmetic (arXiv 2212.04089); card: methods/merging.md.

use super::params::{INT8_MASK, LAMBDA, NORMALIZE_OFF, WEIGHT};
use super::{Chunk, ChunkKernel, MergeMethod, ParamSpec, TensorJob};
use engram_ckpt::Result;

pub struct TaskArithmetic;

const PARAMS: &[ParamSpec] = &[WEIGHT, LAMBDA, NORMALIZE_OFF, INT8_MASK];

impl MergeMethod for TaskArithmetic {
    fn name(&self) -> &'static str {
        "task_arithmetic"
    }
    fn summary(&self) -> &'static str {
        "base + lambda * sum of weighted task vectors"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn prepare<'a>(&self, job: &'a TensorJob<'a>) -> Result<Box<dyn ChunkKernel + 'a>> {
        let w: Vec<f32> = job
            .model_params
            .iter()
            .map(|p| p.value(PARAMS, "weight") as f32)
            .collect();
        let lambda = job.global.value(PARAMS, "lambda") as f32;
        let scale = if job.global.flag(PARAMS, "normalize") {
            lambda / job.weight_sum(&w)?
        } else {
            lambda
        };
        Ok(Box::new(move |c: &Chunk, out: &mut [f32]| {
            for (k, o) in out.iter_mut().enumerate() {
                let b = c.base[k];
                let d: f32 = c.models.iter().zip(&w).map(|(m, w)| w * (m[k] - b)).sum();
                *o = b + scale * d;
            }
        }))
    }
}
