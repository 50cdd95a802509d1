//! Model Stock: move from the base toward the models' average by a ratio set by the angle between their task vectors.
//! Paper: Model Stock: All we need is just a few fine-tuned models (arXiv 2403.19522); card: methods/merging.md.

use super::{Chunk, ChunkKernel, Domain, MergeMethod, ParamSpec, TensorJob, warn};
use engram_ckpt::Result;
use std::sync::atomic::{AtomicUsize, Ordering};

/// `model_stock`, as mergekit's `ModelStockMerge`, per tensor:
/// 1. cos θ̄ = the mean over pairs i < j of cos(τ_i, τ_j), each clamped to [−1, 1]
///    (needs N ≥ 2 models besides the base). Dot products and norms come from one streaming
///    pass in f64, summed chunk by chunk in a fixed order.
/// 2. t = N·cos θ̄ / (1 + (N−1)·cos θ̄).
/// 3. θ = t·mean_i θ_i + (1 − t)·θ₀.
///
/// engram choices (card): for cos θ̄ ≤ 0 mergekit's t is ≤ 0, or beyond 1 when
/// cos θ̄ < −1/(N−1), which extrapolates away from the models; engram sets t = 0 (keeps
/// the base) and warns. A pair with a zero task vector counts as cosine 0, as in mergekit
/// (whose norm product is clamped to 1e-6 before dividing); mergekit's clamp also shrinks
/// the cosine of nonzero pairs with ‖τ_i‖·‖τ_j‖ < 1e-6, engram does not. A tensor that no
/// model changes gives θ₀ without a warning.
///
/// `filter_wise` (mergekit's name, off by default) computes t per row (last dimension; a
/// 1-D tensor is one row) instead of per tensor; chunks hold whole rows, so no extra pass.
pub struct ModelStock;

pub const FILTER_WISE: ParamSpec = ParamSpec {
    name: "filter_wise",
    default: Some(0.0),
    per_model: false,
    domain: Domain::Flag,
    help: "compute the interpolation ratio per row instead of per tensor (1 = on)",
};

const PARAMS: &[ParamSpec] = &[FILTER_WISE];

impl MergeMethod for ModelStock {
    fn name(&self) -> &'static str {
        "model_stock"
    }
    fn summary(&self) -> &'static str {
        "interpolate from the base toward the models' average by their task vectors' angle"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn min_models(&self) -> usize {
        2
    }
    fn row_aligned(&self) -> bool {
        true
    }
    fn prepare<'a>(&self, job: &'a TensorJob<'a>) -> Result<Box<dyn ChunkKernel + 'a>> {
        if job.global.flag(PARAMS, "filter_wise") {
            return Ok(Box::new(PerRow {
                tensor: job.name.to_string(),
                row: job.row_len(),
                clamped: AtomicUsize::new(0),
            }));
        }
        let n = job.models.len();
        let parts = job.map_chunks(true, &|c: &Chunk| gram(c, 0..c.base.len()))?;
        let mut g = vec![0f64; n * n];
        for p in &parts {
            for (a, b) in g.iter_mut().zip(p) {
                *a += b;
            }
        }
        let t = match ratio(&g, n) {
            Ratio::Unchanged => 0.0,
            Ratio::Clamped(c) => {
                warn(
                    job.name,
                    &format!(
                        "model_stock: mean pairwise cosine of the task vectors is {c:.4} (≤ 0); \
                         t clamped to 0, the base is kept"
                    ),
                );
                0.0
            }
            Ratio::T(t) => t,
        };
        Ok(Box::new(move |c: &Chunk, out: &mut [f32]| {
            blend(c, 0..out.len(), t as f32, out);
        }))
    }
}

/// The Gram matrix (row-major N×N, f64) of the task vectors over `range` of a chunk.
fn gram(c: &Chunk, range: std::ops::Range<usize>) -> Vec<f64> {
    let n = c.models.len();
    let deltas: Vec<Vec<f64>> = c
        .models
        .iter()
        .map(|m| {
            m[range.clone()]
                .iter()
                .zip(&c.base[range.clone()])
                .map(|(x, b)| (x - b) as f64)
                .collect()
        })
        .collect();
    let mut g = vec![0f64; n * n];
    for i in 0..n {
        for j in i..n {
            let s: f64 = deltas[i].iter().zip(&deltas[j]).map(|(a, b)| a * b).sum();
            g[i * n + j] = s;
            g[j * n + i] = s;
        }
    }
    g
}

