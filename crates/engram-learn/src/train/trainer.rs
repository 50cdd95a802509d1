//! The training loop. For each task: the strategy's `before_task`, then epochs (or a fixed
//! number of iterations) of shuffled minibatches with the strategy's loss, gradient and step
//! hooks, then `after_task`, then evaluation on every task's test set (also the tasks not yet
//! seen, for forward transfer), then a checkpoint. The optimizer is reset at each task (unless
//! `reset-optimizer = false` carries its state, by parameter name), and
//! every random draw derives from (seed, task, epoch) (adversarial training's random starts
//! from (seed, task, step)), so a run resumed from a checkpoint ends with exactly the metrics
//! of an uninterrupted run.

use super::checkpoint::{self, Saved};
use super::fused::Optimizer;
use crate::backend::Compute;
use crate::eval::{accuracy, class_mask, evaluate_all_with, evaluate_with, scores_of};
use crate::metrics::{ClassMask, ece_from_logits};
use crate::model::{ModelConfig, Net};
use crate::optim::OptimConfig;
use crate::scenario::{EvalMode, EvalPlan, Part, Scenario};
use crate::strategy::{Batch, Ctx, State, Strategy};
use crate::{Result, err};
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::prelude::*;
use engram_weights::rng::Rng;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TrainConfig {
    /// Epochs per task (ignored when `iterations` is set).
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Epochs of the first task when it differs from the others' (the half-base protocol of
    /// class-incremental learning trains its base task longer); `None`: `epochs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_task_epochs: Option<usize>,
    /// Optimizer steps per task instead of epochs.
    #[serde(default)]
    pub iterations: Option<usize>,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default = "default_eval_batch")]
    pub eval_batch: usize,
    #[serde(default)]
    pub optimizer: OptimConfig,
    /// A fresh optimizer state (moments, step count) at the start of every task (`true`, the
    /// default, as Mammoth), or one state carried through the whole run (`false`, as
    /// Avalanche keeps it).
    #[serde(default = "default_reset_optimizer")]
    pub reset_optimizer: bool,
    /// Logit masking in the training loss: `none` (default) or `group`, SCoLe's batch-class
    /// masked softmax (logits of classes absent from the batch's labels are left out of the
    /// cross-entropy; predictions always use every logit).
    #[serde(default)]
    pub masking: Masking,
    /// Adversarial training (`[train.adversarial]`): every minibatch attacked with PGD before
    /// the step, and the method's loss weights (see `crate::robust`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adversarial: Option<crate::robust::Adversarial>,
    /// Where to compute: `cpu` (the default), `gpu` (the first discrete GPU through Vulkan) or
    /// `vulkan-cpu`; the last two only in a build with the `gpu` feature
    /// ([`crate::backend::Compute`]). Left out of the written settings when `cpu`, so that
    /// run files and run ids from before the key existed stay what they were.
    #[serde(default, skip_serializing_if = "is_cpu")]
    pub device: Compute,
}

fn is_cpu(c: &Compute) -> bool {
    *c == Compute::Cpu
}

/// Logit masking in the training loss (`train.masking`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Masking {
    /// Cross-entropy over every output (Task-IL: over the example's task's classes).
    #[default]
    None,
    /// Cross-entropy over the classes present in the batch's labels (SCoLe `masking=group`).
    Group,
}

/// Most epochs per task: a run file asking for more is a typo, not a run that finishes.
pub const MAX_EPOCHS: usize = 10_000;
/// Most optimizer steps per task (`iterations`).
pub const MAX_ITERATIONS: usize = 100_000_000;

