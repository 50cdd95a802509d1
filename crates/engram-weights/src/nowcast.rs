// KNOW: weight nowcasting (Jang et al., arXiv 2508.05059; jjh6297/KNOW).
// Card: shared/methods/hypernetworks.md, "KNOW (weight nowcasting)".

//! The KNOW nowcaster without a deep-learning framework: a small network, applied to every
//! scalar weight on its own, reads the weight's values in 5 checkpoints trained on growing
//! data (index 0 = the smallest data, 4 = the largest) and predicts its value one step
//! further ("beyond 100 %"). Training the network lives in `engram_learn::hypernet::know`;
//! this file holds its forward pass, the bias normalisation, the roll-out and the streaming
//! command over 5 checkpoints.
//!
//! **The network** (card step 3), one per kind of tensor (matrices and biases): two branches,
//! the 5 values and their 4 differences, each `Dense 64 → gated activation → Dense 32 →
//! LeakyReLU(0.3)`; the two 32-vectors concatenated → `Dense 1, tanh` = Δ; the prediction is
//! the last value + Δ. Kernels are stored `[in, out]` (y = x·K + b).
//!
//! **The gated activation** is engram's reading of the reference's `trAct_1D_Exp(x, 8, 3)`: a
//! learned per-unit activation whose shape is set by the layer's own input through an
//! 8-unit bottleneck. With h the 64 pre-activations and c = ReLU(h·S + s) (8 units),
//! `out = (c·B + b) + (c·A + a) ⊙ exp((c·R + r) ⊙ h)`: a base term plus one exponential
//! gate whose scale and rate are functions of c. The exponent is clamped to ±[`EXP_CLAMP`]
//! (the reference does not clamp; without it one bad window could overflow f32).
//!
//! **Bias normalisation** (card step 4): a bias trajectory (window) becomes
//! (w − w₀) / (2·(range + 1e-8)) before the network sees it and the prediction is mapped back;
//! matrix (and convolution) windows stay raw. In the roll-out every window is normalised by
//! its own first value and range.
//!
//! **The roll-out** (card step 5): 3 recurrences; each prediction is appended and the window
//! shifted by one, and the last prediction is the nowcast.
//!
//! **Which tensors** (engram's choice for any checkpoint): a float tensor of rank ≥ 2 takes
//! the matrix predictor; a rank-1 tensor whose name ends in `bias` the bias predictor; every
//! other tensor (norm scales, running statistics, counters, scalars) is copied from the
//! largest-data checkpoint (index 4), as the reference leaves BatchNorm unpredicted.
//!
//! A predictor file holds both networks, names prefixed `matrix.` and `bias.` (see
//! [`layout`]).

use crate::output;
use crate::stream::TensorChunks;
use engram_ckpt::{Error, Model, Result};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Values in a window (checkpoints read per scalar).
pub const WINDOW: usize = 5;
/// Units of each branch's first layer.
pub const HIDDEN: usize = 64;
/// Units of the gated activation's bottleneck (`compressed` in the reference).
pub const SQUEEZE: usize = 8;
/// Units of each branch's second layer.
pub const MID: usize = 32;
/// Slope of the LeakyReLU for negative inputs (Keras' default, which the reference uses).
pub const LEAKY: f32 = 0.3;
/// Bound of the gate's exponent.
pub const EXP_CLAMP: f32 = 30.0;
/// Added to a bias window's range before it divides (card step 4).
pub const RANGE_EPS: f32 = 1e-8;
/// Recurrences of the roll-out (card step 5).
pub const STEPS: usize = 3;
/// The two predictors' name prefixes in a predictor file.
pub const PREFIXES: [&str; 2] = ["matrix.", "bias."];
/// The branches: the values, and their differences.
pub const BRANCHES: [(&str, usize); 2] = [("value", WINDOW), ("diff", WINDOW - 1)];

