//! TIES: trim each task vector by magnitude, elect a sign per entry, merge disjointly.
//! Paper: TIES-Merging: Resolving Interference When Merging Models (arXiv 2306.01708); card: methods/merging.md.

use super::params::{DENSITY, INT8_MASK, LAMBDA, NORMALIZE, WEIGHT};
use super::{
    Chunk, ChunkKernel, MergeMethod, ParamSpec, TensorJob, TrimScope, elected, keep, sign_vote,
};
use engram_ckpt::{Error, Result};

/// `ties` as mergekit's generalized task arithmetic with magnitude sparsification and `sum`
/// consensus:
/// 1. τ̂_i = τ_i with entries below the top `density` share of |τ_i| zeroed (per tensor, or
///    over the model with `trim_scope: model`); ties at the threshold are kept (card).
/// 2. v_i = w_i·τ̂_i: weights apply *before* the election, as in mergekit, so they sway it.
/// 3. γ = [`elect_sign`](super::elect_sign) of the v_i; A = {i : v_i ≠ 0, sign v_i = γ}.
/// 4. τ_m = Σ_A v_i, divided by Σ_A w_i with `normalize` (dis-mean; a zero divisor counts
///    as 1, as mergekit), else not (dis-sum); θ = θ₀ + λ·τ_m.
///
/// At density 1 this still differs from task arithmetic: entries against the elected sign
/// are dropped. Where the signed sum is exactly 0 mergekit elects +; engram first looks at
/// the sum of signs (card).
pub struct Ties;

/// mergekit's `rescale` for methods that default it off (ties, breadcrumbs): restore each
/// task vector's pre-sparsification L1 norm per tensor.
pub const RESCALE_OFF: ParamSpec = ParamSpec {
    name: "rescale",
    default: Some(0.0),
    per_model: false,
    help: "scale each sparsified task vector back to its L1 norm per tensor (0 = off)",
};
/// mergekit's `rescale` for methods that default it on (dare_*, della*).
pub const RESCALE_ON: ParamSpec = ParamSpec {
    name: "rescale",
    default: Some(1.0),
    per_model: false,
    help: "scale each sparsified task vector back to its L1 norm per tensor (1 = on)",
};

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
        let densities: Vec<f64> = job
            .model_params
            .iter()
            .map(|p| p.value(PARAMS, "density"))
            .collect();
        let thresholds = job.delta_thresholds(&densities)?;
        gta_kernel(job, PARAMS, Trim(thresholds), true, false)
    }
}

/// Magnitude trim with one threshold per model (`None`: keep all).
struct Trim(Vec<Option<f32>>);

impl Sparsifier for Trim {
    fn is_identity(&self, i: usize) -> bool {
        self.0[i].is_none()
    }
    fn sparsify(&self, i: usize, _chunk: usize, delta: &mut [f32]) {
        let t = self.0[i];
        for x in delta.iter_mut() {
            // A select, not a conditional store: the loop vectorizes.
            *x = if keep(*x, t) { *x } else { 0.0 };
        }
    }
}

/// The step that differs between mergekit's generalized task arithmetic methods (ties,
/// dare_*, breadcrumbs*, della*): how each model's task vector is sparsified, one chunk at
/// a time. The chunk number keys random draws, so a sparsifier must give the same mask for
/// the same chunk every time it is called (statistics pass, then merge pass).
pub trait Sparsifier: Sync {
    /// Whether model `i`'s task vector passes unchanged (e.g. density ≥ 1).
    fn is_identity(&self, i: usize) -> bool;
    /// Sparsifies model `i`'s task vector over chunk number `chunk`, in place.
    fn sparsify(&self, i: usize, chunk: usize, delta: &mut [f32]);
}

/// Below this L1 norm (before or after masking) mergekit leaves the masked vector unscaled.
const RESCALE_EPS: f64 = 1e-7;

/// Builds mergekit's generalized task arithmetic for one tensor around a sparsifier:
/// sparsify each τ_i (then, with `rescale`, multiply it by ‖τ_i‖₁/‖τ̃_i‖₁ over the tensor,
/// mergekit's L1 norm restoration), weight it, combine with or without the TIES election,
/// optionally normalize, and add λ times the result to the base. `rows` must match the
/// method's `row_aligned()`. Parameters are read with `specs` (weight, normalize, rescale,
/// lambda).
pub fn gta_kernel<'a, S: Sparsifier + 'a>(
    job: &TensorJob<'a>,
    specs: &'static [ParamSpec],
    sparsifier: S,
    consensus: bool,
    rows: bool,
) -> Result<Box<dyn ChunkKernel + 'a>> {
    let weights: Vec<f32> = job
        .model_params
        .iter()
        .map(|p| p.value(specs, "weight") as f32)
        .collect();
    let factors = if job.global.flag(specs, "rescale") {
        l1_factors(job, &sparsifier, rows)?
    } else {
        vec![1.0; job.models.len()]
    };
    Ok(Box::new(Gta {
        sparsifier,
        consensus,
        factors,
        weights,
        normalize: job.global.flag(specs, "normalize"),
        lambda: job.global.value(specs, "lambda") as f32,
    }))
}