fn default_epochs() -> usize {
    1
}
fn default_batch() -> usize {
    128
}
fn default_eval_batch() -> usize {
    1000
}
fn default_reset_optimizer() -> bool {
    true
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: default_epochs(),
            first_task_epochs: None,
            iterations: None,
            batch_size: default_batch(),
            eval_batch: default_eval_batch(),
            optimizer: OptimConfig::default(),
            reset_optimizer: default_reset_optimizer(),
            masking: Masking::None,
            adversarial: None,
            device: Compute::Cpu,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        self.device
            .available()
            .map_err(|e| err!("train.device: {e}"))?;
        if self.epochs == 0 && self.iterations.is_none() {
            return Err("train.epochs must be at least 1".into());
        }
        if self.iterations.is_some() && self.epochs != default_epochs() {
            return Err(
                "train.epochs has no effect when train.iterations is set; remove one".into(),
            );
        }
        match self.first_task_epochs {
            Some(_) if self.iterations.is_some() => {
                return Err(
                    "train.first-task-epochs has no effect when train.iterations is set; remove one"
                        .into(),
                );
            }
            Some(e) if e == 0 || e > MAX_EPOCHS => {
                return Err(err!(
                    "train.first-task-epochs = {e} must be in [1, {MAX_EPOCHS}]"
                ));
            }
            _ => {}
        }
        if self.iterations == Some(0) {
            return Err("train.iterations must be at least 1".into());
        }
        if self.epochs > MAX_EPOCHS {
            return Err(err!(
                "train.epochs = {} is more than the limit of {MAX_EPOCHS}",
                self.epochs
            ));
        }
        if let Some(it) = self.iterations.filter(|&it| it > MAX_ITERATIONS) {
            return Err(err!(
                "train.iterations = {it} is more than the limit of {MAX_ITERATIONS}"
            ));
        }
        if self.batch_size == 0 || self.eval_batch == 0 {
            return Err("train.batch-size and eval-batch must be at least 1".into());
        }
        if let Some(a) = &self.adversarial {
            a.validate()?;
            let most = self.epochs.max(self.first_task_epochs.unwrap_or(0));
            if let Some(b) = a
                .begin_epoch
                .filter(|&b| self.iterations.is_none() && b > most)
            {
                return Err(err!(
                    "train.adversarial.begin-epoch = {b} is after the last epoch ({most}): \
                     gairat would never reweight"
                ));
            }
        }
        if !self.reset_optimizer
            && self.optimizer.kind == crate::optim::OptimKind::Sgd
            && self.optimizer.momentum == 0.0
        {
            return Err(
                "train.reset-optimizer = false has no effect: SGD without momentum keeps no \
                 optimizer state"
                    .into(),
            );
        }
        self.optimizer.validate()
    }
}

/// Progress reported to the caller (the CLI draws bars from it).
#[derive(Clone, Debug)]
pub enum Event {
    TaskStart {
        task: usize,
        tasks: usize,
        steps: usize,
    },
    Step {
        task: usize,
        step: usize,
        loss: f32,
    },
    TaskEnd {
        task: usize,
        seconds: f64,
        accuracy: Vec<f64>,
    },
    Resumed {
        completed: usize,
    },
}

/// Everything a run measured.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct RunOutput {
    pub eval_mode: String,
    /// a[k][i] in percent in the scenario's evaluation mode (T × T; empty for all-class plans).
    pub accuracy: Vec<Vec<f64>>,
    /// The same in Task-IL form.
    pub task_il_accuracy: Vec<Vec<f64>>,
    /// b_i: accuracy of the randomly initialised model (scenario mode, then Task-IL).
    pub baseline: Vec<f64>,
    pub baseline_task_il: Vec<f64>,
    /// All-class test accuracy after each task (all-class plans), and the current task's.
    pub all_class_curve: Vec<f64>,
    pub current_task_curve: Vec<f64>,
    /// Expected calibration error (15 bins, percent) after the last task, Class-IL over the
    /// classes seen (the last entry of `ece_curve`).
    pub ece: f64,
    /// ECE after each task over the test sets of the tasks seen so far, Class-IL over the
    /// classes seen (Domain-IL and all-class plans: every output).
    #[serde(default)]
    pub ece_curve: Vec<f64>,
    /// ECE[k][i] on task i's test set after task k, from the masked logits of a[k][i] (T × T;
    /// empty for all-class plans).
    #[serde(default)]
    pub ece_matrix: Vec<Vec<f64>>,
    pub seconds_per_task: Vec<f64>,
    pub peak_memory_bytes: u64,
    pub strategy_state_bytes: u64,
    pub params: usize,
    /// Values the strategy let training change in the last task (`None`: every parameter).
    #[serde(default)]
    pub trainable_values: Option<usize>,
    /// Bytes of optimizer state at the end of the last task: the run's optimizer's moments
    /// plus the state of a strategy that updates parameters itself.
    #[serde(default)]
    pub optimizer_bytes: u64,
}

