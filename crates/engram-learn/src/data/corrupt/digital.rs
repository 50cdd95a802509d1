//! The digital family: brightness, contrast, elastic transform, pixelate (PIL's BOX
//! resampling) and `jpeg_approx` (luminance-only baseline JPEG without entropy coding).

use engram_weights::rng::Rng;

use super::super::DataError;
use super::filter::{self, Border};

/// Brightness: x + c (for gray, the V of HSV is the value itself).
pub(crate) fn brightness(x: &[f64], c: f64) -> Vec<f64> {
    x.iter().map(|&v| v + c).collect()
}

/// Contrast: (x − mean)·c + mean, the mean over the image.
pub(crate) fn contrast(x: &[f64], c: f64) -> Vec<f64> {
    let m = x.iter().sum::<f64>() / x.len() as f64;
    x.iter().map(|&v| (v - m) * c + m).collect()
}

/// Solves the 3 × 3 system a·s = b by Cramer's rule; `None` when singular.
fn solve3(a: [[f64; 3]; 3], b: [f64; 3]) -> Option<[f64; 3]> {
    let det = |m: [[f64; 3]; 3]| {
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    };
    let d = det(a);
    if d.is_nan() || d.abs() <= 1e-12 {
        return None;
    }
    let mut s = [0.0; 3];
    for (k, sk) in s.iter_mut().enumerate() {
        let mut m = a;
        for r in 0..3 {
            m[r][k] = b[r];
        }
        *sk = det(m) / d;
    }
    Some(s)
}

/// The affine map (x, y) ↦ (m0·x + m1·y + m2, m3·x + m4·y + m5) taking `from[k]` to `to[k]`
/// (OpenCV `getAffineTransform`); `None` for collinear points.
fn affine_from_points(from: &[(f64, f64); 3], to: &[(f64, f64); 3]) -> Option<[f64; 6]> {
    let a = from.map(|(x, y)| [x, y, 1.0]);
    let r0 = solve3(a, to.map(|p| p.0))?;
    let r1 = solve3(a, to.map(|p| p.1))?;
    Some([r0[0], r0[1], r0[2], r1[0], r1[1], r1[2]])
}

/// OpenCV `warpAffine` (bilinear, `BORDER_REFLECT_101`) given the inverse map `m` (output
/// pixel → source position). Source positions are quantised to 1/32 px through OpenCV's
/// fixed-point path (2⁻¹⁰ px, then rounded to 2⁻⁵ px).
fn warp_affine(x: &[f64], h: usize, w: usize, m: &[f64; 6]) -> Vec<f64> {
    let fix = |v: f64| (v * 1024.0).round_ties_even() as i64;
    let mut out = Vec::with_capacity(h * w);
    for r in 0..h {
        let x0 = fix(m[1] * r as f64 + m[2]).saturating_add(16);
        let y0 = fix(m[4] * r as f64 + m[5]).saturating_add(16);
        for c in 0..w {
            let px = fix(m[0] * c as f64).saturating_add(x0) >> 5;
            let py = fix(m[3] * c as f64).saturating_add(y0) >> 5;
            let (sx, ax) = (px >> 5, (px & 31) as f64 / 32.0);
            let (sy, ay) = (py >> 5, (py & 31) as f64 / 32.0);
            let (x0i, x1i) = (
                Border::Reflect101.index(sx, w),
                Border::Reflect101.index(sx.saturating_add(1), w),
            );
            let (y0i, y1i) = (
                Border::Reflect101.index(sy, h),
                Border::Reflect101.index(sy.saturating_add(1), h),
            );
            let v = x[y0i * w + x0i] * ((1.0 - ay) * (1.0 - ax))
                + x[y0i * w + x1i] * ((1.0 - ay) * ax)
                + x[y1i * w + x0i] * (ay * (1.0 - ax))
                + x[y1i * w + x1i] * (ay * ax);
            out.push(v);
        }
    }
    out
}

