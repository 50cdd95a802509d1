//! Spectral analysis of weight matrices: singular values, condition number (KappaTune),
//! effective rank, norms, rank-r approximations and LIFT's principal-weight masks.
//! Card: shared/methods/selective_finetuning.md (LIFT arXiv 2506.00772, KappaTune 2506.16289).
//!
//! A tensor with two or more dimensions is read as a matrix `out × rest` (convolution kernels
//! reshaped as KappaTune does). Exact spectra come from faer's SVD in f64 (σ_min of an
//! ill-conditioned matrix is what κ depends on, and f32 loses it near 1e-7·σ_max); matrices
//! whose smaller side exceeds `max_dim` (or with more than `max_values` entries) get a randomized SVD (Halko, Martinsson & Tropp 2011)
//! of their top singular values only, and then κ and effective rank are not reported rather
//! than estimated from a partial spectrum.

use crate::rng::Rng;
use faer::{Mat, MatRef};

/// The +1e-8 of KappaTune's κ = σ_max / (σ_min + 1e-8), which bounds κ of singular matrices.
pub const KAPPA_EPS: f64 = 1e-8;

/// How to analyse one matrix.
#[derive(Clone, Debug)]
pub struct SpectralOptions {
    /// Largest smaller side for an exact spectrum; above it, randomized top values only.
    pub max_dim: usize,
    /// Largest m·n for an exact spectrum (an exact SVD holds the matrix and its factors in
    /// f64: a 128256 × 4096 embedding would need gigabytes); above it, randomized.
    pub max_values: usize,
    /// Singular values a randomized spectrum reports.
    pub top_k: usize,
    /// Extra columns of the randomized range finder (accuracy of the last values).
    pub oversample: usize,
    /// Power iterations of the randomized range finder (accuracy when the spectrum is flat).
    pub power_iters: usize,
    pub seed: u64,
}

impl Default for SpectralOptions {
    fn default() -> Self {
        SpectralOptions {
            max_dim: 4096,
            max_values: 1 << 26,
            top_k: 32,
            oversample: 10,
            power_iters: 2,
            seed: 0,
        }
    }
}

/// What the analysis reports for one matrix.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Spectrum {
    pub rows: usize,
    pub cols: usize,
    /// Whether `singular_values` is the whole spectrum (else the randomized top values).
    pub exact: bool,
    /// Descending.
    pub singular_values: Vec<f64>,
    /// σ_max: the spectral norm.
    pub spectral_norm: f64,
    /// Computed from the matrix entries, in both modes.
    pub frobenius_norm: f64,
    /// ‖W‖_F² / σ_max²: a rank measure that needs no σ_min.
    pub stable_rank: f64,
    /// σ_min, exact spectra only.
    pub sigma_min: Option<f64>,
    /// KappaTune's κ = σ_max / (σ_min + 1e-8), exact spectra only.
    pub kappa: Option<f64>,
    /// exp(entropy of σ_i / Σσ) (Roy & Vetterli 2007), exact spectra only.
    pub effective_rank: Option<f64>,
}

impl SpectralOptions {
    /// Whether an `m × n` matrix gets an exact SVD: smaller side at most `max_dim` and at most
    /// `max_values` entries.
    pub fn exact(&self, m: usize, n: usize) -> bool {
        m.min(n) <= self.max_dim && m.saturating_mul(n) <= self.max_values
    }
}

/// The matrix view of a tensor shape: `(shape[0], product of the rest)`, or `None` for
/// tensors with fewer than two dimensions or an empty side.
pub fn matrix_dims(shape: &[usize]) -> Option<(usize, usize)> {
    if shape.len() < 2 {
        return None;
    }
    let m = shape[0];
    let n: usize = shape[1..].iter().product();
    (m > 0 && n > 0).then_some((m, n))
}

fn to_mat(w: &[f32], m: usize, n: usize) -> Mat<f64> {
    Mat::from_fn(m, n, |i, j| w[i * n + j] as f64)
}

