//! What the exemplar-free prototype methods share (`napa-vq`, `pass`): rotations as extra
//! classes, class prototypes of the features, and parameters the strategy holds itself.
//! Card: shared/methods/replay_distillation.md ("NAPA-VQ"; PASS is its baseline).
//!
//! - **Rotations.** Each image becomes four, rotated by k·90° (k = 0..3, counter-clockwise as
//!   `torch.rot90(x, k, (2, 3))`), with label 4y + k; rotated copies of one image are adjacent
//!   (row 4b + k), as the reference stacks them.
//! - **Prototypes.** Per (rotated) class, the mean feature of its training images, with the
//!   per-dimension variances' sum (PASS's radius).
//! - **Owned parameters.** A matrix the strategy updates itself (NAPA-VQ's code vectors,
//!   PASS's rotation head): a fresh autodiff leaf for each step, its gradient taken out of the
//!   backward pass (`Strategy::take_grads`), then SGD or Adam on the host.

use crate::model::Net;
use crate::optim::AdamStep;
use crate::scenario::{Part, Scenario};
use crate::{Result, err};
use burn::prelude::*;
use burn::tensor::Gradients;
use std::collections::BTreeMap;

/// The image `x` (`c·h·w` values, channels first) rotated by `k`·90° counter-clockwise in
/// the (h, w) plane; `h == w`.
pub fn rot90(x: &[f32], (c, h, w): (usize, usize, usize), k: usize) -> Vec<f32> {
    let n = h;
    debug_assert_eq!(h, w);
    let mut out = vec![0.0; x.len()];
    for ch in 0..c {
        let src = &x[ch * n * n..(ch + 1) * n * n];
        let dst = &mut out[ch * n * n..(ch + 1) * n * n];
        for i in 0..n {
            for j in 0..n {
                // out[i][j] for k = 1, 2, 3 (torch.rot90 with dims (2, 3)).
                let (si, sj) = match k % 4 {
                    0 => (i, j),
                    1 => (j, n - 1 - i),
                    2 => (n - 1 - i, n - 1 - j),
                    _ => (n - 1 - j, i),
                };
                dst[i * n + j] = src[si * n + sj];
            }
        }
    }
    out
}

/// A batch of images `x` (`len·dim` values) with labels `y` expanded ×4: rows 4b + k hold
/// image b rotated by k·90°, labelled 4·y_b + k.
pub fn rotate_batch(x: &[f32], y: &[u32], image: (usize, usize, usize)) -> (Vec<f32>, Vec<u32>) {
    let dim = image.0 * image.1 * image.2;
    let mut rx = Vec::with_capacity(x.len() * 4);
    let mut ry = Vec::with_capacity(y.len() * 4);
    for (img, &l) in x.chunks_exact(dim).zip(y) {
        for k in 0..4 {
            rx.extend(rot90(img, image, k));
            ry.push(4 * l + k as u32);
        }
    }
    (rx, ry)
}

/// The scenario's image shape, refused unless square (rotations need it).
pub fn square_image(name: &str, s: &Scenario) -> Result<(usize, usize, usize)> {
    match s.train.image {
        Some((c, h, w)) if h == w => Ok((c, h, w)),
        Some((_, h, w)) => Err(err!(
            "strategy {name}: rotations need square images, the data's are {h}×{w}"
        )),
        None => Err(err!(
            "strategy {name}: rotations need image data; the data set has flat inputs"
        )),
    }
}

/// The width of `net`'s features (one forward pass of a zero input of `dim` values).
pub fn feature_width(net: &Net, dim: usize) -> usize {
    net.features(Tensor::<2>::zeros(
        [1, dim],
        &crate::backend::device_of(net),
    ))
    .dims()[1]
}

/// Per-class feature statistics: sum and sum of squares per dimension, and the count.
#[derive(Clone, Debug, Default)]
pub struct ClassStats {
    pub sum: Vec<f64>,
    pub sumsq: Vec<f64>,
    pub count: usize,
}

impl ClassStats {
    pub fn mean(&self) -> Vec<f32> {
        let n = self.count.max(1) as f64;
        self.sum.iter().map(|&s| (s / n) as f32).collect()
    }

    /// The trace of the (unbiased) covariance, Σ_d var_d, as `np.cov` computes it.
    pub fn trace_cov(&self) -> f64 {
        let n = self.count as f64;
        if self.count < 2 {
            return 0.0;
        }
        self.sum
            .iter()
            .zip(&self.sumsq)
            .map(|(&s, &q)| ((q - s * s / n) / (n - 1.0)).max(0.0))
            .sum()
    }
}

