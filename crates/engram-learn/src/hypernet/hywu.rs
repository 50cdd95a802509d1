// HY-WU (arXiv 2603.07236): instance-conditioned LoRA generation on a frozen network.
// Card: shared/methods/hypernetworks.md, "HY-WU (instance-conditioned LoRA generator)".

//! A generator G reads an instance's condition z and writes rank-r LoRA factors {A_l, B_l}
//! for the hidden layers of a **frozen** base MLP; the forward pass adds (α/r)·B_l(A_l·h) to
//! layer l's pre-activation, per example, as rank-3 batched products: W_l′ = W_l +
//! (α/r)·B_l·A_l is never formed. G is trained end to end on the downstream loss through the
//! frozen base. The baseline is one [`SharedLora`] on the same layers.
//!
//! The paper released no training code (card, "Code"), so these are **engram design**:
//! - z = one-hot task token ⊕ the frozen base's last hidden features of x (the input
//!   embedding); the shared LoRA receives the same token as a column block of its first
//!   adapter's input, so that every arm knows the task;
//! - G is a 2-layer MLP (z → H, ReLU → one head for every A, one for every B); the B-head's
//!   weights and bias start at 0, so training starts from the base; the A-head's bias starts
//!   as a LoRA A (uniform ±1/√fan_in) and its weights small, so the first steps already move;
//! - both arms use the scale α/r = 1 (α = r): a larger matched rank does not shrink the shared
//!   adapter's update;
//! - tasks one at a time ([`train_task`]): G carries a hypernetwork's output regulariser on
//!   old tokens, evaluated on the current batch's inputs (no old data kept),
//!   β·mean_{old s, i} ‖G(s ⊕ emb(xᵢ)) − G*(s ⊕ emb(xᵢ))‖² against a snapshot G* taken before
//!   the task; the shared LoRA is plainly fine-tuned. Adam restarts at every task.
//!
//! Parameters are plain values ([`ParamSet`]); batches are drawn from
//! [`engram_weights::rng::Rng`] keyed by (seed, step), so a seed fixes a run; nothing here
//! draws from burn's generator.

use super::params::{Leaves, ParamSet, host, tensor, uniform_init};
use crate::optim::OptimConfig;
use crate::{Result, err};
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, relu};
use engram_weights::rng::Rng;
use std::collections::BTreeMap;

/// Weights by parameter name.
pub type Values = BTreeMap<String, Vec<f32>>;

/// The frozen base: an MLP of widths `dims` (input, hidden…, classes) with ReLU, its weights
/// as burn stores them (`fc.<l>.weight` of shape [in, out], `fc.<l>.bias` of [out]).
#[derive(Clone, Debug)]
pub struct Base {
    dims: Vec<usize>,
    params: ParamSet,
}

impl Base {
    /// The base of widths `dims` holding `values` (names as engram's `mlp` model): at least
    /// one hidden layer, every value finite.
    pub fn new(dims: &[usize], values: &Values) -> Result<Base> {
        if dims.len() < 3 || dims.contains(&0) {
            return Err(err!(
                "hywu base: widths {dims:?} need an input, at least one hidden layer and \
                 classes, none zero"
            ));
        }
        let mut params = ParamSet::new();
        for l in 0..dims.len() - 1 {
            for (name, shape) in [
                (format!("fc.{l}.weight"), vec![dims[l], dims[l + 1]]),
                (format!("fc.{l}.bias"), vec![dims[l + 1]]),
            ] {
                let v = values
                    .get(&name)
                    .ok_or_else(|| err!("hywu base: parameter {name} missing"))?;
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(err!("hywu base: {name} holds a non-finite value"));
                }
                let i = params
                    .add(&name, &shape, v.clone())
                    .map_err(|e| err!("hywu base: {e}"))?;
                params.set_frozen(i, true);
            }
        }
        Ok(Base {
            dims: dims.to_vec(),
            params,
        })
    }

    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// The layers a LoRA adapts (every hidden layer): (index, inputs, outputs).
    pub fn adapted(&self) -> Vec<(usize, usize, usize)> {
        (0..self.dims.len() - 2)
            .map(|l| (l, self.dims[l], self.dims[l + 1]))
            .collect()
    }

    /// The input embedding's width (the last hidden layer's).
    pub fn embedding(&self) -> usize {
        self.dims[self.dims.len() - 2]
    }

    pub fn classes(&self) -> usize {
        self.dims[self.dims.len() - 1]
    }

    /// The values, by name.
    pub fn values(&self) -> Values {
        self.params
            .named()
            .into_iter()
            .map(|(k, (_, v))| (k, v))
            .collect()
    }

    /// The base's tensors on `device` (constants: no gradient).
    pub fn on(&self, device: &Device) -> BaseOn {
        BaseOn {
            dims: self.dims.clone(),
            leaves: self.params.leaves(device),
        }
    }
}

/// A [`Base`] made into tensors for one device.
pub struct BaseOn {
    dims: Vec<usize>,
    leaves: Leaves,
}

