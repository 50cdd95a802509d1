//! DELLA: drop task-vector entries at random with keep probabilities that rise with magnitude rank.
//! Paper: DELLA-Merging: Reducing Interference in Model Merging through Magnitude-Based Sampling (arXiv 2406.11617); card: methods/merging.md.

use super::gta::{RESCALE_ON, Sparsifier, gta_kernel, tensor_scope_only};
use super::params::{DENSITY, INT8_MASK, LAMBDA, NORMALIZE, NORMALIZE_OFF, WEIGHT};
use super::{ChunkKernel, Domain, MergeMethod, ParamSpec, Params, TensorJob};
use crate::rng::Rng;
use engram_ckpt::Result;

/// `della`, as mergekit's `della_magprune` sparsification with the TIES election:
/// 1. Within each row (last dimension; a 1-D tensor is one row), rank the entries of τ_i
///    by |τ| from 0 (smallest) to r−1; ties in |τ| go by position, so ranks are unique and
///    deterministic.
/// 2. p_keep = density − ε + 2ε·rank/(r−1). A density ± ε outside [0, 1] is refused (mergekit
///    refuses it outside (0, 1); engram allows the ends, its rescale does not divide by
///    p_keep). A row of one entry gets p_keep = density (the rank is undefined there;
///    mergekit divides 0 by 0).
/// 3. Bernoulli drop with p_keep; draws as in [`super::dare`], keyed by (seed, tensor#model,
///    chunk number) over row-aligned chunks.
/// 4. `rescale` (on): current mergekit scales the masked tensor back to its L1 norm before
///    masking, over the whole tensor (`rescaled_masked_tensor`, `RescaleNorm.l1`); engram
///    does the same. The paper and the DELLA authors' first mergekit version divide each
///    kept entry by its p_keep instead; the two agree in expectation.
/// 5. Weighted TIES election and disjoint merge, `normalize` on by default, then λ
///    (mergekit's global `lambda`, default 1).
///
/// At density ≥ 1 the task vector passes unchanged, at density ≤ 0 it is dropped (mergekit).
/// For tensors of 3 or more dimensions mergekit ranks along dimension 1, engram along the
/// last one (the same for the 2-D weights of transformers).
pub struct Della;

/// `della_linear`: the same masks, summed without election (`normalize` off by default).
pub struct DellaLinear;

pub const EPSILON: ParamSpec = ParamSpec {
    name: "epsilon",
    default: Some(0.15),
    per_model: true,
    domain: Domain::Unit,
    help: "keep probabilities spread from density-epsilon (smallest) to density+epsilon",
};

const PARAMS: &[ParamSpec] = &[
    WEIGHT, DENSITY, EPSILON, NORMALIZE, RESCALE_ON, LAMBDA, INT8_MASK,
];
const PARAMS_LINEAR: &[ParamSpec] = &[
    WEIGHT,
    DENSITY,
    EPSILON,
    NORMALIZE_OFF,
    RESCALE_ON,
    LAMBDA,
    INT8_MASK,
];

/// density ± epsilon within [0, 1] wherever the density drops anything but not everything.
fn check_spread(p: &Params) -> std::result::Result<(), String> {
    let (d, e) = (p.value(PARAMS, "density"), p.value(PARAMS, "epsilon"));
    if d > 0.0 && d < 1.0 && (d - e < -1e-12 || d + e > 1.0 + 1e-12) {
        return Err(format!(
            "density {d} ± epsilon {e} leaves [0, 1] (keep probabilities run from density − epsilon to density + epsilon)"
        ));
    }
    Ok(())
}

impl MergeMethod for Della {
    fn random(&self) -> bool {
        true
    }
    fn name(&self) -> &'static str {
        "della"
    }
    fn summary(&self) -> &'static str {
        "drop delta entries with keep probability rising with magnitude rank, then TIES-merge"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn row_aligned(&self) -> bool {
        true
    }
    fn check_params(&self, p: &Params) -> std::result::Result<(), String> {
        check_spread(p)
    }
    fn prepare<'a>(&self, job: &'a TensorJob<'a>) -> Result<Box<dyn ChunkKernel + 'a>> {
        tensor_scope_only(job, self.name(), PARAMS)?;
        gta_kernel(job, PARAMS, MagPrune::new(job, PARAMS), true, true)
    }
}