/// Every tensor of one predictor (without prefix), in order: (name, shape).
pub fn layout() -> Vec<(String, Vec<usize>)> {
    let mut v = Vec::new();
    for (b, n_in) in BRANCHES {
        for (layer, i, o) in [
            ("dense1", n_in, HIDDEN),
            ("act.squeeze", HIDDEN, SQUEEZE),
            ("act.base", SQUEEZE, HIDDEN),
            ("act.scale", SQUEEZE, HIDDEN),
            ("act.rate", SQUEEZE, HIDDEN),
            ("dense2", HIDDEN, MID),
        ] {
            v.push((format!("{b}.{layer}.kernel"), vec![i, o]));
            v.push((format!("{b}.{layer}.bias"), vec![o]));
        }
    }
    v.push(("head.kernel".into(), vec![2 * MID, 1]));
    v.push(("head.bias".into(), vec![1]));
    v
}

/// Whether the reference puts its L1 penalties on the tensor `name` (of [`layout`]): the two
/// dense layers of each branch, not the activation's inner layers or the head.
pub fn regularised(name: &str) -> bool {
    name.contains(".dense1.") || name.contains(".dense2.")
}

/// One dense layer, kernel `[n_in, n_out]` row-major.
#[derive(Clone, Debug)]
struct Dense {
    k: Vec<f32>,
    b: Vec<f32>,
    n_in: usize,
}

impl Dense {
    fn apply(&self, x: &[f32], out: &mut [f32]) {
        out.copy_from_slice(&self.b);
        let n_out = self.b.len();
        for (i, &xi) in x.iter().enumerate().take(self.n_in) {
            let row = &self.k[i * n_out..(i + 1) * n_out];
            for (o, &w) in out.iter_mut().zip(row) {
                *o += xi * w;
            }
        }
    }
}

#[derive(Clone, Debug)]
struct Branch {
    dense1: Dense,
    squeeze: Dense,
    base: Dense,
    scale: Dense,
    rate: Dense,
    dense2: Dense,
}

impl Branch {
    fn apply(&self, x: &[f32], out: &mut [f32; MID]) {
        let mut h = [0f32; HIDDEN];
        self.dense1.apply(x, &mut h);
        let mut c = [0f32; SQUEEZE];
        self.squeeze.apply(&h, &mut c);
        for v in &mut c {
            *v = v.max(0.0);
        }
        let (mut base, mut scale, mut rate) = ([0f32; HIDDEN], [0f32; HIDDEN], [0f32; HIDDEN]);
        self.base.apply(&c, &mut base);
        self.scale.apply(&c, &mut scale);
        self.rate.apply(&c, &mut rate);
        let mut g = [0f32; HIDDEN];
        for u in 0..HIDDEN {
            g[u] = base[u] + scale[u] * (rate[u] * h[u]).clamp(-EXP_CLAMP, EXP_CLAMP).exp();
        }
        self.dense2.apply(&g, out);
        for v in out.iter_mut() {
            if *v < 0.0 {
                *v *= LEAKY;
            }
        }
    }
}

/// One per-scalar network (matrices or biases).
#[derive(Clone, Debug)]
pub struct Net {
    branches: [Branch; 2],
    head: Dense,
}

