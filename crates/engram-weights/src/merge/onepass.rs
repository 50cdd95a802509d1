//! TIES' per-tensor magnitude trim with its thresholds finished during the merge pass, so the
//! inputs are read twice (one histogram pass, the merge) instead of three times.
//! Card: shared/methods/merging.md ("Model scope in practice"); the plan of issue #25.
//!
//! The first pass ([`top_buckets`]) fixes, per model, the 1/128-octave bucket holding its
//! k-th largest |τ|. Every entry above its model's bucket is kept and every one below is
//! dropped whatever the exact threshold, so the merge pass can run at once: it merges with
//! the bucket's floor as a provisional threshold, and for the positions where some model's
//! entry lies in its bucket (about 0.2 % per model on Gaussian deltas) it keeps the inputs
//! and the low bits of those entries. Once the pass is over the low bits give the exact
//! thresholds ([`Bucket::resolve`]), and the kept positions are merged again with them and
//! patched into the output. The merge is position-wise, so the output has the same bits as
//! with the thresholds known beforehand (a test compares whole files).
//!
//! Deferring is worth it only while few positions are deferred: each costs a gather, a
//! second merge and a patch, where the second histogram pass it saves is cheap per position
//! (inputs in the page cache, vectorized decoding). The first pass counts the entries in
//! each bucket, an upper bound on the deferred positions; above [`Limits`] (a share of the
//! tensor, and the bytes of kept inputs, (N + 2)·4 per position) the thresholds are finished
//! by a second histogram pass instead. Deltas that tie at the threshold do that: bf16
//! fine-tunes whose deltas are few multiples of the base's rounding step. A sparse delta
//! whose threshold is 0 (a density past its share of non-zero entries; every zero entry lies
//! in the bucket) needs neither: the histogram pass counts exact zeros apart, and a rank among
//! them fixes the threshold at 0 ([`Bucket::known`]). On the synthetic bf16 family at density
//! 0.2 (many tensors' deltas mostly 0) that took TIES at N = 2 from 1.11–1.13 s to 1.00–1.03 s
//! (`engram merge`, 3 interleaved runs, same bytes out). Measured (`engram bench merge`, rows
//! `ties` and `ties_select_first`; README "Speed"): with warm caches about as fast as two
//! selection passes or a few per cent faster, with inputs partly evicted 25–30 % faster.

use super::{ChunkKernel, TensorJob};
use crate::select::{Bucket, keep_count, resolve_buckets, top_buckets};
use crate::stream::Chunk;
use engram_ckpt::{Error, Result};
use rayon::prelude::*;

/// When the merge pass may defer positions rather than run a second histogram pass.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most bytes of kept inputs per tensor.
    pub bytes: u64,
    /// Most in-bucket entries (summed over the models) as a share of the tensor's positions.
    pub share: f64,
}

/// The engine's limits: 256 MiB, and 4 % of the positions (measured: `engram bench merge`
/// on the synthetic and the torch-made families; see the README's speed section).
pub const LIMITS: Limits = Limits {
    bytes: 256 << 20,
    share: 0.04,
};

/// A chunk's deferred positions and their inputs, as a compact chunk.
struct Deferred {
    index: usize,
    start: usize,
    /// Positions within the chunk, ascending.
    positions: Vec<u32>,
    base: Vec<f32>,
    models: Vec<Vec<f32>>,
    /// Per model, the low 16 bits of its |τ| entries that lie in its bucket.
    lows: Vec<Vec<u16>>,
}

/// Where values found late go: `fix(compact, start, positions, values)` with the deferred
/// inputs as a compact chunk (entry j at element `start + positions[j]` of the tensor).
pub type Fix<'f> = dyn Fn(&Chunk, usize, &[u32], &[f32]) -> Result<()> + Sync + 'f;

/// How a trimmed merge found its thresholds (for tests and benchmarks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Passes {
    /// Nothing to select (every density ≥ 1, or nothing kept), or every threshold known
    /// after the histogram pass (0, of sparse deltas): no deferred positions.
    MergeOnly,
    /// One histogram pass, then the merge with deferred positions.
    Deferred,
    /// Two histogram passes, then the merge (over the budget, or one pass not allowed).
    Exact,
}