enum Ratio {
    /// Every task vector is zero.
    Unchanged,
    /// Mean cosine ≤ 0: t clamped to 0.
    Clamped(f64),
    T(f64),
}

/// t from the Gram matrix of N task vectors.
fn ratio(g: &[f64], n: usize) -> Ratio {
    if (0..n).all(|i| g[i * n + i] == 0.0) {
        return Ratio::Unchanged;
    }
    let mut sum = 0.0;
    let mut pairs = 0usize;
    for i in 0..n {
        for j in i + 1..n {
            let norms = (g[i * n + i] * g[j * n + j]).sqrt();
            if norms > 0.0 {
                sum += (g[i * n + j] / norms).clamp(-1.0, 1.0);
            }
            pairs += 1;
        }
    }
    let cos = sum / pairs.max(1) as f64;
    if cos.is_nan() || cos <= 0.0 {
        return Ratio::Clamped(cos);
    }
    let nf = n as f64;
    Ratio::T((nf * cos / (1.0 + (nf - 1.0) * cos)).clamp(0.0, 1.0))
}

/// out = t·mean_i θ_i + (1 − t)·θ₀ over `range` of the chunk.
fn blend(c: &Chunk, range: std::ops::Range<usize>, t: f32, out: &mut [f32]) {
    let n = c.models.len() as f32;
    for k in range {
        let mean: f32 = c.models.iter().map(|m| m[k]).sum::<f32>() / n;
        out[k] = t * mean + (1.0 - t) * c.base[k];
    }
}

/// `filter_wise`: one ratio per row; counts the rows whose ratio was clamped.
struct PerRow {
    tensor: String,
    row: usize,
    clamped: AtomicUsize,
}

impl ChunkKernel for PerRow {
    fn merge(&self, c: &Chunk, out: &mut [f32]) {
        let n = c.models.len();
        let mut start = 0;
        while start < out.len() {
            let r = start..(start + self.row).min(out.len());
            let t = match ratio(&gram(c, r.clone()), n) {
                Ratio::T(t) => t,
                Ratio::Unchanged => 0.0,
                Ratio::Clamped(_) => {
                    self.clamped.fetch_add(1, Ordering::Relaxed);
                    0.0
                }
            };
            blend(c, r, t as f32, out);
            start += self.row;
        }
    }
}