/// Elastic transform with (c₁, c₂, c₃) already multiplied by H. Affine first: o = (⌊W/2⌋,
/// ⌊H/2⌋), s = ⌊min(H, W)/3⌋, the points o + (s, s), o + (s, −s), o − (s, s) as (x, y), each
/// coordinate moved by U(−c₃, c₃) (drawn x then y, point by point), the image warped by the
/// map old → new points. Then dx = c₁·G_{c₂}(U(−1, 1)^{H×W}), then dy alike (G: `reflect`,
/// truncate 3), and the warped image sampled bilinearly at (y + dy, x + dx), border `reflect`.
pub(crate) fn elastic(
    x: &[f64],
    h: usize,
    w: usize,
    c: (f64, f64, f64),
    rng: &mut Rng,
) -> Result<Vec<f64>, DataError> {
    let (alpha, sigma, shift) = c;
    let s = (h.min(w) / 3) as f64;
    if s < 1.0 {
        return Err(DataError::Invalid(format!(
            "elastic_transform needs an image of at least 3 × 3 pixels, got {h} × {w}"
        )));
    }
    let (ox, oy) = ((w / 2) as f64, (h / 2) as f64);
    let from = [(ox + s, oy + s), (ox + s, oy - s), (ox - s, oy - s)];
    let mut to = from;
    for p in &mut to {
        p.0 += -shift + 2.0 * shift * rng.uniform_f64();
        p.1 += -shift + 2.0 * shift * rng.uniform_f64();
    }
    // warpAffine samples the source at the inverse of the old → new map.
    let inv = affine_from_points(&to, &from).ok_or_else(|| {
        DataError::Invalid(format!(
            "elastic_transform: degenerate affine map on a {h} × {w} image"
        ))
    })?;
    let warped = warp_affine(x, h, w, &inv);
    let mut field = || {
        let u: Vec<f64> = (0..h * w).map(|_| -1.0 + 2.0 * rng.uniform_f64()).collect();
        let g = filter::gaussian(&u, h, w, sigma, 3.0, Border::Reflect);
        g.into_iter().map(|v| v * alpha).collect::<Vec<f64>>()
    };
    let dx = field();
    let dy = field();
    Ok(filter::sample_bilinear_reflect(&warped, h, w, &dy, &dx))
}

/// PIL's fixed-point precision for 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's BOX coefficients from `n_in` to `n_out` samples: output i, scale = n_in/n_out,
/// f = max(scale, 1), centre c = (i + ½)·scale, inputs k in [⌊c − f/2 + ½⌋, ⌊c + f/2 + ½⌋) ∩
/// [0, n_in) with weight 1 where (k + ½ − c)/f ∈ (−½, ½], normalised, then converted to
/// fixed point. Returns (first input, weights) per output.
fn box_coeffs(n_in: usize, n_out: usize) -> Vec<(usize, Vec<i64>)> {
    let scale = n_in as f64 / n_out as f64;
    let fscale = scale.max(1.0);
    let support = 0.5 * fscale;
    (0..n_out)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero; the values are ≥ 0 here but for i = 0.
            let lo = ((center - support + 0.5) as i64).max(0);
            let hi = ((center + support + 0.5) as i64).min(n_in as i64);
            let mut k: Vec<f64> = (lo..hi)
                .map(|x| {
                    let t = (x as f64 - center + 0.5) / fscale;
                    if t > -0.5 && t <= 0.5 { 1.0 } else { 0.0 }
                })
                .collect();
            let sum: f64 = k.iter().sum();
            if sum != 0.0 {
                for v in &mut k {
                    *v /= sum;
                }
            }
            let fixed = k
                .iter()
                .map(|&v| (0.5 + v * (1u64 << PRECISION_BITS) as f64) as i64)
                .collect();
            (lo.max(0) as usize, fixed)
        })
        .collect()
}

/// One PIL 8-bit resampling pass along rows (`horizontal`) or columns, rounded to u8.
fn box_pass(img: &[u8], h: usize, w: usize, n_out: usize, horizontal: bool) -> Vec<u8> {
    let (n_in, lines) = if horizontal { (w, h) } else { (h, w) };
    let coeffs = box_coeffs(n_in, n_out);
    let (oh, ow) = if horizontal { (h, n_out) } else { (n_out, w) };
    let mut out = vec![0u8; oh * ow];
    for line in 0..lines {
        for (o, (first, k)) in coeffs.iter().enumerate() {
            let mut ss: i64 = 1 << (PRECISION_BITS - 1);
            for (j, &kj) in k.iter().enumerate() {
                let v = if horizontal {
                    img[line * w + first + j]
                } else {
                    img[(first + j) * w + line]
                };
                ss += v as i64 * kj;
            }
            let v = (ss >> PRECISION_BITS).clamp(0, 255) as u8;
            if horizontal {
                out[line * ow + o] = v;
            } else {
                out[o * ow + line] = v;
            }
        }
    }
    out
}

