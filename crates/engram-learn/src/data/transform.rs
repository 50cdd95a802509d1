//! Applying a task's [`Transform`] to examples.
//!
//! [`Prepared`] validates a transform against the data's shape once and precomputes what it
//! needs (for a rotation: four source pixels and bilinear weights per output pixel), so that
//! applying it to each example of a batch allocates nothing.
//!
//! Rotation convention: `Rotate(θ)` turns the image **counter-clockwise by θ degrees as
//! displayed** (row 0 at the top), about the image centre ((h−1)/2, (w−1)/2), like
//! torchvision's `rotate`. Each output pixel samples the input at the inversely rotated
//! position with bilinear interpolation; neighbours outside the image count as 0 (zero
//! fill). Multiples of 90° are exact (sampling positions within 1e-6 of a pixel are snapped
//! to it). Every channel is rotated the same way.

use super::DataError;
use super::corrupt::{self, Corruption};

/// A transform applied to every example of a task when batches are built.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transform {
    None,
    /// Output pixel j takes input pixel perm[j].
    Permute(Vec<u32>),
    /// Rotation of square images by this many degrees (bilinear, zero fill).
    Rotate(f32),
    /// 1 − x.
    Invert,
    /// A corruption of FMNIST-C ([`super::corrupt`]) at `severity` (1 to 5) on grayscale
    /// images; example `i` of the data set draws from the stream keyed by (`seed`, corruption,
    /// severity, `i`), so it is the same image whatever batch it is built in.
    Corrupt {
        corruption: Corruption,
        severity: u8,
        seed: u64,
    },
}

/// Bilinear sampling of one output pixel: four source pixels (within a channel plane) and
/// their weights; out-of-image neighbours have weight 0 and index 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tap {
    pub idx: [u32; 4],
    pub w: [f32; 4],
}

/// A transform checked against the data's shape, ready to apply.
#[derive(Clone, Debug)]
pub enum Prepared<'a> {
    Copy,
    Permute(&'a [u32]),
    /// Spatial resampling of each `plane`-sized channel.
    Resample {
        plane: usize,
        taps: Vec<Tap>,
    },
    Invert,
    Corrupt {
        corruption: Corruption,
        severity: usize,
        seed: u64,
        h: usize,
        w: usize,
    },
}

impl<'a> Prepared<'a> {
    /// Checks `t` against examples of `dim` values shaped `image` (C, H, W).
    pub fn new(
        t: &'a Transform,
        dim: usize,
        image: Option<(usize, usize, usize)>,
    ) -> Result<Prepared<'a>, DataError> {
        match t {
            Transform::None => Ok(Prepared::Copy),
            Transform::Invert => Ok(Prepared::Invert),
            Transform::Permute(p) => {
                if p.len() != dim {
                    return Err(DataError::Invalid(format!(
                        "permutation of length {} for examples of {dim} values",
                        p.len()
                    )));
                }
                let mut seen = vec![false; dim];
                for &j in p.iter() {
                    match seen.get_mut(j as usize) {
                        Some(s) if !*s => *s = true,
                        _ => {
                            return Err(DataError::Invalid(format!(
                                "not a permutation of 0..{dim}: {j} is out of range or repeated"
                            )));
                        }
                    }
                }
                Ok(Prepared::Permute(p))
            }
            Transform::Corrupt {
                corruption,
                severity,
                seed,
            } => {
                let (h, w) = match image {
                    Some((1, h, w)) if h * w == dim => (h, w),
                    _ => {
                        return Err(DataError::Invalid(format!(
                            "corruption {} needs grayscale images; the data are {}",
                            corruption.name(),
                            match image {
                                Some((c, h, w)) => format!("{c}x{h}x{w}"),
                                None => format!("flat vectors of {dim} values"),
                            }
                        )));
                    }
                };
                let severity = *severity as usize;
                // Shape and severity are all an image's corruption can fail on: one blank
                // image checks them, so that applying it later cannot fail.
                corrupt::corrupt_image(*corruption, severity, *seed, 0, &vec![0.0; dim], h, w)?;
                Ok(Prepared::Corrupt {
                    corruption: *corruption,
                    severity,
                    seed: *seed,
                    h,
                    w,
                })
            }
            Transform::Rotate(deg) => {
                if !deg.is_finite() {
                    return Err(DataError::Invalid(format!("rotation by {deg} degrees")));
                }
                let (h, w) = match image {
                    Some((c, h, w)) if h == w && c * h * w == dim => (h, w),
                    _ => {
                        return Err(DataError::Invalid(format!(
                            "rotation needs square images; the data are {}",
                            match image {
                                Some((c, h, w)) => format!("{c}x{h}x{w}"),
                                None => format!("flat vectors of {dim} values"),
                            }
                        )));
                    }
                };
                if deg.rem_euclid(360.0) == 0.0 {
                    return Ok(Prepared::Copy);
                }
                Ok(Prepared::Resample {
                    plane: h * w,
                    taps: rotation_taps(h, w, *deg),
                })
            }
        }
    }

    /// Writes the transformed `src`, example number `index` of its data set, into `out` (both
    /// `dim` long). Only random transforms (corruptions) depend on `index`.
    pub fn apply(&self, src: &[f32], out: &mut [f32], index: usize) {
        match self {
            Prepared::Corrupt {
                corruption,
                severity,
                seed,
                h,
                w,
            } => match corrupt::corrupt_image(
                *corruption,
                *severity,
                *seed,
                index as u64,
                src,
                *h,
                *w,
            ) {
                Ok(v) => {
                    for (o, b) in out.iter_mut().zip(v) {
                        *o = b as f32 / 255.0;
                    }
                }
                // `new` checked shape and severity; what is left is a non-finite pixel, which
                // the corruption scenario refuses when it is built (data not in [0, 1]). A
                // NaN output makes any later use stop with a message rather than go on.
                Err(_) => out.fill(f32::NAN),
            },
            Prepared::Copy => out.copy_from_slice(src),
            Prepared::Invert => {
                for (o, s) in out.iter_mut().zip(src) {
                    *o = 1.0 - s;
                }
            }
            Prepared::Permute(p) => {
                for (o, &j) in out.iter_mut().zip(p.iter()) {
                    *o = src[j as usize];
                }
            }
            Prepared::Resample { plane, taps } => {
                for (o_plane, s_plane) in out.chunks_exact_mut(*plane).zip(src.chunks_exact(*plane))
                {
                    for (o, t) in o_plane.iter_mut().zip(taps) {
                        *o = t.w[0] * s_plane[t.idx[0] as usize]
                            + t.w[1] * s_plane[t.idx[1] as usize]
                            + t.w[2] * s_plane[t.idx[2] as usize]
                            + t.w[3] * s_plane[t.idx[3] as usize];
                    }
                }
            }
        }
    }
}