impl Drop for PerRow {
    /// The kernel is dropped once the tensor is written: report clamped rows then, once.
    fn drop(&mut self) {
        let k = self.clamped.load(Ordering::Relaxed);
        if k > 0 {
            warn(
                &self.tensor,
                &format!(
                    "model_stock (filter_wise): {k} row(s) with mean pairwise cosine ≤ 0; \
                     t clamped to 0 there, the base is kept"
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::merge::testutil::*;
    use crate::rng::Rng;
    use crate::testutil::{values, write_model};
    use engram_ckpt::{DType, Model};
    use std::path::Path;

    /// Three models whose task vectors share a component (cosines around 0.5), except in
    /// `model.layers.1.w`, where τ_1 = −τ_0 (mean cosine < 0), and `model.norm.weight`,
    /// which no model changes.
    fn family(dir: &Path) -> (Model, Vec<Model>) {
        let b = |name: &str, i: usize| Rng::keyed(51, name, i as u64).normal() * 0.1;
        let base = write_model(&dir.join("base"), DType::F32, SHAPES, &|n, i| b(n, i));
        let models = (0..3u64)
            .map(|t| {
                write_model(&dir.join(format!("m{t}")), DType::F32, SHAPES, &|n, i| {
                    let shared = Rng::keyed(52, n, i as u64).normal() * 0.05;
                    let own = Rng::keyed(53 + t, n, i as u64).normal() * 0.05;
                    let d = match (n, t) {
                        ("model.norm.weight", _) => 0.0,
                        ("model.layers.1.w", 1) => -Rng::keyed(53, n, i as u64).normal(),
                        ("model.layers.1.w", _) => Rng::keyed(53 + t, n, i as u64).normal(),
                        _ => shared + own,
                    };
                    b(n, i) + d
                })
            })
            .collect();
        (base, models)
    }

    /// Reference Model Stock over slices: plain loops, f64.
    fn reference(base: &[f32], models: &[Vec<f32>]) -> Vec<f32> {
        let n = models.len();
        let d: Vec<Vec<f64>> = models
            .iter()
            .map(|m| m.iter().zip(base).map(|(x, b)| (x - b) as f64).collect())
            .collect();
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let mut cos = Vec::new();
        for i in 0..n {
            for j in i + 1..n {
                let nn = (dot(&d[i], &d[i]) * dot(&d[j], &d[j])).sqrt();
                cos.push(if nn > 0.0 {
                    dot(&d[i], &d[j]) / nn
                } else {
                    0.0
                });
            }
        }
        let c = cos.iter().sum::<f64>() / cos.len() as f64;
        let t = if c > 0.0 {
            n as f64 * c / (1.0 + (n as f64 - 1.0) * c)
        } else {
            0.0
        } as f32;
        (0..base.len())
            .map(|k| {
                let mean = models.iter().map(|m| m[k]).sum::<f32>() / n as f32;
                t * mean + (1.0 - t) * base[k]
            })
            .collect()
    }

    #[test]
    fn matches_a_reference_per_tensor_and_per_row() {
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = family(dir.path());
        for filter_wise in [false, true] {
            let mut run = Run::new("model_stock", &base, &models);
            run.params = params(&[("filter_wise", f64::from(u8::from(filter_wise)))], &[]);
            let merged = run
                .run(&dir.path().join(format!("out{filter_wise}")))
                .unwrap();
            for (name, shape) in SHAPES {
                let b = values(&base, name);
                let ms: Vec<Vec<f32>> = models.iter().map(|m| values(m, name)).collect();
                let row = if filter_wise {
                    *shape.last().unwrap()
                } else {
                    b.len()
                };
                let want: Vec<f32> = (0..b.len())
                    .step_by(row)
                    .flat_map(|s| {
                        let ms: Vec<Vec<f32>> = ms.iter().map(|m| m[s..s + row].to_vec()).collect();
                        reference(&b[s..s + row], &ms)
                    })
                    .collect();
                let got = values(&merged, name);
                assert_close(&got, &want, 1e-5, name);
                if name == &"model.layers.1.w" || name == &"model.norm.weight" {
                    assert_eq!(got, b, "{name}: t clamped to 0 gives the base");
                } else {
                    assert_ne!(got, b, "{name}");
                }
            }
        }
    }

    #[test]
    fn hand_computed_and_identical_models() {
        let dir = tempfile::tempdir().unwrap();
        let shapes: &[(&str, &[usize])] = &[("w", &[2])];
        let base = write_model(&dir.path().join("b"), DType::F32, shapes, &|_, _| 1.0);
        let m = |p: &str, v: [f32; 2]| {
            write_model(&dir.path().join(p), DType::F32, shapes, &|_, i| v[i])
        };
        // τ = (1, 0) and (1, 1): cos = 1/√2, t = 2c/(1 + c); mean θ = (2, 1.5).
        let models = [m("m1", [2.0, 1.0]), m("m2", [2.0, 2.0])];
        let got = values(
            &Run::new("model_stock", &base, &models)
                .run(&dir.path().join("o"))
                .unwrap(),
            "w",
        );
        let c = std::f32::consts::FRAC_1_SQRT_2;
        let t = 2.0 * c / (1.0 + c);
        assert_close(&got, &[1.0 + t, 1.0 + 0.5 * t], 1e-6, "hand");

        // Identical models: cos = 1, t = 1, the model itself.
        let models = [
            m("i1", [0.5, 3.0]),
            m("i2", [0.5, 3.0]),
            m("i3", [0.5, 3.0]),
        ];
        let got = values(
            &Run::new("model_stock", &base, &models)
                .run(&dir.path().join("oi"))
                .unwrap(),
            "w",
        );
        assert_eq!(got, vec![0.5, 3.0]);

        // One model is not enough.
        let Err(e) = Run::new("model_stock", &base, &models[..1]).run(&dir.path().join("o1"))
        else {
            panic!("one model accepted")
        };
        assert!(e.to_string().contains("at least 2"), "{e}");
    }
}