/// PIL `Image.resize((ow, oh), BOX)` of an 8-bit h × w image: the horizontal pass first,
/// each pass rounded to u8, a pass skipped when its size does not change. Upsampling reduces
/// to nearest, k = ⌊(i + ½)·scale⌋.
pub(crate) fn pil_box(img: &[u8], h: usize, w: usize, oh: usize, ow: usize) -> Vec<u8> {
    let mid = if ow != w {
        box_pass(img, h, w, ow, true)
    } else {
        img.to_vec()
    };
    if oh != h {
        box_pass(&mid, h, ow, oh, false)
    } else {
        mid
    }
}

/// x in [0, 1] to the u8 it encodes (x = u8/255 in the pipeline, so this recovers it).
fn to_levels(x: &[f64]) -> Vec<u8> {
    x.iter()
        .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect()
}

/// Pixelate: BOX down to ⌊H·c⌋ × ⌊W·c⌋, BOX back to H × W, on the 8-bit image.
pub(crate) fn pixelate(x: &[f64], h: usize, w: usize, c: f64) -> Result<Vec<f64>, DataError> {
    let (sh, sw) = ((h as f64 * c) as usize, (w as f64 * c) as usize);
    if sh == 0 || sw == 0 {
        return Err(DataError::Invalid(format!(
            "pixelate at factor {c} needs an image whose sides are at least {}, got {h} × {w}",
            (1.0 / c).ceil()
        )));
    }
    let small = pil_box(&to_levels(x), h, w, sh, sw);
    let back = pil_box(&small, sh, sw, h, w);
    Ok(back.into_iter().map(|v| v as f64 / 255.0).collect())
}

/// The standard JPEG luminance quantisation table (ITU T.81 Annex K.1), row-major.
const LUMA_TABLE: [u32; 64] = [
    16, 11, 10, 16, 24, 40, 51, 61, //
    12, 12, 14, 19, 26, 58, 60, 55, //
    14, 13, 16, 24, 40, 57, 69, 56, //
    14, 17, 22, 29, 51, 87, 80, 62, //
    18, 22, 37, 56, 68, 109, 103, 77, //
    24, 35, 55, 64, 81, 104, 113, 92, //
    49, 64, 78, 87, 103, 121, 120, 101, //
    72, 92, 95, 98, 112, 100, 103, 99,
];

/// libjpeg's table for `quality` (1…100, baseline): S = ⌊5000/Q⌋ if Q < 50 else 200 − 2Q,
/// Q_t = clamp(⌊(S·T + 50)/100⌋, 1, 255).
pub(crate) fn quant_table(quality: u32) -> [f64; 64] {
    let q = quality.clamp(1, 100);
    let s = if q < 50 { 5000 / q } else { 200 - 2 * q };
    LUMA_TABLE.map(|t| ((s * t + 50) / 100).clamp(1, 255) as f64)
}

/// An 8 × 8 block.
type Block = [[f64; 8]; 8];

/// The orthonormal 8-point DCT-II basis: b[u][x] = α(u)·cos((2x + 1)uπ/16).
fn dct_basis() -> Block {
    let mut b = [[0.0; 8]; 8];
    for (u, row) in b.iter_mut().enumerate() {
        let a = if u == 0 { (1.0f64 / 8.0).sqrt() } else { 0.5 };
        for (x, v) in row.iter_mut().enumerate() {
            *v = a * ((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI / 16.0).cos();
        }
    }
    b
}

fn matmul(a: &Block, b: &Block) -> Block {
    let mut out = [[0.0; 8]; 8];
    for (orow, arow) in out.iter_mut().zip(a) {
        for (j, o) in orow.iter_mut().enumerate() {
            *o = arow.iter().zip(b).map(|(&aik, brow)| aik * brow[j]).sum();
        }
    }
    out
}

fn transpose(a: &Block) -> Block {
    let mut t = [[0.0; 8]; 8];
    for (i, row) in a.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            t[j][i] = v;
        }
    }
    t
}

