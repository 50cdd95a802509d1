//! Filters and resamplers the corruptions share, each behaving like the library call the
//! reference makes: skimage `gaussian` (scipy `gaussian_filter`), scipy `zoom` (order 1) as
//! used by `clipped_zoom`, scipy `map_coordinates` (order 1, `reflect`), and OpenCV's
//! `filter2D` (a correlation, border reflect-101). Images are row-major h × w `f64`.

/// How an index outside 0..n is folded back into the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Border {
    /// Edge replicate: a a | a b c d | d d (scipy `nearest`, skimage's default).
    Nearest,
    /// Half-sample symmetric: b a | a b c d | d c (scipy `reflect`).
    Reflect,
    /// Whole-sample symmetric: c b | a b c d | c b (OpenCV `BORDER_REFLECT_101`, scipy
    /// `mirror`).
    Reflect101,
}

impl Border {
    /// The index inside 0..n that stands for `i` (0 when n ≤ 1).
    pub(crate) fn index(self, i: i64, n: usize) -> usize {
        let n = n as i64;
        if n <= 1 {
            return 0;
        }
        if (0..n).contains(&i) {
            return i as usize;
        }
        let m = match self {
            Border::Nearest => i.clamp(0, n - 1),
            Border::Reflect => {
                let r = i.rem_euclid(2 * n);
                if r >= n { 2 * n - 1 - r } else { r }
            }
            Border::Reflect101 => {
                let r = i.rem_euclid(2 * n - 2);
                if r >= n { 2 * n - 2 - r } else { r }
            }
        };
        m as usize
    }
}

/// The normalised 1-D Gaussian of scipy's `gaussian_filter1d`: radius ⌊truncate·σ + ½⌋,
/// weights exp(−x²/2σ²) summing to 1. σ ≈ 0 gives the identity `[1]` (scipy skips the axis).
pub(crate) fn gaussian_kernel(sigma: f64, truncate: f64) -> Vec<f64> {
    if sigma.is_nan() || sigma <= 1e-15 {
        return vec![1.0];
    }
    let radius = (truncate * sigma + 0.5) as i64;
    let mut k: Vec<f64> = (-radius..=radius)
        .map(|x| (-0.5 / (sigma * sigma) * (x * x) as f64).exp())
        .collect();
    let sum: f64 = k.iter().sum();
    for v in &mut k {
        *v /= sum;
    }
    k
}

/// Correlates each column (`vertical`) or each row with the odd-length kernel `k`, centred.
fn correlate_axis(
    x: &[f64],
    h: usize,
    w: usize,
    k: &[f64],
    vertical: bool,
    border: Border,
) -> Vec<f64> {
    let r = (k.len() / 2) as i64;
    let mut out = vec![0.0; h * w];
    for y in 0..h {
        for c in 0..w {
            let mut s = 0.0;
            for (j, &kj) in k.iter().enumerate() {
                let off = j as i64 - r;
                let v = if vertical {
                    x[border.index(y as i64 + off, h) * w + c]
                } else {
                    x[y * w + border.index(c as i64 + off, w)]
                };
                s += kj * v;
            }
            out[y * w + c] = s;
        }
    }
    out
}

/// Separable correlation with the same 1-D kernel along axis 0 (rows index), then axis 1, in
/// scipy's order.
pub(crate) fn separable(x: &[f64], h: usize, w: usize, k: &[f64], border: Border) -> Vec<f64> {
    let once = correlate_axis(x, h, w, k, true, border);
    correlate_axis(&once, h, w, k, false, border)
}

/// G_σ: a Gaussian filter with radius ⌊truncate·σ + ½⌋ (skimage `gaussian`: truncate 4,
/// border [`Border::Nearest`]; the elastic displacement fields: truncate 3, `reflect`).
pub(crate) fn gaussian(
    x: &[f64],
    h: usize,
    w: usize,
    sigma: f64,
    truncate: f64,
    border: Border,
) -> Vec<f64> {
    let k = gaussian_kernel(sigma, truncate);
    if k.len() == 1 {
        return x.to_vec();
    }
    separable(x, h, w, &k, border)
}

