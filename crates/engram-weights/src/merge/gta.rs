//! Generalized task arithmetic: the one kernel behind `ties`, `dare_*`, `breadcrumbs*` and
//! `della*` (card: shared/methods/merging.md; mergekit's `generalized_task_arithmetic.py`).
//!
//! The methods of this family differ only in how each task vector is sparsified; everything
//! else is shared and lives here: the optional L1 norm restoration (`rescale`), the weights,
//! the TIES sign election and disjoint merge (or a plain sum), `normalize` and `lambda`. A
//! method file is then a [`Sparsifier`] and its registry entries, and a fix to the shared
//! arithmetic reaches every method at once.

use super::params::{Domain, ParamSpec};
use super::{Chunk, ChunkKernel, TensorJob, TrimScope};
use engram_ckpt::avx2_dispatch;
use engram_ckpt::{Error, Result};

/// mergekit's `rescale` for methods that default it off (ties, breadcrumbs): restore each
/// task vector's pre-sparsification L1 norm per tensor.
pub const RESCALE_OFF: ParamSpec = ParamSpec {
    name: "rescale",
    default: Some(0.0),
    per_model: false,
    domain: Domain::Flag,
    help: "scale each sparsified task vector back to its L1 norm per tensor (0 = off)",
};
/// mergekit's `rescale` for methods that default it on (dare_*, della*).
pub const RESCALE_ON: ParamSpec = ParamSpec {
    name: "rescale",
    default: Some(1.0),
    per_model: false,
    domain: Domain::Flag,
    help: "scale each sparsified task vector back to its L1 norm per tensor (1 = on)",
};

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
/// mergekit's L1 norm restoration), weight it, and [`Combine`] the results with or without
/// the TIES election. `rows` must match the method's `row_aligned()`. Parameters are read
/// with `specs` (weight, normalize, rescale, lambda).
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
    let normalize = job.global.flag(specs, "normalize");
    if normalize && !consensus {
        job.weight_sum(&weights)?;
    }
    let factors = if job.global.flag(specs, "rescale") {
        l1_factors(job, &sparsifier, rows)?
    } else {
        vec![1.0; job.models.len()]
    };
    Ok(Box::new(Gta {
        sparsifier,
        factors,
        combine: Combine {
            consensus,
            weights,
            normalize,
            lambda: job.global.value(specs, "lambda") as f32,
        },
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
    /// Per model: the L1 rescale factor (1 without `rescale`).
    factors: Vec<f32>,
    combine: Combine,
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
                let (f, w) = (self.factors[i], self.combine.weights[i]);
                for x in d.iter_mut() {
                    *x = *x * f * w;
                }
                d
            })
            .collect();
        self.combine.apply(c.base, &v, out);
    }
}

/// The sparsifier-agnostic end of the kernel: from the weighted, sparsified task vectors
/// v_i of a chunk to θ = θ₀ + λ·τ_m.
/// - With `consensus` (TIES): γ = [`elect_sign`] of the v_i per entry, A = {i : v_i ≠ 0,
///   sign v_i = γ}, τ_m = Σ_A v_i, divided by Σ_A w_i with `normalize` (dis-mean; a zero
///   divisor counts as 1, as mergekit), else not (dis-sum).
/// - Without: τ_m = Σ_i v_i, divided by Σ_i w_i with `normalize` (a sum below 1e-8 is
///   refused when the kernel is built, [`TensorJob::weight_sum`]; mergekit divides by 1).
pub struct Combine {
    pub consensus: bool,
    /// Per model w_i (already applied to the v_i; needed for the divisors).
    pub weights: Vec<f32>,
    pub normalize: bool,
    pub lambda: f32,
}

impl Combine {
    /// Writes θ over one chunk into `out`; `base` and every `v[i]` are as long as `out`.
    pub fn apply(&self, base: &[f32], v: &[Vec<f32>], out: &mut [f32]) {
        // Blocks small enough that the column passes' sums stay in the first-level cache
        // (a chunk's would not fit the second); the arithmetic is position by position, so
        // blocking does not change a bit.
        const BLOCK: usize = 2048;
        let mut scratch = [[0f32; BLOCK]; 4];
        let mut parts: Vec<&[f32]> = Vec::with_capacity(v.len());
        for start in (0..out.len()).step_by(BLOCK) {
            let end = (start + BLOCK).min(out.len());
            parts.clear();
            parts.extend(v.iter().map(|d| &d[start..end]));
            combine_block(
                self,
                &base[start..end],
                &parts,
                &mut out[start..end],
                &mut scratch,
            );
        }
    }
}