/// `jpeg_approx` on an 8-bit image: edge-replicate to multiples of 8; per 8 × 8 block the
/// orthonormal DCT of (u8 − 128), q = round-half-away(F/Q_t), dequantise, inverse DCT, + 128,
/// round, clamp to 0…255; crop back to h × w.
pub(crate) fn jpeg_levels(img: &[u8], h: usize, w: usize, quality: u32) -> Vec<u8> {
    let qt = quant_table(quality);
    let b = dct_basis();
    let bt = transpose(&b);
    let mut out = vec![0u8; h * w];
    for by in (0..h).step_by(8) {
        for bx in (0..w).step_by(8) {
            let mut f: Block = [[0.0; 8]; 8];
            for (y, row) in f.iter_mut().enumerate() {
                let sy = (by + y).min(h - 1);
                for (x, v) in row.iter_mut().enumerate() {
                    *v = img[sy * w + (bx + x).min(w - 1)] as f64 - 128.0;
                }
            }
            // F = B·f·Bᵀ, quantised and dequantised, then f = Bᵀ·F·B.
            let mut coef = matmul(&matmul(&b, &f), &bt);
            for (row, qrow) in coef.iter_mut().zip(qt.chunks_exact(8)) {
                for (c, &q) in row.iter_mut().zip(qrow) {
                    *c = (*c / q).round() * q;
                }
            }
            let rec = matmul(&matmul(&bt, &coef), &b);
            for (y, row) in rec.iter().enumerate().take(h - by) {
                for (x, &v) in row.iter().enumerate().take(w - bx) {
                    out[(by + y) * w + bx + x] = (v + 128.0).round().clamp(0.0, 255.0) as u8;
                }
            }
        }
    }
    out
}