impl Net {
    /// The network whose tensors are `values[prefix + name]` for every name of [`layout`];
    /// `source` names the file in errors.
    pub fn from_values(
        values: &BTreeMap<String, Vec<f32>>,
        prefix: &str,
        source: &Path,
    ) -> Result<Net> {
        let get = |name: &str, n_in: usize, n_out: usize| -> Result<Dense> {
            let full = format!("{prefix}{name}");
            let kv = values
                .get(&format!("{full}.kernel"))
                .ok_or_else(|| Error::tensor(source, &format!("{full}.kernel"), "missing"))?;
            let bv = values
                .get(&format!("{full}.bias"))
                .ok_or_else(|| Error::tensor(source, &format!("{full}.bias"), "missing"))?;
            for (what, v, n) in [("kernel", kv, n_in * n_out), ("bias", bv, n_out)] {
                if v.len() != n {
                    return Err(Error::tensor(
                        source,
                        &format!("{full}.{what}"),
                        format!("{} values, the nowcaster needs {n}", v.len()),
                    ));
                }
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(Error::tensor(
                        source,
                        &format!("{full}.{what}"),
                        "holds NaN or infinity",
                    ));
                }
            }
            Ok(Dense {
                k: kv.clone(),
                b: bv.clone(),
                n_in,
            })
        };
        let branch = |b: &str, n_in: usize| -> Result<Branch> {
            Ok(Branch {
                dense1: get(&format!("{b}.dense1"), n_in, HIDDEN)?,
                squeeze: get(&format!("{b}.act.squeeze"), HIDDEN, SQUEEZE)?,
                base: get(&format!("{b}.act.base"), SQUEEZE, HIDDEN)?,
                scale: get(&format!("{b}.act.scale"), SQUEEZE, HIDDEN)?,
                rate: get(&format!("{b}.act.rate"), SQUEEZE, HIDDEN)?,
                dense2: get(&format!("{b}.dense2"), HIDDEN, MID)?,
            })
        };
        Ok(Net {
            branches: [
                branch(BRANCHES[0].0, BRANCHES[0].1)?,
                branch(BRANCHES[1].0, BRANCHES[1].1)?,
            ],
            head: get("head", 2 * MID, 1)?,
        })
    }

    /// Δ for one (already normalised) window: the prediction is `window[4] + Δ`.
    pub fn delta(&self, w: &[f32; WINDOW]) -> f32 {
        let mut d = [0f32; WINDOW - 1];
        for i in 0..WINDOW - 1 {
            d[i] = w[i + 1] - w[i];
        }
        let mut a = [0f32; MID];
        let mut b = [0f32; MID];
        self.branches[0].apply(w, &mut a);
        self.branches[1].apply(&d, &mut b);
        let mut cat = [0f32; 2 * MID];
        cat[..MID].copy_from_slice(&a);
        cat[MID..].copy_from_slice(&b);
        let mut o = [0f32; 1];
        self.head.apply(&cat, &mut o);
        o[0].tanh()
    }
}

/// The matrix and the bias nowcaster.
#[derive(Clone, Debug)]
pub struct Predictor {
    pub matrix: Net,
    pub bias: Net,
}

impl Predictor {
    /// Both networks from values by name (prefixes [`PREFIXES`]).
    pub fn from_values(values: &BTreeMap<String, Vec<f32>>, source: &Path) -> Result<Predictor> {
        Ok(Predictor {
            matrix: Net::from_values(values, PREFIXES[0], source)?,
            bias: Net::from_values(values, PREFIXES[1], source)?,
        })
    }

    /// Reads a predictor file (safetensors, checksums verified).
    pub fn open(path: &Path) -> Result<Predictor> {
        let m = Model::open(path)?;
        m.verify()?;
        Predictor::from_model(&m)
    }

    /// The predictor held by an open model (its float tensors by name).
    pub fn from_model(m: &Model) -> Result<Predictor> {
        let values = m
            .tensors()
            .filter(|t| t.dtype().is_float())
            .map(|t| Ok((t.name().to_string(), t.to_f32()?)))
            .collect::<Result<BTreeMap<_, _>>>()?;
        Predictor::from_values(&values, m.source())
    }

    /// The prediction one step beyond `w` (bias windows normalised and mapped back).
    pub fn step(&self, w: &[f32; WINDOW], is_bias: bool) -> f32 {
        if !is_bias {
            return w[WINDOW - 1] + self.matrix.delta(w);
        }
        let (n, first, scale) = normalise(w);
        denormalise(n[WINDOW - 1] + self.bias.delta(&n), first, scale)
    }
}

