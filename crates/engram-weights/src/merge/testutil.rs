//! Shared by the merge method tests: small random families, a merge through the engine, and
//! reference arithmetic on whole tensors (plain loops, written from the card, not from the
//! kernel), including one reference check for every method of the GTA family.

use crate::merge::TrimScope;
use crate::merge::engine::{MergeRequest, run_merge};
use crate::merge::params::{ParamSource, ParamValue};
use crate::testutil::values;
use engram_ckpt::{Model, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// A tensor over several chunks (600·700 > CHUNK_ELEMS), matrices and 1-D tensors.
pub const SHAPES: &[(&str, &[usize])] = &[
    ("model.embed.weight", &[50, 8]),
    ("model.layers.0.w", &[600, 700]),
    ("model.layers.0.b", &[700]),
    ("model.layers.1.w", &[8, 8]),
    ("model.norm.weight", &[8]),
];

/// Scalar parameters: global ones, and per model (one slice per model).
pub fn params(global: &[(&str, f64)], per_model: &[&[(&str, f64)]]) -> ParamSource {
    let mut p = ParamSource::default();
    for (k, v) in global {
        p.global.insert(k.to_string(), ParamValue::Scalar(*v));
    }
    p.per_model = per_model
        .iter()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.to_string(), ParamValue::Scalar(*v)))
                .collect()
        })
        .collect();
    p
}

pub struct Run<'a> {
    pub method: &'a str,
    pub base: Option<&'a Model>,
    pub models: &'a [Model],
    pub params: ParamSource,
    pub scope: TrimScope,
    pub seed: u64,
}

impl Run<'_> {
    pub fn new<'a>(method: &'a str, base: &'a Model, models: &'a [Model]) -> Run<'a> {
        Run {
            method,
            base: Some(base),
            models,
            params: ParamSource::default(),
            scope: TrimScope::Tensor,
            seed: 0,
        }
    }

    /// Runs the merge into `out` and opens the result.
    pub fn run(&self, out: &Path) -> Result<Model> {
        let mut params = self.params.clone();
        params.per_model.resize(self.models.len(), BTreeMap::new());
        let req = MergeRequest::new(
            crate::merge::get(self.method).expect("registered method"),
            self.base,
            self.models.iter().collect(),
        )
        .with_params(params)
        .with_scope(self.scope)
        .with_seed(self.seed);
        run_merge(&req, out, &BTreeMap::new(), &|_| {})?;
        Model::open(out)
    }

    /// The merged model's bytes, run on a rayon pool of `threads` threads.
    pub fn bytes_with_threads(&self, out: &Path, threads: usize) -> Vec<u8> {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| self.run(out))
            .unwrap();
        std::fs::read(out.join("model.safetensors")).unwrap()
    }
}

pub fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{k}]: got {g}, want {w}"
        );
    }
}

/// Task vector of a model for one tensor.
pub fn delta(base: &[f32], m: &[f32]) -> Vec<f32> {
    m.iter().zip(base).map(|(x, b)| x - b).collect()
}

/// Reference TIES combination of already sparsified deltas (plain loops, the card's rule:
/// sign of the sum, then sign of the sum of signs, then +).
pub fn ties_combine(
    base: &[f32],
    deltas: &[Vec<f32>],
    weights: &[f32],
    normalize: bool,
    lambda: f32,
) -> Vec<f32> {
    (0..base.len())
        .map(|k| {
            let v: Vec<f32> = deltas.iter().zip(weights).map(|(d, w)| d[k] * w).collect();
            let s: f32 = v.iter().sum();
            let signs: i32 = v
                .iter()
                .map(|x| {
                    if *x > 0.0 {
                        1
                    } else if *x < 0.0 {
                        -1
                    } else {
                        0
                    }
                })
                .sum();
            let positive = if s != 0.0 { s > 0.0 } else { signs >= 0 };
            let mut sum = 0.0;
            let mut div = 0.0;
            for (x, w) in v.iter().zip(weights) {
                if *x != 0.0 && (*x > 0.0) == positive {
                    sum += x;
                    div += w;
                }
            }
            let m = if normalize && div != 0.0 {
                sum / div
            } else {
                sum
            };
            base[k] + lambda * m
        })
        .collect()
}

