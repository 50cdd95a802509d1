//! Model Breadcrumbs: drop each task vector's largest outliers and its smallest entries.
//! Paper: Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse Masks (arXiv 2312.06795); card: methods/merging.md.

use super::gta::{RESCALE_OFF, Sparsifier, gta_kernel, tensor_scope_only};
use super::params::{DENSITY, INT8_MASK, LAMBDA, NORMALIZE_OFF, WEIGHT};
use super::{ChunkKernel, Domain, MergeMethod, ParamSpec, Params, TensorJob};
use crate::select::{Repeated, keep_count, kth_largest_abs_sets};
use engram_ckpt::Result;

/// `breadcrumbs`, as mergekit's `magnitude_outliers` sparsification: per tensor of n entries,
/// target = ⌊density·n⌋ entries are kept, after dropping the n_top = ⌊gamma·n⌋ largest |τ|
/// and the n_bot = n − target − n_top smallest. mergekit shrinks n_top when n_bot < 0;
/// engram refuses gamma + density > 1 instead (at density < 1), so the band is as asked.
/// Then θ = θ₀ + λ·Σ_i w_i·τ̃_i (÷ Σ w_i with `normalize`, off by default as in mergekit).
///
/// engram takes the two cuts as exact magnitude thresholds (radix select, both cuts of
/// every model in the same passes, finished during the merge pass: [`super::onepass`]): an
/// entry is kept if its |τ| is at least the (n_top + target)-th largest and at most the
/// (n_top + 1)-th largest. Ties at either cut are kept (the card's rule), where mergekit
/// keeps exactly `target` entries in sort order. mergekit also keeps nothing when n_top = 0
/// (its slice `[n_bot:-0]` is empty, e.g. tensors under 100 entries at gamma 0.01); engram
/// keeps the `target` largest then. At density ≥ 1 nothing is dropped, whatever gamma (as
/// mergekit). `rescale` (off by default) restores the L1 norm per tensor, as in
/// [`super::dare`].
///
/// With `TIES`, `breadcrumbs_ties`: the same masks, then the TIES election and disjoint merge.
pub struct Breadcrumbs<const TIES: bool>;

pub const GAMMA: ParamSpec = ParamSpec {
    name: "gamma",
    default: Some(0.01),
    per_model: true,
    domain: Domain::Unit,
    help: "share of the largest-magnitude delta entries dropped as outliers",
};

const PARAMS: &[ParamSpec] = &[
    WEIGHT,
    DENSITY,
    GAMMA,
    NORMALIZE_OFF,
    RESCALE_OFF,
    LAMBDA,
    INT8_MASK,
];

/// gamma + density ≤ 1 wherever the density drops anything (the band must fit).
fn check_band(p: &Params) -> std::result::Result<(), String> {
    let (d, g) = (p.value(PARAMS, "density"), p.value(PARAMS, "gamma"));
    if d < 1.0 && g + d > 1.0 + 1e-12 {
        return Err(format!(
            "gamma {g} + density {d} is more than 1 (breadcrumbs drops the gamma share of largest entries, then keeps density of the rest)"
        ));
    }
    Ok(())
}

impl<const TIES: bool> MergeMethod for Breadcrumbs<TIES> {
    fn name(&self) -> &'static str {
        if TIES {
            "breadcrumbs_ties"
        } else {
            "breadcrumbs"
        }
    }
    fn summary(&self) -> &'static str {
        if TIES {
            "breadcrumbs masks, then TIES sign election and disjoint merge"
        } else {
            "drop the largest (gamma) and smallest delta entries, keep a density share, and sum"
        }
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn check_params(&self, p: &Params) -> std::result::Result<(), String> {
        check_band(p)
    }
    fn prepare<'a>(&self, job: &'a TensorJob<'a>) -> Result<Box<dyn ChunkKernel + 'a>> {
        tensor_scope_only(job, self.name(), PARAMS)?;
        gta_kernel(job, PARAMS, Band::new(job)?, TIES, false)
    }
    fn trim_ranks(&self, job: &TensorJob, total: u64) -> Option<Vec<Option<u64>>> {
        band_ranks(job, total)
    }
    fn trimmed_kernel<'a>(
        &self,
        job: &'a TensorJob<'a>,
        cuts: Vec<Option<f32>>,
    ) -> Result<Box<dyn ChunkKernel + 'a>> {
        tensor_scope_only(job, self.name(), PARAMS)?;
        gta_kernel(job, PARAMS, Band::from_cuts(job, &cuts), TIES, false)
    }
}