/// Per model, ‖τ_i‖₁/‖τ̃_i‖₁ over the whole tensor (1 if either is below mergekit's 1e-7).
/// One streaming pass; the masks are drawn as in the merge pass (same chunks).
fn l1_factors(job: &TensorJob, s: &dyn Sparsifier, rows: bool) -> Result<Vec<f32>> {
    let n = job.models.len();
    if (0..n).all(|i| s.is_identity(i)) {
        return Ok(vec![1.0; n]);
    }
    let parts = job.map_chunks(rows, &|c: &Chunk| {
        let mut d = vec![0f32; c.base.len()];
        (0..n)
            .map(|i| {
                if s.is_identity(i) {
                    return (0.0, 0.0);
                }
                for ((d, m), b) in d.iter_mut().zip(&c.models[i]).zip(c.base) {
                    *d = m - b;
                }
                let before: f64 = d.iter().map(|x| x.abs() as f64).sum();
                s.sparsify(i, c.index, &mut d);
                let after: f64 = d.iter().map(|x| x.abs() as f64).sum();
                (before, after)
            })
            .collect::<Vec<(f64, f64)>>()
    })?;
    Ok((0..n)
        .map(|i| {
            let (before, after) = parts
                .iter()
                .fold((0.0, 0.0), |(a, b), p| (a + p[i].0, b + p[i].1));
            if s.is_identity(i) || before < RESCALE_EPS || after < RESCALE_EPS {
                1.0
            } else {
                (before / after) as f32
            }
        })
        .collect())
}

struct Gta<S> {
    sparsifier: S,
    consensus: bool,
    /// Per model: the L1 rescale factor (1 without `rescale`).
    factors: Vec<f32>,
    weights: Vec<f32>,
    normalize: bool,
    lambda: f32,
}

impl<S: Sparsifier> ChunkKernel for Gta<S> {
    fn merge(&self, c: &Chunk, out: &mut [f32]) {
        // v_i = w_i · rescale_i · sparsify(θ_i − θ₀) over the chunk.
        let v: Vec<Vec<f32>> = c
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut d: Vec<f32> = m.iter().zip(c.base).map(|(x, b)| x - b).collect();
                if !self.sparsifier.is_identity(i) {
                    self.sparsifier.sparsify(i, c.index, &mut d);
                }
                let (f, w) = (self.factors[i], self.weights[i]);
                for x in d.iter_mut() {
                    *x = *x * f * w;
                }
                d
            })
            .collect();
        // Column passes over the chunk (each a straight loop the compiler vectorizes), in
        // the same order of additions as one position at a time, so the same bits.
        let n = out.len();
        let mut total = vec![0f32; n];
        for d in &v {
            for (t, x) in total.iter_mut().zip(d) {
                *t += x;
            }
        }
        let (mixed, divisor) = if self.consensus {
            // The elected sign (`elect_sign`, column by column): the sign of the sum, where
            // the sum is 0 (every entry trimmed, or a cancellation) the sign of the sum of
            // signs, then +.
            let mut votes = vec![0f32; n];
            for d in &v {
                for (c, &x) in votes.iter_mut().zip(d) {
                    *c += sign_vote(x);
                }
            }
            let mut sign = total;
            for (s, &c) in sign.iter_mut().zip(&votes) {
                *s = elected(*s, c);
            }
            // Σ and Σ w over the agreeing entries (adding 0.0 for the others leaves the sums'
            // bits unchanged: they start at +0.0 and never become −0.0).
            let mut sum = vec![0f32; n];
            let mut div = vec![0f32; n];
            for (d, &w) in v.iter().zip(&self.weights) {
                for (((s, dv), &x), &g) in sum.iter_mut().zip(div.iter_mut()).zip(d).zip(&sign) {
                    // `&`, not `&&`: no branch, so the loop vectorizes.
                    let agree = (x != 0.0) & ((x > 0.0) == (g > 0.0));
                    *s += if agree { x } else { 0.0 };
                    *dv += if agree { w } else { 0.0 };
                }
            }
            for dv in div.iter_mut() {
                if *dv == 0.0 {
                    *dv = 1.0;
                }
            }
            (sum, div)
        } else {
            let wsum: f32 = self.weights.iter().sum();
            let wsum = if wsum.abs() < 1e-8 { 1.0 } else { wsum };
            (total, vec![wsum; n])
        };
        for (((o, &b), &m), &dv) in out.iter_mut().zip(c.base).zip(&mixed).zip(&divisor) {
            let m = if self.normalize { m / dv } else { m };
            *o = b + self.lambda * m;
        }
    }
}

