//! The blur family: defocus (anti-aliased disk), glass (blur, local pixel swaps, blur),
//! motion (the package's numpy kernel), zoom (mean of centre zooms) and Gaussian blur.

use engram_weights::rng::Rng;

use super::filter::{self, Border};

/// The reference's `disk`: 1{u² + v² ≤ r²} on u, v ∈ −8…8 (−⌈r⌉…⌈r⌉ when r > 8), normalised,
/// then blurred by OpenCV's `GaussianBlur` (3 × 3, or 5 × 5 when r > 8, σ = `alias`, border
/// reflect-101). Returns the kernel and its side.
fn disk(radius: f64, alias: f64) -> (Vec<f64>, usize) {
    let half = if radius <= 8.0 {
        8
    } else {
        radius.ceil() as i64
    };
    let side = (2 * half + 1) as usize;
    let mut k: Vec<f64> = Vec::with_capacity(side * side);
    for u in -half..=half {
        for v in -half..=half {
            k.push(if ((u * u + v * v) as f64) <= radius * radius {
                1.0
            } else {
                0.0
            });
        }
    }
    let sum: f64 = k.iter().sum();
    if sum > 0.0 {
        for v in &mut k {
            *v /= sum;
        }
    }
    // OpenCV's getGaussianKernel(n, σ > 0): exp(−(i − (n−1)/2)²/2σ²), normalised.
    let n = if radius <= 8.0 { 3 } else { 5 };
    let g = if alias > 0.0 {
        let mut g: Vec<f64> = (0..n)
            .map(|i| {
                let x = i as f64 - (n as f64 - 1.0) * 0.5;
                (-0.5 / (alias * alias) * x * x).exp()
            })
            .collect();
        let s: f64 = g.iter().sum();
        for v in &mut g {
            *v /= s;
        }
        g
    } else {
        vec![1.0]
    };
    (
        filter::separable(&k, side, side, &g, Border::Reflect101),
        side,
    )
}

/// Defocus blur: correlate with [`disk`]`(r, σ_a)`, border reflect-101 (OpenCV `filter2D`).
pub(crate) fn defocus(x: &[f64], h: usize, w: usize, radius: f64, alias: f64) -> Vec<f64> {
    let (k, side) = disk(radius, alias);
    filter::correlate2d(x, h, w, &k, side, side, Border::Reflect101)
}

/// Glass blur: y = trunc_u8(255·G_σ(x)); `iterations` times, for h = H−δ down to δ+1 and
/// w = W−δ down to δ+1, draw dx then dy uniform on {−δ, …, δ−1} and swap y[h, w] with
/// y[h+dy, w+dx]; return G_σ(y/255).
pub(crate) fn glass(
    x: &[f64],
    h: usize,
    w: usize,
    sigma: f64,
    delta: usize,
    iterations: usize,
    rng: &mut Rng,
) -> Vec<f64> {
    let blurred = filter::gaussian(x, h, w, sigma, 4.0, Border::Nearest);
    // numpy's uint8 cast of the (in-range) blurred values: truncation.
    let mut y: Vec<f64> = blurred
        .iter()
        .map(|&v| (v * 255.0).clamp(0.0, 255.0).trunc())
        .collect();
    let d = delta as i64;
    let (hh, ww) = (h as i64, w as i64);
    for _ in 0..iterations {
        let mut r = hh - d;
        while r > d {
            let mut c = ww - d;
            while c > d {
                let dx = rng.below(2 * delta) as i64 - d;
                let dy = rng.below(2 * delta) as i64 - d;
                // r + dy ∈ [1, H−1] and c + dx ∈ [1, W−1] by the loop bounds.
                y.swap((r * ww + c) as usize, ((r + dy) * ww + c + dx) as usize);
                c -= 1;
            }
            r -= 1;
        }
    }
    for v in &mut y {
        *v /= 255.0;
    }
    filter::gaussian(&y, h, w, sigma, 4.0, Border::Nearest)
}