/// Reference combination without election: Σ w_i·d_i (÷ Σ w_i with normalize).
pub fn linear_combine(
    base: &[f32],
    deltas: &[Vec<f32>],
    weights: &[f32],
    normalize: bool,
    lambda: f32,
) -> Vec<f32> {
    let wsum: f32 = weights.iter().sum();
    (0..base.len())
        .map(|k| {
            let s: f32 = deltas.iter().zip(weights).map(|(d, w)| d[k] * w).sum();
            base[k] + lambda * if normalize { s / wsum } else { s }
        })
        .collect()
}

/// Keeps the entries with |x| ≥ the k-th largest |x| (sort-based; k = 0 keeps none).
pub fn top_k(d: &[f32], k: usize) -> Vec<f32> {
    if k == 0 {
        return vec![0.0; d.len()];
    }
    let mut a: Vec<f32> = d.iter().map(|x| x.abs()).collect();
    a.sort_by(|x, y| y.total_cmp(x));
    let t = a[k - 1];
    d.iter()
        .map(|x| if x.abs() >= t { *x } else { 0.0 })
        .collect()
}

/// Scales `d` to the L1 norm of `orig` (mergekit's rescale; unchanged below 1e-7).
pub fn l1_restore(orig: &[f32], d: &mut [f32]) {
    let before: f64 = orig.iter().map(|x| x.abs() as f64).sum();
    let after: f64 = d.iter().map(|x| x.abs() as f64).sum();
    if before >= 1e-7 && after >= 1e-7 {
        let f = (before / after) as f32;
        for x in d.iter_mut() {
            *x *= f;
        }
    }
}

/// A method's reference sparsifier: (tensor, shape, model index, τ_i) → τ̃_i.
pub type RefSparsifier<'f> = dyn Fn(&str, &[usize], usize, &[f32]) -> Vec<f32> + 'f;

/// The settings the GTA family shares (weights, normalize, rescale, λ, election or sum), for
/// checking any of its methods against whole-tensor reference arithmetic: the method under
/// test only brings its reference sparsifier.
pub struct GtaRef<'a> {
    pub weights: &'a [f32],
    pub normalize: bool,
    pub rescale: bool,
    pub lambda: f32,
    /// The TIES election and disjoint merge (`ties`, `*_ties`, `della`), or a plain sum.
    pub consensus: bool,
}

impl GtaRef<'_> {
    /// Parameters of a run with these settings: global lambda, normalize and rescale; per
    /// model its weight and its value of each of `per_model` (e.g. density, gamma).
    pub fn params(&self, per_model: &[(&str, &[f64])]) -> ParamSource {
        let flag = |b: bool| ParamValue::Scalar(f64::from(u8::from(b)));
        let mut p = ParamSource::default();
        p.global
            .insert("lambda".into(), ParamValue::Scalar(f64::from(self.lambda)));
        p.global.insert("normalize".into(), flag(self.normalize));
        p.global.insert("rescale".into(), flag(self.rescale));
        p.per_model = (0..self.weights.len())
            .map(|i| {
                let mut m = BTreeMap::new();
                m.insert(
                    "weight".to_string(),
                    ParamValue::Scalar(f64::from(self.weights[i])),
                );
                for (k, v) in per_model {
                    m.insert(k.to_string(), ParamValue::Scalar(v[i]));
                }
                m
            })
            .collect();
        p
    }

    /// Asserts that every tensor of `merged` is the reference: each model's task vector τ_i
    /// sparsified by `sparsify(tensor, shape, i, τ_i)`, L1-restored with `rescale`, then
    /// [`ties_combine`] or [`linear_combine`], within `tol` (relative).
    pub fn assert_matches(
        &self,
        merged: &Model,
        base: &Model,
        models: &[Model],
        shapes: &[(&str, &[usize])],
        sparsify: &RefSparsifier,
        tol: f32,
    ) {
        for (name, shape) in shapes {
            let b = values(base, name);
            let ds: Vec<Vec<f32>> = models
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let t = delta(&b, &values(m, name));
                    let mut d = sparsify(name, shape, i, &t);
                    if self.rescale {
                        l1_restore(&t, &mut d);
                    }
                    d
                })
                .collect();
            let combine = if self.consensus {
                ties_combine
            } else {
                linear_combine
            };
            let want = combine(&b, &ds, self.weights, self.normalize, self.lambda);
            assert_close(&values(merged, name), &want, tol, name);
        }
    }
}