/// OpenCV `filter2D`: out[y, x] = Σ k[u, v]·x[y + u − kh/2, x + v − kw/2] (a correlation,
/// anchor at the kernel's centre), indices folded by `border`.
pub(crate) fn correlate2d(
    x: &[f64],
    h: usize,
    w: usize,
    k: &[f64],
    kh: usize,
    kw: usize,
    border: Border,
) -> Vec<f64> {
    let (ry, rx) = ((kh / 2) as i64, (kw / 2) as i64);
    // Folded indices per kernel offset, computed once.
    let rows: Vec<Vec<usize>> = (0..h)
        .map(|y| {
            (0..kh)
                .map(|u| border.index(y as i64 + u as i64 - ry, h))
                .collect()
        })
        .collect();
    let cols: Vec<Vec<usize>> = (0..w)
        .map(|c| {
            (0..kw)
                .map(|v| border.index(c as i64 + v as i64 - rx, w))
                .collect()
        })
        .collect();
    let mut out = vec![0.0; h * w];
    for (y, ry) in rows.iter().enumerate() {
        for (c, cx) in cols.iter().enumerate() {
            let mut s = 0.0;
            for (u, &yy) in ry.iter().enumerate() {
                let krow = &k[u * kw..(u + 1) * kw];
                let xrow = &x[yy * w..(yy + 1) * w];
                for (&kv, &xx) in krow.iter().zip(cx) {
                    s += kv * xrow[xx];
                }
            }
            out[y * w + c] = s;
        }
    }
    out
}

/// Python's `round` (ties to even), as scipy's `zoom` uses for the output size.
pub(crate) fn round_half_even(v: f64) -> f64 {
    v.round_ties_even()
}

/// Per output coordinate of a corner-aligned order-1 resize from `n_in` to `n_out` samples:
/// (first tap, second tap, weight of the first, weight of the second).
fn zoom_axis(n_in: usize, n_out: usize) -> Vec<(usize, usize, f64, f64)> {
    let f = if n_out > 1 {
        (n_in as f64 - 1.0) / (n_out as f64 - 1.0)
    } else {
        1.0
    };
    let last = n_in.saturating_sub(1) as f64;
    (0..n_out)
        .map(|k| {
            // scipy (mode `constant`) would give 0 where rounding puts k·f a hair past the
            // last sample; that never happens at the sizes engram uses (28, 32), and a
            // clamp is the sane reading elsewhere.
            let cc = (k as f64 * f).min(last);
            let start = cc.floor();
            let frac = cc - start;
            let i0 = Border::Reflect101.index(start as i64, n_in);
            let i1 = Border::Reflect101.index(start as i64 + 1, n_in);
            (i0, i1, 1.0 - frac, frac)
        })
        .collect()
}

/// scipy `zoom(order=1)` of an ih × iw image to oh × ow (corner-aligned: output k samples the
/// input at k·(n_in − 1)/(n_out − 1)).
pub(crate) fn zoom_linear(x: &[f64], ih: usize, iw: usize, oh: usize, ow: usize) -> Vec<f64> {
    let ay = zoom_axis(ih, oh);
    let ax = zoom_axis(iw, ow);
    let mut out = Vec::with_capacity(oh * ow);
    for &(y0, y1, wy0, wy1) in &ay {
        for &(x0, x1, wx0, wx1) in &ax {
            let mut t = x[y0 * iw + x0] * wy0 * wx0;
            t += x[y0 * iw + x1] * wy0 * wx1;
            t += x[y1 * iw + x0] * wy1 * wx0;
            t += x[y1 * iw + x1] * wy1 * wx1;
            out.push(t);
        }
    }
    out
}

/// One axis of Z_z: (crop start, crop length, zoomed length, trim).
fn zoom_plan(n: usize, z: f64) -> (usize, usize, usize, usize) {
    let ch = ((n as f64 / z).ceil() as usize).clamp(1, n);
    let top = (n - ch) / 2;
    let out = (round_half_even(ch as f64 * z) as usize).max(1);
    let trim = out.saturating_sub(n) / 2;
    (top, ch, out, trim)
}

/// Z_z (the reference's `clipped_zoom`): crop the centre ⌈H/z⌉ × ⌈W/z⌉, resize it to
/// round(⌈H/z⌉·z) × round(⌈W/z⌉·z) with [`zoom_linear`], keep H × W from offset
/// (⌊(out − H)/2⌋, ⌊(out − W)/2⌋). Each axis is handled alone, so square images crop the
/// centre square as the card says. z ≥ 1.
pub(crate) fn clipped_zoom(x: &[f64], h: usize, w: usize, z: f64) -> Vec<f64> {
    let (ty, chy, oy, tr_y) = zoom_plan(h, z);
    let (tx, chx, ox, tr_x) = zoom_plan(w, z);
    let mut crop = Vec::with_capacity(chy * chx);
    for y in ty..ty + chy {
        crop.extend_from_slice(&x[y * w + tx..y * w + tx + chx]);
    }
    let big = zoom_linear(&crop, chy, chx, oy, ox);
    let mut out = Vec::with_capacity(h * w);
    for y in 0..h {
        let yy = (tr_y + y).min(oy - 1);
        for c in 0..w {
            out.push(big[yy * ox + (tr_x + c).min(ox - 1)]);
        }
    }
    out
}

