//! DARE: drop task-vector entries at random, rescale the rest, then sum (or TIES-merge) them.
//! Paper: Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch (arXiv 2311.03099); card: methods/merging.md.

use super::gta::{RESCALE_ON, Sparsifier, gta_kernel, tensor_scope_only};
use super::params::{DENSITY, INT8_MASK, LAMBDA, NORMALIZE_OFF, WEIGHT};
use super::{ChunkKernel, MergeMethod, ParamSpec, TensorJob};
use crate::rng::Rng;
use engram_ckpt::Result;

/// `dare_linear`: θ = θ₀ + λ·Σ_i w_i·τ̃_i (÷ Σ w_i with `normalize`), where τ̃_i keeps each
/// entry of τ_i with probability `density` (a Bernoulli mask).
///
/// `rescale` (on by default) follows current mergekit (`sparsify.py`,
/// `rescaled_masked_tensor` with `RescaleNorm.l1`): the masked tensor is scaled back to the
/// L1 norm τ_i had before masking, per tensor, left as is if either norm is below 1e-7. The
/// paper, and mergekit before its `RescaleNorm` change, divide by `density` instead; the
/// two agree in expectation (card). The norms need one extra streaming pass, in which the
/// masks are drawn exactly as in the merge pass.
///
/// Masks come from [`Rng::keyed`]`(seed, "<tensor>#<model index>", chunk number)`, one
/// uniform draw per entry in order, so a seed gives the same merge whatever the thread count
/// (mergekit draws from torch's global generator, so masks do not match mergekit's bit for
/// bit). At density ≥ 1 nothing is dropped and no draw is made.
pub struct DareLinear;

/// `dare_ties`: DARE masks, then the TIES sign election and disjoint merge (see
/// [`super::ties::Ties`]); `normalize` is off by default, as in mergekit.
pub struct DareTies;

const PARAMS: &[ParamSpec] = &[
    WEIGHT,
    DENSITY,
    NORMALIZE_OFF,
    RESCALE_ON,
    LAMBDA,
    INT8_MASK,
];

impl MergeMethod for DareLinear {
    fn random(&self) -> bool {
        true
    }
    fn name(&self) -> &'static str {
        "dare_linear"
    }
    fn summary(&self) -> &'static str {
        "drop task-vector entries at random (keep share: density), rescale, and sum"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn prepare<'a>(&self, job: &'a TensorJob<'a>) -> Result<Box<dyn ChunkKernel + 'a>> {
        tensor_scope_only(job, self.name(), PARAMS)?;
        gta_kernel(job, PARAMS, Bernoulli::new(job, PARAMS), false, false)
    }
}

impl MergeMethod for DareTies {
    fn random(&self) -> bool {
        true
    }
    fn name(&self) -> &'static str {
        "dare_ties"
    }
    fn summary(&self) -> &'static str {
        "drop task-vector entries at random, rescale, elect signs and merge the agreeing ones"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn prepare<'a>(&self, job: &'a TensorJob<'a>) -> Result<Box<dyn ChunkKernel + 'a>> {
        tensor_scope_only(job, self.name(), PARAMS)?;
        gta_kernel(job, PARAMS, Bernoulli::new(job, PARAMS), true, false)
    }
}

/// A Bernoulli keep mask per model with probability `density`.
struct Bernoulli {
    tensor: String,
    seed: u64,
    density: Vec<f64>,
}

impl Bernoulli {
    fn new(job: &TensorJob, specs: &[ParamSpec]) -> Bernoulli {
        Bernoulli {
            tensor: job.name.to_string(),
            seed: job.seed,
            density: job
                .model_params
                .iter()
                .map(|p| p.value(specs, "density"))
                .collect(),
        }
    }
}