impl BaseOn {
    /// Logits of `x` (n × input) with `delta(l, h)` added to hidden layer l's pre-activation
    /// (h: the layer's input) where it gives one.
    pub fn forward(
        &self,
        x: Tensor<2>,
        mut delta: impl FnMut(usize, Tensor<2>) -> Option<Tensor<2>>,
    ) -> Tensor<2> {
        let last = self.dims.len() - 2;
        let mut h = x;
        for l in 0..=last {
            let pre = h.clone().matmul(self.leaves.mat(2 * l))
                + self.leaves.vec(2 * l + 1).unsqueeze_dim(0);
            if l == last {
                return pre;
            }
            h = match delta(l, h) {
                Some(d) => relu(pre + d),
                None => relu(pre),
            };
        }
        h
    }

    /// The frozen base's last hidden features of `x` (the input embedding), detached.
    pub fn features(&self, x: Tensor<2>) -> Tensor<2> {
        let mut h = x;
        for l in 0..self.dims.len() - 2 {
            h = relu(
                h.matmul(self.leaves.mat(2 * l)) + self.leaves.vec(2 * l + 1).unsqueeze_dim(0),
            );
        }
        h.detach()
    }

    pub fn input(&self) -> usize {
        self.dims[0]
    }
}

/// (α/r)·B_i(A_i·h_i) for every row i: `h` [n, in], `a` [n, r, in], `b` [n, out, r], as
/// rank-3 batched products; the per-example W′ is never formed.
pub fn per_sample_lora(h: Tensor<2>, a: Tensor<3>, b: Tensor<3>, scale: f32) -> Tensor<2> {
    let [n, d_in] = h.dims();
    let d_out = b.dims()[1];
    let ah = a.matmul(h.reshape([n, d_in, 1]));
    b.matmul(ah).reshape([n, d_out]) * scale
}

/// `p`'s values as constant tensors (no gradient): the only leaves a device without autodiff
/// accepts.
pub fn constants(p: &ParamSet, device: &Device) -> Leaves {
    let mut c = p.clone();
    for i in 0..c.len() {
        c.set_frozen(i, true);
    }
    c.leaves(device)
}

/// One-hot rows of `tasks` among `count`.
fn one_hot(tasks: &[usize], count: usize, device: &Device) -> Tensor<2> {
    let mut v = vec![0.0f32; tasks.len() * count];
    for (i, &t) in tasks.iter().enumerate() {
        v[i * count + t] = 1.0;
    }
    tensor(v, [tasks.len(), count], device)
}

/// A trainable adapter on the frozen base, conditioned on a task token.
pub trait Adapter {
    fn name(&self) -> &'static str;
    /// Task tokens it knows.
    fn tasks(&self) -> usize;
    fn params(&self) -> &ParamSet;
    fn params_mut(&mut self) -> &mut ParamSet;
    /// Logits of `x` for the tasks `tasks` (one per row), with the adapter's parameters `p`.
    fn logits(&self, base: &BaseOn, p: &Leaves, x: Tensor<2>, tasks: &[usize]) -> Tensor<2>;
    /// The generated LoRA factors of every row, flattened ([n, F]): a generator's output.
    fn factors(
        &self,
        _base: &BaseOn,
        _p: &Leaves,
        _x: Tensor<2>,
        _tasks: &[usize],
    ) -> Result<Tensor<2>> {
        Err(err!("{} generates no LoRA factors", self.name()))
    }
}

/// G's settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GeneratorConfig {
    /// Task tokens (one-hot).
    pub tasks: usize,
    /// LoRA rank r of the generated factors (card: 4).
    #[serde(default = "default_rank")]
    pub rank: usize,
    /// G's hidden width H (engram design: 16).
    #[serde(default = "default_hidden")]
    pub hidden: usize,
}

fn default_rank() -> usize {
    4
}
fn default_hidden() -> usize {
    16
}

/// The instance-conditioned LoRA generator G.
#[derive(Clone, Debug)]
pub struct Generator {
    cfg: GeneratorConfig,
    /// (layer, in, out) of every adapted layer, with its offsets in the A- and B-heads.
    layers: Vec<(usize, usize, usize, usize, usize)>,
    params: ParamSet,
}

const G_W0: usize = 0;
const G_B0: usize = 1;
const G_WA: usize = 2;
const G_BA: usize = 3;
const G_WB: usize = 4;
const G_BB: usize = 5;

impl Generator {
    /// G for `base`, initialised from `seed`: the B-head at 0 (the base's outputs unchanged).
    pub fn new(base: &Base, cfg: &GeneratorConfig, seed: u64) -> Result<Generator> {
        if cfg.tasks == 0 || cfg.rank == 0 || cfg.hidden == 0 {
            return Err(err!(
                "hywu generator: tasks {}, rank {} and hidden {} must be positive",
                cfg.tasks,
                cfg.rank,
                cfg.hidden
            ));
        }
        let r = cfg.rank;
        let (mut fa, mut fb) = (0, 0);
        let mut layers = Vec::new();
        for (l, i, o) in base.adapted() {
            layers.push((l, i, o, fa, fb));
            fa += r * i;
            fb += o * r;
        }
        let z = cfg.tasks + base.embedding();
        let h = cfg.hidden;
        let mut p = ParamSet::new();
        p.add(
            "g.0.weight",
            &[z, h],
            uniform_init(z * h, z, seed, "hywu-g0"),
        )?;
        p.add("g.0.bias", &[h], uniform_init(h, z, seed, "hywu-g0-bias"))?;
        // The A-head's weights small (per-instance variation grows in training), its bias a
        // LoRA A per layer (±1/√in, as PEFT's kaiming-uniform).
        let wa: Vec<f32> = uniform_init(h * fa, h, seed, "hywu-ga")
            .into_iter()
            .map(|v| v * 0.1)
            .collect();
        p.add("g.a.weight", &[h, fa], wa)?;
        let mut ba = Vec::with_capacity(fa);
        for &(l, i, _, _, _) in &layers {
            ba.extend(uniform_init(r * i, i, seed, &format!("hywu-ga-bias-{l}")));
        }
        p.add("g.a.bias", &[fa], ba)?;
        p.add("g.b.weight", &[h, fb], vec![0.0; h * fb])?;
        p.add("g.b.bias", &[fb], vec![0.0; fb])?;
        Ok(Generator {
            cfg: cfg.clone(),
            layers,
            params: p,
        })
    }