/// Merges one tensor whose only whole-tensor statistic is a magnitude threshold per model,
/// keeping a `densities[i]` share of |τ_i| (`None` thresholds keep all, as
/// [`TensorJob::delta_thresholds`]). `kernel` builds the method's kernel for given thresholds;
/// it must merge position by position (its result at a position depends only on that
/// position's inputs) and must not use chunk numbers. Each chunk's result goes to `sink` as
/// the merge pass makes it; values found later go to `fix`, overwriting what `sink` got there.
#[allow(clippy::too_many_arguments)]
pub fn merge_trimmed<'j>(
    job: &'j TensorJob<'j>,
    densities: &[f64],
    rows: bool,
    limits: Limits,
    kernel: &dyn Fn(Vec<Option<f32>>) -> Result<Box<dyn ChunkKernel + 'j>>,
    sink: &(dyn Fn(&Chunk, &[f32]) -> Result<()> + Sync),
    fix: &Fix,
) -> Result<Passes> {
    let total = job.numel() as u64;
    let ks: Vec<Option<u64>> = densities
        .iter()
        .map(|&d| (d < 1.0).then(|| keep_count(d, total)))
        .collect();
    let mut buckets = top_buckets(job, &ks)?;
    // Thresholds known now: None (keep all), +inf (nothing kept), 0 (a sparse delta's,
    // [`Bucket::known`]); the others provisional.
    let provisional: Vec<Option<f32>> = ks
        .iter()
        .zip(&buckets)
        .map(|(k, b)| k.map(|_| b.map_or(f32::INFINITY, |b| b.known().unwrap_or(b.floor()))))
        .collect();
    // Known thresholds leave nothing to resolve or defer.
    for b in &mut buckets {
        if b.is_some_and(|b| b.known().is_some()) {
            *b = None;
        }
    }
    let n = job.models.len() as u64;
    let kept: u64 = buckets.iter().flatten().map(|b| b.count).sum();
    if kept == 0 {
        let k = kernel(provisional)?;
        job.apply(k.as_ref(), rows, sink)?;
        return Ok(Passes::MergeOnly);
    }
    if kept * (n + 2) * 4 > limits.bytes || kept as f64 > limits.share * total as f64 {
        let exact = resolve_buckets(job, &buckets)?;
        let k = kernel(finish(&provisional, &exact))?;
        job.apply(k.as_ref(), rows, sink)?;
        return Ok(Passes::Exact);
    }
    let first = kernel(provisional.clone())?;
    let parts = job.chunks(rows).map(&|c: &Chunk| {
        let mut out = vec![0f32; c.len];
        first.merge(c, &mut out);
        let d = defer(c, &buckets);
        for &p in &d.positions {
            // A placeholder until the fix (finite where the base is).
            out[p as usize] = c.base.get(p as usize).copied().unwrap_or(0.0);
        }
        sink(c, &out)?;
        Ok(d)
    })?;
    let exact: Vec<Option<f32>> = buckets
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let Some(b) = b else { return Ok(None) };
            let mut lows: Vec<u16> = parts.iter().flat_map(|d| &d.lows[i]).copied().collect();
            b.resolve(&mut lows).map(Some).ok_or_else(|| {
                Error::Invalid(format!(
                    "tensor '{}': model {i}'s trim bucket held {} values in the merge pass, {} in the first",
                    job.name,
                    lows.len(),
                    b.count
                ))
            })
        })
        .collect::<Result<_>>()?;
    let last = kernel(finish(&provisional, &exact))?;
    parts.par_iter().try_for_each(|d| {
        if d.positions.is_empty() {
            return Ok(());
        }
        let c = Chunk {
            index: d.index,
            start: d.start,
            len: d.positions.len(),
            base: &d.base,
            models: &d.models,
        };
        let mut out = vec![0f32; c.len];
        last.merge(&c, &mut out);
        fix(&c, d.start, &d.positions, &out)
    })?;
    Ok(Passes::Deferred)
}

/// The provisional thresholds with the exact ones put in where a bucket was resolved.
fn finish(provisional: &[Option<f32>], exact: &[Option<f32>]) -> Vec<Option<f32>> {
    provisional
        .iter()
        .zip(exact)
        .map(|(p, e)| e.or(*p))
        .collect()
}