fn check(w: &[f32], m: usize, n: usize) -> Result<(), String> {
    if w.len() != m * n {
        return Err(format!("{} values for a {m}×{n} matrix", w.len()));
    }
    if let Some(i) = w.iter().position(|x| !x.is_finite()) {
        return Err(format!("non-finite value at element {i}"));
    }
    Ok(())
}

/// κ = σ_max / (σ_min + 1e-8) from an exact spectrum.
pub fn kappa_of(values: &[f64]) -> f64 {
    match (values.first(), values.last()) {
        (Some(&hi), Some(&lo)) => hi / (lo + KAPPA_EPS),
        _ => f64::NAN,
    }
}

/// Roy & Vetterli's effective rank: exp(−Σ p_i ln p_i), p_i = σ_i / Σσ. 1 for a rank-1
/// matrix, min(m, n) when all singular values are equal; 0 for the zero matrix.
pub fn effective_rank(values: &[f64]) -> f64 {
    let total: f64 = values.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    let h: f64 = values
        .iter()
        .map(|&s| s / total)
        .filter(|&p| p > 0.0)
        .map(|p| -p * p.ln())
        .sum();
    h.exp()
}

/// The spectrum of a row-major `m × n` matrix.
pub fn spectrum(w: &[f32], m: usize, n: usize, o: &SpectralOptions) -> Result<Spectrum, String> {
    check(w, m, n)?;
    let exact = o.exact(m, n);
    let values: Vec<f64> = if exact {
        to_mat(w, m, n)
            .singular_values()
            .map_err(|e| format!("SVD did not converge: {e:?}"))?
    } else {
        let (_, s, _) = randomized_svd(w, m, n, o.top_k, o)?;
        s
    };
    Ok(summarise(w, m, n, exact, values))
}

/// [`spectrum`] and LIFT's [`principal_indices`] (`filter_rank`, `k`) from one SVD: on the
/// exact path the thin SVD with vectors gives both the values and the rank-r approximation
/// (about 40 % less work than the two calls).
pub fn spectrum_and_principal(
    w: &[f32],
    m: usize,
    n: usize,
    filter_rank: usize,
    k: usize,
    o: &SpectralOptions,
) -> Result<(Spectrum, Vec<u32>), String> {
    check(w, m, n)?;
    if !o.exact(m, n) {
        return Ok((
            spectrum(w, m, n, o)?,
            principal_indices(w, m, n, filter_rank, k, o)?,
        ));
    }
    let svd = to_mat(w, m, n)
        .thin_svd()
        .map_err(|e| format!("SVD did not converge: {e:?}"))?;
    let values: Vec<f64> = svd.S().column_vector().iter().copied().collect();
    let r = filter_rank.min(values.len());
    let approx = product(
        svd.U().subcols(0, r).to_owned(),
        &values[..r],
        svd.V().subcols(0, r).to_owned(),
    );
    Ok((summarise(w, m, n, true, values), top_k_abs(&approx, k)))
}

/// The report of a matrix from its singular values (all of them when `exact`).
fn summarise(w: &[f32], m: usize, n: usize, exact: bool, values: Vec<f64>) -> Spectrum {
    let fro = w.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    let smax = values.first().copied().unwrap_or(0.0);
    let (sigma_min, kappa, erank) = if exact {
        (
            values.last().copied(),
            Some(kappa_of(&values)),
            Some(effective_rank(&values)),
        )
    } else {
        (None, None, None)
    };
    Spectrum {
        rows: m,
        cols: n,
        exact,
        spectral_norm: smax,
        frobenius_norm: fro,
        stable_rank: if smax > 0.0 {
            fro * fro / (smax * smax)
        } else {
            0.0
        },
        sigma_min,
        kappa,
        effective_rank: erank,
        singular_values: values,
    }
}

