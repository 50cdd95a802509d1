//! SLERP: spherical linear interpolation between the base and one other model, per tensor.
//! Paper: Animating Rotation with Quaternion Curves (Shoemake, SIGGRAPH 1985; no arXiv id), as used by mergekit; card: methods/merging.md.

use super::{Chunk, ChunkKernel, Domain, MergeMethod, ParamSpec, TensorJob};
use engram_ckpt::{Error, Result};

/// `slerp`, as mergekit's `SlerpMerge`, per tensor with v0 = the base and v1 = the model:
/// 1. cos Ω = ⟨v0, v1⟩ / (‖v0‖·‖v1‖) over the flattened tensors, from one streaming pass
///    in f64 (mergekit: f32 NumPy).
/// 2. If |cos Ω| > 0.9995, or a norm is at most 1e-8 (card: zero-norm tensors fall back to
///    lerp; mergekit then skips the normalization and interpolates on a quarter circle):
///    θ = (1 − t)·v0 + t·v1.
/// 3. Otherwise θ = [sin((1 − t)Ω)·v0 + sin(tΩ)·v1] / sin Ω, on the unnormalized tensors.
///
/// `t` is required: 0 gives the base, 1 the model; values outside [0, 1] extrapolate as in
/// mergekit. A list is a gradient over layers, already resolved per tensor by the engine.
pub struct Slerp;

pub const T: ParamSpec = ParamSpec {
    name: "t",
    default: None,
    per_model: false,
    domain: Domain::Real,
    help: "interpolation factor: 0 = base, 1 = the other model (a list: gradient over layers)",
};

const PARAMS: &[ParamSpec] = &[T];

/// mergekit's collinearity threshold on |cos Ω|.
const DOT_THRESHOLD: f64 = 0.9995;
/// mergekit's norm below which a vector is not normalized.
const NORM_EPS: f64 = 1e-8;