/// [`Combine::apply`] over one block.
#[inline(always)]
fn combine_block_any(
    comb: &Combine,
    base: &[f32],
    v: &[&[f32]],
    out: &mut [f32],
    scratch: &mut [[f32; 2048]; 4],
) {
    // Column passes (each a straight loop the compiler vectorizes), in the same order of
    // additions as one position at a time, so the same bits.
    let n = out.len();
    let [total, votes, sum, div] = scratch;
    let (total, votes, sum, div) = (
        &mut total[..n],
        &mut votes[..n],
        &mut sum[..n],
        &mut div[..n],
    );
    total.fill(0.0);
    for d in v {
        for (t, x) in total.iter_mut().zip(d.iter()) {
            *t += x;
        }
    }
    let (mixed, divisor): (&[f32], Option<&[f32]>) = if comb.consensus {
        // The elected sign (`elect_sign`, column by column): the sign of the sum, where
        // the sum is 0 (every entry trimmed, or a cancellation) the sign of the sum of
        // signs, then +.
        votes.fill(0.0);
        for d in v {
            for (c, &x) in votes.iter_mut().zip(d.iter()) {
                *c += sign_vote(x);
            }
        }
        let sign = total;
        for (s, &c) in sign.iter_mut().zip(votes.iter()) {
            *s = elected(*s, c);
        }
        // Σ and Σ w over the agreeing entries (adding 0.0 for the others leaves the sums'
        // bits unchanged: they start at +0.0 and never become −0.0).
        sum.fill(0.0);
        div.fill(0.0);
        for (d, &w) in v.iter().zip(&comb.weights) {
            for (((s, dv), &x), &g) in sum
                .iter_mut()
                .zip(div.iter_mut())
                .zip(d.iter())
                .zip(sign.iter())
            {
                // `&`, not `&&`: no branch, so the loop vectorizes.
                let agree = (x != 0.0) & ((x > 0.0) == (g > 0.0));
                *s += if agree { x } else { 0.0 };
                *dv += if agree { w } else { 0.0 };
            }
        }
        for dv in div.iter_mut() {
            *dv = if *dv == 0.0 { 1.0 } else { *dv };
        }
        (sum, Some(div))
    } else {
        (total, None)
    };
    let wsum = || {
        let wsum: f32 = comb.weights.iter().sum();
        if wsum.abs() < 1e-8 { 1.0 } else { wsum }
    };
    match (comb.normalize, divisor) {
        (true, Some(dv)) => {
            for (((o, &b), &m), &dv) in out.iter_mut().zip(base).zip(mixed).zip(dv) {
                *o = b + comb.lambda * (m / dv);
            }
        }
        (true, None) => {
            let dv = wsum();
            for ((o, &b), &m) in out.iter_mut().zip(base).zip(mixed) {
                *o = b + comb.lambda * (m / dv);
            }
        }
        (false, _) => {
            for ((o, &b), &m) in out.iter_mut().zip(base).zip(mixed) {
                *o = b + comb.lambda * m;
            }
        }
    }
}

avx2_dispatch!(fn combine_block(
    comb: &Combine,
    base: &[f32],
    v: &[&[f32]],
    out: &mut [f32],
    scratch: &mut [[f32; 2048]; 4],
) = combine_block_any;);

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
    // A select, not `signum` (which branches on NaN): the column loop vectorizes. A NaN
    // votes NaN, as `signum` would; a zero of either sign votes 0.
    let s = f32::from(v > 0.0) - f32::from(v < 0.0);
    if v.is_nan() { v } else { s }
}

