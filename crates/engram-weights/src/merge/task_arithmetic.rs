//! Task Arithmetic: θ = θ₀ + λ·Σ_t w_t·τ_t (optionally divided by Σ w_t).
//! Paper: Editing Models with Task Arithmetic (arXiv 2212.04089); card: methods/merging.md.

use super::params::{INT8_MASK, LAMBDA, NORMALIZE_OFF, WEIGHT};
use super::{Chunk, ChunkKernel, MergeMethod, ParamSpec, TensorJob};
use engram_ckpt::Result;
use engram_ckpt::avx2_dispatch;

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
            ta_chunk(&w, scale, c.base, c.models, out)
        }))
    }
}

/// θ₀ + s·Σ_t w_t·(θ_t − θ₀) over one chunk, in column passes (each a straight loop the
/// compiler vectorizes) adding the terms in model order as a per-position sum would: the
/// same bits.
#[inline(always)]
fn ta_chunk_any(w: &[f32], scale: f32, base: &[f32], models: &[Vec<f32>], out: &mut [f32]) {
    let Some((first, rest)) = models.split_first() else {
        out.copy_from_slice(base);
        return;
    };
    for ((o, &m), &b) in out.iter_mut().zip(first).zip(base) {
        *o = w[0] * (m - b);
    }
    for (m, &wi) in rest.iter().zip(&w[1..]) {
        for ((o, &m), &b) in out.iter_mut().zip(m).zip(base) {
            *o += wi * (m - b);
        }
    }
    for (o, &b) in out.iter_mut().zip(base) {
        *o = b + scale * *o;
    }
}

avx2_dispatch!(fn ta_chunk(w: &[f32], scale: f32, base: &[f32], models: &[Vec<f32>], out: &mut [f32]) = ta_chunk_any;);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::testutil::{Run, SHAPES, params};
    use crate::testutil::{random_family, values};

    /// The column passes give the per-position formula's bits, θ₀ + s·Σ_t w_t·(θ_t − θ₀) with
    /// the sum taken in model order, on values whose deltas are often exactly ±0.
    #[test]
    fn column_passes_equal_the_per_position_sum() {
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = random_family(dir.path(), SHAPES, 3, 8);
        let w = [1.0f32, -0.5, 2.0];
        let mut run = Run::new("task_arithmetic", &base, &models);
        run.params = params(
            &[("lambda", 0.7)],
            &[&[("weight", 1.0)], &[("weight", -0.5)], &[("weight", 2.0)]],
        );
        let merged = run.run(&dir.path().join("o")).unwrap();
        for (name, _) in SHAPES {
            let b = values(&base, name);
            let ms: Vec<Vec<f32>> = models.iter().map(|m| values(m, name)).collect();
            let got = values(&merged, name);
            for k in 0..b.len() {
                let d: f32 = ms.iter().zip(&w).map(|(m, w)| w * (m[k] - b[k])).sum();
                let want = b[k] + 0.7f32 * d;
                assert_eq!(got[k].to_bits(), want.to_bits(), "{name}[{k}]");
            }
        }
        let _ = TaskArithmetic.name();
    }
}