/// `jpeg_approx` at `quality` on x in [0, 1] (through its u8 levels).
pub(crate) fn jpeg(x: &[f64], h: usize, w: usize, quality: u32) -> Vec<f64> {
    jpeg_levels(&to_levels(x), h, w, quality)
        .into_iter()
        .map(|v| v as f64 / 255.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brightness_and_contrast_by_hand() {
        assert_eq!(
            brightness(&[0.0, 0.5, 0.96], 0.05),
            vec![0.05, 0.55, 0.96 + 0.05]
        );
        // Mean 0.5: (0.2 − 0.5)·0.5 + 0.5 = 0.35, (0.8 − 0.5)·0.5 + 0.5 = 0.65.
        let c = contrast(&[0.2, 0.8], 0.5);
        assert!((c[0] - 0.35).abs() < 1e-15 && (c[1] - 0.65).abs() < 1e-15);
        assert_eq!(contrast(&[0.3; 4], 0.15), vec![0.3; 4]);
    }

    #[test]
    fn box_four_to_three_by_hand() {
        // scale 4/3, support 2/3: out 0 ← in[0]; out 1 ← mean(in[1], in[2]); out 2 ← in[3].
        let out = pil_box(&[10, 20, 31, 40], 1, 4, 1, 3);
        // (20 + 31)/2 = 25.5 rounds up in PIL's fixed point: (51·2²¹ + 2²¹) >> 22 = 26.
        assert_eq!(out, vec![10, 26, 40]);
        // The same along columns.
        assert_eq!(pil_box(&[10, 20, 31, 40], 4, 1, 3, 1), vec![10, 26, 40]);
    }

    #[test]
    fn box_28_to_26_to_28_by_hand() {
        // Down, scale 28/26: the window [c − 0.538, c + 0.538] around c = (i + ½)·28/26 holds
        // one input centre, or two (each weight ½) when it straddles; e.g. i = 6: c = 7.0,
        // inputs 6 and 7; i = 0: c = 0.538, input 0; i = 25: c = 27.46, input 27.
        let row: Vec<u8> = (0..28).map(|i| (i * 9) as u8).collect();
        let down = pil_box(&row, 1, 28, 1, 26);
        let scale = 28.0 / 26.0;
        for (i, &d) in down.iter().enumerate() {
            let c = (i as f64 + 0.5) * scale;
            let taps: Vec<usize> = (0..28)
                .filter(|&k| {
                    let t = (k as f64 + 0.5 - c) / scale;
                    t > -0.5 && t <= 0.5
                })
                .collect();
            let mean = taps.iter().map(|&k| row[k] as f64).sum::<f64>() / taps.len() as f64;
            assert_eq!(d as f64, (mean + 1e-9).round(), "output {i}, taps {taps:?}");
        }
        assert_eq!(down[0], 0);
        assert_eq!(down[6], ((54 + 63) as f64 / 2.0).round() as u8);
        assert_eq!(down[25], 243);
        // Up, scale 26/28 is nearest: k = ⌊(i + ½)·26/28⌋.
        let up = pil_box(&down, 1, 26, 1, 28);
        for (i, &u) in up.iter().enumerate() {
            let k = ((i as f64 + 0.5) * 26.0 / 28.0).floor() as usize;
            assert_eq!(u, down[k], "output {i}");
        }
        assert_eq!((up[13], up[14], up[27]), (down[12], down[13], down[25]));
        // pixelate on an image constant along columns gives the row result on every row.
        let x: Vec<f64> = (0..28 * 28).map(|i| row[i % 28] as f64 / 255.0).collect();
        let p = pixelate(&x, 28, 28, 0.95).unwrap();
        for r in 0..28 {
            for c in 0..28 {
                assert_eq!(p[r * 28 + c], up[c] as f64 / 255.0);
            }
        }
    }

    #[test]
    fn pixelate_jpeg_keep_a_constant_image() {
        let x = vec![117.0 / 255.0; 28 * 28];
        for c in [0.95, 0.9, 0.85, 0.75, 0.65] {
            assert_eq!(pixelate(&x, 28, 28, c).unwrap(), x);
        }
        for q in [80, 65, 58, 50, 40, 7] {
            let out = jpeg_levels(&vec![117u8; 28 * 28], 28, 28, q);
            let d = 117i32 - out[0] as i32;
            assert!(out.iter().all(|&v| v == out[0]), "quality {q}");
            assert!(
                d.abs() <= if q >= 40 { 1 } else { 8 },
                "quality {q}: {}",
                out[0]
            );
        }
        assert!(pixelate(&x[..4], 2, 2, 0.4).is_err());
    }

    #[test]
    fn jpeg_quality_tables() {
        assert_eq!(quant_table(50).map(|v| v as u32), LUMA_TABLE);
        // Q = 80: S = 40, ⌊(40·16 + 50)/100⌋ = 6; Q = 40: S = 125, ⌊(125·16 + 50)/100⌋ = 20.
        assert_eq!(quant_table(80)[0], 6.0);
        assert_eq!(quant_table(40)[0], 20.0);
        assert!(quant_table(100).iter().all(|&v| v == 1.0));
        // Q = 7: S = 714 and the 255 ceiling.
        assert_eq!(quant_table(7)[63], 255.0);
    }

    #[test]
    fn jpeg_at_quality_100_is_nearly_the_identity() {
        let (h, w) = (28, 28);
        let img: Vec<u8> = (0..h * w)
            .map(|i| {
                let (r, c) = ((i / w) as f64, (i % w) as f64);
                (127.0 + 100.0 * (r / 3.0).sin() * (c / 4.0).cos()) as u8
            })
            .collect();
        let out = jpeg_levels(&img, h, w, 100);
        let diffs: Vec<i32> = img
            .iter()
            .zip(&out)
            .map(|(&a, &b)| a as i32 - b as i32)
            .collect();
        assert!(diffs.iter().all(|d| d.abs() <= 1), "{diffs:?}");
        let mean = diffs.iter().map(|d| d.abs() as f64).sum::<f64>() / diffs.len() as f64;
        assert!(mean < 0.3, "{mean}");
        // Lower quality loses more.
        let low = jpeg_levels(&img, h, w, 40);
        let mean40 = img
            .iter()
            .zip(&low)
            .map(|(&a, &b)| (a as f64 - b as f64).abs())
            .sum::<f64>()
            / 784.0;
        assert!(mean40 > mean, "{mean40}");
        // Odd sizes are padded by edge replication and cropped back.
        assert_eq!(jpeg_levels(&[9, 200, 31], 1, 3, 90).len(), 3);
    }

    #[test]
    fn affine_and_warp_identity() {
        let pts = [(23.0, 23.0), (23.0, 5.0), (5.0, 5.0)];
        let m = affine_from_points(&pts, &pts).unwrap();
        for (a, b) in m.iter().zip([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]) {
            assert!((a - b).abs() < 1e-12);
        }
        let x: Vec<f64> = (0..30).map(|i| i as f64).collect();
        assert_eq!(warp_affine(&x, 5, 6, &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]), x);
        // A shift by half a pixel right: the mean of neighbours, the last column reflected.
        let out = warp_affine(&x, 5, 6, &[1.0, 0.0, 0.5, 0.0, 1.0, 0.0]);
        assert_eq!(out[0], 0.5);
        assert_eq!(out[5], 0.5 * (5.0 + 4.0));
        // A shifted triangle maps as the shift.
        let to = pts.map(|(x, y)| (x + 1.5, y - 2.0));
        let m = affine_from_points(&pts, &to).unwrap();
        assert!((m[2] - 1.5).abs() < 1e-12 && (m[5] + 2.0).abs() < 1e-12);
        assert!(affine_from_points(&[(0.0, 0.0), (1.0, 1.0), (2.0, 2.0)], &pts).is_none());
    }
}