impl MergeMethod for Slerp {
    fn name(&self) -> &'static str {
        "slerp"
    }
    fn summary(&self) -> &'static str {
        "spherical interpolation between the base (t = 0) and one model (t = 1)"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn max_models(&self) -> Option<usize> {
        Some(1)
    }
    fn prepare<'a>(&self, job: &'a TensorJob<'a>) -> Result<Box<dyn ChunkKernel + 'a>> {
        let t = job.global.get("t").ok_or_else(|| {
            Error::Invalid(format!(
                "slerp needs the parameter t for tensor '{}' (0 = base, 1 = the other model)",
                job.name
            ))
        })?;
        let parts = job.map_chunks(false, &|c: &Chunk| {
            let mut s = [0f64; 3];
            for (b, m) in c.base.iter().zip(&c.models[0]) {
                let (b, m) = (*b as f64, *m as f64);
                s[0] += b * b;
                s[1] += m * m;
                s[2] += b * m;
            }
            s
        })?;
        let [bb, mm, bm] = parts
            .iter()
            .fold([0f64; 3], |a, p| [a[0] + p[0], a[1] + p[1], a[2] + p[2]]);
        let (nb, nm) = (bb.sqrt(), mm.sqrt());
        let (s0, s1) = if nb <= NORM_EPS || nm <= NORM_EPS {
            (1.0 - t, t)
        } else {
            let cos = bm / (nb * nm);
            if cos.abs() > DOT_THRESHOLD {
                (1.0 - t, t)
            } else {
                let omega = cos.clamp(-1.0, 1.0).acos();
                let s = omega.sin();
                (((1.0 - t) * omega).sin() / s, (t * omega).sin() / s)
            }
        };
        let (s0, s1) = (s0 as f32, s1 as f32);
        Ok(Box::new(move |c: &Chunk, out: &mut [f32]| {
            for ((o, b), m) in out.iter_mut().zip(c.base).zip(&c.models[0]) {
                *o = s0 * b + s1 * m;
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::merge::params::ParamValue;
    use crate::merge::testutil::*;
    use crate::testutil::{random_family, values, write_model};
    use engram_ckpt::DType;

    /// Reference SLERP over whole slices, f64.
    fn reference(t: f64, v0: &[f32], v1: &[f32]) -> Vec<f32> {
        let dot = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| *x as f64 * *y as f64)
                .sum::<f64>()
        };
        let (n0, n1) = (dot(v0, v0).sqrt(), dot(v1, v1).sqrt());
        let cos = dot(v0, v1) / (n0 * n1);
        let (a, b) = if n0 <= 1e-8 || n1 <= 1e-8 || cos.abs() > 0.9995 {
            (1.0 - t, t)
        } else {
            let w = cos.acos();
            (((1.0 - t) * w).sin() / w.sin(), (t * w).sin() / w.sin())
        };
        v0.iter()
            .zip(v1)
            .map(|(x, y)| (a * *x as f64 + b * *y as f64) as f32)
            .collect()
    }

    #[test]
    fn matches_a_reference_and_hits_the_ends() {
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = random_family(dir.path(), SHAPES, 1, 61);
        for t in [0.0, 0.3, 0.7, 1.0] {
            let mut run = Run::new("slerp", &base, &models);
            run.params = params(&[("t", t)], &[]);
            let merged = run.run(&dir.path().join(format!("t{t}"))).unwrap();
            for (name, _) in SHAPES {
                let (b, m) = (values(&base, name), values(&models[0], name));
                let got = values(&merged, name);
                assert_close(&got, &reference(t, &b, &m), 1e-6, name);
                if t == 0.0 {
                    assert_eq!(got, b, "{name}: t = 0 is the base");
                } else if t == 1.0 {
                    assert_eq!(got, m, "{name}: t = 1 is the model");
                } else {
                    // The spherical branch ran (not a lerp) for these tensors.
                    let lerp: Vec<f32> = b
                        .iter()
                        .zip(&m)
                        .map(|(x, y)| ((1.0 - t) * *x as f64 + t * *y as f64) as f32)
                        .collect();
                    assert_ne!(got, lerp, "{name}");
                }
            }
        }
    }

    #[test]
    fn parallel_and_zero_tensors_fall_back_to_lerp() {
        let dir = tempfile::tempdir().unwrap();
        let shapes: &[(&str, &[usize])] = &[("a", &[4]), ("z", &[3])];
        let v = [1.0f32, -2.0, 0.5, 3.0];
        let base = write_model(&dir.path().join("b"), DType::F32, shapes, &|n, i| {
            if n == "a" { v[i] } else { 0.0 }
        });
        let twice = [write_model(
            &dir.path().join("m2"),
            DType::F32,
            shapes,
            &|n, i| {
                if n == "a" { 2.0 * v[i] } else { i as f32 }
            },
        )];
        let opposite = [write_model(
            &dir.path().join("mn"),
            DType::F32,
            shapes,
            &|n, i| {
                if n == "a" { -v[i] } else { i as f32 }
            },
        )];
        let mut run = Run::new("slerp", &base, &twice);
        run.params = params(&[("t", 0.25)], &[]);
        let got = run.run(&dir.path().join("o2")).unwrap();
        assert_close(&values(&got, "a"), &v.map(|x| 1.25 * x), 1e-7, "parallel");
        assert_close(&values(&got, "z"), &[0.0, 0.25, 0.5], 1e-7, "zero base");
        let mut run = Run::new("slerp", &base, &opposite);
        run.params = params(&[("t", 0.5)], &[]);
        let got = run.run(&dir.path().join("on")).unwrap();
        assert_close(&values(&got, "a"), &[0.0; 4], 1e-7, "antiparallel");
    }

    #[test]
    fn a_gradient_runs_over_layers_and_t_is_required() {
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = random_family(dir.path(), SHAPES, 2, 62);
        let one = &models[..1];
        let mut run = Run::new("slerp", &base, one);
        run.params
            .global
            .insert("t".into(), ParamValue::Gradient(vec![0.0, 1.0]));
        let merged = run.run(&dir.path().join("g")).unwrap();
        // embed (before the layers) and layer 0 at t = 0; layer 1 and norm at t = 1.
        for (name, t) in [
            ("model.embed.weight", 0.0),
            ("model.layers.0.w", 0.0),
            ("model.layers.0.b", 0.0),
            ("model.layers.1.w", 1.0),
            ("model.norm.weight", 1.0),
        ] {
            let want = if t == 0.0 { &base } else { &one[0] };
            assert_eq!(values(&merged, name), values(want, name), "{name}");
        }
        let Err(e) = Run::new("slerp", &base, one).run(&dir.path().join("no_t")) else {
            panic!("slerp without t accepted")
        };
        assert!(e.to_string().contains("needs the parameter t"), "{e}");
        let mut run = Run::new("slerp", &base, &models);
        run.params = params(&[("t", 0.5)], &[]);
        let Err(e) = run.run(&dir.path().join("two")) else {
            panic!("slerp of two models accepted")
        };
        assert!(e.to_string().contains("at most 1"), "{e}");
    }
}