    pub fn config(&self) -> &GeneratorConfig {
        &self.cfg
    }

    /// Values of G's output per example (every A and B).
    pub fn outputs(&self) -> usize {
        self.params.shape(G_BA)[0] + self.params.shape(G_BB)[0]
    }

    /// The A-head's and the B-head's outputs of every row: ([n, ΣA], [n, ΣB]).
    fn heads(
        &self,
        base: &BaseOn,
        p: &Leaves,
        x: Tensor<2>,
        tasks: &[usize],
    ) -> (Tensor<2>, Tensor<2>) {
        let device = x.device();
        let z = Tensor::cat(
            vec![one_hot(tasks, self.cfg.tasks, &device), base.features(x)],
            1,
        );
        let hid = relu(z.matmul(p.mat(G_W0)) + p.vec(G_B0).unsqueeze_dim(0));
        let a = hid.clone().matmul(p.mat(G_WA)) + p.vec(G_BA).unsqueeze_dim(0);
        let b = hid.matmul(p.mat(G_WB)) + p.vec(G_BB).unsqueeze_dim(0);
        (a, b)
    }
}

impl Adapter for Generator {
    fn name(&self) -> &'static str {
        "generator"
    }

    fn tasks(&self) -> usize {
        self.cfg.tasks
    }

    fn params(&self) -> &ParamSet {
        &self.params
    }

    fn params_mut(&mut self) -> &mut ParamSet {
        &mut self.params
    }

    fn logits(&self, base: &BaseOn, p: &Leaves, x: Tensor<2>, tasks: &[usize]) -> Tensor<2> {
        let n = tasks.len();
        let r = self.cfg.rank;
        let (a, b) = self.heads(base, p, x.clone(), tasks);
        base.forward(x, |l, h| {
            let &(_, i, o, oa, ob) = self.layers.iter().find(|e| e.0 == l)?;
            let al = a.clone().slice([0..n, oa..oa + r * i]).reshape([n, r, i]);
            let bl = b.clone().slice([0..n, ob..ob + o * r]).reshape([n, o, r]);
            // α = r: scale 1 (module comment).
            Some(per_sample_lora(h, al, bl, 1.0))
        })
    }

    fn factors(
        &self,
        base: &BaseOn,
        p: &Leaves,
        x: Tensor<2>,
        tasks: &[usize],
    ) -> Result<Tensor<2>> {
        let (a, b) = self.heads(base, p, x, tasks);
        Ok(Tensor::cat(vec![a, b], 1))
    }
}

/// One LoRA shared by every task on the base's hidden layers, the one-hot token appended to
/// the first adapter's input (a column block of its A). Layout as PEFT: `A` [r, in], `B`
/// [out, r], B at 0 and A uniform ±1/√in at the start.
#[derive(Clone, Debug)]
pub struct SharedLora {
    tasks: usize,
    rank: usize,
    params: ParamSet,
}

impl SharedLora {
    pub fn new(base: &Base, tasks: usize, rank: usize, seed: u64) -> Result<SharedLora> {
        if tasks == 0 || rank == 0 {
            return Err(err!(
                "hywu shared lora: tasks {tasks} and rank {rank} must be positive"
            ));
        }
        let mut p = ParamSet::new();
        for (l, i, o) in base.adapted() {
            let i = if l == 0 { i + tasks } else { i };
            p.add(
                &format!("lora.{l}.a"),
                &[rank, i],
                uniform_init(rank * i, i, seed, &format!("hywu-lora-a-{l}")),
            )?;
            p.add(&format!("lora.{l}.b"), &[o, rank], vec![0.0; o * rank])?;
        }
        Ok(SharedLora {
            tasks,
            rank,
            params: p,
        })
    }

    /// Trainable values of a shared LoRA of `rank` on `base` for `tasks` tokens.
    pub fn count(base: &Base, tasks: usize, rank: usize) -> usize {
        base.adapted()
            .iter()
            .map(|&(l, i, o)| rank * (i + o + if l == 0 { tasks } else { 0 }))
            .sum()
    }

    /// The rank whose count is nearest `target` (at least 1).
    pub fn matched_rank(base: &Base, tasks: usize, target: usize) -> usize {
        let per = Self::count(base, tasks, 1).max(1);
        let lo = (target / per).max(1);
        let d = |r: usize| Self::count(base, tasks, r).abs_diff(target);
        if d(lo + 1) < d(lo) { lo + 1 } else { lo }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }
}