/// scipy's `map_coordinate` for mode `reflect`: folds a coordinate into (−1, len − 1].
fn fold_reflect(c: f64, len: usize) -> f64 {
    let n = len as f64;
    if c < 0.0 {
        if len <= 1 {
            return 0.0;
        }
        let sz2 = 2.0 * n;
        let mut c = c;
        if c < -sz2 {
            c += sz2 * (-c / sz2).trunc();
        }
        // The guard keeps −c − 1 above −1 (scipy does the same).
        if c < -n {
            c + sz2
        } else {
            (if c > -1e-15 { 1e-15 } else { -c }) - 1.0
        }
    } else if c > n - 1.0 {
        if len <= 1 {
            return 0.0;
        }
        let sz2 = 2.0 * n;
        let c = c - sz2 * (c / sz2).trunc();
        if c >= n { sz2 - c - 1.0 } else { c }
    } else {
        c
    }
}

/// One axis of an order-1 `reflect` sample: taps and weights, or `None` where scipy falls
/// back to the constant 0 (only for NaN coordinates).
fn reflect_taps(c: f64, len: usize) -> Option<(usize, usize, f64, f64)> {
    let cc = fold_reflect(c, len);
    if cc.is_nan() || cc <= -1.0 {
        return None;
    }
    let start = cc.floor();
    let frac = cc - start;
    let s = (start as i64).clamp(-1, len as i64);
    Some((
        Border::Reflect.index(s, len),
        Border::Reflect.index(s + 1, len),
        1.0 - frac,
        frac,
    ))
}