/// U·diag(s)·Vᵀ as row-major f32.
fn product(u: Mat<f64>, s: &[f64], v: Mat<f64>) -> Vec<f32> {
    let (m, n, r) = (u.nrows(), v.nrows(), s.len());
    let us = Mat::<f64>::from_fn(m, r, |i, j| u[(i, j)] * s[j]);
    let approx = &us * v.transpose();
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            out.push(approx[(i, j)] as f32);
        }
    }
    out
}

/// Orthonormal basis of the columns of `y` (thin Q of its QR factorisation).
fn orth(y: MatRef<'_, f64>) -> Mat<f64> {
    y.qr().compute_thin_Q()
}

/// Singular triplets `(U m×k, σ descending, V n×k)`.
pub type Triplets = (Mat<f64>, Vec<f64>, Mat<f64>);

/// Top-`k` singular triplets `(U m×k, σ, V n×k)` by the randomized range finder with
/// `o.oversample` extra columns and `o.power_iters` power iterations, seeded by `o.seed`.
pub fn randomized_svd(
    w: &[f32],
    m: usize,
    n: usize,
    k: usize,
    o: &SpectralOptions,
) -> Result<Triplets, String> {
    check(w, m, n)?;
    let k = k.min(m.min(n)).max(1);
    let l = (k + o.oversample).min(m.min(n));
    let a = to_mat(w, m, n);
    let mut rng = Rng::keyed(o.seed, "randomized-svd", 0);
    let omega = Mat::<f64>::from_fn(n, l, |_, _| rng.normal() as f64);
    let mut q = orth((&a * &omega).as_ref());
    for _ in 0..o.power_iters {
        let z = orth((a.transpose() * &q).as_ref());
        q = orth((&a * &z).as_ref());
    }
    let b = q.transpose() * &a; // l × n
    let svd = b
        .thin_svd()
        .map_err(|e| format!("SVD did not converge: {e:?}"))?;
    let u = &q * svd.U();
    let s: Vec<f64> = svd.S().column_vector().iter().copied().collect();
    let v = svd.V().to_owned();
    Ok((
        u.subcols(0, k).to_owned(),
        s[..k].to_vec(),
        v.subcols(0, k).to_owned(),
    ))
}

/// The best rank-`r` approximation U_r·S_r·V_rᵀ of a row-major `m × n` matrix, row-major:
/// exact SVD when [`SpectralOptions::exact`], randomized otherwise.
pub fn low_rank(
    w: &[f32],
    m: usize,
    n: usize,
    r: usize,
    o: &SpectralOptions,
) -> Result<Vec<f32>, String> {
    let (u, s, v) = truncated_svd(w, m, n, r, o)?;
    Ok(product(u, &s, v))
}

/// The top `min(r, m, n)` singular triplets of a row-major `m × n` matrix: exact SVD when
/// [`SpectralOptions::exact`], randomized otherwise.
pub fn truncated_svd(
    w: &[f32],
    m: usize,
    n: usize,
    r: usize,
    o: &SpectralOptions,
) -> Result<Triplets, String> {
    check(w, m, n)?;
    let r = r.min(m.min(n));
    if o.exact(m, n) {
        let svd = to_mat(w, m, n)
            .thin_svd()
            .map_err(|e| format!("SVD did not converge: {e:?}"))?;
        let s: Vec<f64> = svd.S().column_vector().iter().copied().collect();
        Ok((
            svd.U().subcols(0, r).to_owned(),
            s[..r].to_vec(),
            svd.V().subcols(0, r).to_owned(),
        ))
    } else {
        randomized_svd(w, m, n, r, o)
    }
}

/// LIFT's budget: K = min((m + n)·r_lora, m·n), the parameter count of a rank-r_lora LoRA.
pub fn lift_budget(m: usize, n: usize, r_lora: usize) -> usize {
    ((m + n).saturating_mul(r_lora)).min(m * n)
}

