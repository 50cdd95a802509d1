//! CoTTA's test-time augmentation (qinenergy/cotta `get_tta_transforms`; card
//! `shared/methods/test_time.md`, CoTTA step 3), for grayscale images on the host.
//!
//! **One draw per pass for the whole batch**: the transforms of the reference act on a batch
//! tensor, so every image of a pass shares one colour jitter, one affine and one blur; only
//! the final noise is drawn per pixel. Pipeline: clip [0, 1] → colour jitter (brightness
//! [0.6, 1.4], contrast [0.7, 1.3], gamma [0.7, 1.3], in a random order; saturation and hue do
//! nothing on gray and are dropped) → edge-pad H/2 → affine (rotation ±15°, translation up to
//! 1/16 of the padded side, rounded to pixels, scale [0.9, 1.1], bilinear, 0 outside) →
//! Gaussian blur (kernel 5, σ ∈ [0.001, 0.5], reflect border) → centre crop H → horizontal
//! flip (probability 0.5, when enabled) → + N(0, 0.005²) per pixel → clip [0, 1].
//!
//! Draw order, for reproducibility: the jitter order (a permutation of 3), brightness,
//! contrast, gamma, angle, x then y translation, scale, σ, flip; then the noise, image by
//! image, row-major.

use engram_weights::rng::Rng;
use rayon::prelude::*;

/// One pass's draws, shared by every image of the batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Draw {
    /// Jitter operations in the order applied: 0 brightness, 1 contrast, 2 gamma.
    pub order: [usize; 3],
    pub brightness: f64,
    pub contrast: f64,
    pub gamma: f64,
    pub angle_deg: f64,
    /// Translation in pixels of the padded image.
    pub translate: [f64; 2],
    pub scale: f64,
    pub sigma: f64,
    pub flip: bool,
}

fn between(rng: &mut Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.uniform_f64()
}

impl Draw {
    /// Draws one pass's parameters for images of side `h` × `w` (`flip`: whether flipping is
    /// allowed at all).
    pub fn sample(rng: &mut Rng, h: usize, w: usize, flip: bool) -> Draw {
        let mut order = [0, 1, 2];
        rng.shuffle(&mut order);
        let brightness = between(rng, 0.6, 1.4);
        let contrast = between(rng, 0.7, 1.3);
        let gamma = between(rng, 0.7, 1.3);
        let angle_deg = between(rng, -15.0, 15.0);
        // torchvision's RandomAffine: max_dx = translate · width, the draw rounded.
        let (pw, ph) = ((w + 2 * (w / 2)) as f64, (h + 2 * (h / 2)) as f64);
        let tx = between(rng, -pw / 16.0, pw / 16.0).round();
        let ty = between(rng, -ph / 16.0, ph / 16.0).round();
        let scale = between(rng, 0.9, 1.1);
        let sigma = between(rng, 0.001, 0.5);
        let f = rng.uniform_f64() < 0.5;
        Draw {
            order,
            brightness,
            contrast,
            gamma,
            angle_deg,
            translate: [tx, ty],
            scale,
            sigma,
            flip: flip && f,
        }
    }
}

/// The colour jitter of one image, in place (values in [0, 1]).
fn jitter(img: &mut [f64], d: &Draw) {
    for &op in &d.order {
        match op {
            0 => img
                .iter_mut()
                .for_each(|v| *v = (*v * d.brightness).clamp(0.0, 1.0)),
            1 => {
                let mean = img.iter().sum::<f64>() / img.len().max(1) as f64;
                img.iter_mut().for_each(|v| {
                    *v = (d.contrast * *v + (1.0 - d.contrast) * mean).clamp(0.0, 1.0)
                });
            }
            _ => img
                .iter_mut()
                .for_each(|v| *v = v.powf(d.gamma).clamp(0.0, 1.0)),
        }
    }
}

/// The 5-tap Gaussian kernel of torchvision's `GaussianBlur(5, σ)`.
fn blur_kernel(sigma: f64) -> [f64; 5] {
    let mut k = [0.0; 5];
    for (i, v) in k.iter_mut().enumerate() {
        let x = i as f64 - 2.0;
        *v = (-0.5 * (x / sigma).powi(2)).exp();
    }
    let s: f64 = k.iter().sum();
    k.map(|v| v / s)
}

