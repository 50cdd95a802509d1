//! The weather family: snow, frost (engram's synthetic texture, `frost_synth`), fog, and the
//! diamond–square plasma fractal that fog and frost share.

use engram_weights::rng::Rng;

use super::blur::motion_blur_at;
use super::filter::{clipped_zoom, round_half_even};

/// (mean, between-crop sd, within-crop sd) of 28 × 28 crops of the package's frost textures
/// 1…5 at ×0.2, luminance 0.299R + 0.587G + 0.114B (card); `frost_synth` matches them.
pub const FROST_STATS: [(f64, f64, f64); 5] = [
    (129.0, 11.0, 14.0),
    (203.0, 10.0, 18.0),
    (203.0, 10.0, 18.0),
    (155.0, 11.0, 25.0),
    (113.0, 17.0, 34.0),
];

/// Segments in a frost texture's needle layer.
const NEEDLES: usize = 60;

/// The largest image side fog and frost accept: their plasma is side² values.
pub(crate) const MAX_PLASMA_SIDE: usize = 4096;

/// plasma(n, d): diamond–square on an n × n torus (n a power of two), as the reference's
/// `plasma_fractal`. M[0, 0] = 0, step n, w = 100; while step ≥ 2: the square centres, then the
/// edge midpoints at (i·step, j·step + step/2), then those at (i·step + step/2, j·step), each
/// get the mean of their 4 neighbours at distance step/2 plus w·U(−w, w) (draws row-major
/// within each set); step /= 2, w /= d. Returns (M − min)/(max − min), row-major.
pub(crate) fn plasma(n: usize, decay: f64, rng: &mut Rng) -> Vec<f64> {
    let mut m = vec![0.0; n * n];
    let at = |r: usize, c: usize| r * n + c;
    let mut step = n;
    let mut wib = 100.0_f64;
    while step >= 2 {
        let half = step / 2;
        let g = n / step;
        let wibble = |rng: &mut Rng| wib * (-wib + 2.0 * wib * rng.uniform_f64());
        for i in 0..g {
            let (r0, r1) = (i * step, (i + 1) % g * step);
            for j in 0..g {
                let (c0, c1) = (j * step, (j + 1) % g * step);
                let s = (m[at(r0, c0)] + m[at(r1, c0)]) + (m[at(r0, c1)] + m[at(r1, c1)]);
                m[at(r0 + half, c0 + half)] = s / 4.0 + wibble(rng);
            }
        }
        for i in 0..g {
            let (r, rc, rcp) = (i * step, i * step + half, (i + g - 1) % g * step + half);
            for j in 0..g {
                let (c, c1) = (j * step, (j + 1) % g * step);
                let s = (m[at(rc, c + half)] + m[at(rcp, c + half)]) + (m[at(r, c)] + m[at(r, c1)]);
                m[at(r, c + half)] = s / 4.0 + wibble(rng);
            }
        }
        for i in 0..g {
            let (r, r1) = (i * step, (i + 1) % g * step);
            for j in 0..g {
                let (c, cc, ccp) = (j * step, j * step + half, (j + g - 1) % g * step + half);
                let s = (m[at(r + half, cc)] + m[at(r + half, ccp)]) + (m[at(r, c)] + m[at(r1, c)]);
                m[at(r + half, c)] = s / 4.0 + wibble(rng);
            }
        }
        step /= 2;
        wib /= decay;
    }
    let lo = m.iter().copied().fold(f64::INFINITY, f64::min);
    for v in &mut m {
        *v -= lo;
    }
    let hi = m.iter().copied().fold(0.0, f64::max);
    if hi > 0.0 {
        for v in &mut m {
            *v /= hi;
        }
    }
    m
}

/// The plasma side for an h × w image: 32, or the next power of two of a larger side.
fn plasma_side(h: usize, w: usize) -> usize {
    h.max(w).max(32).next_power_of_two()
}

/// plasma(side, d) cropped to its top-left h × w.
fn plasma_crop(h: usize, w: usize, decay: f64, rng: &mut Rng) -> Vec<f64> {
    let n = plasma_side(h, w);
    let p = plasma(n, decay, rng);
    (0..h)
        .flat_map(|r| p[r * n..r * n + w].iter().copied())
        .collect()
}

/// Fog: (x + c₁·P)·max(x)/(max(x) + c₁), P = plasma(32, c₂) cropped.
pub(crate) fn fog(x: &[f64], h: usize, w: usize, c1: f64, c2: f64, rng: &mut Rng) -> Vec<f64> {
    let mx = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let p = plasma_crop(h, w, c2, rng);
    let denom = mx + c1;
    x.iter()
        .zip(p)
        .map(|(&v, p)| {
            if denom == 0.0 {
                0.0
            } else {
                (v + c1 * p) * mx / denom
            }
        })
        .collect()
}

/// Standardises `v` over its values (population sd); a constant vector becomes 0.
fn standardise(v: &mut [f64]) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let sd = (v.iter().map(|a| (a - m).powi(2)).sum::<f64>() / n).sqrt();
    for a in v.iter_mut() {
        *a = if sd > 0.0 { (*a - m) / sd } else { 0.0 };
    }
}