/// Per model, keep lo ≤ |x| ≤ hi; `None` keeps the model's task vector whole.
struct Band(Vec<Option<(f32, Option<f32>)>>);

/// Per model (target, n_top) over `n` entries, or `None` when the task vector stays whole.
fn band_counts(job: &TensorJob, n: u64) -> Vec<Option<(u64, u64)>> {
    job.model_params
        .iter()
        .map(|p| {
            let density = p.value(PARAMS, "density");
            (density < 1.0).then(|| {
                let target = keep_count(density, n);
                (target, keep_count(p.value(PARAMS, "gamma"), n))
            })
        })
        .collect()
}

/// The band's cuts as selections (N models): selection i is model i's lower cut, the
/// (n_top + target)-th largest |τ|, and selection N + i its upper cut, the (n_top + 1)-th;
/// `None` where there is no cut.
fn cut_ranks(job: &TensorJob, n: u64) -> Vec<Option<u64>> {
    let counts = band_counts(job, n);
    let lo = counts
        .iter()
        .map(|c| c.filter(|&(t, _)| t > 0).map(|(t, top)| top + t));
    let hi = counts.iter().map(|c| {
        c.filter(|&(t, top)| t > 0 && top > 0)
            .map(|(_, top)| top + 1)
    });
    lo.chain(hi).collect()
}

/// [`cut_ranks`] for the engine's one-pass merge: not with `rescale` (its L1 factors need the
/// band first), nor where `prepare` refuses the request (model scope).
fn band_ranks(job: &TensorJob, n: u64) -> Option<Vec<Option<u64>>> {
    let refused = tensor_scope_only(job, "", PARAMS).is_err();
    (!refused && !job.global.flag(PARAMS, "rescale")).then(|| cut_ranks(job, n))
}

impl Band {
    /// Both cuts of every model's band, in two passes over the tensor for all of them
    /// ([`Repeated`]: each chunk decoded once for both cuts).
    fn new(job: &TensorJob) -> Result<Band> {
        let sets = Repeated {
            inner: job,
            sets: job.models.len(),
        };
        let cuts = kth_largest_abs_sets(&sets, &cut_ranks(job, job.numel() as u64))?;
        Ok(Band::from_cuts(job, &cuts))
    }

    /// The band from its cuts as [`band_ranks`] orders them (`None`: no cut, or fewer values
    /// than the rank).
    fn from_cuts(job: &TensorJob, cuts: &[Option<f32>]) -> Band {
        let n = job.models.len();
        Band(
            band_counts(job, job.numel() as u64)
                .iter()
                .enumerate()
                .map(|(i, c)| match c {
                    None => None,
                    Some((0, _)) => Some((f32::INFINITY, None)),
                    Some(_) => Some((
                        cuts[i].unwrap_or(f32::INFINITY),
                        cuts.get(n + i).copied().flatten(),
                    )),
                })
                .collect(),
        )
    }
}

