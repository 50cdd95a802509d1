// Binary-weight variational continual learning, Phys. Rev. E 108, 014309 (2023): the Gaussian
// tail H(u) of its perceptron likelihood. Card: shared/methods/theory.md, "Binary-weight ...".

//! The Gaussian tail H(u) = ½·erfc(u/√2) = P(z > u), z ~ N(0, 1), in logarithms: the
//! perceptron's likelihood is H(−y·μ/√v), and a confidently wrong example puts u far into the
//! tail, where H underflows long before its logarithm does (H(40) ≈ 1e-350).
//!
//! - For u ≥ 0, x = u/√2: below x = 2 erf comes from its series with positive terms
//!   (erf(x) = 2/√π·e^{−x²}·Σ 2ⁿx^{2n+1}/(2n+1)!!, no cancellation) and H = ½(1 − erf);
//!   from x = 2 on, erfcx(x) = e^{x²}·erfc(x) from the continued fraction
//!   1/(√π·(x + ½/(x + 1/(x + (3/2)/(x + …))))) (64 levels: full f64 accuracy for x ≥ 2),
//!   and log H = −u²/2 + log(erfcx(x)/2), which never underflows.
//! - For u < 0: log H(u) = log1p(−H(−u)).
//!
//! The card's reference code adds 1e-10 inside H; engram computes the tail exactly instead.

use std::f64::consts::{FRAC_1_SQRT_2, PI, SQRT_2};

/// Where the series hands over to the continued fraction (in x = u/√2).
const X_SPLIT: f64 = 2.0;
/// Levels of the continued fraction (enough for x ≥ 2 to reach f64 rounding).
const CF_LEVELS: usize = 64;
/// Above this u, d/du log H(u) is −u to f64 rounding.
const HUGE: f64 = 1e150;

/// erf(x) for 0 ≤ x < 2 by the positive series.
fn erf_series(x: f64) -> f64 {
    let x2 = x * x;
    let mut term = x;
    let mut sum = x;
    let mut n = 0.0;
    while term > 1e-17 * sum {
        n += 1.0;
        term *= 2.0 * x2 / (2.0 * n + 1.0);
        sum += term;
    }
    2.0 / PI.sqrt() * (-x2).exp() * sum
}

/// erfcx(x) = e^{x²}·erfc(x) for x ≥ 2 by the continued fraction.
fn erfcx_cf(x: f64) -> f64 {
    let mut t = x;
    for k in (1..=CF_LEVELS).rev() {
        t = x + (k as f64 / 2.0) / t;
    }
    1.0 / (PI.sqrt() * t)
}

/// H(u) for u ≥ 0 when it does not underflow (u below ~38); the building block of the tail.
fn tail(u: f64) -> f64 {
    let x = u * FRAC_1_SQRT_2;
    if x < X_SPLIT {
        0.5 * (1.0 - erf_series(x))
    } else {
        0.5 * (-x * x).exp() * erfcx_cf(x)
    }
}

/// H(u) = ½·erfc(u/√2), the probability that a standard normal exceeds `u` (may underflow
/// to 0 for u ≳ 38; use [`log_h`] there).
pub fn h(u: f64) -> f64 {
    if u.is_nan() {
        return f64::NAN;
    }
    if u >= 0.0 { tail(u) } else { 1.0 - tail(-u) }
}

/// log H(u) (−u²/2 − log(u√(2π)) + o(1) for large u, → 0 for u → −∞): finite wherever its
/// value is, that is for every finite u below √(2·f64::MAX) ≈ 1.9e154; above, log H lies
/// below −f64::MAX and is −∞ (the product −½·u·u overflows there and nowhere below: ½·u is
/// exact). −∞ at u = +∞, 0 at u = −∞, NaN for NaN.
pub fn log_h(u: f64) -> f64 {
    if u.is_nan() {
        return f64::NAN;
    }
    if u < 0.0 {
        return (-tail(-u)).ln_1p();
    }
    if u == f64::INFINITY {
        return f64::NEG_INFINITY;
    }
    let x = u * FRAC_1_SQRT_2;
    if x < X_SPLIT {
        (0.5 * (1.0 - erf_series(x))).ln()
    } else {
        -0.5 * u * u + (0.5 * erfcx_cf(x)).ln()
    }
}

