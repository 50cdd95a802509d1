//! Synthetic Gaussian blobs generated from a seed, so that tests and demos run in seconds
//! anywhere.
//!
//! Class k has a centre μ_k whose coordinates are drawn from N(0, separation²); an example is
//! μ_k + ε with ε ~ N(0, I). `separation` is therefore in units of the noise's standard
//! deviation: the expected distance between two centres is separation·√(2·dim) noise
//! standard deviations.
//!
//! With `image = true` (the default) the examples are fake 1×s×s images (dim must be a
//! square, s = √dim) with values squashed into (0, 1) by a logistic, x = σ(z / 2), so that
//! image transforms (rotation, inversion) and CNNs can be tested on them.
//!
//! Layout: class-major (all examples of class 0, then class 1, ...), each class's examples
//! drawn from its own keyed stream, so changing one class count does not change the others.

use super::{DataError, Dataset, Split};
use engram_weights::rng::Rng;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct BlobsConfig {
    pub classes: usize,
    pub dim: usize,
    pub train_per_class: usize,
    pub test_per_class: usize,
    /// Standard deviation of the class centres' coordinates, in noise standard deviations.
    pub separation: f32,
    /// Fake 1×s×s images with values in (0, 1); otherwise raw flat features.
    pub image: bool,
    pub seed: u64,
}

impl Default for BlobsConfig {
    /// 10 classes of 1×8×8 images, 200 train and 50 test examples per class, separation 0.5.
    fn default() -> Self {
        BlobsConfig {
            classes: 10,
            dim: 64,
            train_per_class: 200,
            test_per_class: 50,
            separation: 0.5,
            image: true,
            seed: 0,
        }
    }
}

fn square_side(dim: usize) -> Option<usize> {
    let s = (dim as f64).sqrt().round() as usize;
    (s * s == dim).then_some(s)
}

impl BlobsConfig {
    /// Checks the parameters (before anything is allocated); returns the image side, if
    /// the examples are images.
    pub fn check(&self) -> Result<Option<usize>, DataError> {
        let bad = |m: String| Err(DataError::Invalid(format!("blobs: {m}")));
        if self.classes == 0 || self.classes > u32::MAX as usize {
            return bad(format!("classes = {} must be in 1..2^32", self.classes));
        }
        if self.dim == 0 {
            return bad("dim must be at least 1".into());
        }
        if self.train_per_class == 0 {
            return bad("train-per-class must be at least 1".into());
        }
        if self.test_per_class == 0 {
            return bad("test-per-class must be at least 1 (every task is evaluated)".into());
        }
        if !self.separation.is_finite() || self.separation < 0.0 {
            return bad(format!(
                "separation = {} must be finite and >= 0",
                self.separation
            ));
        }
        // Train, test and the centres.
        let total = (self.train_per_class.checked_add(self.test_per_class))
            .and_then(|n| n.checked_add(1))
            .and_then(|n| n.checked_mul(self.classes))
            .and_then(|v| v.checked_mul(self.dim));
        if total.is_none_or(|t| t > 1 << 28) {
            return bad(format!(
                "classes = {} × (train-per-class = {} + test-per-class = {}) × dim = {} is \
                 more than 2^28 values",
                self.classes, self.train_per_class, self.test_per_class, self.dim
            ));
        }
        match (self.image, square_side(self.dim)) {
            (false, _) => Ok(None),
            (true, Some(s)) => Ok(Some(s)),
            (true, None) => bad(format!(
                "dim = {} is not a square, so it cannot be an image (set image = false)",
                self.dim
            )),
        }
    }
}