/// Indices (ascending) of the `k` entries of largest |x|; ties at the threshold go to the
/// lower index, so the set is deterministic.
pub fn top_k_abs(x: &[f32], k: usize) -> Vec<u32> {
    let k = k.min(x.len());
    if k == 0 {
        return Vec::new();
    }
    let mut mags: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    let (_, &mut t, _) = mags.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let above = x.iter().filter(|v| v.abs() > t).count();
    let mut ties = k - above;
    let mut out = Vec::with_capacity(k);
    for (i, v) in x.iter().enumerate() {
        let a = v.abs();
        if a > t {
            out.push(i as u32);
        } else if a == t && ties > 0 {
            ties -= 1;
            out.push(i as u32);
        }
    }
    out
}

/// LIFT's principal weights of a row-major `m × n` matrix: the `k` largest entries of
/// |W′| with W′ its rank-`filter_rank` approximation (largest, as the paper describes; the
/// reference configs' `lift_sparse` picks the smallest, see the card's pitfalls).
pub fn principal_indices(
    w: &[f32],
    m: usize,
    n: usize,
    filter_rank: usize,
    k: usize,
    o: &SpectralOptions,
) -> Result<Vec<u32>, String> {
    let approx = low_rank(w, m, n, filter_rank, o)?;
    Ok(top_k_abs(&approx, k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(m: usize, n: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..m * n).map(|_| r.normal()).collect()
    }

    /// W = U diag(s) Vᵀ with U, V orthonormal (from QR of random matrices), row-major.
    fn with_spectrum(m: usize, n: usize, s: &[f64], seed: u64) -> Vec<f32> {
        let k = s.len();
        let u = orth(to_mat(&random(m, k, seed), m, k).as_ref());
        let v = orth(to_mat(&random(n, k, seed + 1), n, k).as_ref());
        let us = Mat::<f64>::from_fn(m, k, |i, j| u[(i, j)] * s[j]);
        let w = &us * v.transpose();
        (0..m * n).map(|x| w[(x / n, x % n)] as f32).collect()
    }

    #[test]
    fn exact_spectrum_recovers_known_singular_values() {
        let s = [9.0, 5.0, 2.0, 1.0, 0.5, 0.25];
        let w = with_spectrum(20, 6, &s, 3);
        let sp = spectrum(&w, 20, 6, &SpectralOptions::default()).unwrap();
        assert!(sp.exact);
        for (a, b) in sp.singular_values.iter().zip(s) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        let kappa = sp.kappa.unwrap();
        assert!((kappa - 36.0).abs() < 1e-3, "{kappa}");
        let fro = s.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((sp.frobenius_norm - fro).abs() < 1e-4);
        assert!((sp.stable_rank - fro * fro / 81.0).abs() < 1e-4);
        // Equal values: effective rank = their count; one value: 1.
        assert!((effective_rank(&[2.0; 5]) - 5.0).abs() < 1e-12);
        assert!((effective_rank(&[3.0, 0.0, 0.0]) - 1.0).abs() < 1e-12);
        assert_eq!(effective_rank(&[0.0, 0.0]), 0.0);
    }

    #[test]
    fn randomized_top_values_match_exact_on_decaying_spectrum() {
        let s: Vec<f64> = (0..40).map(|i| 10.0 * 0.8f64.powi(i)).collect();
        let w = with_spectrum(60, 50, &s, 7);
        let o = SpectralOptions {
            max_dim: 10, // force the randomized path
            top_k: 5,
            ..SpectralOptions::default()
        };
        let sp = spectrum(&w, 60, 50, &o).unwrap();
        assert!(!sp.exact && sp.kappa.is_none() && sp.effective_rank.is_none());
        assert_eq!(sp.singular_values.len(), 5);
        for (a, b) in sp.singular_values.iter().zip(&s) {
            assert!((a - b).abs() / b < 1e-4, "{a} vs {b}");
        }
        // Same seed, same values.
        assert_eq!(spectrum(&w, 60, 50, &o).unwrap(), sp);
    }

    #[test]
    fn low_rank_is_exact_for_a_rank_r_matrix_on_both_paths() {
        let w = with_spectrum(30, 25, &[4.0, 2.0, 1.0], 11);
        let exact = low_rank(&w, 30, 25, 3, &SpectralOptions::default()).unwrap();
        let o = SpectralOptions {
            max_dim: 5,
            ..SpectralOptions::default()
        };
        let rand = low_rank(&w, 30, 25, 3, &o).unwrap();
        for ((a, b), c) in w.iter().zip(&exact).zip(&rand) {
            assert!((a - b).abs() < 1e-5 && (a - c).abs() < 1e-5);
        }
        // Rank 1 of it is the top triplet only: error = the rest of the spectrum.
        let r1 = low_rank(&w, 30, 25, 1, &SpectralOptions::default()).unwrap();
        let err: f64 = w
            .iter()
            .zip(&r1)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((err - (4.0f64 + 1.0).sqrt()).abs() < 1e-4, "{err}");
    }

    #[test]
    fn top_k_abs_is_exact_and_deterministic_with_ties() {
        let x = [0.5, -3.0, 1.0, 1.0, 2.0, -1.0, 0.0];
        assert_eq!(top_k_abs(&x, 2), vec![1, 4]);
        assert_eq!(top_k_abs(&x, 4), vec![1, 2, 3, 4]); // first tie wins
        assert_eq!(top_k_abs(&x, 0), Vec::<u32>::new());
        assert_eq!(top_k_abs(&x, 99).len(), 7);
    }

    #[test]
    fn principal_weights_follow_the_low_rank_part_not_the_magnitudes() {
        // A rank-1 structure plus a few large isolated spikes: top-|W| picks the spikes, the
        // rank-1 filter does not.
        let (m, n) = (16, 12);
        let u: Vec<f32> = (0..m).map(|i| 1.0 + i as f32 / m as f32).collect();
        let v: Vec<f32> = (0..n).map(|j| 1.0 + j as f32 / n as f32).collect();
        let mut w: Vec<f32> = (0..m * n).map(|x| u[x / n] * v[x % n]).collect();
        let spikes = [5usize, 40, 77];
        for &s in &spikes {
            w[s] = -6.0;
        }
        let plain = top_k_abs(&w, 3);
        assert_eq!(plain, spikes.iter().map(|&s| s as u32).collect::<Vec<_>>());
        let lift = principal_indices(&w, m, n, 1, 3, &SpectralOptions::default()).unwrap();
        assert!(
            lift.iter().all(|i| !spikes.contains(&(*i as usize))),
            "{lift:?}"
        );
        assert_eq!(lift_budget(m, n, 2), 56);
        assert_eq!(lift_budget(3, 3, 8), 9);
    }

    #[test]
    fn one_svd_gives_the_same_spectrum_and_mask_as_two() {
        let w = random(40, 30, 5);
        let o = SpectralOptions::default();
        let (sp, idx) = spectrum_and_principal(&w, 40, 30, 4, 100, &o).unwrap();
        let sp2 = spectrum(&w, 40, 30, &o).unwrap();
        for (a, b) in sp.singular_values.iter().zip(&sp2.singular_values) {
            assert!((a - b).abs() < 1e-9 * sp2.spectral_norm, "{a} vs {b}");
        }
        assert_eq!(idx, principal_indices(&w, 40, 30, 4, 100, &o).unwrap());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let o = SpectralOptions::default();
        assert!(spectrum(&[1.0, 2.0, 3.0], 2, 2, &o).is_err());
        assert!(spectrum(&[1.0, f32::NAN, 3.0, 4.0], 2, 2, &o).is_err());
        assert_eq!(matrix_dims(&[4]), None);
        assert_eq!(matrix_dims(&[4, 0]), None);
        assert_eq!(matrix_dims(&[8, 3, 3, 3]), Some((8, 27)));
    }
}