impl MergeMethod for DellaLinear {
    fn random(&self) -> bool {
        true
    }
    fn name(&self) -> &'static str {
        "della_linear"
    }
    fn summary(&self) -> &'static str {
        "drop delta entries with keep probability rising with magnitude rank, then sum"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS_LINEAR
    }
    fn row_aligned(&self) -> bool {
        true
    }
    fn check_params(&self, p: &Params) -> std::result::Result<(), String> {
        check_spread(p)
    }
    fn prepare<'a>(&self, job: &'a TensorJob<'a>) -> Result<Box<dyn ChunkKernel + 'a>> {
        tensor_scope_only(job, self.name(), PARAMS_LINEAR)?;
        gta_kernel(
            job,
            PARAMS_LINEAR,
            MagPrune::new(job, PARAMS_LINEAR),
            false,
            true,
        )
    }
}

/// Rank-dependent Bernoulli masks, row by row (chunks hold whole rows).
struct MagPrune {
    tensor: String,
    seed: u64,
    row: usize,
    density: Vec<f64>,
    epsilon: Vec<f64>,
}

impl MagPrune {
    fn new(job: &TensorJob, specs: &[ParamSpec]) -> MagPrune {
        MagPrune {
            tensor: job.name.to_string(),
            seed: job.seed,
            row: job.row_len(),
            density: job
                .model_params
                .iter()
                .map(|p| p.value(specs, "density"))
                .collect(),
            epsilon: job
                .model_params
                .iter()
                .map(|p| p.value(specs, "epsilon"))
                .collect(),
        }
    }
}