impl Adapter for SharedLora {
    fn name(&self) -> &'static str {
        "shared-lora"
    }

    fn tasks(&self) -> usize {
        self.tasks
    }

    fn params(&self) -> &ParamSet {
        &self.params
    }

    fn params_mut(&mut self) -> &mut ParamSet {
        &mut self.params
    }

    fn logits(&self, base: &BaseOn, p: &Leaves, x: Tensor<2>, tasks: &[usize]) -> Tensor<2> {
        let device = x.device();
        base.forward(x, |l, h| {
            let h = if l == 0 {
                Tensor::cat(vec![h, one_hot(tasks, self.tasks, &device)], 1)
            } else {
                h
            };
            let a = p.mat(2 * l);
            let b = p.mat(2 * l + 1);
            // α = r: scale 1 (module comment).
            Some(h.matmul(a.transpose()).matmul(b.transpose()))
        })
    }
}

/// One task's examples: `x` row-major (n × the base's input), labels `y` in its classes.
#[derive(Clone, Copy, Debug)]
pub struct TaskData<'a> {
    pub x: &'a [f32],
    pub y: &'a [u32],
}

impl TaskData<'_> {
    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    fn check(&self, dim: usize, classes: usize, what: &str) -> Result<()> {
        if self.y.is_empty() {
            return Err(err!("hywu: {what} has no examples"));
        }
        if self.x.len() != self.y.len() * dim {
            return Err(err!(
                "hywu: {what} has {} input values for {} examples of {dim}",
                self.x.len(),
                self.y.len()
            ));
        }
        if let Some(&c) = self.y.iter().find(|&&c| c as usize >= classes) {
            return Err(err!(
                "hywu: {what} has label {c}, the base has {classes} classes"
            ));
        }
        if self.x.iter().any(|v| !v.is_finite()) {
            return Err(err!("hywu: {what} holds a non-finite input"));
        }
        Ok(())
    }
}

/// Steps, batch size, Adam's learning rate and the seed that draws the batches.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Schedule {
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub seed: u64,
}

impl Schedule {
    fn check(&self) -> Result<()> {
        if self.batch == 0 || !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(err!(
                "hywu: batch {} must be positive and lr {} positive and finite",
                self.batch,
                self.lr
            ));
        }
        Ok(())
    }
}

/// The sequential regulariser's anchor: a snapshot G* of the generator's parameters taken
/// before the task, the old tokens and β.
#[derive(Clone, Debug)]
pub struct OutputReg {
    snapshot: ParamSet,
    old: Vec<usize>,
    beta: f32,
}

impl OutputReg {
    /// Anchors `arm`'s current outputs for the tokens `old` with weight `beta`.
    pub fn new(arm: &dyn Adapter, old: &[usize], beta: f32) -> Result<OutputReg> {
        if !(beta.is_finite() && beta >= 0.0) {
            return Err(err!("hywu: regulariser β {beta} must be finite and ≥ 0"));
        }
        if let Some(&t) = old.iter().find(|&&t| t >= arm.tasks()) {
            return Err(err!("hywu: old token {t} of {} tokens", arm.tasks()));
        }
        let snapshot = arm.params().clone();
        Ok(OutputReg {
            snapshot,
            old: old.to_vec(),
            beta,
        })
    }

    /// β·mean over old tokens s and rows i of ‖G(s ⊕ emb(xᵢ)) − G*(s ⊕ emb(xᵢ))‖² (zero
    /// without old tokens).
    pub fn value(
        &self,
        arm: &dyn Adapter,
        base: &BaseOn,
        p: &Leaves,
        x: Tensor<2>,
    ) -> Result<Option<Tensor<1>>> {
        if self.old.is_empty() {
            return Ok(None);
        }
        let n = x.dims()[0];
        let xs = Tensor::cat(vec![x; self.old.len()], 0);
        let tasks: Vec<usize> = self
            .old
            .iter()
            .flat_map(|&t| std::iter::repeat_n(t, n))
            .collect();
        let device = xs.device();
        let anchor = arm
            .factors(
                base,
                &constants(&self.snapshot, &device),
                xs.clone(),
                &tasks,
            )?
            .detach();
        let now = arm.factors(base, p, xs, &tasks)?;
        Ok(Some((now - anchor).square().sum_dim(1).mean() * self.beta))
    }
}

/// Mean cross-entropy of `logits` against `y`.
fn cross_entropy(logits: Tensor<2>, y: &[u32]) -> Tensor<1> {
    let [n, _] = logits.dims();
    let idx = Tensor::<2, Int>::from_data(
        TensorData::new(y.iter().map(|&v| v as i64).collect::<Vec<_>>(), [n, 1]),
        &logits.device(),
    );
    log_softmax(logits, 1)
        .gather(1, idx)
        .reshape([n])
        .neg()
        .mean()
}

/// Rows `idx` of the `dim`-wide `x`.
fn rows(x: &[f32], dim: usize, idx: &[usize]) -> Vec<f32> {
    idx.iter()
        .flat_map(|&i| x[i * dim..(i + 1) * dim].iter().copied())
        .collect()
}

