//! Helpers for tests: tiny random models written to a temporary folder.

use crate::rng::Rng;
use engram_ckpt::{DType, Model, ModelWriter, TensorSpec, WriteOptions};
use std::path::Path;

/// Writes a model with the given tensors (name, shape) filled by `f(name, index)`.
pub fn write_model(
    path: &Path,
    dtype: DType,
    tensors: &[(&str, &[usize])],
    f: &dyn Fn(&str, usize) -> f32,
) -> Model {
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|(n, s)| TensorSpec::new(*n, dtype, s))
        .collect();
    let w = ModelWriter::create(path, specs.clone(), &WriteOptions::default()).expect("create");
    for s in &specs {
        let v: Vec<f32> = (0..s.numel()).map(|i| f(&s.name, i)).collect();
        w.write_f32(&s.name, &v).expect("write");
    }
    w.finish(&[]).expect("finish");
    Model::open(path).expect("open")
}

/// A base and `n` fine-tunes (base + deltas of which about a third are exactly zero), F32.
pub fn random_family(
    dir: &Path,
    tensors: &[(&str, &[usize])],
    n: usize,
    seed: u64,
) -> (Model, Vec<Model>) {
    let base = write_model(&dir.join("base"), DType::F32, tensors, &|name, i| {
        Rng::keyed(seed, name, i as u64).normal() * 0.1
    });
    let models = (1..=n)
        .map(|t| {
            write_model(
                &dir.join(format!("m{t}")),
                DType::F32,
                tensors,
                &|name, i| {
                    let b = Rng::keyed(seed, name, i as u64).normal() * 0.1;
                    let mut r = Rng::keyed(seed + 1000 * t as u64, name, i as u64);
                    let d = if r.uniform() < 0.33 {
                        0.0
                    } else {
                        r.normal() * 0.05
                    };
                    b + d
                },
            )
        })
        .collect();
    (base, models)
}

/// All values of a model's tensor as f32.
pub fn values(m: &Model, name: &str) -> Vec<f32> {
    m.require(name).and_then(|t| t.to_f32()).expect("tensor")
}