/// Bilinear sampling of the h × w image `x` at (y + dy, x + dx) for every pixel, border
/// `reflect` (half-sample symmetric): scipy `map_coordinates(x, [y + dy, x + dx], order=1,
/// mode='reflect')`. Returns an empty vector when the lengths disagree with h × w.
pub fn sample_bilinear_reflect(x: &[f64], h: usize, w: usize, dy: &[f64], dx: &[f64]) -> Vec<f64> {
    let Some(n) = h.checked_mul(w) else {
        return Vec::new();
    };
    if x.len() != n || dy.len() != n || dx.len() != n {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(n);
    for y in 0..h {
        for c in 0..w {
            let i = y * w + c;
            let v = match (
                reflect_taps(y as f64 + dy[i], h),
                reflect_taps(c as f64 + dx[i], w),
            ) {
                (Some((y0, y1, wy0, wy1)), Some((x0, x1, wx0, wx1))) => {
                    let mut t = x[y0 * w + x0] * wy0 * wx0;
                    t += x[y0 * w + x1] * wy0 * wx1;
                    t += x[y1 * w + x0] * wy1 * wx0;
                    t += x[y1 * w + x1] * wy1 * wx1;
                    t
                }
                _ => 0.0,
            };
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borders_fold_as_their_libraries_do() {
        let f = |b: Border, i| b.index(i, 3);
        // n = 3: a b c.
        assert_eq!([-2, -1, 3, 4].map(|i| f(Border::Nearest, i)), [0, 0, 2, 2]);
        assert_eq!(
            [-2, -1, 3, 4, 6, -7].map(|i| f(Border::Reflect, i)),
            [1, 0, 2, 1, 0, 0]
        );
        assert_eq!(
            [-2, -1, 3, 4, 5].map(|i| f(Border::Reflect101, i)),
            [2, 1, 1, 0, 1]
        );
        assert_eq!(Border::Reflect101.index(-5, 1), 0);
    }

    #[test]
    fn gaussian_kernel_radius_and_sum() {
        for (sigma, radius) in [(0.4, 2), (0.6, 2), (1.0, 4), (0.05, 0), (1.5, 6), (0.7, 3)] {
            let k = gaussian_kernel(sigma, 4.0);
            assert_eq!(k.len(), 2 * radius + 1, "σ = {sigma}");
            assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
        // Truncate 3 (elastic): ⌊3·5.6 + 0.5⌋ = 17.
        assert_eq!(gaussian_kernel(5.6, 3.0).len(), 35);
        assert_eq!(gaussian_kernel(0.0, 3.0), vec![1.0]);
        // Hand value: σ = 1, weights ∝ exp(−x²/2) for |x| ≤ 4.
        let k = gaussian_kernel(1.0, 4.0);
        let z: f64 = (-4..=4).map(|x: i32| (-(x * x) as f64 / 2.0).exp()).sum();
        assert!((k[4] - 1.0 / z).abs() < 1e-15);
        assert!((k[5] - (-0.5f64).exp() / z).abs() < 1e-15);
    }

    #[test]
    fn gaussian_filter_keeps_constants_and_smooths_a_point() {
        let (h, w) = (7, 9);
        let x = vec![0.37; h * w];
        for border in [Border::Nearest, Border::Reflect, Border::Reflect101] {
            let g = gaussian(&x, h, w, 1.3, 4.0, border);
            assert!(g.iter().all(|v| (v - 0.37).abs() < 1e-12));
        }
        let mut p = vec![0.0; h * w];
        p[3 * w + 4] = 1.0;
        let g = gaussian(&p, h, w, 0.8, 4.0, Border::Nearest);
        let k = gaussian_kernel(0.8, 4.0);
        let r = k.len() / 2;
        assert!((g[3 * w + 4] - k[r] * k[r]).abs() < 1e-15);
        assert!((g[2 * w + 5] - k[r - 1] * k[r + 1]).abs() < 1e-15);
        assert!((g.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn zoom_at_one_is_the_identity() {
        let (h, w) = (28, 28);
        let x: Vec<f64> = (0..h * w)
            .map(|i| ((i * 37) % 101) as f64 / 100.0)
            .collect();
        assert_eq!(clipped_zoom(&x, h, w, 1.0), x);
        let (h, w) = (5, 7);
        let x: Vec<f64> = (0..h * w).map(|i| i as f64).collect();
        assert_eq!(clipped_zoom(&x, h, w, 1.0), x);
    }

    #[test]
    fn zoom_by_two_by_hand() {
        // 4 × 4, z = 2: crop the centre 2 × 2 (rows/cols 1..3), resize to 4 × 4 sampling at
        // k/3, trim 0.
        let x: Vec<f64> = (0..16).map(|i| i as f64).collect();
        let z = clipped_zoom(&x, 4, 4, 2.0);
        // Crop [[5, 6], [9, 10]]; row 0 samples 5 → 6 at 0, 1/3, 2/3, 1.
        let expect_row0 = [5.0, 5.0 + 1.0 / 3.0, 5.0 + 2.0 / 3.0, 6.0];
        for (a, b) in z[..4].iter().zip(expect_row0) {
            assert!((a - b).abs() < 1e-12, "{z:?}");
        }
        // Rows step by 4/3 (9 − 5 over 3 intervals).
        assert!((z[4] - (5.0 + 4.0 / 3.0)).abs() < 1e-12);
        assert!((z[15] - 10.0).abs() < 1e-12);
        // 28 at z = 2.25: crop 13, zoomed to round(29.25) = 29, trim 0.
        assert_eq!(zoom_plan(28, 2.25), (7, 13, 29, 0));
        // Python's round is half to even: 26·1.25 = 32.5 → 32.
        assert_eq!(zoom_plan(32, 1.25), (3, 26, 32, 0));
        assert_eq!(zoom_plan(28, 3.0), (9, 10, 30, 1));
    }

    #[test]
    fn correlate2d_is_a_correlation() {
        // An asymmetric kernel [0, 0, 1] picks the right neighbour.
        let x: Vec<f64> = (0..12).map(|i| i as f64).collect();
        let out = correlate2d(&x, 3, 4, &[0.0, 0.0, 1.0], 1, 3, Border::Reflect101);
        assert_eq!(
            out,
            vec![
                1.0, 2.0, 3.0, 2.0, 5.0, 6.0, 7.0, 6.0, 9.0, 10.0, 11.0, 10.0
            ]
        );
    }

    #[test]
    fn bilinear_reflect_samples() {
        let (h, w) = (3, 4);
        let x: Vec<f64> = (0..12).map(|i| (i * i) as f64).collect();
        let zero = vec![0.0; 12];
        assert_eq!(sample_bilinear_reflect(&x, h, w, &zero, &zero), x);
        // Half a pixel right of (1, 1): between 25 and 36.
        let mut dx = zero.clone();
        dx[5] = 0.5;
        // 0.3 left of column 0: half-sample reflect keeps x[.., 0].
        dx[4] = -0.3;
        // 1.25 right of column 3 (x = 4.25): reflects to 2.75 → 0.25·x[1,2] + 0.75·x[1,3].
        dx[7] = 1.25;
        let out = sample_bilinear_reflect(&x, h, w, &zero, &dx);
        assert!((out[5] - 30.5).abs() < 1e-12);
        assert!((out[4] - 16.0).abs() < 1e-12);
        assert!((out[7] - (0.25 * 36.0 + 0.75 * 49.0)).abs() < 1e-12);
        // Far outside: y = −7.5 ≡ −1.5 (period 6) reflects about −½ to 0.5: rows 0 and 1.
        let mut dy = zero.clone();
        dy[0] = -7.5;
        let out = sample_bilinear_reflect(&x, h, w, &dy, &zero);
        assert!((out[0] - 0.5 * (0.0 + 16.0)).abs() < 1e-12, "{}", out[0]);
        assert!(sample_bilinear_reflect(&x, h, w, &dy[..3], &zero).is_empty());
        // NaN displacements give scipy's constant 0, not a panic.
        dy[0] = f64::NAN;
        assert_eq!(sample_bilinear_reflect(&x, h, w, &dy, &zero)[0], 0.0);
    }
}