/// Feature statistics of the training examples of `classes` in task `task`, per label: per
/// rotated class 4y + k with `rotate`, per class y without. `net` is the evaluation copy.
pub fn class_stats(
    net: &Net,
    s: &Scenario,
    task: usize,
    classes: &[u32],
    rotate: Option<(usize, usize, usize)>,
) -> BTreeMap<u32, ClassStats> {
    let device = crate::backend::device_of(net);
    let ids: Vec<(usize, usize)> = s.tasks[task].train.iter().map(|&i| (task, i)).collect();
    let mut out: BTreeMap<u32, ClassStats> = BTreeMap::new();
    for chunk in ids.chunks(250) {
        let (x, y) = s.gather(Part::Train, chunk);
        let keep: Vec<usize> = (0..y.len()).filter(|&i| classes.contains(&y[i])).collect();
        if keep.is_empty() {
            continue;
        }
        let dim = s.train.dim;
        let x: Vec<f32> = keep
            .iter()
            .flat_map(|&i| x[i * dim..(i + 1) * dim].iter().copied())
            .collect();
        let y: Vec<u32> = keep.iter().map(|&i| y[i]).collect();
        let (x, y) = match rotate {
            Some(image) => rotate_batch(&x, &y, image),
            None => (x, y),
        };
        let n = y.len();
        let f = net.features(Tensor::<2>::from_data(
            TensorData::new(x, [n, dim]),
            &device,
        ));
        let d = f.dims()[1];
        let f = super::buffer::host2(f);
        for (row, &l) in f.chunks_exact(d).zip(&y) {
            let st = out.entry(l).or_insert_with(|| ClassStats {
                sum: vec![0.0; d],
                sumsq: vec![0.0; d],
                count: 0,
            });
            for ((s, q), &v) in st.sum.iter_mut().zip(st.sumsq.iter_mut()).zip(row) {
                *s += v as f64;
                *q += (v as f64) * (v as f64);
            }
            st.count += 1;
        }
    }
    out
}

/// A `[rows, cols]` matrix of parameters the strategy updates itself, with Adam moments.
#[derive(Clone, Debug, Default)]
pub struct Owned {
    pub rows: usize,
    pub cols: usize,
    pub values: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    /// Adam steps taken since the moments were reset.
    t: u64,
    /// This step's autodiff leaf (not saved: it never outlives a step).
    leaf: Option<Tensor<2>>,
}

impl Owned {
    pub fn new(rows: usize, cols: usize, values: Vec<f32>) -> Owned {
        Owned {
            rows,
            cols,
            m: vec![0.0; values.len()],
            v: vec![0.0; values.len()],
            values,
            t: 0,
            leaf: None,
        }
    }

    /// The values as a tracked leaf on `device` (an autodiff device); its gradient is taken
    /// by [`Owned::take_grad`].
    pub fn leaf(&mut self, device: &Device) -> Tensor<2> {
        let t = self.constant(device).require_grad();
        self.leaf = Some(t.clone());
        t
    }

    /// The values as a constant on `device`.
    pub fn constant(&self, device: &Device) -> Tensor<2> {
        Tensor::<2>::from_data(
            TensorData::new(self.values.clone(), [self.rows, self.cols]),
            device,
        )
    }

    /// This step's gradient (zeros when the leaf took no part in the loss).
    pub fn take_grad(&mut self, grads: &mut Gradients) -> Vec<f32> {
        let g = self.leaf.take().and_then(|l| l.grad_remove(grads));
        match g {
            Some(g) => g
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap_or_else(|_| vec![0.0; self.values.len()]),
            None => vec![0.0; self.values.len()],
        }
    }

    /// Plain SGD, `w ← w − lr·g`, on the rows `trainable` says.
    pub fn sgd(&mut self, lr: f64, g: &[f32], trainable: impl Fn(usize) -> bool) {
        let lr = lr as f32;
        for (r, (w, g)) in self
            .values
            .chunks_exact_mut(self.cols)
            .zip(g.chunks_exact(self.cols))
            .enumerate()
        {
            if trainable(r) {
                for (w, g) in w.iter_mut().zip(g) {
                    *w -= lr * g;
                }
            }
        }
    }

    /// One Adam step (the run's optimizer settings, through `step` of the step count).
    pub fn adam(&mut self, step: impl Fn(u64) -> AdamStep, g: &[f32]) {
        self.t += 1;
        let a = step(self.t);
        for (((w, g), m), v) in self
            .values
            .iter_mut()
            .zip(g)
            .zip(self.m.iter_mut())
            .zip(self.v.iter_mut())
        {
            a.apply(w, *g, m, v);
        }
    }

    /// Forgets the Adam moments and step count (a fresh optimizer per task).
    pub fn reset_moments(&mut self) {
        self.m.iter_mut().for_each(|x| *x = 0.0);
        self.v.iter_mut().for_each(|x| *x = 0.0);
        self.t = 0;
    }

    /// Bytes of the values (and the Adam moments when `moments`).
    pub fn bytes(&self, moments: bool) -> u64 {
        (self.values.len() * 4 * if moments { 3 } else { 1 }) as u64
    }

    /// The values and moments as saved state under `name`.
    pub fn save(&self, name: &str, out: &mut Vec<(String, Vec<usize>, Vec<f32>)>) {
        let shape = vec![self.rows, self.cols];
        out.push((name.to_string(), shape.clone(), self.values.clone()));
        out.push((format!("{name}.m"), shape.clone(), self.m.clone()));
        out.push((format!("{name}.v"), shape, self.v.clone()));
    }