/// A bias window as the network sees it: (w − w₀) / s with s = 2·(range + 1e-8); also w₀ and
/// s for [`denormalise`].
pub fn normalise(w: &[f32; WINDOW]) -> ([f32; WINDOW], f32, f32) {
    let (lo, hi) = w
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &x| {
            (l.min(x), h.max(x))
        });
    let first = w[0];
    let scale = 2.0 * ((hi - lo) + RANGE_EPS);
    (w.map(|x| (x - first) / scale), first, scale)
}

/// The inverse of [`normalise`] for one value.
pub fn denormalise(v: f32, first: f32, scale: f32) -> f32 {
    v * scale + first
}

/// `steps` recurrences from `w`: `next` predicts one step from a window, the prediction is
/// appended and the oldest value dropped; the last prediction back (`w[4]` for 0 steps).
pub fn roll_out(mut w: [f32; WINDOW], steps: usize, next: impl Fn(&[f32; WINDOW]) -> f32) -> f32 {
    let mut last = w[WINDOW - 1];
    for _ in 0..steps {
        last = next(&w);
        w.rotate_left(1);
        w[WINDOW - 1] = last;
    }
    last
}

/// The nowcast of one tensor: `trajectory` holds its values in the 5 checkpoints (index 0 =
/// the smallest data), `is_bias` picks the predictor and the normalisation, `steps` the
/// recurrences ([`STEPS`] in the reference). Errors on a trajectory of the wrong length,
/// unequal sizes, a non-finite value or 0 steps.
pub fn nowcast(
    trajectory: &[&[f32]],
    is_bias: bool,
    predictor: &Predictor,
    steps: usize,
) -> Result<Vec<f32>> {
    if trajectory.len() != WINDOW {
        return Err(Error::Invalid(format!(
            "a nowcast reads {WINDOW} checkpoints, not {}",
            trajectory.len()
        )));
    }
    if steps == 0 {
        return Err(Error::Invalid("a nowcast takes at least 1 step".into()));
    }
    let n = trajectory[0].len();
    if let Some(k) = trajectory.iter().position(|t| t.len() != n) {
        return Err(Error::Invalid(format!(
            "checkpoint {k} holds {} values, checkpoint 0 holds {n}",
            trajectory[k].len()
        )));
    }
    for (k, t) in trajectory.iter().enumerate() {
        if let Some(e) = t.iter().position(|x| !x.is_finite()) {
            return Err(Error::Invalid(format!(
                "checkpoint {k}, element {e}: {} (values must be finite)",
                t[e]
            )));
        }
    }
    Ok((0..n)
        .into_par_iter()
        .with_min_len(256)
        .map(|e| {
            let w: [f32; WINDOW] = std::array::from_fn(|k| trajectory[k][e]);
            roll_out(w, steps, |w| predictor.step(w, is_bias))
        })
        .collect())
}

/// What happens to a tensor of a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Matrix,
    Bias,
    /// Copied from the largest-data checkpoint.
    Copy,
}

/// The kind of a float tensor (see the module documentation).
pub fn kind(name: &str, shape: &[usize]) -> Kind {
    match shape.len() {
        0 => Kind::Copy,
        // Normalisation layers' biases are not predicted (the reference predicts no BN).
        1 if name.ends_with("bias") && !is_norm(name) => Kind::Bias,
        1 => Kind::Copy,
        _ => Kind::Matrix,
    }
}

/// Whether `name` belongs to a normalisation layer (BatchNorm, LayerNorm, GroupNorm ...).
fn is_norm(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.split(['.', '_'])
        .any(|p| p.starts_with("bn") || p.contains("norm") || p.starts_with("ln"))
}

/// What [`nowcast_models`] wrote.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub matrices: usize,
    pub biases: usize,
    /// Tensors copied from the largest-data checkpoint.
    pub copied: usize,
    /// Elements predicted.
    pub predicted: u64,
    pub files: Vec<std::path::PathBuf>,
}