/// One Adam step of `arm` on (x, y, tasks), plus the regulariser; the loss back.
fn step(
    arm: &mut dyn Adapter,
    base: &BaseOn,
    batch: (Vec<f32>, Vec<u32>, Vec<usize>),
    reg: Option<&OutputReg>,
    lr: f64,
    device: &Device,
) -> Result<f32> {
    let (x, y, tasks) = batch;
    let n = y.len();
    let x = tensor(x, [n, base.input()], device);
    let p = arm.params().leaves(device);
    let mut loss = cross_entropy(arm.logits(base, &p, x.clone(), &tasks), &y);
    if let Some(r) = reg
        && let Some(v) = r.value(arm, base, &p, x)?
    {
        loss = loss + v;
    }
    let value = host(loss.clone()).first().copied().unwrap_or(f32::NAN);
    if !value.is_finite() {
        return Err(err!(
            "hywu: {} training diverged (loss {value})",
            arm.name()
        ));
    }
    let g = p.grads(&loss.backward());
    arm.params_mut().adam_step(&g, &OptimConfig::DEFAULT, lr)?;
    Ok(value)
}

fn check_tasks(arm: &dyn Adapter, base: &Base, tasks: &[TaskData]) -> Result<()> {
    if tasks.len() != arm.tasks() {
        return Err(err!(
            "hywu: {} tasks of data for {} tokens",
            tasks.len(),
            arm.tasks()
        ));
    }
    for (t, d) in tasks.iter().enumerate() {
        d.check(base.dims()[0], base.classes(), &format!("task {t}"))?;
    }
    Ok(())
}

/// Trains `arm` on every task at once: each row of a batch draws a task and one of its
/// examples uniformly (from (seed, step)). `each(s, arm)` is called before the first step
/// (s = 0) and after every step s, e.g. to measure gradient cosines during training.
pub fn train_joint(
    arm: &mut dyn Adapter,
    base: &Base,
    tasks: &[TaskData],
    s: &Schedule,
    each: &mut dyn FnMut(usize, &dyn Adapter) -> Result<()>,
) -> Result<Vec<f32>> {
    s.check()?;
    check_tasks(arm, base, tasks)?;
    let device = Device::flex().autodiff();
    let b = base.on(&device);
    let dim = base.dims()[0];
    let mut losses = Vec::with_capacity(s.steps);
    each(0, arm)?;
    for k in 0..s.steps {
        let mut rng = Rng::keyed(s.seed, "hywu-joint", k as u64);
        let (mut x, mut y, mut tk) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..s.batch {
            let t = rng.below(tasks.len());
            let i = rng.below(tasks[t].len());
            x.extend_from_slice(&tasks[t].x[i * dim..(i + 1) * dim]);
            y.push(tasks[t].y[i]);
            tk.push(t);
        }
        losses.push(step(arm, &b, (x, y, tk), None, s.lr, &device)?);
        each(k + 1, arm)?;
    }
    Ok(losses)
}

/// Trains `arm` on task `task` alone (Adam restarted), with the output regulariser `reg`
/// when given (a generator's). The losses back.
pub fn train_task(
    arm: &mut dyn Adapter,
    base: &Base,
    task: usize,
    data: TaskData,
    s: &Schedule,
    reg: Option<&OutputReg>,
) -> Result<Vec<f32>> {
    s.check()?;
    if task >= arm.tasks() {
        return Err(err!("hywu: task {task} of {} tokens", arm.tasks()));
    }
    let dim = base.dims()[0];
    data.check(dim, base.classes(), &format!("task {task}"))?;
    let device = Device::flex().autodiff();
    let b = base.on(&device);
    arm.params_mut().reset_optimizer();
    let mut losses = Vec::with_capacity(s.steps);
    for k in 0..s.steps {
        let mut rng = Rng::keyed(s.seed, "hywu-task", k as u64);
        let idx: Vec<usize> = (0..s.batch).map(|_| rng.below(data.len())).collect();
        let x = rows(data.x, dim, &idx);
        let y = idx.iter().map(|&i| data.y[i]).collect();
        losses.push(step(
            arm,
            &b,
            (x, y, vec![task; s.batch]),
            reg,
            s.lr,
            &device,
        )?);
    }
    Ok(losses)
}

/// Logits of `x` (n × input) under task `task`, on the CPU in batches of 1000.
pub fn predict(arm: &dyn Adapter, base: &Base, task: usize, x: &[f32]) -> Result<Vec<f32>> {
    let dim = base.dims()[0];
    if task >= arm.tasks() || !x.len().is_multiple_of(dim) {
        return Err(err!(
            "hywu: task {task} of {} tokens, {} input values for rows of {dim}",
            arm.tasks(),
            x.len()
        ));
    }
    let device = Device::flex();
    let b = base.on(&device);
    let p = constants(arm.params(), &device);
    let mut out = Vec::with_capacity(x.len() / dim * base.classes());
    for chunk in x.chunks(1000 * dim) {
        let n = chunk.len() / dim;
        let xt = tensor(chunk.to_vec(), [n, dim], &device);
        out.extend(host(arm.logits(&b, &p, xt, &vec![task; n])));
    }
    Ok(out)
}

/// Accuracy (percent, argmax; first on ties) of `arm` on `data` under task `task`.
pub fn accuracy(arm: &dyn Adapter, base: &Base, task: usize, data: TaskData) -> Result<f64> {
    data.check(base.dims()[0], base.classes(), &format!("task {task}"))?;
    let c = base.classes();
    let logits = predict(arm, base, task, data.x)?;
    let right = logits
        .chunks(c)
        .zip(data.y)
        .filter(|(row, y)| {
            let mut best = 0;
            for k in 1..c {
                if row[k] > row[best] {
                    best = k;
                }
            }
            best == **y as usize
        })
        .count();
    Ok(100.0 * right as f64 / data.len() as f64)
}