/// For methods whose sparsification has no model-wide form (random or two-sided masks):
/// refuses `trim_scope: model` when some density is below 1, instead of ignoring it.
pub fn tensor_scope_only(job: &TensorJob, method: &str, specs: &[ParamSpec]) -> Result<()> {
    if job.scope == TrimScope::Model
        && job
            .model_params
            .iter()
            .any(|p| p.value(specs, "density") < 1.0)
    {
        return Err(Error::Invalid(format!(
            "{method} sparsifies per tensor (as mergekit); trim_scope: model applies only to \
             magnitude trimming (ties)"
        )));
    }
    Ok(())
}

/// Shared by the merge method tests: small random families, a merge through the engine, and
/// reference arithmetic on whole tensors.
#[cfg(test)]
pub mod harness {
    use crate::merge::TrimScope;
    use crate::merge::engine::{MergeRequest, run_merge};
    use crate::merge::params::{ParamSource, ParamValue};
    use engram_ckpt::{Model, Result};
    use std::collections::BTreeMap;
    use std::path::Path;

    /// A tensor over several chunks (600·700 > CHUNK_ELEMS), matrices and 1-D tensors.
    pub const SHAPES: &[(&str, &[usize])] = &[
        ("model.embed.weight", &[50, 8]),
        ("model.layers.0.w", &[600, 700]),
        ("model.layers.0.b", &[700]),
        ("model.layers.1.w", &[8, 8]),
        ("model.norm.weight", &[8]),
    ];