/// The needle layer: [`NEEDLES`] segments, each drawn as start x ~ U[0, W), start y ~ U[0, H)
/// (on the torus), angle ~ U[0, π), length ~ U(2, 8) px, intensity ~ U(0.5, 1); sampled every
/// 0.5 px, each sample spread on its 4 neighbours with bilinear weights (wrapping), the layer
/// keeping the maximum contribution per pixel.
fn needles(h: usize, w: usize, rng: &mut Rng) -> Vec<f64> {
    let mut out = vec![0.0_f64; h * w];
    for _ in 0..NEEDLES {
        let x0 = rng.uniform_f64() * w as f64;
        let y0 = rng.uniform_f64() * h as f64;
        let angle = rng.uniform_f64() * std::f64::consts::PI;
        let length = 2.0 + 6.0 * rng.uniform_f64();
        let intensity = 0.5 + 0.5 * rng.uniform_f64();
        let (dx, dy) = (angle.cos(), angle.sin());
        let samples = (length / 0.5).floor() as usize;
        for k in 0..=samples {
            let t = 0.5 * k as f64;
            let (px, py) = (x0 + t * dx, y0 + t * dy);
            let (fx, fy) = (px.floor(), py.floor());
            let (ax, ay) = (px - fx, py - fy);
            for (oy, wy) in [(0, 1.0 - ay), (1, ay)] {
                let r = (fy as i64 + oy).rem_euclid(h as i64) as usize;
                for (ox, wx) in [(0, 1.0 - ax), (1, ax)] {
                    let c = (fx as i64 + ox).rem_euclid(w as i64) as usize;
                    let v = intensity * wy * wx;
                    let cell = &mut out[r * w + c];
                    if v > *cell {
                        *cell = v;
                    }
                }
            }
        }
    }
    out
}

/// `frost_synth`'s texture T for texture `i` (1…5; others are clamped into that range), values
/// in 0…255, h × w row-major: F = z(needles) + 0.5·z(plasma(32, 2)) + 0.7·N(0, 1) per pixel,
/// F ← z(F), T = clip(μ + b·g + s·F, 0, 255) with g ~ N(0, 1) once per image and (μ, b, s)
/// = [`FROST_STATS`]`[i − 1]`. Draws: the needles, the plasma, the per-pixel normals, then g.
/// An empty image, or one with a side above 4096, gives an empty vector.
pub fn frost_texture(i: usize, h: usize, w: usize, rng: &mut Rng) -> Vec<f64> {
    if h == 0 || w == 0 || h.checked_mul(w).is_none() || h.max(w) > MAX_PLASMA_SIDE {
        return Vec::new();
    }
    let (mu, b, s) = FROST_STATS[i.clamp(1, 5) - 1];
    let mut nd = needles(h, w, rng);
    standardise(&mut nd);
    let mut p = plasma_crop(h, w, 2.0, rng);
    standardise(&mut p);
    let mut f: Vec<f64> = nd
        .iter()
        .zip(&p)
        .map(|(a, q)| a + 0.5 * q + 0.7 * rng.normal_f64())
        .collect();
    standardise(&mut f);
    let g = rng.normal_f64();
    f.iter()
        .map(|v| (mu + b * g + s * v).clamp(0.0, 255.0))
        .collect()
}

/// Frost: texture i ~ U{1…5}, then (c₁·255x + c₂·T)/255.
pub(crate) fn frost(x: &[f64], h: usize, w: usize, c1: f64, c2: f64, rng: &mut Rng) -> Vec<f64> {
    let i = 1 + rng.below(5);
    let t = frost_texture(i, h, w, rng);
    x.iter()
        .zip(t)
        .map(|(&v, t)| (c1 * 255.0 * v + c2 * t) / 255.0)
        .collect()
}