pub struct Trainer<'a> {
    pub scenario: &'a Scenario,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub seed: u64,
    pub strategy: Box<dyn Strategy>,
    /// Where to checkpoint after each task (and resume from).
    pub checkpoint_dir: Option<PathBuf>,
    /// Stop after this many tasks (to test resuming).
    pub stop_after: Option<usize>,
    /// Begin at a later task from given weights (see [`Start`]).
    pub start: Option<Start>,
    /// The run's settings, recorded in each checkpoint: resuming with other settings is an
    /// error listing the differences (`Null`: none recorded, none compared).
    pub settings: serde_json::Value,
}

/// Where a run begins when it continues from a network trained elsewhere: at task `task`
/// (the tasks before it are taken as learned) with the parameters `values` (every parameter
/// by name). The accuracy matrix then has rows from `task` on; the baseline row is that of
/// the given network. A checkpoint to resume from takes precedence.
#[derive(Clone, Debug)]
pub struct Start {
    pub task: usize,
    pub values: std::collections::BTreeMap<String, Vec<f32>>,
}

impl<'a> Trainer<'a> {
    /// A run of `strategy` through `scenario` with a fresh network, no checkpoints.
    pub fn new(
        scenario: &'a Scenario,
        model: ModelConfig,
        train: TrainConfig,
        seed: u64,
        strategy: Box<dyn Strategy>,
    ) -> Trainer<'a> {
        Trainer {
            scenario,
            model,
            train,
            seed,
            strategy,
            checkpoint_dir: None,
            stop_after: None,
            start: None,
            settings: serde_json::Value::Null,
        }
    }
}

/// The network a run of `seed` starts from: `model` for `s`'s inputs and outputs (with a
/// feedback input when `feedback`, [`Strategy::feedback_input`]), seeded and built under the
/// RNG guard, so that trainers on other threads cannot draw from burn's process-wide
/// generator in between. The one construction: whatever needs a run's starting weights
/// without running it (a curriculum's baseline) builds them here too.
pub fn seeded_net(
    model: &ModelConfig,
    s: &Scenario,
    seed: u64,
    feedback: bool,
    device: &Device,
) -> Result<Net> {
    // The generator of the device the network is built on (the CPU's for `cpu`).
    let rng = crate::backend::seeded(&device.clone().inner(), seed);
    let net =
        model.build_with_feedback(s.train.dim, s.train.image, s.num_outputs, feedback, device);
    drop(rng);
    net
}

fn mix(seed: u64, a: u64, b: u64) -> u64 {
    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ a.wrapping_mul(0xd1b5_4a32_d192_ed03)
        ^ b.wrapping_mul(0x8cb9_2ba7_2f3d_8dd7)
}

/// Peak resident memory of this process (VmHWM), bytes.
pub fn peak_memory() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}

/// The mean cross-entropy of `logits` (`n` × outputs) plus the batch's [`penalty`].
fn task_loss(
    pen: Option<&[f32]>,
    logits: Tensor<2>,
    y: Tensor<1, Int>,
    device: &Device,
) -> Tensor<1> {
    let [n, c] = logits.dims();
    let logits = match pen {
        Some(p) => logits + Tensor::<2>::from_data(TensorData::new(p.to_vec(), [n, c]), device),
        None => logits,
    };
    CrossEntropyLossConfig::new()
        .init(device)
        .forward(logits, y)
}

/// The additive logit penalty of the training loss (`n` × outputs), or `None` when nothing
/// is masked: in Task-IL each example's logits outside its own task's classes are masked out
/// (examples of earlier tasks, as Joint and replay mix in, keep their own head). With
/// [`Masking::Group`] (SCoLe's `masking=group`) the logits of classes absent from the batch's
/// labels `y_host` are masked out as well (−1e9 added before the softmax), for every example;
/// only the training loss is masked, predictions keep every logit. The attack of adversarial
/// training and its weighted loss use the same penalty.
fn penalty(
    s: &Scenario,
    masking: Masking,
    ids: &[(usize, usize)],
    y_host: &[u32],
) -> Option<Vec<f32>> {
    let c = s.num_outputs;
    let n = ids.len();
    let mut pen: Option<Vec<f32>> = None;
    if s.eval == EvalMode::TaskIl {
        let masks: Vec<Vec<f32>> = s
            .tasks
            .iter()
            .map(|t| {
                class_mask(c, t.classes.iter().copied())
                    .iter()
                    .map(|&a| if a { 0.0 } else { -1e9 })
                    .collect()
            })
            .collect();
        pen = Some(
            ids.iter()
                .flat_map(|&(t, _)| masks[t].iter().copied())
                .collect(),
        );
    }
    if masking == Masking::Group {
        let present = class_mask(c, y_host.iter().copied());
        let row: Vec<f32> = present
            .iter()
            .map(|&a| if a { 0.0 } else { -1e9 })
            .collect();
        let p = pen.get_or_insert_with(|| vec![0.0; n * c]);
        for r in p.chunks_mut(c) {
            for (v, &g) in r.iter_mut().zip(&row) {
                *v += g;
            }
        }
    }
    pen
}