/// Exact cosine and sine for multiples of 90°.
fn cos_sin(deg: f32) -> (f64, f64) {
    let r = (deg as f64).rem_euclid(360.0);
    if r == 0.0 {
        (1.0, 0.0)
    } else if r == 90.0 {
        (0.0, 1.0)
    } else if r == 180.0 {
        (-1.0, 0.0)
    } else if r == 270.0 {
        (0.0, -1.0)
    } else {
        let t = r.to_radians();
        (t.cos(), t.sin())
    }
}

fn snap(v: f64) -> f64 {
    let r = v.round();
    if (v - r).abs() < 1e-6 { r } else { v }
}

/// Bilinear taps of a counter-clockwise rotation by `deg` degrees of an h×w plane.
pub fn rotation_taps(h: usize, w: usize, deg: f32) -> Vec<Tap> {
    let (cos, sin) = cos_sin(deg);
    let cy = (h as f64 - 1.0) / 2.0;
    let cx = (w as f64 - 1.0) / 2.0;
    let mut taps = Vec::with_capacity(h * w);
    for i in 0..h {
        for j in 0..w {
            // Display coordinates (y up) of the output pixel, rotated back by −θ.
            let x = j as f64 - cx;
            let y = cy - i as f64;
            let sx = snap(cos * x + sin * y + cx);
            let sy = snap(cy - (-sin * x + cos * y));
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let mut tap = Tap {
                idx: [0; 4],
                w: [0.0; 4],
            };
            let corners = [
                (y0, x0, (1.0 - fx) * (1.0 - fy)),
                (y0, x0 + 1.0, fx * (1.0 - fy)),
                (y0 + 1.0, x0, (1.0 - fx) * fy),
                (y0 + 1.0, x0 + 1.0, fx * fy),
            ];
            for (k, (r, c, wt)) in corners.into_iter().enumerate() {
                let inside = r >= 0.0 && c >= 0.0 && r < h as f64 && c < w as f64;
                if inside && wt > 0.0 {
                    tap.idx[k] = (r as usize * w + c as usize) as u32;
                    tap.w[k] = wt as f32;
                }
            }
            taps.push(tap);
        }
    }
    taps
}