    /// Scalar parameters: global ones, and per model (one slice per model).
    pub fn params(global: &[(&str, f64)], per_model: &[&[(&str, f64)]]) -> ParamSource {
        let mut p = ParamSource::default();
        for (k, v) in global {
            p.global.insert(k.to_string(), ParamValue::Scalar(*v));
        }
        p.per_model = per_model
            .iter()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.to_string(), ParamValue::Scalar(*v)))
                    .collect()
            })
            .collect();
        p
    }

    pub struct Run<'a> {
        pub method: &'a str,
        pub base: Option<&'a Model>,
        pub models: &'a [Model],
        pub params: ParamSource,
        pub scope: TrimScope,
        pub seed: u64,
    }

    impl Run<'_> {
        pub fn new<'a>(method: &'a str, base: &'a Model, models: &'a [Model]) -> Run<'a> {
            Run {
                method,
                base: Some(base),
                models,
                params: ParamSource::default(),
                scope: TrimScope::Tensor,
                seed: 0,
            }
        }

        /// Runs the merge into `out` and opens the result.
        pub fn run(&self, out: &Path) -> Result<Model> {
            let mut params = self.params.clone();
            params.per_model.resize(self.models.len(), BTreeMap::new());
            let req = MergeRequest {
                method: crate::merge::get(self.method).expect("registered method"),
                base: self.base,
                models: self.models.iter().collect(),
                params,
                scope: self.scope,
                seed: self.seed,
                out_dtype: None,
                allow_missing: false,
                check_finite: true,
                max_shard_bytes: None,
            };
            run_merge(&req, out, &BTreeMap::new(), &|_| {})?;
            Model::open(out)
        }

        /// The merged model's bytes, run on a rayon pool of `threads` threads.
        pub fn bytes_with_threads(&self, out: &Path, threads: usize) -> Vec<u8> {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| self.run(out))
                .unwrap();
            std::fs::read(out.join("model.safetensors")).unwrap()
        }
    }

    pub fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol * (1.0 + w.abs()),
                "{what}[{k}]: got {g}, want {w}"
            );
        }
    }

    /// Task vector of a model for one tensor.
    pub fn delta(base: &[f32], m: &[f32]) -> Vec<f32> {
        m.iter().zip(base).map(|(x, b)| x - b).collect()
    }

    /// Reference TIES combination of already sparsified deltas (plain loops, the card's rule:
    /// sign of the sum, then sign of the sum of signs, then +).
    pub fn ties_combine(
        base: &[f32],
        deltas: &[Vec<f32>],
        weights: &[f32],
        normalize: bool,
        lambda: f32,
    ) -> Vec<f32> {
        (0..base.len())
            .map(|k| {
                let v: Vec<f32> = deltas.iter().zip(weights).map(|(d, w)| d[k] * w).collect();
                let s: f32 = v.iter().sum();
                let signs: i32 = v
                    .iter()
                    .map(|x| {
                        if *x > 0.0 {
                            1
                        } else if *x < 0.0 {
                            -1
                        } else {
                            0
                        }
                    })
                    .sum();
                let positive = if s != 0.0 { s > 0.0 } else { signs >= 0 };
                let mut sum = 0.0;
                let mut div = 0.0;
                for (x, w) in v.iter().zip(weights) {
                    if *x != 0.0 && (*x > 0.0) == positive {
                        sum += x;
                        div += w;
                    }
                }
                let m = if normalize && div != 0.0 {
                    sum / div
                } else {
                    sum
                };
                base[k] + lambda * m
            })
            .collect()
    }

    /// Reference combination without election: Σ w_i·d_i (÷ Σ w_i with normalize).
    pub fn linear_combine(
        base: &[f32],
        deltas: &[Vec<f32>],
        weights: &[f32],
        normalize: bool,
        lambda: f32,
    ) -> Vec<f32> {
        let wsum: f32 = weights.iter().sum();
        (0..base.len())
            .map(|k| {
                let s: f32 = deltas.iter().zip(weights).map(|(d, w)| d[k] * w).sum();
                base[k] + lambda * if normalize { s / wsum } else { s }
            })
            .collect()
    }

    /// Keeps the entries with |x| ≥ the k-th largest |x| (sort-based; k = 0 keeps none).
    pub fn top_k(d: &[f32], k: usize) -> Vec<f32> {
        if k == 0 {
            return vec![0.0; d.len()];
        }
        let mut a: Vec<f32> = d.iter().map(|x| x.abs()).collect();
        a.sort_by(|x, y| y.total_cmp(x));
        let t = a[k - 1];
        d.iter()
            .map(|x| if x.abs() >= t { *x } else { 0.0 })
            .collect()
    }

    /// Scales `d` to the L1 norm of `orig` (mergekit's rescale; unchanged below 1e-7).
    pub fn l1_restore(orig: &[f32], d: &mut [f32]) {
        let before: f64 = orig.iter().map(|x| x.abs() as f64).sum();
        let after: f64 = d.iter().map(|x| x.abs() as f64).sum();
        if before >= 1e-7 && after >= 1e-7 {
            let f = (before / after) as f32;
            for x in d.iter_mut() {
                *x *= f;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::harness::*;
    use crate::merge::TrimScope;
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
        let ws = [1.0f32, 2.0, 0.5];
        for (normalize, rescale) in [(true, false), (false, false), (true, true)] {
            let mut run = Run::new("ties", &base, &models);
            run.params = params(
                &[
                    ("lambda", 0.8),
                    ("normalize", f64::from(u8::from(normalize))),
                    ("rescale", f64::from(u8::from(rescale))),
                ],
                &[
                    &[("density", dens[0]), ("weight", ws[0] as f64)],
                    &[("density", dens[1]), ("weight", ws[1] as f64)],
                    &[("density", dens[2]), ("weight", ws[2] as f64)],
                ],
            );
            let out = dir.path().join(format!("out{normalize}{rescale}"));
            let merged = run.run(&out).unwrap();
            for (name, _) in SHAPES {
                let b = values(&base, name);
                let ds: Vec<Vec<f32>> = models
                    .iter()
                    .zip(dens)
                    .map(|(m, d)| {
                        let t = delta(&b, &values(m, name));
                        let mut k = top_k(&t, density(d, t.len()));
                        if rescale {
                            l1_restore(&t, &mut k);
                        }
                        k
                    })
                    .collect();
                let want = ties_combine(&b, &ds, &ws, normalize, 0.8);
                assert_close(&values(&merged, name), &want, 1e-5, name);
            }
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
        let mut differs_from_tensor_scope = false;
        for (name, _) in SHAPES {
            let b = values(&base, name);
            let ds: Vec<Vec<f32>> = models
                .iter()
                .zip(&thresholds)
                .map(|(m, t)| {
                    delta(&b, &values(m, name))
                        .into_iter()
                        .map(|x| if x.abs() >= *t { x } else { 0.0 })
                        .collect()
                })
                .collect();
            let want = ties_combine(&b, &ds, &[1.0, 1.0], true, 1.0);
            assert_close(&values(&merged, name), &want, 1e-6, name);
            let per_tensor: Vec<Vec<f32>> = models
                .iter()
                .zip(dens)
                .map(|(m, d)| {
                    let t = delta(&b, &values(m, name));
                    top_k(&t, density(d, t.len()))
                })
                .collect();
            differs_from_tensor_scope |= per_tensor != ds;
        }
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