impl Trainer<'_> {
    pub fn run(&mut self, on: &mut dyn FnMut(Event)) -> Result<RunOutput> {
        self.run_net(on).map(|(out, _)| out)
    }

    /// Every check made at the start of a run (settings, sizes, the strategy's parameters
    /// against the scenario and the network), without training: a caller that must not
    /// change anything before a run can start (replacing an earlier run) asks first.
    pub fn check(&self) -> Result<()> {
        let net = self.start_net(&Device::flex().autodiff())?;
        // Weights to start from must fit the network, name by name.
        if let Some(st) = &self.start {
            crate::model::params::load_params(net, &st.values)
                .map_err(|e| err!("the weights to start from: {e}"))?;
        }
        Ok(())
    }

    /// The run's fresh network, after every check made at the start.
    fn start_net(&self, ad: &Device) -> Result<Net> {
        self.train.validate()?;
        let s = self.scenario;
        if s.tasks.is_empty() {
            return Err("the scenario has no tasks".into());
        }
        if let Some(st) = self.start.as_ref().filter(|st| st.task >= s.tasks.len()) {
            return Err(err!(
                "start at task {} of a scenario of {} tasks",
                st.task,
                s.tasks.len()
            ));
        }
        super::alloc::keep_freed_memory();
        // The network's size and a batch's activations (at most the data) are checked
        // before anything is allocated.
        let batch = (self.train.batch_size.max(self.train.eval_batch))
            .min(s.train.len().max(s.test.len()).max(1));
        self.model
            .check_size(s.train.dim, s.train.image, s.num_outputs, batch)?;
        if self.train.adversarial.is_some() && s.train.x.iter().any(|v| !(0.0..=1.0).contains(v)) {
            return Err(err!(
                "train.adversarial: the training inputs leave [0, 1], the range the attack \
                 clips to; adversarial training needs image data scaled to [0, 1]"
            ));
        }
        let feedback = self.strategy.feedback_input();
        let net = seeded_net(&self.model, s, self.seed, feedback, ad)?;
        self.strategy.check(&crate::strategy::Setup {
            scenario: s,
            net: &net,
            optim: &self.train.optimizer,
            reset_optimizer: self.train.reset_optimizer,
        })?;
        Ok(net)
    }

    /// [`Trainer::run`], also handing back the trained network.
    ///
    /// The run executes on a rayon pool of its own, with as many threads as the pool of the
    /// caller (the global one: `--threads`), and `on` is called on this thread with the events
    /// the run sends, in order. Why: a thread outside a pool that starts parallel work sleeps
    /// until the work is done and is woken afterwards, at every matrix product of every step;
    /// on one of the pool's threads the trainer computes its own share of each product, and the
    /// other threads are often still awake for the next one. At two threads that is a tenth of
    /// an MLP epoch (B4, BENCHMARKS.md). A pool of its own rather than the global one, so that
    /// trainers run side by side (tests, a library user's threads) never run inside each
    /// other's waits. Called from a pool's thread (a study running trainers in parallel), the
    /// run stays on that thread.
    pub fn run_net(&mut self, on: &mut dyn FnMut(Event)) -> Result<(RunOutput, Net)> {
        if rayon::current_thread_index().is_some() {
            return self.run_net_here(on);
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            // The stack of a main thread: the run used to execute on the caller's.
            .stack_size(8 << 20)
            .thread_name(|i| format!("engram-train-{i}"))
            .build()
            .map_err(|e| err!("cannot start the trainer's threads: {e}"))?;
        let (tx, rx) = std::sync::mpsc::channel::<Event>();
        let me = &mut *self;
        let res = std::thread::scope(|sc| {
            let pool = &pool;
            let h = sc.spawn(move || {
                pool.install(move || {
                    // The sender is dropped when the run ends, which ends the loop below.
                    me.run_net_here(&mut |e| {
                        let _ = tx.send(e);
                    })
                })
            });
            for e in rx {
                on(e);
            }
            h.join()
        });
        res.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    fn run_net_here(&mut self, on: &mut dyn FnMut(Event)) -> Result<(RunOutput, Net)> {
        let base = self.train.device.device()?;
        let ad = base.clone().autodiff();
        let mut net = self.start_net(&ad)?;
        let s = self.scenario;
        let mut out = RunOutput {
            eval_mode: format!("{:?}", s.eval),
            params: crate::model::params::param_count(&net),
            ..Default::default()
        };
        let mut first = 0;
        // Optimizer state carried across tasks by parameter name (`reset-optimizer = false`).
        let mut carried = State::default();
        if let Some(dir) = &self.checkpoint_dir
            && let Some(saved) = checkpoint::load_latest(
                dir,
                s,
                self.start.as_ref().map_or(0, |st| st.task),
                &self.settings,
            )?
        {
            self.strategy.load_state(saved.strategy_state()?)?;
            carried = saved.optimizer_state()?;
            // A strategy that changed the network's shape (block expansion) shapes the fresh
            // one the same way before the saved values go in.
            net = self.strategy.reshape(net, &ad)?;
            net = crate::model::io::load(net, &saved.model_path)?;
            first = saved.completed;
            out = saved.output;
            on(Event::Resumed { completed: first });
        } else {
            if let Some(st) = &self.start {
                net = crate::model::params::load_params(net, &st.values)
                    .map_err(|e| err!("the weights to start from: {e}"))?;
                first = st.task;
            }
            let strategy = &self.strategy;
            let (b, bt) = evaluate_with(
                &net.valid(),
                s,
                None,
                &base,
                self.train.eval_batch,
                &|n, x| strategy.scores(n, x),
            );
            out.baseline = b;
            out.baseline_task_il = bt;
        }
        let last = self
            .stop_after
            .map_or(s.tasks.len(), |n| n.min(s.tasks.len()));
        for task in first..last {
            let t0 = Instant::now();
            let optim = &self.train.optimizer;
            let steps = std::cell::Cell::new(0);
            let cx = |step, lr| Ctx {
                scenario: s,
                task,
                device: &ad,
                seed: self.seed,
                step,
                steps: steps.get(),
                optim,
                lr,
            };
            net = self.strategy.before_task(&cx(0, optim.lr), net)?;
            let mut examples = self.strategy.train_examples(&cx(0, optim.lr));
            let stream = self.strategy.trains_on_stream();
            if stream && examples.is_empty() {
                return Err(err!("task {task} has no training examples"));
            }
            let bs = self.train.batch_size;
            let per_epoch = examples.len().div_ceil(bs);
            let (epochs, total) = match self.train.iterations {
                _ if !stream => (0, 0),
                Some(it) => (it.div_ceil(per_epoch), it),
                None => {
                    let e = match task {
                        0 => self.train.first_task_epochs.unwrap_or(self.train.epochs),
                        _ => self.train.epochs,
                    };
                    (e, e.saturating_mul(per_epoch))
                }
            };
            steps.set(total);
            let lr_factor = self.strategy.lr_factor(task);
            on(Event::TaskStart {
                task,
                tasks: s.tasks.len(),
                steps: total,
            });
            // A fresh optimizer per task (the default, as Mammoth), or the state carried from the
            // previous task by parameter name (`reset-optimizer = false`, as Avalanche; saved
            // in each checkpoint, so that a resumed run continues exactly).
            let mut opt = Optimizer::new(&self.train.optimizer);
            if !self.train.reset_optimizer {
                opt.import(&net, &carried)
                    .map_err(|e| match &self.checkpoint_dir {
                        Some(d) => err!("{}: {e}", d.display()),
                        None => e,
                    })?;
            }
            let mut step = 0;
            let adversarial = self.train.adversarial.as_ref();
            let mut reweighter = adversarial.map(|a| a.reweighter());
            'epochs: for epoch in 0..epochs {
                // The batch order of (seed, task, epoch): a stream whose state is that mix (offset by
                // the generator's increment), so that the order stays what it has always been.
                Rng::from_state(mix(self.seed, task as u64, epoch as u64) ^ 0x9e37_79b9_7f4a_7c15)
                    .shuffle(&mut examples);
                for chunk in examples.chunks(bs) {
                    if step >= total {
                        break 'epochs;
                    }
                    let (mut xh, yh) = s.gather(Part::Train, chunk);
                    let n = chunk.len();
                    let pen = penalty(s, self.train.masking, chunk, &yh);
                    // Adversarial training: the batch is attacked before anything sees it.
                    let mut kappa = Vec::new();
                    if let Some(a) = adversarial {
                        let mut rng = Rng::keyed(
                            self.seed,
                            "adversarial",
                            mix(self.seed, task as u64, step as u64),
                        );
                        let p = crate::robust::attack::perturb(
                            &net,
                            &xh,
                            &yh,
                            pen.as_deref(),
                            &a.attack(),
                            &mut rng,
                        )
                        .map_err(|e| err!("task {task}, step {step}: {e}"))?;
                        xh = p.x;
                        kappa = p.kappa;
                    }
                    let batch = Batch {
                        x: Tensor::<2>::from_data(
                            TensorData::new(xh.clone(), [n, s.train.dim]),
                            &ad,
                        ),
                        y: Tensor::<1, Int>::from_data(
                            TensorData::new(yh.iter().map(|&v| v as i64).collect::<Vec<_>>(), [n]),
                            &ad,
                        ),
                        ids: chunk.to_vec(),
                        x_host: xh,
                        y_host: yh,
                    };
                    let lr = optim.lr_at(step, total, epoch) * lr_factor;
                    let logits = net.forward(batch.x.clone());
                    let ce = match (adversarial, reweighter.as_mut()) {
                        (Some(a), Some(rw)) if rw.active(a, epoch, epochs) => {
                            // Σᵢ wᵢ·CEᵢ with the method's detached weights.
                            let per = crate::robust::attack::per_example_ce(
                                logits.clone(),
                                &batch.y_host,
                                pen.as_deref(),
                            );
                            let lh = per
                                .clone()
                                .into_data()
                                .convert::<f32>()
                                .try_to_vec::<f32>()
                                .map_err(|e| err!("task {task}, step {step}: {e:?}"))?;
                            let w = rw.weights(a, &lh, &kappa);
                            (per * Tensor::<1>::from_data(TensorData::new(w, [n]), &ad)).sum()
                        }
                        _ => task_loss(pen.as_deref(), logits.clone(), batch.y.clone(), &ad),
                    };
                    let loss = self.strategy.loss(&cx(step, lr), &net, &batch, logits, ce);
                    let loss_val = loss.clone().into_scalar::<f32>();
                    if !loss_val.is_finite() {
                        return Err(err!(
                            "task {task}, step {step}: the loss is {loss_val}; lower the learning rate"
                        ));
                    }
                    let mut raw = loss.backward();
                    self.strategy.take_grads(&cx(step, lr), &mut raw);
                    let mut grads = GradientsParams::from_grads(raw, &net);
                    self.strategy
                        .after_backward(&cx(step, lr), &net, &mut grads);
                    net = opt.step(lr, net, grads);
                    net = self.strategy.after_step(&cx(step, lr), net);
                    step += 1;
                    on(Event::Step {
                        task,
                        step,
                        loss: loss_val,
                    });
                }
            }
            out.optimizer_bytes = (opt.state_bytes() as u64) + self.strategy.optimizer_bytes();
            if !self.train.reset_optimizer {
                carried = opt.export(&net);
            }
            net = self.strategy.after_task(&cx(step, optim.lr), net)?;
            let seconds = t0.elapsed().as_secs_f64();
            let valid = net.valid();
            match s.plan {
                EvalPlan::EveryTask => {
                    let e = evaluate_all_with(
                        &valid,
                        s,
                        task,
                        &base,
                        self.train.eval_batch,
                        &|n, x| self.strategy.scores(n, x),
                    )?;
                    on(Event::TaskEnd {
                        task,
                        seconds,
                        accuracy: e.row.clone(),
                    });
                    out.accuracy.push(e.row);
                    out.task_il_accuracy.push(e.task_il);
                    out.ece_matrix.push(e.ece_row);
                    out.ece_curve.push(e.ece_seen);
                }
                EvalPlan::AllClasses => {
                    let ids: Vec<(usize, usize)> = s
                        .all_classes_test_indices()
                        .into_iter()
                        .map(|i| (task, i))
                        .collect();
                    let (lg, lb, c) = scores_of(
                        &valid,
                        s,
                        Part::Test,
                        &ids,
                        &base,
                        self.train.eval_batch,
                        &|n, x| self.strategy.scores(n, x),
                    );
                    let all = accuracy(&lg, &lb, c, &vec![true; c]);
                    let cur = s.tasks[task].classes.clone();
                    let sel: Vec<usize> = lb
                        .iter()
                        .enumerate()
                        .filter(|(_, y)| cur.contains(y))
                        .map(|(n, _)| n)
                        .collect();
                    let (cl, cy): (Vec<f32>, Vec<u32>) = (
                        sel.iter()
                            .flat_map(|&n| lg[n * c..(n + 1) * c].to_vec())
                            .collect(),
                        sel.iter().map(|&n| lb[n]).collect(),
                    );
                    out.all_class_curve.push(all);
                    out.ece_curve.push(
                        ClassMask::only(c, &(0..c).collect::<Vec<_>>())
                            .and_then(|m| ece_from_logits(&lg, c, &lb, &m))
                            .map_err(|e| err!("{e}"))?,
                    );
                    out.current_task_curve
                        .push(accuracy(&cl, &cy, c, &vec![true; c]));
                    on(Event::TaskEnd {
                        task,
                        seconds,
                        accuracy: vec![all],
                    });
                }
            }
            out.seconds_per_task.push(seconds);
            out.strategy_state_bytes = out.strategy_state_bytes.max(self.strategy.state_bytes());
            out.trainable_values = self.strategy.trainable(&net);
            out.ece = out.ece_curve.last().copied().unwrap_or(0.0);
            out.peak_memory_bytes = out.peak_memory_bytes.max(peak_memory());
            if let Some(dir) = &self.checkpoint_dir {
                checkpoint::save(
                    dir,
                    &Saved::new(task + 1, out.clone()),
                    &net,
                    &self.strategy.state(),
                    &carried,
                    &self.settings,
                )?;
            }
        }
        Ok((out, net))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batch order the trainer used before it drew from the workspace's one generator:
    /// results recorded earlier stay reproducible.
    fn old_shuffle<T>(v: &mut [T], seed: u64) {
        let mut s = seed ^ 0x9e37_79b9_7f4a_7c15;
        for i in (1..v.len()).rev() {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let j = (((z as u128) * ((i + 1) as u128)) >> 64) as usize;
            v.swap(i, j);
        }
    }

    #[test]
    fn batch_order_is_the_recorded_one() {
        for (seed, n) in [(1u64, 100usize), (2, 60_000), (mix(3, 1, 0), 12_000)] {
            let mut a: Vec<usize> = (0..n).collect();
            let mut b = a.clone();
            old_shuffle(&mut a, seed);
            Rng::from_state(seed ^ 0x9e37_79b9_7f4a_7c15).shuffle(&mut b);
            assert_eq!(a, b, "seed {seed}");
        }
    }
}

#[cfg(test)]
mod first_task_epochs {
    use super::*;
    use crate::strategy::parts::testutil::blobs;

    /// `first-task-epochs` sets the first task's epochs only, and is validated.
    #[test]
    fn the_first_task_trains_its_own_epochs() {
        let s = blobs("class-incremental", 3);
        let train = TrainConfig {
            epochs: 1,
            first_task_epochs: Some(3),
            batch_size: 40,
            ..Default::default()
        };
        let st = crate::strategy::build("naive", &serde_json::Value::Null).unwrap();
        let mut t = Trainer::new(&s, ModelConfig::Mlp { hidden: vec![8] }, train, 1, st);
        let mut steps = Vec::new();
        t.run(&mut |e| {
            if let Event::TaskStart { steps: n, .. } = e {
                steps.push(n)
            }
        })
        .unwrap();
        let per = s.tasks[0].train.len().div_ceil(40);
        assert_eq!(steps, [3 * per, per, per]);
        for (first, iterations) in [
            (Some(0), None),
            (Some(MAX_EPOCHS + 1), None),
            (Some(2), Some(5)),
        ] {
            let bad = TrainConfig {
                first_task_epochs: first,
                iterations,
                ..Default::default()
            };
            let e = bad.validate().expect_err("refused").to_string();
            assert!(e.contains("first-task-epochs"), "{e}");
        }
    }
}