/// Nowcasts `models` (5 checkpoints of one network, index 0 = the smallest data) into `out`,
/// tensor by tensor in chunks (memory: a few chunks per thread), with `metadata`. Every
/// checkpoint must hold the same tensors with the same shapes, and the predicted ones finite
/// values; the output takes the last checkpoint's dtypes, order and side files and is
/// committed atomically. `progress` gets the elements done.
pub fn nowcast_models(
    models: &[Model],
    predictor: &Predictor,
    steps: usize,
    out: &Path,
    metadata: &BTreeMap<String, String>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Summary> {
    if models.len() != WINDOW {
        return Err(Error::Invalid(format!(
            "a nowcast reads {WINDOW} checkpoints (smallest data first), not {}",
            models.len()
        )));
    }
    if steps == 0 {
        return Err(Error::Invalid("a nowcast takes at least 1 step".into()));
    }
    let last = &models[WINDOW - 1];
    for m in &models[..WINDOW - 1] {
        for v in last.tensors() {
            let Some(x) = m.get(v.name()) else {
                return Err(Error::tensor(
                    m.source(),
                    v.name(),
                    format!("missing (present in {})", last.source().display()),
                ));
            };
            if x.shape() != v.shape() || x.dtype().is_float() != v.dtype().is_float() {
                return Err(Error::tensor(
                    m.source(),
                    v.name(),
                    format!(
                        "{} {:?} where {} holds {} {:?}",
                        x.dtype(),
                        x.shape(),
                        last.source().display(),
                        v.dtype(),
                        v.shape()
                    ),
                ));
            }
        }
        if let Some(x) = m.tensors().find(|x| last.get(x.name()).is_none()) {
            return Err(Error::tensor(
                m.source(),
                x.name(),
                format!("not in {}", last.source().display()),
            ));
        }
    }
    let others: Vec<&Model> = models[..WINDOW - 1].iter().collect();
    output::same_non_floats(last, &others)?;
    let w = output::writer(out, output::specs(last.tensors(), None), metadata)?;
    let mut s = Summary::default();
    for v in last.tensors() {
        let k = match v.dtype().is_float() {
            true => kind(v.name(), v.shape()),
            false => Kind::Copy,
        };
        if k == Kind::Copy {
            output::copy_bytes_released(&w, v.name(), &v)?;
            s.copied += 1;
            continue;
        }
        let views: Vec<_> = models
            .iter()
            .map(|m| m.require(v.name()))
            .collect::<Result<_>>()?;
        let dt = v.dtype();
        TensorChunks::new(None, &views).for_each(&|c| {
            for (m, vals) in models.iter().zip(c.models) {
                if let Some(e) = vals.iter().position(|x| !x.is_finite()) {
                    return Err(Error::tensor(
                        m.source(),
                        v.name(),
                        format!(
                            "element {}: {} (a nowcast needs finite values)",
                            c.start + e,
                            vals[e]
                        ),
                    ));
                }
            }
            let traj: Vec<&[f32]> = c.models.iter().map(Vec::as_slice).collect();
            let vals = nowcast(&traj, k == Kind::Bias, predictor, steps)
                .map_err(|e| Error::tensor(out, v.name(), e.to_string()))?;
            output::check_values(out, v.name(), dt, c.start, &vals, true, &|_| true)?;
            progress(vals.len() as u64);
            w.write_f32_at(v.name(), c.start, &vals)
        })?;
        match k {
            Kind::Bias => s.biases += 1,
            _ => s.matrices += 1,
        }
        s.predicted += v.numel() as u64;
    }
    s.files = w.finish(last.side_files())?;
    Ok(s)
}

/// A predictor whose every tensor is zero except the head's bias, `atanh(delta)`: it adds
/// `delta` (in its own space) to every window. For tests of what surrounds the network.
pub fn constant_predictor(matrix_delta: f32, bias_delta: f32) -> Predictor {
    let mut values = BTreeMap::new();
    for (p, d) in PREFIXES.iter().zip([matrix_delta, bias_delta]) {
        for (name, shape) in layout() {
            let n: usize = shape.iter().product();
            let v = match name.as_str() {
                "head.bias" => vec![d.atanh()],
                _ => vec![0.0; n],
            };
            values.insert(format!("{p}{name}"), v);
        }
    }
    // Every tensor is present with its size: this cannot fail.
    Predictor::from_values(&values, Path::new("constant")).unwrap_or_else(|_| unreachable!())
}

#[cfg(test)]
mod tests {

    #[test]
    fn normalisation_biases_are_copied_not_predicted() {
        assert_eq!(kind("fc.0.bias", &[4]), Kind::Bias);
        assert_eq!(kind("bn1.bias", &[4]), Kind::Copy);
        assert_eq!(kind("layers.0.ln_1.bias", &[4]), Kind::Copy);
        assert_eq!(kind("encoder.layer_norm.bias", &[4]), Kind::Copy);
        assert_eq!(kind("fc.0.weight", &[4, 3]), Kind::Matrix);
    }

    use super::*;
    use engram_ckpt::{DType, ModelWriter, TensorSpec, WriteOptions};

    #[test]
    fn roll_out_shifts_its_window_and_keeps_the_last_prediction() {
        // next = last + first: [1..5] → 6, [2,3,4,5,6] → 8, [3,4,5,6,8] → 11.
        let f = |w: &[f32; WINDOW]| w[4] + w[0];
        assert_eq!(roll_out([1.0, 2.0, 3.0, 4.0, 5.0], 1, f), 6.0);
        assert_eq!(roll_out([1.0, 2.0, 3.0, 4.0, 5.0], 2, f), 8.0);
        assert_eq!(roll_out([1.0, 2.0, 3.0, 4.0, 5.0], 3, f), 11.0);
        assert_eq!(roll_out([1.0, 2.0, 3.0, 4.0, 5.0], 0, f), 5.0);
    }

    #[test]
    fn bias_normalisation_round_trips_and_fills_half_a_unit() {
        let w = [0.3f32, -0.1, 0.5, 0.2, 0.4];
        let (n, first, scale) = normalise(&w);
        assert_eq!(n[0], 0.0);
        let span =
            n.iter().cloned().fold(f32::MIN, f32::max) - n.iter().cloned().fold(f32::MAX, f32::min);
        assert!((span - 0.5).abs() < 1e-6, "{span}");
        for (a, b) in n.iter().zip(&w) {
            assert!((denormalise(*a, first, scale) - b).abs() < 1e-6);
        }
        // A flat window stays finite.
        let (n, _, s) = normalise(&[2.0; WINDOW]);
        assert!(n.iter().all(|x| *x == 0.0) && s > 0.0);
    }

    #[test]
    fn constant_predictor_adds_its_delta_per_step_in_each_space() -> Result<()> {
        let p = constant_predictor(0.01, 0.25);
        let a = [0.0f32, 0.1, 0.2];
        let b = [0.0f32, 0.1, 0.2];
        let c = [0.0f32, 0.1, 0.2];
        let d = [0.0f32, 0.1, 0.2];
        let e = [1.0f32, 0.1, 0.4];
        let t: Vec<&[f32]> = vec![&a, &b, &c, &d, &e];
        let m = nowcast(&t, false, &p, 3)?;
        for (x, y) in m.iter().zip([1.03f32, 0.13, 0.43]) {
            assert!((x - y).abs() < 1e-5, "{x} {y}");
        }
        // Bias: element 0's window 0,0,0,0,1 (range 1, scale 2): +0.25 normalised = +0.5;
        // then window 0,0,0,1,1.5 (range 1.5, scale 3) → +0.75; then 0,0,1,1.5,2.25 → 2.25 +
        // 0.25·2·2.25 = 3.375.
        let b = nowcast(&t, true, &p, 3)?;
        assert!((b[0] - 3.375).abs() < 1e-5, "{}", b[0]);
        // A flat bias window moves by 0.25·2e-8 only.
        assert!((b[1] - 0.1).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn bad_trajectories_are_errors() {
        let p = constant_predictor(0.0, 0.0);
        let a = [0.0f32; 3];
        let short = [0.0f32; 2];
        let nan = [0.0f32, f32::NAN, 0.0];
        assert!(nowcast(&[&a, &a, &a, &a], false, &p, 3).is_err());
        assert!(nowcast(&[&a, &a, &short, &a, &a], false, &p, 3).is_err());
        assert!(nowcast(&[&a, &a, &a, &nan, &a], false, &p, 3).is_err());
        assert!(nowcast(&[&a, &a, &a, &a, &a], false, &p, 0).is_err());
        let mut v = BTreeMap::new();
        v.insert("matrix.head.bias".to_string(), vec![0.0]);
        let e = Predictor::from_values(&v, Path::new("p.safetensors")).err();
        assert!(e.is_some_and(|e| e.to_string().contains("value.dense1.kernel")));
    }

    fn write(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
        let specs = tensors
            .iter()
            .map(|(n, s, _)| TensorSpec::new(*n, DType::F32, s))
            .collect();
        let w = ModelWriter::create(path, specs, &WriteOptions::default()).unwrap();
        for (n, _, v) in tensors {
            w.write_f32(n, v).unwrap();
        }
        w.finish(&[]).unwrap();
    }

    #[test]
    fn models_are_nowcast_tensor_by_tensor_and_mismatches_named() -> Result<()> {
        let d = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let mut paths = Vec::new();
        for k in 0..WINDOW {
            let p = d.path().join(format!("c{k}.safetensors"));
            let x = k as f32;
            write(
                &p,
                &[
                    ("fc.weight", vec![2, 2], vec![x, 2.0 * x, 0.0, 1.0]),
                    ("fc.bias", vec![2], vec![x, 0.0]),
                    ("norm.weight", vec![2], vec![1.0 + x, 1.0]),
                ],
            );
            paths.push(p);
        }
        let models: Vec<Model> = paths
            .iter()
            .map(|p| Model::open(p))
            .collect::<Result<_>>()?;
        let out = d.path().join("out.safetensors");
        let p = constant_predictor(0.5, 0.25);
        let s = nowcast_models(&models, &p, 3, &out, &BTreeMap::new(), &|_| {})?;
        assert_eq!((s.matrices, s.biases, s.copied, s.predicted), (1, 1, 1, 6));
        let o = Model::open(&out)?;
        let fw = o.require("fc.weight")?.to_f32()?;
        for (x, y) in fw.iter().zip([5.5f32, 9.5, 1.5, 2.5]) {
            assert!((x - y).abs() < 1e-5, "{x} {y}");
        }
        assert_eq!(o.require("norm.weight")?.to_f32()?, vec![5.0, 1.0]);
        let b = o.require("fc.bias")?.to_f32()?;
        let want = nowcast(&[&[0.0], &[1.0], &[2.0], &[3.0], &[4.0]], true, &p, 3)?;
        assert_eq!(b[0], want[0]);
        // A shape mismatch names the file and the tensor.
        drop((models, o));
        write(
            &paths[2],
            &[
                ("fc.weight", vec![4], vec![0.0; 4]),
                ("fc.bias", vec![2], vec![0.0; 2]),
                ("norm.weight", vec![2], vec![1.0; 2]),
            ],
        );
        let models: Vec<Model> = paths
            .iter()
            .map(|p| Model::open(p))
            .collect::<Result<_>>()?;
        let e = nowcast_models(
            &models,
            &p,
            3,
            &d.path().join("o2.safetensors"),
            &BTreeMap::new(),
            &|_| {},
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            e.contains("fc.weight") && e.contains("c2.safetensors"),
            "{e}"
        );
        assert!(nowcast_models(&models[..4], &p, 3, &out, &BTreeMap::new(), &|_| {}).is_err());
        Ok(())
    }
}