/// Motion blur along a fixed angle, as the package's `_motion_blur(x, radius, sigma, angle)`:
/// taps i = 0…2R with weights ∝ exp(−i²/2σ²) (normalised), tap i reads the image shifted by
/// (dy, dx) = (−⌈i·sinφ − ½⌉, −⌈i·cosφ − ½⌉) with edge replication, stopping at the first
/// tap with |dy| ≥ H or |dx| ≥ W. σ ≤ 0 keeps only tap 0 (the identity). Returns an empty
/// vector when `x.len()` ≠ h × w or the radius exceeds 2²⁰.
pub fn motion_blur_at(
    x: &[f64],
    h: usize,
    w: usize,
    radius: usize,
    sigma: f64,
    angle_deg: f64,
) -> Vec<f64> {
    if h.checked_mul(w) != Some(x.len()) || radius > 1 << 20 {
        return Vec::new();
    }
    let width = 2 * radius + 1;
    let kernel: Vec<f64> = if sigma > 0.0 {
        let k: Vec<f64> = (0..width)
            .map(|i| (-((i * i) as f64) / (2.0 * sigma * sigma)).exp())
            .collect();
        let z: f64 = k.iter().sum();
        k.iter().map(|v| v / z).collect()
    } else {
        (0..width).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect()
    };
    // The package's arithmetic: point = width·(sin, cos), offsets i·point/|point|.
    let phi = angle_deg.to_radians();
    let (py, px) = (width as f64 * phi.sin(), width as f64 * phi.cos());
    let hyp = py.hypot(px);
    let mut out = vec![0.0; h * w];
    for (i, &k) in kernel.iter().enumerate() {
        let dy = -((i as f64 * py / hyp - 0.5).ceil());
        let dx = -((i as f64 * px / hyp - 0.5).ceil());
        if !(dy.abs() < h as f64 && dx.abs() < w as f64) {
            break;
        }
        let (dy, dx) = (dy as i64, dx as i64);
        for r in 0..h {
            let sr = (r as i64 - dy).clamp(0, h as i64 - 1) as usize;
            for c in 0..w {
                let sc = (c as i64 - dx).clamp(0, w as i64 - 1) as usize;
                out[r * w + c] += k * x[sr * w + sc];
            }
        }
    }
    out
}

/// Motion blur at φ ~ U(−45°, 45°).
pub(crate) fn motion(
    x: &[f64],
    h: usize,
    w: usize,
    radius: usize,
    sigma: f64,
    rng: &mut Rng,
) -> Vec<f64> {
    let angle = -45.0 + 90.0 * rng.uniform_f64();
    motion_blur_at(x, h, w, radius, sigma, angle)
}

/// The zoom factors of `np.arange(1, stop, step)` with its `count` values, computed as numpy
/// fills an arange (start + i·((start + step) − start)), which decides some rounding of
/// round(⌈H/z⌉·z).
pub(crate) fn zoom_factors(step: f64, count: usize) -> Vec<f64> {
    let delta = (1.0 + step) - 1.0;
    (0..count)
        .map(|i| match i {
            0 => 1.0,
            1 => 1.0 + step,
            _ => 1.0 + i as f64 * delta,
        })
        .collect()
}

/// Zoom blur: (x + Σ_z Z_z(x))/(n + 1) over the n factors.
pub(crate) fn zoom(x: &[f64], h: usize, w: usize, step: f64, count: usize) -> Vec<f64> {
    let factors = zoom_factors(step, count);
    let mut acc = vec![0.0; h * w];
    for &z in &factors {
        for (a, v) in acc.iter_mut().zip(filter::clipped_zoom(x, h, w, z)) {
            *a += v;
        }
    }
    let n = (factors.len() + 1) as f64;
    x.iter().zip(acc).map(|(&v, a)| (v + a) / n).collect()
}