/// Generates the blobs (train and test drawn from the same centres).
pub fn generate(cfg: &BlobsConfig) -> Result<Split, DataError> {
    let side = cfg.check()?;
    let centres: Vec<Vec<f32>> = (0..cfg.classes)
        .map(|k| {
            let mut r = Rng::keyed(cfg.seed, "blobs-centre", k as u64);
            (0..cfg.dim)
                .map(|_| (r.normal_f64() * cfg.separation as f64) as f32)
                .collect()
        })
        .collect();
    let make = |per_class: usize, key: &str| {
        let mut x = Vec::with_capacity(cfg.classes * per_class * cfg.dim);
        let mut y = Vec::with_capacity(cfg.classes * per_class);
        for (k, c) in centres.iter().enumerate() {
            let mut r = Rng::keyed(cfg.seed, key, k as u64);
            for _ in 0..per_class {
                for &m in c {
                    let z = m + r.normal_f64() as f32;
                    x.push(if side.is_some() {
                        1.0 / (1.0 + (-z / 2.0).exp())
                    } else {
                        z
                    });
                }
                y.push(k as u32);
            }
        }
        Dataset {
            name: "blobs".into(),
            x,
            y,
            dim: cfg.dim,
            image: side.map(|s| (1, s, s)),
            num_classes: cfg.classes,
        }
    };
    Ok(Split {
        train: make(cfg.train_per_class, "blobs-train"),
        test: make(cfg.test_per_class, "blobs-test"),
        files: Vec::new(),
        meta: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_seeded() -> Result<(), DataError> {
        let cfg = BlobsConfig::default();
        let a = generate(&cfg)?;
        let b = generate(&cfg)?;
        assert_eq!(a.train, b.train);
        assert_eq!(a.test, b.test);
        let c = generate(&BlobsConfig { seed: 1, ..cfg })?;
        assert_ne!(a.train.x, c.train.x);
        Ok(())
    }

    #[test]
    fn shapes_and_ranges() -> Result<(), DataError> {
        let s = generate(&BlobsConfig::default())?;
        s.train.check()?;
        s.test.check()?;
        assert_eq!((s.train.len(), s.test.len()), (2000, 500));
        assert_eq!(s.train.class_counts(), vec![200; 10]);
        assert!(s.train.x.iter().all(|&v| v > 0.0 && v < 1.0));
        let flat = generate(&BlobsConfig {
            dim: 5,
            image: false,
            ..BlobsConfig::default()
        })?;
        assert_eq!(flat.train.image, None);
        assert_eq!(flat.train.dim, 5);
        Ok(())
    }

    #[test]
    fn nearest_centre_classifies_well() -> Result<(), DataError> {
        // The blobs must be learnable: a nearest-class-mean rule on the train set gets
        // nearly all test examples right with the default separation.
        let s = generate(&BlobsConfig::default())?;
        let d = s.train.dim;
        let mut means = vec![0f32; 10 * d];
        for i in 0..s.train.len() {
            let k = s.train.y[i] as usize;
            for (m, v) in means[k * d..(k + 1) * d].iter_mut().zip(s.train.row(i)) {
                *m += v / 200.0;
            }
        }
        let correct = (0..s.test.len())
            .filter(|&i| {
                let dist = |k: usize| -> f32 {
                    means[k * d..(k + 1) * d]
                        .iter()
                        .zip(s.test.row(i))
                        .map(|(a, b)| (a - b) * (a - b))
                        .sum()
                };
                let best = (0..10)
                    .min_by(|&a, &b| dist(a).total_cmp(&dist(b)))
                    .unwrap_or(0);
                best as u32 == s.test.y[i]
            })
            .count();
        assert!(correct as f32 / s.test.len() as f32 > 0.9, "{correct}");
        Ok(())
    }

    #[test]
    fn invalid_parameters_are_errors() {
        for cfg in [
            BlobsConfig {
                classes: 0,
                ..BlobsConfig::default()
            },
            BlobsConfig {
                dim: 10,
                ..BlobsConfig::default()
            },
            BlobsConfig {
                separation: f32::NAN,
                ..BlobsConfig::default()
            },
            BlobsConfig {
                train_per_class: usize::MAX,
                ..BlobsConfig::default()
            },
            BlobsConfig {
                test_per_class: 0,
                ..BlobsConfig::default()
            },
        ] {
            assert!(generate(&cfg).is_err(), "{cfg:?}");
        }
    }
}