/// [`elect_sign`]'s rule from the signed sum and the sum of [`sign_vote`]s: the sign of the
/// sum, else (sum 0) the sign of the votes, else +. Branch-free enough to vectorize when
/// applied column by column ([`Combine`]).
#[inline]
pub fn elected(sum: f32, votes: f32) -> f32 {
    // Selects on `&`/`|` of comparisons rather than an if-else chain: the column loop
    // vectorizes. − when the sum is negative, or when it decides nothing (0 or NaN) and the
    // votes are negative.
    let undecided = (sum == 0.0) | sum.is_nan();
    let negative = (sum < 0.0) | (undecided & (votes < 0.0));
    if negative { -1.0 } else { 1.0 }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::testutil::{Run, SHAPES, params};
    use crate::rng::Rng;
    use crate::testutil::{random_family, values};

    /// The combine step one position at a time, as the card states it: γ from
    /// [`elect_sign`] (the rule TALL's TIES recipe uses), then the agreeing entries' sum and
    /// weights, in model order.
    fn slow_combine(c: &Combine, base: &[f32], v: &[Vec<f32>]) -> Vec<f32> {
        (0..base.len())
            .map(|k| {
                let (sum, div) = if c.consensus {
                    let g = elect_sign(v.iter().map(|d| d[k]));
                    let (mut sum, mut div) = (0f32, 0f32);
                    for (d, w) in v.iter().zip(&c.weights) {
                        if d[k] != 0.0 && d[k].signum() == g {
                            sum += d[k];
                            div += w;
                        }
                    }
                    (sum, if div == 0.0 { 1.0 } else { div })
                } else {
                    let sum = v.iter().fold(0f32, |a, d| a + d[k]);
                    let w = c.weights.iter().fold(0f32, |a, w| a + w);
                    (sum, if w.abs() < 1e-8 { 1.0 } else { w })
                };
                base[k] + c.lambda * if c.normalize { sum / div } else { sum }
            })
            .collect()
    }

    /// The sign rule, case by case: the sum decides, else (0, −0 or NaN) the votes, else +.
    #[test]
    fn the_elected_sign_follows_the_sum_then_the_votes() {
        let nan = f32::NAN;
        for (sum, votes, want) in [
            (2.0, -3.0, 1.0),
            (-2.0, 3.0, -1.0),
            (0.0, -1.0, -1.0),
            (-0.0, -1.0, -1.0),
            (0.0, 1.0, 1.0),
            (0.0, 0.0, 1.0),
            (-0.0, 0.0, 1.0),
            (nan, -2.0, -1.0),
            (nan, 0.0, 1.0),
            (f32::INFINITY, -1.0, 1.0),
            (f32::NEG_INFINITY, 1.0, -1.0),
        ] {
            assert_eq!(elected(sum, votes), want, "sum {sum}, votes {votes}");
        }
    }

    /// The vectorized column passes give the same bits as the per-position rule, on entries
    /// from a small set (so sums cancel exactly and signs tie often), and on hand-picked
    /// positions whose results are known.
    #[test]
    fn combine_equals_the_per_position_rule() {
        let levels = [-2.0f32, -1.0, -0.5, 0.0, 0.0, 0.5, 1.0, 2.0];
        let mut r = Rng::new(9);
        let n = 4000;
        let mut v: Vec<Vec<f32>> = (0..4)
            .map(|_| (0..n).map(|_| levels[r.below(levels.len())]).collect())
            .collect();
        // Position 0: sum 0, signs cancel: + wins, so only the positive entries count.
        // Position 1: sum 0, more negative signs: − wins.
        // Position 2: every entry trimmed: θ₀.
        for (k, col) in [[1.0, -1.0, 0.5, -0.5], [2.0, -1.0, -0.5, -0.5], [0.0; 4]]
            .iter()
            .enumerate()
        {
            for (d, x) in v.iter_mut().zip(col) {
                d[k] = *x;
            }
        }
        let base: Vec<f32> = (0..n).map(|_| r.normal()).collect();
        for (consensus, normalize) in [(true, true), (true, false), (false, true), (false, false)] {
            let c = Combine {
                consensus,
                weights: vec![1.0, 0.5, 2.0, 1.5],
                normalize,
                lambda: 0.7,
            };
            let mut out = vec![0f32; n];
            c.apply(&base, &v, &mut out);
            assert_eq!(out, slow_combine(&c, &base, &v), "{consensus} {normalize}");
            if consensus {
                let mean = |s: f32, w: f32| if normalize { s / w } else { s };
                assert_eq!(out[0], base[0] + 0.7 * mean(1.5, 3.0));
                assert_eq!(out[1], base[1] + 0.7 * mean(-2.0, 4.0));
                assert_eq!(out[2], base[2]);
            }
        }
    }

    /// With nothing sparsified (density 1), every method of the family is the shared kernel
    /// alone: the TIES ones agree bit for bit, and so do the summing ones, whatever their
    /// chunking (della's chunks hold whole rows) and rescale setting.
    #[test]
    fn the_family_meets_where_its_sparsifiers_do() {
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = random_family(dir.path(), SHAPES, 3, 61);
        let per_model: &[&[(&str, f64)]] = &[&[("weight", 1.5)], &[], &[("weight", 0.25)]];
        for (group, normalize) in [
            (&["ties", "dare_ties", "breadcrumbs_ties", "della"][..], 1.0),
            (&["ties", "dare_ties", "breadcrumbs_ties", "della"][..], 0.0),
            (&["dare_linear", "breadcrumbs", "della_linear"][..], 1.0),
            (&["dare_linear", "breadcrumbs", "della_linear"][..], 0.0),
        ] {
            let merged: Vec<_> = group
                .iter()
                .enumerate()
                .map(|(j, method)| {
                    let mut run = Run::new(method, &base, &models);
                    // Rescale on for some: with nothing dropped its factors are 1.
                    let global = [
                        ("lambda", 0.9),
                        ("normalize", normalize),
                        ("density", 1.0),
                        ("rescale", (j % 2) as f64),
                    ];
                    run.params = params(&global, per_model);
                    run.run(&dir.path().join(format!("{method}{normalize}")))
                        .unwrap()
                })
                .collect();
            for (name, _) in SHAPES {
                let first = values(&merged[0], name);
                for (m, method) in merged.iter().zip(group).skip(1) {
                    assert_eq!(values(m, name), first, "{method} vs {} on {name}", group[0]);
                }
            }
        }
    }
}