/// The positions of chunk `c` where some model's |τ| lies in its bucket, their inputs, and
/// the low bits of the in-bucket entries.
fn defer(c: &Chunk, buckets: &[Option<Bucket>]) -> Deferred {
    // The same subtraction as the kernel's (τ = θ_i − θ₀; no base: θ_i).
    let tau = |m: &[f32], k: usize| m[k] - c.base.get(k).copied().unwrap_or(0.0);
    // First a mark per position, in straight loops that vectorize (most positions are in no
    // bucket), then the few marked positions one by one. A NaN's high bits (0x7fc0 and up)
    // are in no bucket: top_buckets skips NaNs.
    let mut marked = vec![0u8; c.len];
    for (m, b) in c.models.iter().zip(buckets) {
        let Some(b) = b else { continue };
        if c.base.is_empty() {
            for (f, &x) in marked.iter_mut().zip(m) {
                *f |= u8::from(x.abs().to_bits() >> 16 == b.high);
            }
        } else {
            for ((f, &x), &y) in marked.iter_mut().zip(m).zip(c.base) {
                *f |= u8::from((x - y).abs().to_bits() >> 16 == b.high);
            }
        }
    }
    let mut positions = Vec::new();
    for (w, word) in marked.chunks(8).enumerate() {
        if word.iter().any(|&f| f != 0) {
            for (j, &f) in word.iter().enumerate() {
                if f != 0 {
                    positions.push((w * 8 + j) as u32);
                }
            }
        }
    }
    let lows = c
        .models
        .iter()
        .zip(buckets)
        .map(|(m, b)| {
            let Some(b) = b else { return Vec::new() };
            positions
                .iter()
                .map(|&k| tau(m, k as usize).abs().to_bits())
                .filter(|&bits| b.holds(bits))
                .map(|bits| (bits & 0xffff) as u16)
                .collect()
        })
        .collect();
    let gather = |v: &[f32]| -> Vec<f32> {
        if v.is_empty() {
            Vec::new()
        } else {
            positions.iter().map(|&k| v[k as usize]).collect()
        }
    };
    Deferred {
        index: c.index,
        start: c.start,
        base: gather(c.base),
        models: c.models.iter().map(|m| gather(m)).collect(),
        positions,
        lows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::engine::{MergeRequest, run_merge};
    use crate::merge::plan::{MergePlan, Step};
    use crate::merge::testutil::{SHAPES, params};
    use crate::rng::Rng;
    use crate::testutil::{random_family, write_model};
    use engram_ckpt::{DType, Model};
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// A bf16 family whose deltas are few distinct values (as a quantized or short
    /// fine-tune's): many entries tie at every threshold.
    fn tied_family(dir: &std::path::Path, n: usize) -> (Model, Vec<Model>) {
        let base_of = |name: &str, i: usize| Rng::keyed(7, name, i as u64).normal() * 0.02;
        let base = write_model(&dir.join("base"), DType::BF16, SHAPES, &|name, i| {
            base_of(name, i)
        });
        let models = (1..=n)
            .map(|t| {
                write_model(
                    &dir.join(format!("m{t}")),
                    DType::BF16,
                    SHAPES,
                    &|name, i| {
                        let mut r = Rng::keyed(100 + t as u64, name, i as u64);
                        let steps = (r.normal() * 2.0).round();
                        base_of(name, i) + steps * 2f32.powi(-12)
                    },
                )
            })
            .collect();
        (base, models)
    }

    fn ties(base: &Model, models: &[Model], p: &ParamSource, one_pass: bool) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let req = MergeRequest::new(
            crate::merge::get("ties").unwrap(),
            Some(base),
            models.iter().collect(),
        )
        .with_params(p.clone())
        .with_out_dtype(Some(DType::F32))
        .with_one_pass(one_pass);
        run_merge(&req, &dir.path().join("o"), &BTreeMap::new(), &|_| {}).unwrap();
        std::fs::read(dir.path().join("o").join("model.safetensors")).unwrap()
    }

    use crate::merge::params::ParamSource;

    /// The engine's one-pass TIES writes the same bytes as with the thresholds found first,
    /// on Gaussian deltas (a third exactly zero) and on tied bf16 deltas, with per-model
    /// densities (some past the non-zero share) and weights, dis-mean and dis-sum, on one
    /// thread and on four.
    #[test]
    fn same_bytes_as_with_the_thresholds_found_first() {
        let dir = tempfile::tempdir().unwrap();
        let (b1, m1) = random_family(&dir.path().join("a"), SHAPES, 3, 21);
        let (b2, m2) = tied_family(&dir.path().join("b"), 3);
        // Densities 0.8 and 0.9 pass the deltas' share of non-zero entries (about 2/3 and
        // 4/5): thresholds of 0, known after the histogram pass.
        let densities = [[0.2, 0.55, 1.0], [0.2, 0.8, 0.9]];
        for (base, models) in [(&b1, &m1), (&b2, &m2)] {
            for (normalize, d) in [
                (1.0, densities[0]),
                (0.0, densities[0]),
                (1.0, densities[1]),
            ] {
                let p = params(
                    &[("normalize", normalize), ("lambda", 0.9)],
                    &[
                        &[("density", d[0]), ("weight", 1.0)],
                        &[("density", d[1]), ("weight", 0.7)],
                        &[("density", d[2]), ("weight", 1.3)],
                    ],
                );
                let want = ties(base, models, &p, false);
                for threads in [1, 4] {
                    let got = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap()
                        .install(|| ties(base, models, &p, true));
                    assert!(got == want, "normalize {normalize}, {threads} threads");
                }
            }
        }
    }

    /// The merge itself, outside the engine: the deferred path is taken on the tensor of
    /// several chunks (with no limit on the share deferred), a zero budget takes the exact
    /// path, and both give, position by position, what the kernel gives with the exact
    /// thresholds.
    #[test]
    fn deferred_positions_are_fixed_to_the_exact_merge() {
        let dir = tempfile::tempdir().unwrap();
        for (k, (base, models)) in [
            random_family(&dir.path().join("a"), SHAPES, 4, 33),
            tied_family(&dir.path().join("b"), 4),
        ]
        .into_iter()
        .enumerate()
        {
            let method = crate::merge::get("ties").unwrap();
            let p = params(
                &[("density", 0.2)],
                &[&[("density", 0.1)], &[("density", 0.3)], &[], &[]],
            );
            let req =
                MergeRequest::new(method, Some(&base), models.iter().collect()).with_params(p);
            let plan = MergePlan::new(&req).unwrap();
            let t = plan
                .tensors
                .iter()
                .find(|t| t.view.name() == "model.layers.0.w" && t.step == Step::Merge)
                .unwrap();
            let job = plan.job(&req, t).unwrap();
            let dens = method.trim_densities(&job).unwrap();
            assert_eq!(dens, vec![0.1, 0.3, 0.2, 0.2]);
            let exact = method.prepare(&job).unwrap();
            let mut want = vec![0f32; job.numel()];
            let w = Mutex::new(&mut want);
            job.apply(exact.as_ref(), false, &|c, v| {
                w.lock().unwrap()[c.start..c.start + c.len].copy_from_slice(v);
                Ok(())
            })
            .unwrap();
            let any = Limits {
                bytes: LIMITS.bytes,
                share: 1.0,
            };
            let none = Limits {
                bytes: 0,
                share: 1.0,
            };
            for (limits, passes) in [(any, Passes::Deferred), (none, Passes::Exact)] {
                let got = Mutex::new(vec![f32::NAN; job.numel()]);
                let fixed = Mutex::new(0usize);
                let took = merge_trimmed(
                    &job,
                    &dens,
                    false,
                    limits,
                    &|t| method.trimmed_kernel(&job, t),
                    &|c, v| {
                        got.lock().unwrap()[c.start..c.start + c.len].copy_from_slice(v);
                        Ok(())
                    },
                    &|c, start, at, v| {
                        assert_eq!(c.len, at.len());
                        *fixed.lock().unwrap() += at.len();
                        let mut g = got.lock().unwrap();
                        for (&p, &v) in at.iter().zip(v) {
                            g[start + p as usize] = v;
                        }
                        Ok(())
                    },
                )
                .unwrap();
                assert_eq!(took, passes, "family {k}");
                let got = got.into_inner().unwrap();
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "family {k}, {passes:?}");
                let fixed = fixed.into_inner().unwrap();
                if passes == Passes::Deferred {
                    // Some positions were deferred, and far fewer than all.
                    assert!(fixed > 0 && fixed < job.numel() / 2, "{fixed}");
                } else {
                    assert_eq!(fixed, 0);
                }
            }
        }
    }
}