/// The gradient of each task's mean loss (on its `probe` data) with respect to `arm`'s
/// trainable parameters, flattened.
pub fn task_gradients(arm: &dyn Adapter, base: &Base, probe: &[TaskData]) -> Result<Vec<Vec<f32>>> {
    check_tasks(arm, base, probe)?;
    let device = Device::flex().autodiff();
    let b = base.on(&device);
    let dim = base.dims()[0];
    probe
        .iter()
        .enumerate()
        .map(|(t, d)| {
            let p = arm.params().leaves(&device);
            let x = tensor(d.x.to_vec(), [d.len(), dim], &device);
            let loss = cross_entropy(arm.logits(&b, &p, x, &vec![t; d.len()]), d.y);
            let g = p.grads(&loss.backward());
            Ok((0..arm.params().len())
                .filter(|&i| !arm.params().is_frozen(i))
                .flat_map(|i| g[i].iter().copied())
                .collect())
        })
        .collect()
}

/// Pairwise cosines of `grads` (0 where a gradient is zero).
pub fn cosine_matrix(grads: &[Vec<f32>]) -> Vec<Vec<f64>> {
    let dot = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| *x as f64 * *y as f64)
            .sum::<f64>()
    };
    grads
        .iter()
        .map(|a| {
            grads
                .iter()
                .map(|b| {
                    let d = (dot(a, a) * dot(b, b)).sqrt();
                    if d > 0.0 { dot(a, b) / d } else { 0.0 }
                })
                .collect()
        })
        .collect()
}