impl Sparsifier for Band {
    fn is_identity(&self, i: usize) -> bool {
        self.0[i].is_none()
    }
    fn sparsify(&self, i: usize, _chunk: usize, delta: &mut [f32]) {
        let Some((lo, hi)) = self.0[i] else {
            return;
        };
        for x in delta.iter_mut() {
            let a = x.abs();
            if !(a >= lo && hi.is_none_or(|h| a <= h)) {
                *x = 0.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::merge::testutil::*;
    use crate::testutil::{random_family, values, write_model};
    use engram_ckpt::DType;

    /// Sort-based reference: the band of ranks mergekit keeps, widened to ties at its ends.
    fn band(d: &[f32], density: f64, gamma: f64) -> Vec<f32> {
        let n = d.len();
        if density >= 1.0 {
            return d.to_vec();
        }
        let target = (density * n as f64) as usize;
        if target == 0 {
            return vec![0.0; n];
        }
        let n_top = ((gamma * n as f64) as usize).min(n - target);
        let mut a: Vec<f32> = d.iter().map(|x| x.abs()).collect();
        a.sort_by(|x, y| y.total_cmp(x));
        let lo = a[n_top + target - 1];
        let hi = if n_top > 0 { a[n_top] } else { f32::INFINITY };
        d.iter()
            .map(|x| {
                if x.abs() >= lo && x.abs() <= hi {
                    *x
                } else {
                    0.0
                }
            })
            .collect()
    }

    #[test]
    fn matches_a_sort_based_reference() {
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = random_family(dir.path(), SHAPES, 3, 31);
        let dens = [0.3, 0.5, 0.8];
        let gammas = [0.01, 0.05, 0.2];
        for (method, normalize, rescale) in [
            ("breadcrumbs", false, false),
            ("breadcrumbs", true, true),
            ("breadcrumbs_ties", false, false),
            ("breadcrumbs_ties", true, false),
        ] {
            let gta = GtaRef {
                weights: &[1.0, 1.5, 0.5],
                normalize,
                rescale,
                lambda: 1.2,
                consensus: method == "breadcrumbs_ties",
            };
            let mut run = Run::new(method, &base, &models);
            run.params = gta.params(&[("density", &dens), ("gamma", &gammas)]);
            let merged = run
                .run(&dir.path().join(format!("{method}{normalize}{rescale}")))
                .unwrap();
            gta.assert_matches(
                &merged,
                &base,
                &models,
                SHAPES,
                &|_, _, i, t| band(t, dens[i], gammas[i]),
                1e-5,
            );
        }
    }

    #[test]
    fn hand_computed_bands() {
        let dir = tempfile::tempdir().unwrap();
        // Magnitudes 1..=10 with alternating signs, over a zero base.
        let shapes: &[(&str, &[usize])] = &[("w", &[10])];
        let tau = |i: usize| (i + 1) as f32 * if i & 1 == 0 { 1.0 } else { -1.0 };
        let base = write_model(&dir.path().join("base"), DType::F32, shapes, &|_, _| 0.0);
        let models = [write_model(
            &dir.path().join("m"),
            DType::F32,
            shapes,
            &|_, i| tau(i),
        )];
        let kept = |density: f64, gamma: f64, out: &str| -> Vec<usize> {
            let mut run = Run::new("breadcrumbs", &base, &models);
            run.params = params(&[("density", density), ("gamma", gamma)], &[]);
            let got = values(&run.run(&dir.path().join(out)).unwrap(), "w");
            for (i, g) in got.iter().enumerate() {
                assert!(*g == 0.0 || *g == tau(i), "{out}[{i}] = {g}");
            }
            got.iter()
                .enumerate()
                .filter(|(_, g)| **g != 0.0)
                .map(|(i, _)| i + 1)
                .collect()
        };
        // target 5, n_top 2, n_bot 3: magnitudes 4..=8.
        assert_eq!(kept(0.5, 0.2, "a"), vec![4, 5, 6, 7, 8]);
        // target 9, n_top 1: magnitudes 1..=9; gamma + density > 1 is refused (mergekit
        // shrinks n_top).
        assert_eq!(kept(0.9, 0.1, "b"), (1..=9).collect::<Vec<_>>());
        let mut run = Run::new("breadcrumbs", &base, &models);
        run.params = params(&[("density", 0.9), ("gamma", 0.2)], &[]);
        let Err(e) = run.run(&dir.path().join("b2")) else {
            panic!("gamma + density > 1 accepted")
        };
        assert!(e.to_string().contains("gamma 0.2 + density 0.9"), "{e}");
        // gamma 0 (and default gamma on 10 entries): the 5 largest (mergekit keeps none).
        assert_eq!(kept(0.5, 0.0, "c"), vec![6, 7, 8, 9, 10]);
        assert_eq!(kept(0.5, 0.01, "d"), vec![6, 7, 8, 9, 10]);
        // density 1 keeps everything whatever gamma; density below 1/n keeps nothing.
        assert_eq!(kept(1.0, 0.5, "e"), (1..=10).collect::<Vec<_>>());
        assert_eq!(kept(0.05, 0.1, "f"), Vec::<usize>::new());
    }
}