impl Sparsifier for Bernoulli {
    fn is_identity(&self, i: usize) -> bool {
        self.density[i] >= 1.0
    }
    fn sparsify(&self, i: usize, chunk: usize, delta: &mut [f32]) {
        let p = self.density[i];
        let mut r = Rng::keyed(self.seed, &format!("{}#{i}", self.tensor), chunk as u64);
        for x in delta.iter_mut() {
            if r.uniform_f64() >= p {
                *x = 0.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::merge::testutil::*;
    use crate::merge::{CHUNK_ELEMS, TrimScope};
    use crate::rng::Rng;
    use crate::testutil::{random_family, values};

    /// The mask the method must draw: per chunk of CHUNK_ELEMS entries, one uniform each.
    fn reference_mask(seed: u64, name: &str, i: usize, n: usize, density: f64) -> Vec<bool> {
        let mut keep = Vec::with_capacity(n);
        for (c, start) in (0..n).step_by(CHUNK_ELEMS).enumerate() {
            let mut r = Rng::keyed(seed, &format!("{name}#{i}"), c as u64);
            for _ in start..(start + CHUNK_ELEMS).min(n) {
                keep.push(r.uniform_f64() < density);
            }
        }
        keep
    }

    #[test]
    fn matches_a_whole_tensor_reference() {
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = random_family(dir.path(), SHAPES, 3, 21);
        let dens = [0.3, 0.6, 0.9];
        for (method, normalize, rescale) in [
            ("dare_linear", false, true),
            ("dare_linear", true, false),
            ("dare_ties", false, true),
            ("dare_ties", true, true),
        ] {
            let gta = GtaRef {
                weights: &[1.0, 0.5, 2.0],
                normalize,
                rescale,
                lambda: 0.9,
                consensus: method == "dare_ties",
            };
            let mut run = Run::new(method, &base, &models);
            run.seed = 7;
            run.params = gta.params(&[("density", &dens)]);
            let merged = run
                .run(&dir.path().join(format!("{method}{normalize}{rescale}")))
                .unwrap();
            gta.assert_matches(
                &merged,
                &base,
                &models,
                SHAPES,
                &|name, _, i, t| {
                    let mask = reference_mask(7, name, i, t.len(), dens[i]);
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
    fn keeps_about_density_and_restores_the_l1_norm() {
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = random_family(dir.path(), SHAPES, 1, 22);
        let name = "model.layers.0.w";
        let b = values(&base, name);
        let t = delta(&b, &values(&models[0], name));
        let mut run = Run::new("dare_linear", &base, &models);
        run.params = params(&[("rescale", 0.0)], &[&[("density", 0.3)]]);
        let got = delta(&b, &values(&run.run(&dir.path().join("a")).unwrap(), name));
        let nonzero = t.iter().filter(|x| **x != 0.0).count();
        let kept = got.iter().filter(|x| **x != 0.0).count();
        let share = kept as f64 / nonzero as f64;
        assert!((share - 0.3).abs() < 0.01, "kept share {share}");
        // Kept entries are untouched without rescale.
        assert!(got.iter().zip(&t).all(|(g, x)| *g == 0.0 || g == x));

        run.params = params(&[], &[&[("density", 0.3)]]);
        let got = delta(&b, &values(&run.run(&dir.path().join("b")).unwrap(), name));
        let l1 = |v: &[f32]| v.iter().map(|x| x.abs() as f64).sum::<f64>();
        assert!((l1(&got) / l1(&t) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn density_one_is_task_arithmetic() {
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = random_family(dir.path(), SHAPES, 3, 23);
        let p = params(
            &[("lambda", 0.6)],
            &[&[("weight", 2.0)], &[], &[("weight", 0.3)]],
        );
        let mut ta = Run::new("task_arithmetic", &base, &models);
        ta.params = p.clone();
        let ta = ta.run(&dir.path().join("ta")).unwrap();
        let mut dare = Run::new("dare_linear", &base, &models);
        dare.params = p.clone();
        let dare = dare.run(&dir.path().join("dare")).unwrap();
        // dare_ties at density 1 is ties without normalization.
        let mut dt = Run::new("dare_ties", &base, &models);
        dt.params = p.clone();
        let dt = dt.run(&dir.path().join("dt")).unwrap();
        let mut ties = Run::new("ties", &base, &models);
        ties.params = p;
        ties.params.global.insert(
            "normalize".into(),
            crate::merge::params::ParamValue::Scalar(0.0),
        );
        let ties = ties.run(&dir.path().join("ties")).unwrap();
        for (name, _) in SHAPES {
            assert_close(&values(&dare, name), &values(&ta, name), 1e-6, name);
            assert_eq!(values(&dt, name), values(&ties, name), "{name}");
        }
    }

    #[test]
    fn seeds_not_threads_decide_the_masks() {
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = random_family(dir.path(), SHAPES, 2, 24);
        for method in ["dare_linear", "dare_ties"] {
            let mut run = Run::new(method, &base, &models);
            run.params = params(&[("density", 0.5)], &[]);
            run.seed = 3;
            let one = run.bytes_with_threads(&dir.path().join(format!("{method}1")), 1);
            let two = run.bytes_with_threads(&dir.path().join(format!("{method}2")), 2);
            assert!(one == two, "{method}: thread count changed the result");
            run.seed = 4;
            let other = run.bytes_with_threads(&dir.path().join(format!("{method}s")), 2);
            assert!(one != other, "{method}: the seed did not matter");
        }
    }

    #[test]
    fn model_scope_is_refused_when_it_would_matter() {
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = random_family(dir.path(), SHAPES, 1, 25);
        let mut run = Run::new("dare_ties", &base, &models);
        run.scope = TrimScope::Model;
        run.run(&dir.path().join("a")).unwrap();
        run.params = params(&[("density", 0.5)], &[]);
        let Err(e) = run.run(&dir.path().join("b")) else {
            panic!("model scope accepted")
        };
        let e = e.to_string();
        assert!(e.contains("trim_scope"), "{e}");
    }
}