/// d/du log H(u) = −φ(u)/H(u) (minus the inverse Mills ratio), φ the standard normal
/// density: ≈ −u for large u, → 0 for u → −∞. Finite for every finite `u`.
pub fn dlog_h(u: f64) -> f64 {
    if u.is_nan() {
        return f64::NAN;
    }
    if u > HUGE {
        // −u − 1/u + …: 1/u is far below half an ulp of u, and the continued fraction's
        // 1/(√π·t) would underflow to 0 near f64::MAX.
        return -u;
    }
    let x = u * FRAC_1_SQRT_2;
    if x >= X_SPLIT {
        // φ(u)/H(u) = e^{−x²}/√(2π) / (½·e^{−x²}·erfcx(x)) = √(2/π)/erfcx(x); at u = +∞
        // erfcx → 0 and the ratio → +∞, as −u does.
        if u == f64::INFINITY {
            return f64::NEG_INFINITY;
        }
        return -(SQRT_2 / PI.sqrt()) / erfcx_cf(x);
    }
    let phi = (-0.5 * u * u).exp() / (2.0 * PI).sqrt();
    -phi / h(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (u, log H(u), d/du log H(u)) to 20 digits (mpmath, 40 digits of working precision).
    const REFERENCE: &[(f64, f64, f64)] = &[
        (-8.0, -6.220960574271786e-16, -5.052271083536895e-15),
        (-3.0, -0.0013508099647481938, -0.004437839042125664),
        (-1.0, -0.1727537790234499, -0.2875999709391784),
        (-0.5, -0.3689464152886564, -0.5091604338370335),
        (0.0, -std::f64::consts::LN_2, -0.7978845608028654),
        (0.5, -1.1759117615936185, -1.1410777703680646),
        (1.0, -1.8410216450092636, -1.525135276160981),
        (2.0, -3.783184333682032, -2.373215532822841),
        (2.8, -5.969652046675208, -3.0978660809267935),
        (2.9, -6.284058234947418, -3.190315139542982),
        (3.0, -6.60772622151035, -3.2830986549304364),
        (5.0, -15.064998393988725, -5.186503967125842),
        (10.0, -53.23128515051247, -10.098093233962512),
        (20.0, -203.91715537109727, -20.04975306852785),
        (40.0, -804.6084420137538, -40.02496884720726),
        (100.0, -5005.524208694205, -100.00999800099926),
        (1e4, -50000010.12927892, -10000.0001),
    ];

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    #[test]
    fn log_h_and_its_derivative_match_reference_values() {
        for &(u, lh, d) in REFERENCE {
            assert!(
                close(log_h(u), lh, 1e-13),
                "log H({u}) = {} vs {lh}",
                log_h(u)
            );
            assert!(
                close(dlog_h(u), d, 1e-13),
                "dlogH({u}) = {} vs {d}",
                dlog_h(u)
            );
        }
    }

    #[test]
    fn matches_direct_computation_for_moderate_arguments() {
        // Direct: the tail itself (no logarithm), for u where it is far from underflow, and
        // the derivative by central differences of log H.
        for i in -60..=60 {
            let u = i as f64 * 0.1;
            assert!(close(log_h(u).exp(), h(u), 1e-14), "u = {u}");
            let e = 1e-5;
            let fd = (log_h(u + e) - log_h(u - e)) / (2.0 * e);
            assert!(close(dlog_h(u), fd, 1e-8), "u = {u}: {} vs {fd}", dlog_h(u));
        }
        // H(u) + H(−u) = 1 and the known values of erfc.
        for u in [0.3, 1.7, 2.83, 4.0] {
            assert!(close(h(u) + h(-u), 1.0, 1e-15));
        }
        assert!(close(2.0 * h(SQRT_2), 0.157_299_207_050_285_13, 1e-14));
        assert!(close(
            2.0 * h(3.0 * SQRT_2),
            2.209_049_699_858_544e-5,
            1e-13
        ));
    }

    #[test]
    fn large_arguments_follow_the_asymptotic_form() {
        for u in [40.0, 100.0, 1e4] {
            let asym = -0.5 * u * u - (u * (2.0 * PI).sqrt()).ln();
            let got = log_h(u);
            assert!(got.is_finite());
            // The next term of the expansion is −1/u²: the difference is that, and smaller.
            assert!(
                (got - asym).abs() <= 1.0 / (u * u) + 1e-9 * asym.abs(),
                "u = {u}"
            );
            assert!(close(dlog_h(u), -u, 1.0 / (u * u)), "u = {u}");
        }
    }

    #[test]
    fn monotone_and_never_nan() {
        let mut prev = f64::INFINITY;
        let mut prev_d = 0.0;
        for i in -4000..=4000 {
            let u = i as f64 * 0.05;
            let (l, d) = (log_h(u), dlog_h(u));
            assert!(l.is_finite() && d.is_finite(), "u = {u}");
            assert!(l <= prev, "log H not decreasing at {u}");
            assert!(d <= prev_d + 1e-15, "dlogH not decreasing at {u}");
            prev = l;
            prev_d = d;
        }
        for u in [1e150, 1e300, f64::MAX, -1e300, f64::MIN] {
            assert!(!log_h(u).is_nan() && !dlog_h(u).is_nan(), "u = {u}");
            assert!(dlog_h(u).is_finite(), "u = {u}");
        }
        // log H is finite while its value is (u²/2 below f64::MAX), −∞ beyond.
        let edge = f64::MAX.sqrt() * SQRT_2;
        for u in [1.3e154, 1.4e154, 0.999 * edge] {
            let l = log_h(u);
            assert!(
                l.is_finite() && close(l, -0.5 * u * u, 1e-12),
                "u = {u}: {l}"
            );
        }
        assert_eq!(log_h(1.001 * edge), f64::NEG_INFINITY);
        assert_eq!(dlog_h(1e200), -1e200);
        assert!(close(dlog_h(0.999 * HUGE), -0.999 * HUGE, 1e-15));
        assert_eq!(log_h(f64::INFINITY), f64::NEG_INFINITY);
        assert_eq!(log_h(f64::NEG_INFINITY), 0.0);
        assert_eq!(dlog_h(f64::NEG_INFINITY), 0.0);
        assert_eq!(dlog_h(f64::INFINITY), f64::NEG_INFINITY);
    }
}