/// The mean of the off-diagonal entries of a cosine matrix (0 with fewer than two tasks).
pub fn mean_pairwise(m: &[Vec<f64>]) -> f64 {
    let mut s = 0.0;
    let mut k = 0usize;
    for (i, row) in m.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            if i < j {
                s += v;
                k += 1;
            }
        }
    }
    if k == 0 { 0.0 } else { s / k as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small random base of widths `dims`.
    fn base(dims: &[usize], seed: u64) -> Base {
        let mut v = Values::new();
        for l in 0..dims.len() - 1 {
            v.insert(
                format!("fc.{l}.weight"),
                uniform_init(dims[l] * dims[l + 1], dims[l], seed, &format!("w{l}")),
            );
            v.insert(
                format!("fc.{l}.bias"),
                uniform_init(dims[l + 1], dims[l], seed, &format!("b{l}")),
            );
        }
        Base::new(dims, &v).unwrap()
    }

    fn inputs(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::keyed(seed, "x", 0);
        (0..n * dim).map(|_| rng.uniform()).collect()
    }

    /// y = x·W + b on the host (W [in, out] row-major).
    fn affine(x: &[f32], w: &[f32], b: &[f32], out: usize) -> Vec<f32> {
        (0..out)
            .map(|j| {
                b[j] + x
                    .iter()
                    .enumerate()
                    .map(|(k, v)| v * w[k * out + j])
                    .sum::<f32>()
            })
            .collect()
    }

    /// The slow reference: the MLP with each hidden layer's weight replaced by `w(l)`.
    fn mlp(
        base: &Base,
        x: &[f32],
        w: impl Fn(usize) -> Vec<f32>,
        extra: impl Fn(usize) -> Vec<f32>,
    ) -> Vec<f32> {
        let v = base.values();
        let d = base.dims();
        let mut h = x.to_vec();
        for l in 0..d.len() - 1 {
            let last = l == d.len() - 2;
            let wl = if last {
                v[&format!("fc.{l}.weight")].clone()
            } else {
                w(l)
            };
            let mut o = affine(&h, &wl, &v[&format!("fc.{l}.bias")], d[l + 1]);
            if !last {
                for (a, e) in o.iter_mut().zip(extra(l)) {
                    *a = (*a + e).max(0.0);
                }
            }
            h = o;
        }
        h
    }

    /// W + (B·A)ᵀ for W [in, out], A [r, in], B [out, r].
    fn materialise(w: &[f32], a: &[f32], b: &[f32], din: usize, dout: usize, r: usize) -> Vec<f32> {
        let mut m = w.to_vec();
        for k in 0..din {
            for j in 0..dout {
                m[k * dout + j] += (0..r).map(|q| b[j * r + q] * a[q * din + k]).sum::<f32>();
            }
        }
        m
    }

    fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| (x - y).abs() <= tol * (1.0 + y.abs()))
    }

    #[test]
    fn generated_lora_equals_the_materialised_weight_of_each_example() -> Result<()> {
        let dims = [6, 5, 4, 3];
        let b = base(&dims, 1);
        let cfg = GeneratorConfig {
            tasks: 2,
            rank: 2,
            hidden: 3,
        };
        let mut g = Generator::new(&b, &cfg, 7)?;
        // A B-head away from 0, so that the adapters act.
        for i in [G_WB, G_BB] {
            let n = g.params().values(i).len();
            g.params_mut()
                .values_mut(i)
                .copy_from_slice(&uniform_init(n, 2, 9, "bh"));
        }
        let n = 5;
        let x = inputs(n, 6, 3);
        let tasks = [0, 1, 1, 0, 1];
        let device = Device::flex();
        let on = b.on(&device);
        let p = constants(g.params(), &device);
        let xt = tensor(x.clone(), [n, 6], &device);
        let logits = host(g.logits(&on, &p, xt.clone(), &tasks));
        let f = host(g.factors(&on, &p, xt, &tasks)?);
        let fo = g.outputs();
        let v = b.values();
        let mut changed = false;
        for i in 0..n {
            let row = &f[i * fo..(i + 1) * fo];
            let fa = g.params().shape(G_BA)[0];
            let w = |l: usize| {
                let &(_, din, dout, oa, ob) = &g.layers[l];
                materialise(
                    &v[&format!("fc.{l}.weight")],
                    &row[oa..oa + 2 * din],
                    &row[fa + ob..fa + ob + dout * 2],
                    din,
                    dout,
                    2,
                )
            };
            let want = mlp(&b, &x[i * 6..(i + 1) * 6], w, |l| vec![0.0; dims[l + 1]]);
            let plain = mlp(
                &b,
                &x[i * 6..(i + 1) * 6],
                |l| v[&format!("fc.{l}.weight")].clone(),
                |l| vec![0.0; dims[l + 1]],
            );
            changed |= !close(&plain, &want, 1e-3);
            assert!(close(&logits[i * 3..(i + 1) * 3], &want, 1e-4), "row {i}");
        }
        assert!(changed, "the generated adapters changed nothing");
        Ok(())
    }

    #[test]
    fn shared_lora_equals_its_materialised_weight_and_token_column() -> Result<()> {
        let dims = [6, 5, 4, 3];
        let b = base(&dims, 2);
        let mut s = SharedLora::new(&b, 3, 2, 5)?;
        for l in 0..2 {
            let i = 2 * l + 1;
            let n = s.params().values(i).len();
            s.params_mut()
                .values_mut(i)
                .copy_from_slice(&uniform_init(n, 2, 4, "b"));
        }
        let x = inputs(4, 6, 8);
        let tasks = [2, 0, 1, 2];
        let got = predict(&s, &b, 2, &x)?;
        let v = b.values();
        let pv = |i: usize| s.params().values(i).to_vec();
        for r in 0..4 {
            let xi = &x[r * 6..(r + 1) * 6];
            let t = tasks[r];
            let logits = predict(&s, &b, t, xi)?;
            // Layer 0's A splits into the input block and the token column t.
            let a0 = pv(0);
            let a_in: Vec<f32> = (0..2).flat_map(|q| a0[q * 9..q * 9 + 6].to_vec()).collect();
            let tok: Vec<f32> = (0..5)
                .map(|j| (0..2).map(|q| pv(1)[j * 2 + q] * a0[q * 9 + 6 + t]).sum())
                .collect();
            let w = |l: usize| match l {
                0 => materialise(&v["fc.0.weight"], &a_in, &pv(1), 6, 5, 2),
                _ => materialise(&v["fc.1.weight"], &pv(2), &pv(3), 5, 4, 2),
            };
            let want = mlp(
                &b,
                xi,
                w,
                |l| if l == 0 { tok.clone() } else { vec![0.0; 4] },
            );
            assert!(close(&logits, &want, 1e-4), "row {r}");
            if t == 2 {
                assert!(close(&got[r * 3..(r + 1) * 3], &want, 1e-4));
            }
        }
        Ok(())
    }

    #[test]
    fn generator_starts_from_the_base_and_regulariser_is_zero_at_the_snapshot() -> Result<()> {
        let dims = [6, 5, 4, 3];
        let b = base(&dims, 3);
        let g = Generator::new(
            &b,
            &GeneratorConfig {
                tasks: 3,
                rank: 2,
                hidden: 4,
            },
            1,
        )?;
        let x = inputs(7, 6, 2);
        let plain = {
            let device = Device::flex();
            let on = b.on(&device);
            host(on.forward(tensor(x.clone(), [7, 6], &device), |_, _| None))
        };
        for t in 0..3 {
            assert_eq!(predict(&g, &b, t, &x)?, plain);
        }
        let reg = OutputReg::new(&g, &[0, 1], 10.0)?;
        let device = Device::flex().autodiff();
        let on = b.on(&device);
        let p = g.params().leaves(&device);
        let v = reg.value(&g, &on, &p, tensor(x, [7, 6], &device))?.unwrap();
        assert_eq!(host(v), vec![0.0]);
        assert!(OutputReg::new(&g, &[3], 1.0).is_err());
        assert!(OutputReg::new(&g, &[0], f32::NAN).is_err());
        assert!(
            OutputReg::new(&SharedLora::new(&b, 3, 1, 0)?, &[0], 1.0)
                .and_then(|r| reg_value_host(&r, &b))
                .is_err()
        );
        Ok(())
    }

    fn reg_value_host(r: &OutputReg, b: &Base) -> Result<()> {
        let s = SharedLora::new(b, 3, 1, 0)?;
        let device = Device::flex().autodiff();
        let p = s.params().leaves(&device);
        r.value(
            &s,
            &b.on(&device),
            &p,
            tensor(vec![0.0; 6], [1, 6], &device),
        )?;
        Ok(())
    }

    /// Two conflicting tasks on synthetic data: task 1 swaps the labels of task 0.
    fn conflicting(n: usize) -> (Vec<f32>, Vec<u32>, Vec<u32>) {
        let x = inputs(n, 6, 11);
        let y0: Vec<u32> = (0..n)
            .map(|i| u32::from(x[i * 6] + x[i * 6 + 1] > 1.0))
            .collect();
        let y1 = y0.iter().map(|&c| 1 - c).collect();
        (x, y0, y1)
    }

    #[test]
    fn training_moves_the_adapters_only_and_the_regulariser_protects_old_tokens() -> Result<()> {
        let dims = [6, 8, 8, 2];
        let b = base(&dims, 4);
        let before = b.values();
        let (x, y0, y1) = conflicting(64);
        let tasks = [TaskData { x: &x, y: &y0 }, TaskData { x: &x, y: &y1 }];
        let s = Schedule {
            steps: 60,
            batch: 32,
            lr: 1e-2,
            seed: 0,
        };
        let mut g = Generator::new(
            &b,
            &GeneratorConfig {
                tasks: 2,
                rank: 2,
                hidden: 8,
            },
            0,
        )?;
        let mut seen = Vec::new();
        let losses = train_joint(&mut g, &b, &tasks, &s, &mut |k, _| {
            seen.push(k);
            Ok(())
        })?;
        assert_eq!(seen, (0..=60).collect::<Vec<_>>());
        assert!(losses[55..].iter().sum::<f32>() < losses[..5].iter().sum::<f32>());
        assert_eq!(b.values(), before, "the base moved");
        // Sequential: task 1 after task 0, with and without the regulariser.
        let run = |beta: Option<f32>| -> Result<(f64, f64)> {
            let mut g = Generator::new(
                &b,
                &GeneratorConfig {
                    tasks: 2,
                    rank: 2,
                    hidden: 8,
                },
                0,
            )?;
            train_task(&mut g, &b, 0, tasks[0], &s, None)?;
            let after = accuracy(&g, &b, 0, tasks[0])?;
            let reg = beta.map(|v| OutputReg::new(&g, &[0], v)).transpose()?;
            train_task(&mut g, &b, 1, tasks[1], &s, reg.as_ref())?;
            Ok((after, accuracy(&g, &b, 0, tasks[0])?))
        };
        let (a0, plain) = run(None)?;
        let (b0, kept) = run(Some(10.0))?;
        assert_eq!(a0, b0);
        assert!(kept >= plain, "regularised {kept} < plain {plain}");
        assert!(a0 - kept <= 5.0, "{a0} → {kept}");
        // Deterministic from the seed.
        let (c0, again) = run(Some(10.0))?;
        assert_eq!((c0, again), (b0, kept));
        Ok(())
    }

    #[test]
    fn counts_match_and_cosines_are_right() -> Result<()> {
        let b = base(&[784, 100, 100, 10], 0);
        let g = Generator::new(
            &b,
            &GeneratorConfig {
                tasks: 4,
                rank: 4,
                hidden: 16,
            },
            0,
        )?;
        let r = SharedLora::matched_rank(&b, 4, g.params().trainable());
        let s = SharedLora::new(&b, 4, r, 0)?;
        let (cg, cs) = (g.params().trainable() as f64, s.params().trainable() as f64);
        assert_eq!(cs as usize, SharedLora::count(&b, 4, r));
        assert!((cg - cs).abs() / cg < 0.03, "{cg} vs {cs}");
        let m = cosine_matrix(&[
            vec![1.0, 0.0],
            vec![-1.0, 0.0],
            vec![1.0, 1.0],
            vec![0.0, 0.0],
        ]);
        assert!((m[0][1] + 1.0).abs() < 1e-12 && (m[0][2] - 0.5f64.sqrt()).abs() < 1e-9);
        assert_eq!(m[3][0], 0.0);
        assert!(
            (mean_pairwise(&m[..2].iter().map(|r| r[..2].to_vec()).collect::<Vec<_>>()) + 1.0)
                .abs()
                < 1e-12
        );
        Ok(())
    }

    #[test]
    fn bad_input_is_an_error() {
        let b = base(&[6, 5, 3], 0);
        assert!(Base::new(&[6, 3], &b.values()).is_err());
        assert!(Base::new(&[6, 5, 4], &b.values()).is_err());
        let mut nan = b.values();
        nan.get_mut("fc.0.bias").unwrap()[0] = f32::NAN;
        assert!(Base::new(&[6, 5, 3], &nan).is_err());
        let mut s = SharedLora::new(&b, 2, 1, 0).unwrap();
        let x = inputs(2, 6, 0);
        let bad = [0u32, 3];
        let d = TaskData { x: &x, y: &bad };
        let sch = Schedule {
            steps: 1,
            batch: 2,
            lr: 1e-3,
            seed: 0,
        };
        assert!(train_task(&mut s, &b, 0, d, &sch, None).is_err());
        let good = [0u32, 1];
        let short = TaskData {
            x: &x[..7],
            y: &good,
        };
        assert!(accuracy(&s, &b, 0, short).is_err());
        assert!(train_task(&mut s, &b, 2, TaskData { x: &x, y: &good }, &sch, None).is_err());
        assert!(
            train_joint(
                &mut s,
                &b,
                &[TaskData { x: &x, y: &good }],
                &sch,
                &mut |_, _| Ok(())
            )
            .is_err()
        );
        assert!(
            Generator::new(
                &b,
                &GeneratorConfig {
                    tasks: 0,
                    rank: 1,
                    hidden: 1
                },
                0
            )
            .is_err()
        );
    }
}