/// One image (h × w, values in [0, 1]) through the pipeline except the noise.
pub fn transform_image(x: &[f32], h: usize, w: usize, d: &Draw) -> Vec<f64> {
    let mut img: Vec<f64> = x.iter().map(|&v| (v as f64).clamp(0.0, 1.0)).collect();
    jitter(&mut img, d);
    // Edge padding by (h/2, w/2): the padded image at (py, px) is the image at the clamped
    // position. The affine then maps each output pixel of the padded frame back to a source
    // position (inverse map about the padded frame's centre).
    let (ph, pw) = (h / 2, w / 2);
    let (hh, ww) = (h + 2 * ph, w + 2 * pw);
    let padded = |py: isize, px: isize| -> f64 {
        if py < 0 || px < 0 || py >= hh as isize || px >= ww as isize {
            return 0.0;
        }
        let y = (py - ph as isize).clamp(0, h as isize - 1) as usize;
        let xx = (px - pw as isize).clamp(0, w as isize - 1) as usize;
        img[y * w + xx]
    };
    let (cy, cx) = ((hh as f64 - 1.0) / 2.0, (ww as f64 - 1.0) / 2.0);
    let (sin, cos) = d.angle_deg.to_radians().sin_cos();
    let affine = |oy: f64, ox: f64| -> f64 {
        let (dx, dy) = (ox - cx - d.translate[0], oy - cy - d.translate[1]);
        // Inverse of rotation by the angle and scaling.
        let sx = (cos * dx + sin * dy) / d.scale + cx;
        let sy = (-sin * dx + cos * dy) / d.scale + cy;
        let (x0, y0) = (sx.floor(), sy.floor());
        let (fx, fy) = (sx - x0, sy - y0);
        let (x0, y0) = (x0 as isize, y0 as isize);
        padded(y0, x0) * (1.0 - fx) * (1.0 - fy)
            + padded(y0, x0 + 1) * fx * (1.0 - fy)
            + padded(y0 + 1, x0) * (1.0 - fx) * fy
            + padded(y0 + 1, x0 + 1) * fx * fy
    };
    // Only the crop and a 2-pixel margin for the blur are needed: rows and columns
    // ph − 2 .. ph + h + 2 of the padded frame (reflect borders of the padded frame are never
    // reached for h ≥ 4).
    let m = 2usize;
    let (rh, rw) = (h + 2 * m, w + 2 * m);
    let mut region = vec![0.0; rh * rw];
    for ry in 0..rh {
        for rx in 0..rw {
            let oy = (ph + ry) as f64 - m as f64;
            let ox = (pw + rx) as f64 - m as f64;
            region[ry * rw + rx] = affine(oy, ox);
        }
    }
    let k = blur_kernel(d.sigma);
    // Separable blur: rows, then columns.
    let mut rows = vec![0.0; rh * w];
    for ry in 0..rh {
        for x in 0..w {
            rows[ry * w + x] = (0..5).map(|t| k[t] * region[ry * rw + x + t]).sum();
        }
    }
    let mut out = vec![0.0; h * w];
    for y in 0..h {
        for x in 0..w {
            let v: f64 = (0..5).map(|t| k[t] * rows[(y + t) * w + x]).sum();
            let xo = if d.flip { w - 1 - x } else { x };
            out[y * w + xo] = v;
        }
    }
    out
}

/// The batch `x` (n images of h × w, row-major) through one pass with draw `d`; `rng` gives
/// the per-pixel noise after the draw. A trailing partial image is left out.
pub fn augment_batch(x: &[f32], h: usize, w: usize, d: &Draw, rng: &mut Rng) -> Vec<f32> {
    let plane = h * w;
    if plane == 0 {
        return Vec::new();
    }
    let mut out: Vec<f32> = Vec::with_capacity(x.len());
    let images: Vec<Vec<f64>> = x
        .par_chunks_exact(plane)
        .map(|img| transform_image(img, h, w, d))
        .collect();
    for img in images {
        for v in img {
            let noisy = v + 0.005 * rng.normal_f64();
            out.push(noisy.clamp(0.0, 1.0) as f32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity_draw() -> Draw {
        Draw {
            order: [0, 1, 2],
            brightness: 1.0,
            contrast: 1.0,
            gamma: 1.0,
            angle_deg: 0.0,
            translate: [0.0, 0.0],
            scale: 1.0,
            sigma: 0.001,
            flip: false,
        }
    }

    fn image() -> Vec<f32> {
        (0..28 * 28)
            .map(|i| ((i * 37) % 101) as f32 / 100.0)
            .collect()
    }

    #[test]
    fn identity_parameters_give_the_image_back() {
        let x = image();
        let out = transform_image(&x, 28, 28, &identity_draw());
        for (a, b) in out.iter().zip(&x) {
            assert!((a - *b as f64).abs() < 1e-9);
        }
    }

    #[test]
    fn flip_translation_and_jitter_by_hand() {
        let x = image();
        let mut d = identity_draw();
        d.flip = true;
        let out = transform_image(&x, 28, 28, &d);
        assert!((out[3] - x[24] as f64).abs() < 1e-9);
        // A translation by (+2, +1) pixels moves content right and down.
        let mut d = identity_draw();
        d.translate = [2.0, 1.0];
        let out = transform_image(&x, 28, 28, &d);
        assert!((out[5 * 28 + 7] - x[4 * 28 + 5] as f64).abs() < 1e-9);
        // Brightness then contrast then gamma, each clamped.
        let mut d = identity_draw();
        d.brightness = 1.2;
        d.contrast = 0.5;
        d.gamma = 2.0;
        let out = transform_image(&x, 28, 28, &d);
        let b: Vec<f64> = x.iter().map(|&v| (v as f64 * 1.2).min(1.0)).collect();
        let mean = b.iter().sum::<f64>() / b.len() as f64;
        let want = ((0.5 * b[10] + 0.5 * mean).powi(2)).min(1.0);
        assert!((out[10] - want).abs() < 1e-9);
    }

    #[test]
    fn one_draw_per_batch_and_deterministic() {
        let x: Vec<f32> = image().into_iter().chain(image()).collect();
        let mut r = Rng::new(4);
        let d = Draw::sample(&mut r, 28, 28, true);
        let a = augment_batch(&x, 28, 28, &d, &mut Rng::new(9));
        let b = augment_batch(&x, 28, 28, &d, &mut Rng::new(9));
        assert_eq!(a, b);
        // Both images are the same input and share the draw: they differ by noise only.
        let diff = a[..784]
            .iter()
            .zip(&a[784..])
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max);
        assert!(diff > 0.0 && diff < 0.05, "{diff}");
        assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
        let e = Draw::sample(&mut r, 28, 28, true);
        assert_ne!(d, e);
        let no_flip = (0..200).all(|i| !Draw::sample(&mut Rng::new(i), 28, 28, false).flip);
        assert!(no_flip);
    }
}