/// One-shot convenience: applies `t` to one example `src` into `out` (as example 0 of its
/// data set, for the random transforms).
pub fn apply(
    t: &Transform,
    image: Option<(usize, usize, usize)>,
    src: &[f32],
    out: &mut [f32],
) -> Result<(), DataError> {
    if src.len() != out.len() {
        return Err(DataError::Invalid(format!(
            "transform input has {} values, output {}",
            src.len(),
            out.len()
        )));
    }
    Prepared::new(t, src.len(), image)?.apply(src, out, 0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(t: &Transform, image: Option<(usize, usize, usize)>, src: &[f32]) -> Vec<f32> {
        let mut out = vec![f32::NAN; src.len()];
        match apply(t, image, src, &mut out) {
            Ok(()) => out,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn rotation_by_zero_and_full_turns_is_identity() {
        let src: Vec<f32> = (0..28 * 28).map(|i| (i % 251) as f32 / 250.0).collect();
        for deg in [0.0, 360.0, -360.0, 720.0] {
            assert_eq!(run(&Transform::Rotate(deg), Some((1, 28, 28)), &src), src);
        }
        // The taps themselves, not just the shortcut, are the identity at 0°.
        let taps = rotation_taps(28, 28, 0.0);
        let p = Prepared::Resample { plane: 784, taps };
        let mut out = vec![0.0; 784];
        p.apply(&src, &mut out, 0);
        assert_eq!(out, src);
    }

    #[test]
    fn rotation_by_90_is_exact() {
        let src: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        // [[1,2,3],[4,5,6],[7,8,9]] turned counter-clockwise.
        let ccw = vec![3., 6., 9., 2., 5., 8., 1., 4., 7.];
        assert_eq!(run(&Transform::Rotate(90.0), Some((1, 3, 3)), &src), ccw);
        assert_eq!(
            run(&Transform::Rotate(180.0), Some((1, 3, 3)), &src),
            vec![9., 8., 7., 6., 5., 4., 3., 2., 1.]
        );
        assert_eq!(
            run(&Transform::Rotate(-90.0), Some((1, 3, 3)), &src),
            vec![7., 4., 1., 8., 5., 2., 9., 6., 3.]
        );
        // Even side (centre between pixels), two channels.
        let src: Vec<f32> = (0..8).map(|v| v as f32).collect();
        assert_eq!(
            run(&Transform::Rotate(90.0), Some((2, 2, 2)), &src),
            vec![1., 3., 0., 2., 5., 7., 4., 6.]
        );
        // Four quarter turns give the image back exactly on 28×28.
        let img: Vec<f32> = (0..784).map(|i| ((i * 37) % 101) as f32 / 100.0).collect();
        let mut x = img.clone();
        for _ in 0..4 {
            x = run(&Transform::Rotate(90.0), Some((1, 28, 28)), &x);
        }
        assert_eq!(x, img);
    }

    #[test]
    fn rotation_interpolates_and_zero_fills() {
        let src = vec![1.0f32; 28 * 28];
        let out = run(&Transform::Rotate(45.0), Some((1, 28, 28)), &src);
        // Corners come from outside the image: zero; the centre stays 1.
        assert_eq!(out[0], 0.0);
        assert_eq!(out[783], 0.0);
        assert!((out[14 * 28 + 14] - 1.0).abs() < 1e-5);
        assert!(out.iter().all(|&v| (-1e-6..=1.0 + 1e-6).contains(&v)));
        // Mass is roughly preserved for a centred blob.
        let mut blob = vec![0.0f32; 784];
        for i in 10..18 {
            for j in 10..18 {
                blob[i * 28 + j] = 1.0;
            }
        }
        let out = run(&Transform::Rotate(30.0), Some((1, 28, 28)), &blob);
        let (a, b): (f32, f32) = (blob.iter().sum(), out.iter().sum());
        assert!((a - b).abs() / a < 0.05, "{a} vs {b}");
    }

    #[test]
    fn permute_and_invert() {
        let src = vec![0.0, 0.25, 0.5, 1.0];
        let p = Transform::Permute(vec![3, 2, 1, 0]);
        assert_eq!(run(&p, None, &src), vec![1.0, 0.5, 0.25, 0.0]);
        assert_eq!(
            run(&Transform::Invert, None, &src),
            vec![1.0, 0.75, 0.5, 0.0]
        );
        assert_eq!(run(&Transform::None, None, &src), src);
    }

    #[test]
    fn invalid_transforms_are_errors() {
        let mut out = [0.0; 4];
        let src = [0.0; 4];
        for (t, img) in [
            (Transform::Permute(vec![0, 1, 2]), None),
            (Transform::Permute(vec![0, 1, 1, 2]), None),
            (Transform::Permute(vec![0, 1, 2, 4]), None),
            (Transform::Rotate(10.0), None),
            (Transform::Rotate(10.0), Some((1, 1, 4))),
            (Transform::Rotate(f32::NAN), Some((1, 2, 2))),
        ] {
            assert!(apply(&t, img, &src, &mut out).is_err(), "{t:?}");
        }
        assert!(apply(&Transform::None, None, &src, &mut [0.0; 3]).is_err());
    }
}