    /// Restores [`Owned::save`]'s tensors (`t`: the saved step count).
    pub fn load(
        name: &str,
        t: u64,
        tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    ) -> Result<Owned> {
        let get = |n: &str| {
            tensors
                .get(n)
                .ok_or_else(|| err!("saved strategy state has no tensor '{n}'"))
        };
        let (shape, values) = get(name)?;
        let [rows, cols] = shape[..] else {
            return Err(err!("saved tensor '{name}' is not a matrix"));
        };
        let (m, v) = (&get(&format!("{name}.m"))?.1, &get(&format!("{name}.v"))?.1);
        if values.len() != rows * cols || m.len() != values.len() || v.len() != values.len() {
            return Err(err!("saved tensor '{name}' has the wrong size"));
        }
        Ok(Owned {
            rows,
            cols,
            values: values.clone(),
            m: m.clone(),
            v: v.clone(),
            t,
            leaf: None,
        })
    }

    pub fn steps(&self) -> u64 {
        self.t
    }
}

/// Saved state tensors by name.
pub fn tensor_map(
    t: &[(String, Vec<usize>, Vec<f32>)],
) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    t.iter()
        .map(|(n, s, v)| (n.clone(), (s.clone(), v.clone())))
        .collect()
}

/// Squared Euclidean distances `[n, m]` between the rows of `a` `[n, d]` and `b` `[m, d]`,
/// clamped at 0 (the expansion ‖a‖² − 2a·b + ‖b‖² can round below it).
pub fn sq_dists(a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    let aa = a.clone().powf_scalar(2.0).sum_dim(1);
    let bb = b.clone().powf_scalar(2.0).sum_dim(1).transpose();
    let ab = a.matmul(b.transpose());
    (aa + bb - ab.mul_scalar(2.0)).clamp_min(0.0)
}

/// The Frobenius norm ‖a − b‖ of a whole batch (`torch.dist(a, b, 2)`): not squared, not
/// averaged.
pub fn frobenius(a: Tensor<2>, b: Tensor<2>) -> Tensor<1> {
    (a - b).powf_scalar(2.0).sum().add_scalar(1e-12).sqrt()
}

/// Rows of `x` scaled to unit L2 norm.
pub fn normalize_rows(x: Tensor<2>) -> Tensor<2> {
    let n = x
        .clone()
        .powf_scalar(2.0)
        .sum_dim(1)
        .sqrt()
        .clamp_min(1e-12);
    x / n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotations_match_numpy_rot90() {
        // [[1, 2], [3, 4]]: np.rot90 k = 1 → [[2, 4], [1, 3]]; k = 2 → [[4, 3], [2, 1]];
        // k = 3 → [[3, 1], [4, 2]].
        let x = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(rot90(&x, (1, 2, 2), 0), x);
        assert_eq!(rot90(&x, (1, 2, 2), 1), [2.0, 4.0, 1.0, 3.0]);
        assert_eq!(rot90(&x, (1, 2, 2), 2), [4.0, 3.0, 2.0, 1.0]);
        assert_eq!(rot90(&x, (1, 2, 2), 3), [3.0, 1.0, 4.0, 2.0]);
        // Four quarter turns are the identity, channel by channel.
        let img: Vec<f32> = (0..18).map(|v| v as f32).collect();
        let mut r = img.clone();
        for _ in 0..4 {
            r = rot90(&r, (2, 3, 3), 1);
        }
        assert_eq!(r, img);
        let (rx, ry) = rotate_batch(&img, &[3, 5], (1, 3, 3));
        assert_eq!(ry, [12, 13, 14, 15, 20, 21, 22, 23]);
        assert_eq!(&rx[36..45], &img[9..18]);
        assert_eq!(&rx[9..18], &rot90(&img[..9], (1, 3, 3), 1)[..]);
    }

    #[test]
    fn class_statistics_are_means_and_covariance_traces() {
        let st = ClassStats {
            sum: vec![6.0, 0.0],
            sumsq: vec![14.0, 8.0],
            count: 3,
        };
        // Values (1, 2, 3) and (2, −2, 0): variances 1 and 4.
        assert_eq!(st.mean(), [2.0, 0.0]);
        assert!((st.trace_cov() - 5.0).abs() < 1e-12);
    }

    #[test]
    fn distances_and_norms() {
        let d = Device::flex();
        let a = Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 0.0, 3.0, 4.0], [2, 2]), &d);
        let b = Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 4.0], [1, 2]), &d);
        let dd = super::super::buffer::host2(sq_dists(a.clone(), b.clone()));
        assert_eq!(dd, [16.0, 9.0]);
        let f = frobenius(a.clone(), a.clone().add_scalar(1.0)).into_scalar::<f32>();
        assert!((f - 2.0).abs() < 1e-5);
        let n = super::super::buffer::host2(normalize_rows(a));
        assert!((n[2] - 0.6).abs() < 1e-6 && (n[3] - 0.8).abs() < 1e-6);
    }
}
