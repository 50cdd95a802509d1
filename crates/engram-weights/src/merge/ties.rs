//! TIES: trim each task vector by magnitude, elect a sign per entry, merge disjointly.
//! Paper: TIES-Merging: Resolving Interference When Merging Models (arXiv 2306.01708); card: methods/merging.md.

use super::gta::{RESCALE_OFF, Sparsifier, gta_kernel};
use super::params::{DENSITY, INT8_MASK, LAMBDA, NORMALIZE, WEIGHT};
use super::{ChunkKernel, MergeMethod, ParamSpec, TensorJob, keep};
use crate::select::keep_ranks;
use engram_ckpt::Result;
use engram_ckpt::avx2_dispatch;

/// `ties` as mergekit's generalized task arithmetic ([`super::gta`]) with magnitude
/// sparsification and `sum` consensus:
/// 1. τ̂_i = τ_i with entries below the top `density` share of |τ_i| zeroed (per tensor, or
///    over the model with `trim_scope: model`); ties at the threshold are kept (card).
/// 2. v_i = w_i·τ̂_i: weights apply *before* the election, as in mergekit, so they sway it.
/// 3. γ = [`elect_sign`](super::gta::elect_sign) of the v_i; A = {i : v_i ≠ 0, sign v_i = γ}.
/// 4. τ_m = Σ_A v_i, divided by Σ_A w_i with `normalize` (dis-mean; a zero divisor counts
///    as 1, as mergekit), else not (dis-sum); θ = θ₀ + λ·τ_m.
///
/// At density 1 this still differs from task arithmetic: entries against the elected sign
/// are dropped. Where the signed sum is exactly 0 mergekit elects +; engram first looks at
/// the sum of signs (card).
pub struct Ties;

const PARAMS: &[ParamSpec] = &[WEIGHT, DENSITY, NORMALIZE, RESCALE_OFF, LAMBDA, INT8_MASK];

impl MergeMethod for Ties {
    fn name(&self) -> &'static str {
        "ties"
    }
    fn summary(&self) -> &'static str {
        "trim task vectors by magnitude, elect a sign per entry, average the agreeing ones"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn trims_by_magnitude(&self) -> bool {
        true
    }
    fn prepare<'a>(&self, job: &'a TensorJob<'a>) -> Result<Box<dyn ChunkKernel + 'a>> {
        let thresholds = job.delta_thresholds(&densities(job))?;
        self.trimmed_kernel(job, thresholds)
    }
    /// One cut per model, keeping its `density` share of |τ| (ties at the cut kept).
    /// Without `rescale` (whose L1 factors need the exact thresholds before the merge pass),
    /// the thresholds can be finished during the merge pass, per tensor or over the model.
    fn trim_ranks(&self, job: &TensorJob, total: u64) -> Option<Vec<Option<u64>>> {
        (!job.global.flag(PARAMS, "rescale")).then(|| keep_ranks(&densities(job), total))
    }
    fn trimmed_kernel<'a>(
        &self,
        job: &'a TensorJob<'a>,
        thresholds: Vec<Option<f32>>,
    ) -> Result<Box<dyn ChunkKernel + 'a>> {
        gta_kernel(job, PARAMS, Trim(thresholds), true, false)
    }
}

fn densities(job: &TensorJob) -> Vec<f64> {
    job.model_params
        .iter()
        .map(|p| p.value(PARAMS, "density"))
        .collect()
}

/// Magnitude trim with one threshold per model (`None`: keep all).
struct Trim(Vec<Option<f32>>);

impl Sparsifier for Trim {
    fn is_identity(&self, i: usize) -> bool {
        self.0[i].is_none()
    }
    fn sparsify(&self, i: usize, _chunk: usize, delta: &mut [f32]) {
        trim(self.0[i], delta)
    }
}

