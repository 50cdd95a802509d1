//! The noise family: Gaussian, shot (Poisson), impulse (salt and pepper) and speckle noise,
//! one draw (or one Poisson variate) per pixel in row-major order.

use engram_weights::rng::Rng;
use rand_distr::{Distribution, Poisson};

use super::super::DataError;
use crate::data::rand_source::RandSource as Source;

/// x + N(0, c²).
pub(crate) fn gaussian(x: &[f64], c: f64, rng: &mut Rng) -> Vec<f64> {
    x.iter().map(|&v| v + c * rng.normal_f64()).collect()
}

/// Poisson(x·c)/c; pixels with x·c ≤ 0 stay 0 and draw nothing (numpy's Poisson(0) is 0).
pub(crate) fn shot(x: &[f64], c: f64, rng: &mut Rng) -> Result<Vec<f64>, DataError> {
    let mut src = Source(rng);
    x.iter()
        .map(|&v| {
            let lambda = v * c;
            if lambda.is_nan() || lambda <= 0.0 {
                return Ok(0.0);
            }
            let p = Poisson::new(lambda).map_err(|e| {
                DataError::Invalid(format!(
                    "shot_noise: Poisson rate {lambda} for pixel value {v}: {e}"
                ))
            })?;
            let k: f64 = p.sample(&mut src);
            Ok(k / c)
        })
        .collect()
}

/// Each pixel, with probability c, becomes 0 or 1 with equal odds (a Bernoulli per pixel, as
/// current skimage `random_noise(mode='s&p')`, not a fixed count): one uniform u per pixel,
/// u < c/2 → 0, c/2 ≤ u < c → 1.
pub(crate) fn impulse(x: &[f64], c: f64, rng: &mut Rng) -> Vec<f64> {
    x.iter()
        .map(|&v| {
            let u = rng.uniform_f64();
            if u < 0.5 * c {
                0.0
            } else if u < c {
                1.0
            } else {
                v
            }
        })
        .collect()
}

/// x + x·N(0, c²).
pub(crate) fn speckle(x: &[f64], c: f64, rng: &mut Rng) -> Vec<f64> {
    x.iter().map(|&v| v + v * (c * rng.normal_f64())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_var(v: &[f64]) -> (f64, f64) {
        let n = v.len() as f64;
        let m = v.iter().sum::<f64>() / n;
        (m, v.iter().map(|a| (a - m).powi(2)).sum::<f64>() / n)
    }

    #[test]
    fn gaussian_noise_has_the_table_sd() {
        let x = vec![0.5; 40_000];
        let out = gaussian(&x, 0.08, &mut Rng::new(1));
        let (m, v) = mean_var(&out);
        assert!((m - 0.5).abs() < 0.002, "{m}");
        assert!((v.sqrt() - 0.08).abs() < 0.002, "{}", v.sqrt());
    }

    #[test]
    fn shot_noise_is_poisson_over_c() {
        // Mean x, variance x/c, on both samplers of rand_distr (Knuth below rate 12,
        // rejection above).
        for (xv, c) in [(0.2, 50.0), (0.6, 500.0), (0.4, 3.0)] {
            let x = vec![xv; 40_000];
            let out = shot(&x, c, &mut Rng::new(2)).unwrap();
            let (m, v) = mean_var(&out);
            assert!((m - xv).abs() < 0.01 * xv.max(0.1), "{xv} {c}: mean {m}");
            assert!((v / (xv / c) - 1.0).abs() < 0.05, "{xv} {c}: var {v}");
            assert!(out.iter().all(|o| (o * c - (o * c).round()).abs() < 1e-9));
        }
        assert_eq!(
            shot(&[0.0, -0.1], 50.0, &mut Rng::new(2)).unwrap(),
            vec![0.0, 0.0]
        );
    }

    #[test]
    fn impulse_noise_flips_a_fraction_c_with_equal_odds() {
        let x = vec![0.5; 100_000];
        let out = impulse(&x, 0.07, &mut Rng::new(3));
        let zeros = out.iter().filter(|&&v| v == 0.0).count() as f64 / 1e5;
        let ones = out.iter().filter(|&&v| v == 1.0).count() as f64 / 1e5;
        assert!((zeros - 0.035).abs() < 0.003, "{zeros}");
        assert!((ones - 0.035).abs() < 0.003, "{ones}");
        assert!(out.iter().all(|&v| v == 0.0 || v == 1.0 || v == 0.5));
    }

    #[test]
    fn speckle_noise_scales_with_the_pixel() {
        let mut rng = Rng::new(4);
        assert_eq!(speckle(&[0.0; 10], 0.2, &mut rng), vec![0.0; 10]);
        let out = speckle(&vec![0.5; 40_000], 0.2, &mut rng);
        let (_, v) = mean_var(&out);
        assert!((v.sqrt() - 0.1).abs() < 0.003, "{}", v.sqrt());
    }
}