/// Gaussian blur G_σ (skimage `gaussian`: truncate 4, edge replicate).
pub(crate) fn gaussian(x: &[f64], h: usize, w: usize, sigma: f64) -> Vec<f64> {
    filter::gaussian(x, h, w, sigma, 4.0, Border::Nearest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_kernels_sum_to_one() {
        for (r, a) in [
            (0.3, 0.4),
            (1.0, 0.2),
            (1.5, 0.1),
            (6.0, 0.5),
            (8.0, 0.5),
            (10.0, 0.5),
        ] {
            let (k, side) = disk(r, a);
            assert_eq!(side, if r > 8.0 { 21 } else { 17 });
            let sum = k.iter().sum::<f64>();
            if r < side as f64 / 2.0 - 1.0 {
                assert!((sum - 1.0).abs() < 1e-12, "r = {r}: {sum}");
            } else {
                // A disk touching the grid's edge gains a little mass from OpenCV's
                // reflect-101 blur of the kernel, as in the reference.
                assert!(sum > 1.0 && sum < 1.03, "r = {r}: {sum}");
            }
        }
        // r = 0.3 is a single pixel blurred by the 3 × 3 Gaussian of σ = 0.4.
        let (k, side) = disk(0.3, 0.4);
        let e = (-0.5f64 / 0.16).exp();
        let g = [e / (1.0 + 2.0 * e), 1.0 / (1.0 + 2.0 * e)];
        let c = 8 * side + 8;
        assert!((k[c] - g[1] * g[1]).abs() < 1e-15);
        assert!((k[c + 1] - g[0] * g[1]).abs() < 1e-15);
        assert!((k[c + side + 1] - g[0] * g[0]).abs() < 1e-15);
        assert_eq!(k[c + 2], 0.0);
    }

    #[test]
    fn defocus_and_zoom_keep_a_constant_image() {
        let (h, w) = (28, 28);
        let x = vec![0.6; h * w];
        for (r, a) in [(0.3, 0.4), (1.5, 0.1), (6.0, 0.5)] {
            assert!(
                defocus(&x, h, w, r, a)
                    .iter()
                    .all(|v| (v - 0.6).abs() < 1e-12)
            );
        }
        assert!(
            zoom(&x, h, w, 0.01, 26)
                .iter()
                .all(|v| (v - 0.6).abs() < 1e-12)
        );
        assert!(
            gaussian(&x, h, w, 1.0)
                .iter()
                .all(|v| (v - 0.6).abs() < 1e-12)
        );
    }

    #[test]
    fn zoom_factors_follow_numpy_arange() {
        assert_eq!(zoom_factors(0.01, 7).len(), 7);
        let f = zoom_factors(0.01, 26);
        assert!((f[25] - 1.25).abs() < 1e-12);
        // numpy's fill: 1 + 25·(1.01 − 1) lands just above 1.25.
        assert!(f[25] > 1.25);
        assert_eq!(f[1], 1.01);
    }

    #[test]
    fn motion_blur_at_zero_degrees_by_hand() {
        // φ = 0: dx_i = −⌈i − ½⌉ = −i, dy = 0, so out[c] = Σ k_i·x[min(c + i, W−1)].
        let (h, w) = (1, 6);
        let x = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
        let out = motion_blur_at(&x, h, w, 1, 1.0, 0.0);
        let e = [1.0, (-0.5f64).exp(), (-2.0f64).exp()];
        let z: f64 = e.iter().sum();
        let at = |c: usize| (0..3).map(|i| e[i] / z * x[(c + i).min(5)]).sum::<f64>();
        for c in 0..w {
            assert!((out[c] - at(c)).abs() < 1e-12, "{c}: {out:?}");
        }
        // φ = 90°: dy_i = −i, dx = 0 on a column.
        let out = motion_blur_at(&x, 6, 1, 1, 1.0, 90.0);
        for (r, o) in out.iter().enumerate() {
            assert!((o - at(r)).abs() < 1e-12);
        }
        // Taps that leave the image stop the sum: on 1 × 2, only i = 0 and 1 remain.
        let out = motion_blur_at(&[1.0, 1.0], 1, 2, 3, 1.0, 0.0);
        let kept =
            (1.0 + (-0.5f64).exp()) / (0..7).map(|i| (-(i * i) as f64 / 2.0).exp()).sum::<f64>();
        assert!((out[0] - kept).abs() < 1e-12);
        assert!(motion_blur_at(&x, 2, 2, 1, 1.0, 0.0).is_empty());
    }

    #[test]
    fn glass_blur_only_swaps_at_tiny_sigma() {
        // σ = 0.05 has radius 0: both blurs are the identity, so the output is a permutation
        // of trunc(255·x)/255.
        let (h, w) = (6, 7);
        let x: Vec<f64> = (0..h * w)
            .map(|i| ((i * 53) % 256) as f64 / 255.0)
            .collect();
        let mut rng = Rng::new(5);
        let out = glass(&x, h, w, 0.05, 1, 2, &mut rng);
        let key = |v: &[f64]| {
            let mut k: Vec<u32> = v.iter().map(|a| (a * 255.0).round() as u32).collect();
            k.sort_unstable();
            k
        };
        assert_eq!(key(&out), key(&x));
        assert_ne!(out, x);
        let again = glass(&x, h, w, 0.05, 1, 2, &mut Rng::new(5));
        assert_eq!(out, again);
    }
}