/// Snow with the row (c₁ … c₇): L ~ N(c₁, c₂²) per pixel; L ← Z_{c₃}(L); L[L < c₄] = 0; clip;
/// L ← motion blur (radius c₅, σ c₆, φ ~ U(−135°, −45°)); L ← round(255L)/255;
/// x′ = c₇x + (1 − c₇)·max(x, 1.5x + 0.5); out x′ + L + rot180(L).
pub(crate) fn snow(x: &[f64], h: usize, w: usize, c: &[f64; 7], rng: &mut Rng) -> Vec<f64> {
    let layer: Vec<f64> = (0..h * w).map(|_| c[0] + c[1] * rng.normal_f64()).collect();
    let layer: Vec<f64> = clipped_zoom(&layer, h, w, c[2])
        .into_iter()
        .map(|v| if v < c[3] { 0.0 } else { v.clamp(0.0, 1.0) })
        .collect();
    let angle = -135.0 + 90.0 * rng.uniform_f64();
    let layer: Vec<f64> = motion_blur_at(&layer, h, w, c[4] as usize, c[5], angle)
        .into_iter()
        .map(|v| round_half_even(v * 255.0).clamp(0.0, 255.0) / 255.0)
        .collect();
    let n = h * w;
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let lifted = c[6] * v + (1.0 - c[6]) * v.max(1.5 * v + 0.5);
            lifted + layer[i] + layer[n - 1 - i]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plasma_spans_zero_to_one() {
        for (seed, d) in [(1, 2.0), (2, 3.0), (3, 1.4)] {
            let p = plasma(32, d, &mut Rng::new(seed));
            assert_eq!(p.len(), 1024);
            let lo = p.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = p.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            assert_eq!((lo, hi), (0.0, 1.0));
            assert_eq!(p, plasma(32, d, &mut Rng::new(seed)));
        }
        assert_eq!(plasma_side(28, 28), 32);
        assert_eq!(plasma_side(33, 10), 64);
        // 2 × 2 by hand: step 2 fills (1, 1) = w·U(−w, w), then (0, 1) and (1, 0).
        let mut rng = Rng::new(9);
        let u: Vec<f64> = (0..3).map(|_| rng.uniform_f64()).collect();
        let wb = |u: f64| 100.0 * (-100.0 + 200.0 * u);
        let m11 = wb(u[0]);
        let m01 = (m11 + m11 + 0.0 + 0.0) / 4.0 + wb(u[1]);
        let m10 = (m11 + m11 + 0.0 + 0.0) / 4.0 + wb(u[2]);
        let raw = [0.0, m01, m10, m11];
        let lo = raw.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = raw.iter().map(|v| v - lo).fold(0.0, f64::max);
        let expect: Vec<f64> = raw.iter().map(|v| (v - lo) / hi).collect();
        assert_eq!(plasma(2, 2.0, &mut Rng::new(9)), expect);
    }

    #[test]
    fn fog_of_a_black_image_is_black() {
        let x = vec![0.0; 28 * 28];
        let out = fog(&x, 28, 28, 1.5, 1.75, &mut Rng::new(1));
        assert!(out.iter().all(|&v| v == 0.0));
        let x = vec![1.0; 28 * 28];
        let out = fog(&x, 28, 28, 0.5, 3.0, &mut Rng::new(1));
        // (1 + 0.5·P)/(1.5) spans [2/3, 1].
        assert!(
            out.iter()
                .all(|&v| (2.0 / 3.0 - 1e-12..=1.0 + 1e-12).contains(&v))
        );
    }

    #[test]
    fn frost_textures_match_their_statistics() {
        // Over many 28 × 28 textures: the mean of the image means is μ, their sd is b, and
        // the mean within-image sd is s (clipping at 0/255 shaves a little off).
        let (h, w) = (28, 28);
        let mut rng = Rng::new(11);
        for (i, &(mu, b, s)) in FROST_STATS.iter().enumerate() {
            let mut means = Vec::new();
            let mut sds = Vec::new();
            let (mut lag1, mut lag4) = (0.0, 0.0);
            let reps = 300;
            for _ in 0..reps {
                let t = frost_texture(i + 1, h, w, &mut rng);
                let m = t.iter().sum::<f64>() / t.len() as f64;
                let var = t.iter().map(|v| (v - m).powi(2)).sum::<f64>() / t.len() as f64;
                means.push(m);
                sds.push(var.sqrt());
                let ac = |lag: usize| {
                    let mut s = 0.0;
                    for r in 0..h {
                        for c in 0..w - lag {
                            s += (t[r * w + c] - m) * (t[r * w + c + lag] - m);
                        }
                    }
                    s / (h * (w - lag)) as f64 / var
                };
                lag1 += ac(1) / reps as f64;
                lag4 += ac(4) / reps as f64;
            }
            let mm = means.iter().sum::<f64>() / reps as f64;
            let between =
                (means.iter().map(|v| (v - mm).powi(2)).sum::<f64>() / reps as f64).sqrt();
            let within = sds.iter().sum::<f64>() / reps as f64;
            assert!((mm - mu).abs() < 2.0, "texture {}: mean {mm}", i + 1);
            assert!(
                (between - b).abs() < 0.15 * b,
                "texture {}: between {between}",
                i + 1
            );
            assert!(
                (within - s).abs() < 1.0,
                "texture {}: within {within}",
                i + 1
            );
            // The card's target: lag-1 ≈ 0.38, lag-4 ≈ 0.11 (package crops 0.21–0.45 and
            // 0.09–0.29).
            assert!(
                (0.2..0.5).contains(&lag1),
                "texture {}: lag-1 {lag1}",
                i + 1
            );
            assert!(
                (0.0..0.3).contains(&lag4),
                "texture {}: lag-4 {lag4}",
                i + 1
            );
        }
        assert!(frost_texture(3, 0, 5, &mut rng).is_empty());
        assert_eq!(frost_texture(9, 4, 4, &mut rng).len(), 16);
    }

    #[test]
    fn snow_only_brightens() {
        let (h, w) = (28, 28);
        let x: Vec<f64> = (0..h * w).map(|i| (i % 29) as f64 / 28.0).collect();
        let row = [0.3, 0.3, 1.25, 0.65, 14.0, 12.0, 0.8];
        let out = snow(&x, h, w, &row, &mut Rng::new(3));
        assert!(out.iter().zip(&x).all(|(o, v)| o >= v));
        assert!(out.iter().all(|v| v.is_finite()));
    }
}