impl Sparsifier for MagPrune {
    fn is_identity(&self, i: usize) -> bool {
        self.density[i] >= 1.0
    }
    fn sparsify(&self, i: usize, chunk: usize, delta: &mut [f32]) {
        let (d, e) = (self.density[i], self.epsilon[i]);
        if d <= 0.0 {
            delta.fill(0.0);
            return;
        }
        let mut r = Rng::keyed(self.seed, &format!("{}#{i}", self.tensor), chunk as u64);
        let mut order: Vec<u32> = Vec::with_capacity(self.row);
        let mut rank = vec![0u32; self.row];
        let span = (self.row.max(2) - 1) as f64;
        for row in delta.chunks_mut(self.row) {
            order.clear();
            order.extend(0..row.len() as u32);
            order.sort_unstable_by_key(|&j| (row[j as usize].abs().to_bits(), j));
            for (k, &j) in order.iter().enumerate() {
                rank[j as usize] = k as u32;
            }
            for (x, &k) in row.iter_mut().zip(&rank) {
                let p = if self.row == 1 {
                    d
                } else {
                    d - e + 2.0 * e * k as f64 / span
                };
                if r.uniform_f64() >= p {
                    *x = 0.0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::merge::CHUNK_ELEMS;
    use crate::merge::testutil::*;
    use crate::rng::Rng;
    use crate::testutil::{random_family, values};

    /// Reference mask: ranks by a full sort per row, draws per row-aligned chunk.
    fn reference_mask(
        seed: u64,
        name: &str,
        i: usize,
        t: &[f32],
        row: usize,
        density: f64,
        eps: f64,
    ) -> Vec<bool> {
        let mut p = vec![0f64; t.len()];
        for (r, vals) in t.chunks(row).enumerate() {
            let mut idx: Vec<usize> = (0..vals.len()).collect();
            idx.sort_by(|a, b| vals[*a].abs().total_cmp(&vals[*b].abs()).then(a.cmp(b)));
            for (k, j) in idx.into_iter().enumerate() {
                p[r * row + j] = if row == 1 {
                    density
                } else {
                    (density - eps + 2.0 * eps * k as f64 / (row - 1) as f64).clamp(0.0, 1.0)
                };
            }
        }
        let step = (CHUNK_ELEMS / row).max(1) * row;
        let mut keep = Vec::with_capacity(t.len());
        for (c, start) in (0..t.len()).step_by(step).enumerate() {
            let mut rng = Rng::keyed(seed, &format!("{name}#{i}"), c as u64);
            for pk in &p[start..(start + step).min(t.len())] {
                keep.push(rng.uniform_f64() < *pk);
            }
        }
        keep
    }

    #[test]
    fn matches_a_whole_tensor_reference() {
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = random_family(dir.path(), SHAPES, 3, 41);
        let dens = [0.3, 0.5, 0.9];
        let eps = [0.1, 0.15, 0.1];
        for (method, normalize, rescale) in [
            ("della", true, true),
            ("della", false, false),
            ("della_linear", false, true),
            ("della_linear", true, false),
        ] {
            let gta = GtaRef {
                weights: &[1.0, 0.7, 1.3],
                normalize,
                rescale,
                lambda: 1.1,
                consensus: method == "della",
            };
            let mut run = Run::new(method, &base, &models);
            run.seed = 9;
            run.params = gta.params(&[("density", &dens), ("epsilon", &eps)]);
            let merged = run
                .run(&dir.path().join(format!("{method}{normalize}{rescale}")))
                .unwrap();
            gta.assert_matches(
                &merged,
                &base,
                &models,
                SHAPES,
                &|name, shape, i, t| {
                    let row = *shape.last().unwrap();
                    let mask = reference_mask(9, name, i, t, row, dens[i], eps[i]);
                    t.iter()
                        .zip(&mask)
                        .map(|(x, k)| if *k { *x } else { 0.0 })
                        .collect()
                },
                1e-5,
            );
        }
    }

    #[test]
    fn larger_entries_survive_more_often() {
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = random_family(dir.path(), SHAPES, 1, 42);
        let name = "model.layers.0.w";
        let mut run = Run::new("della_linear", &base, &models);
        run.params = params(&[("density", 0.4), ("epsilon", 0.2), ("rescale", 0.0)], &[]);
        let b = values(&base, name);
        let t = delta(&b, &values(&models[0], name));
        let got = delta(&b, &values(&run.run(&dir.path().join("a")).unwrap(), name));
        // Rows of 700; about a third of the entries are exact zeros and rank lowest. Compare
        // how often entries above the row's median |τ| survive with nonzero ones below it.
        let (mut hi, mut hi_n, mut lo, mut lo_n) = (0usize, 0usize, 0usize, 0usize);
        for (tr, gr) in t.chunks(700).zip(got.chunks(700)) {
            let mut a: Vec<f32> = tr.iter().map(|x| x.abs()).collect();
            a.sort_by(|x, y| x.total_cmp(y));
            let median = a[350];
            for (x, g) in tr.iter().zip(gr) {
                if x.abs() > median {
                    hi_n += 1;
                    hi += usize::from(*g != 0.0);
                } else if *x != 0.0 {
                    lo_n += 1;
                    lo += usize::from(*g != 0.0);
                }
                assert!(*g == 0.0 || g == x);
            }
        }
        let (hi, lo) = (hi as f64 / hi_n as f64, lo as f64 / lo_n as f64);
        // Above the median: ranks 351..=699, mean p = 0.2 + 0.4·525/699 ≈ 0.50. Nonzero
        // below: ranks ≈ 231..=350 (231 zeros per row on average), mean p ≈ 0.2 + 0.4·290/699
        // ≈ 0.366.
        assert!((hi - 0.5).abs() < 0.01, "top half kept {hi}");
        assert!((lo - 0.366).abs() < 0.01, "bottom half kept {lo}");
    }

    #[test]
    fn epsilon_zero_on_one_chunk_is_dare_and_density_one_is_task_arithmetic() {
        let dir = tempfile::tempdir().unwrap();
        let small: Vec<(&str, &[usize])> = SHAPES
            .iter()
            .copied()
            .filter(|(_, s)| s.iter().product::<usize>() < CHUNK_ELEMS)
            .collect();
        let (base, models) = random_family(dir.path(), &small, 2, 43);
        let mut della = Run::new("della_linear", &base, &models);
        della.params = params(&[("density", 0.5), ("epsilon", 0.0), ("lambda", 0.8)], &[]);
        della.seed = 5;
        let mut dare = Run::new("dare_linear", &base, &models);
        dare.params = params(&[("density", 0.5), ("lambda", 0.8)], &[]);
        dare.seed = 5;
        let a = della.run(&dir.path().join("della")).unwrap();
        let b = dare.run(&dir.path().join("dare")).unwrap();
        for (name, _) in &small {
            assert_eq!(values(&a, name), values(&b, name), "{name}");
        }

        let p = params(&[("lambda", 0.8)], &[&[("weight", 0.5)], &[]]);
        let mut della = Run::new("della_linear", &base, &models);
        della.params = p.clone();
        let mut ta = Run::new("task_arithmetic", &base, &models);
        ta.params = p;
        let a = della.run(&dir.path().join("della1")).unwrap();
        let b = ta.run(&dir.path().join("ta")).unwrap();
        for (name, _) in &small {
            assert_close(&values(&a, name), &values(&b, name), 1e-6, name);
        }
    }

    #[test]
    fn seeds_not_threads_decide_the_masks() {
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = random_family(dir.path(), SHAPES, 2, 44);
        let mut run = Run::new("della", &base, &models);
        run.params = params(&[("density", 0.5)], &[]);
        run.seed = 1;
        let one = run.bytes_with_threads(&dir.path().join("t1"), 1);
        let two = run.bytes_with_threads(&dir.path().join("t2"), 2);
        assert!(one == two, "thread count changed the result");
        run.seed = 2;
        let other = run.bytes_with_threads(&dir.path().join("s2"), 2);
        assert!(one != other, "the seed did not matter");
    }
}