#[inline(always)]
fn trim_any(t: Option<f32>, delta: &mut [f32]) {
    for x in delta.iter_mut() {
        // A select, not a conditional store: the loop vectorizes.
        *x = if keep(*x, t) { *x } else { 0.0 };
    }
}

avx2_dispatch!(fn trim(t: Option<f32>, delta: &mut [f32]) = trim_any;);

#[cfg(test)]
mod tests {
    use crate::merge::TrimScope;
    use crate::merge::testutil::*;
    use crate::testutil::{random_family, values, write_model};
    use engram_ckpt::DType;

    fn density(d: f64, n: usize) -> usize {
        (d * n as f64) as usize
    }

    #[test]
    fn matches_a_sort_based_reference_per_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = random_family(dir.path(), SHAPES, 3, 11);
        let dens = [0.3, 0.5, 0.7];
        for (normalize, rescale) in [(true, false), (false, false), (true, true)] {
            let gta = GtaRef {
                weights: &[1.0, 2.0, 0.5],
                normalize,
                rescale,
                lambda: 0.8,
                consensus: true,
            };
            let mut run = Run::new("ties", &base, &models);
            run.params = gta.params(&[("density", &dens)]);
            let out = dir.path().join(format!("out{normalize}{rescale}"));
            let merged = run.run(&out).unwrap();
            gta.assert_matches(
                &merged,
                &base,
                &models,
                SHAPES,
                &|_, _, i, t| top_k(t, density(dens[i], t.len())),
                1e-5,
            );
        }
    }

    #[test]
    fn model_scope_matches_a_reference_over_the_whole_model() {
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = random_family(dir.path(), SHAPES, 2, 12);
        let dens = [0.2, 0.6];
        let mut run = Run::new("ties", &base, &models);
        run.params = params(&[], &[&[("density", dens[0])], &[("density", dens[1])]]);
        run.scope = TrimScope::Model;
        let merged = run.run(&dir.path().join("out")).unwrap();
        // Global thresholds from every |τ_i| of the model, sorted.
        let thresholds: Vec<f32> = models
            .iter()
            .zip(dens)
            .map(|(m, d)| {
                let mut all: Vec<f32> = SHAPES
                    .iter()
                    .flat_map(|(n, _)| delta(&values(&base, n), &values(m, n)))
                    .map(f32::abs)
                    .collect();
                all.sort_by(|x, y| y.total_cmp(x));
                all[density(d, all.len()) - 1]
            })
            .collect();
        let by_threshold = |i: usize, t: &[f32]| -> Vec<f32> {
            t.iter()
                .map(|&x| if x.abs() >= thresholds[i] { x } else { 0.0 })
                .collect()
        };
        let gta = GtaRef {
            weights: &[1.0, 1.0],
            normalize: true,
            rescale: false,
            lambda: 1.0,
            consensus: true,
        };
        gta.assert_matches(
            &merged,
            &base,
            &models,
            SHAPES,
            &|_, _, i, t| by_threshold(i, t),
            1e-6,
        );
        let differs_from_tensor_scope = SHAPES.iter().any(|(name, _)| {
            let b = values(&base, name);
            models.iter().enumerate().any(|(i, m)| {
                let t = delta(&b, &values(m, name));
                top_k(&t, density(dens[i], t.len())) != by_threshold(i, &t)
            })
        });
        assert!(differs_from_tensor_scope);
    }

    /// Three models over a base of 0.5, deltas chosen by hand (all exact in f32).
    fn hand_family(dir: &std::path::Path) -> (engram_ckpt::Model, Vec<engram_ckpt::Model>) {
        const D: [[f32; 6]; 3] = [
            [1.0, 2.0, 0.0, 3.0, -0.5, 1.0],
            [-1.0, -1.0, 0.0, -1.0, -0.5, 1.0],
            [0.0, -1.0, 0.0, 0.0, 2.0, 1.0],
        ];
        let shapes: &[(&str, &[usize])] = &[("w", &[6])];
        let base = write_model(&dir.join("base"), DType::F32, shapes, &|_, _| 0.5);
        let models = (0..3)
            .map(|t| {
                write_model(&dir.join(format!("m{t}")), DType::F32, shapes, &|_, i| {
                    0.5 + D[t][i]
                })
            })
            .collect();
        (base, models)
    }

    #[test]
    fn hand_computed_sign_ties_zeros_and_weights() {
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = hand_family(dir.path());
        let mut run = Run::new("ties", &base, &models);
        // Position 0: sum 0, signs cancel: + wins, only model 0 agrees.
        // Position 1: sum 0, two negative signs: − wins, mean of −1, −1.
        // Position 2: all zero: nothing agrees, stays at the base.
        // Position 3: + wins; the opposing −1 is dropped (TA would give 2).
        let dis_mean = [1.0, -1.0, 0.0, 3.0, 2.0, 1.0];
        let got = values(&run.run(&dir.path().join("a")).unwrap(), "w");
        let want: Vec<f32> = dis_mean.iter().map(|d| 0.5 + d).collect();
        assert_eq!(got, want);
        let ta = values(
            &Run::new("task_arithmetic", &base, &models)
                .run(&dir.path().join("ta"))
                .unwrap(),
            "w",
        );
        assert_ne!(got, ta, "density 1 still differs from task arithmetic");

        run.params = params(&[("normalize", 0.0)], &[]);
        let got = values(&run.run(&dir.path().join("b")).unwrap(), "w");
        let dis_sum = [1.0, -2.0, 0.0, 3.0, 2.0, 3.0];
        assert_eq!(got, dis_sum.map(|d| 0.5 + d));

        // Weights apply before the election: w = (1, 3, 0.2). Position 0: (1, −3, 0) elects −
        // although TA's unweighted signs cancel. Position 3: (3, −3, 0) sums to 0, the signs
        // cancel, + wins. Divisors are the agreeing weights (position 4: 1 + 3).
        run.params = params(&[], &[&[], &[("weight", 3.0)], &[("weight", 0.2)]]);
        let got = values(&run.run(&dir.path().join("c")).unwrap(), "w");
        let want = [
            0.5 - 1.0,
            0.5 + (-3.0 - 0.2) / 3.2,
            0.5,
            0.5 + 3.0,
            0.5 + (-0.5 - 1.5) / 4.0,
            0.5 + (1.0 + 3.0 + 0.2) / 4.2,
        ];
        assert_close(&got, &want, 1e-6, "weighted");
    }

    #[test]
    fn lambda_zero_gives_the_base_and_one_model_gives_its_trimmed_self() {
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = random_family(dir.path(), SHAPES, 2, 13);
        let mut run = Run::new("ties", &base, &models);
        run.params = params(&[("lambda", 0.0)], &[&[("density", 0.4)], &[]]);
        let merged = run.run(&dir.path().join("l0")).unwrap();
        for (name, _) in SHAPES {
            assert_eq!(values(&merged, name), values(&base, name), "{name}");
        }

        let one = &models[..1];
        let mut run = Run::new("ties", &base, one);
        run.params = params(&[], &[&[("density", 0.4), ("weight", 0.7)]]);
        let merged = run.run(&dir.path().join("one")).unwrap();
        for (name, _) in SHAPES {
            let b = values(&base, name);
            let t = delta(&b, &values(&models[0], name));
            let k = top_k(&t, density(0.4, t.len()));
            let want: Vec<f32> = b.iter().zip(&k).map(|(b, d)| b + d).collect();
            assert_close(&values(&merged, name), &want, 1e-6, name);
        }
        // Density 1, one model: the model itself.
        let merged = Run::new("ties", &base, one)
            .run(&dir.path().join("one1"))
            .unwrap();
        for (name, _) in SHAPES {
            assert_close(
                &values(&merged, name),
                &values(&models[0], name),
                1e-6,
                name,
            );
        }
    }
}
