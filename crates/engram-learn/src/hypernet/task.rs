// Continual learning with hypernetworks (von Oswald et al., arXiv 1906.00695; chrhenning/hypercl):
// training task after task with the output regulariser. Card: shared/methods/hypernetworks.md.

//! Training a hypernetwork through a scenario's tasks (card, steps 3–4):
//!
//! - task T trains its embedding e_T and the generator Θ on
//!   L_T(f(x; H(e_T; Θ))) + (β/(T − 1))·Σ_{t<T} ‖H(e_t; Θ + ΔΘ) − H(e_t; Θ*)‖², where the
//!   targets H(e_t; Θ*) are computed once, from a snapshot taken **before** task T; old
//!   embeddings are frozen (no gradient); the regulariser acts on the generator's outputs;
//! - look-ahead (hypercl's default): ΔΘ is the step Adam would take from the task loss alone,
//!   detached, and the regulariser's gradient is taken at Θ + ΔΘ; the step applied is Adam's
//!   on the sum of both gradients (Adam restarts at each task, as hypercl builds its
//!   optimizer per task);
//! - option (a) (engram design): each chunk's squared error weighted in proportion to the
//!   number of target parameters it holds (a layer's last chunk is partly used), mean 1;
//! - Task-IL: the task id picks the embedding and the loss and prediction use that task's
//!   classes; Class-IL by HNET+ENT: every task's generated network scores the input, and the
//!   task whose prediction over its classes has the lowest entropy answers.

use super::params::{host, tensor};
use super::target::{Generator, TargetMlp};
use crate::optim::OptimConfig;
use crate::scenario::{Part, Scenario};
use crate::{Result, err};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use engram_weights::rng::Rng;

/// How a hypernetwork is trained.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HnetTrain {
    /// Optimizer steps per task.
    pub steps: usize,
    pub batch: usize,
    /// Adam (the run's settings; `kind` must be adam).
    pub optimizer: OptimConfig,
    /// β of the output regulariser.
    pub beta: f64,
    pub lookahead: bool,
    /// Option (a): chunk weights proportional to their used parameters.
    pub chunk_weights: bool,
}

impl HnetTrain {
    pub fn validate(&self) -> Result<()> {
        self.optimizer.validate()?;
        if self.optimizer.kind != crate::optim::OptimKind::Adam {
            return Err(err!(
                "hypernetworks train with Adam (optimizer kind = \"adam\")"
            ));
        }
        if self.steps == 0 || self.batch == 0 {
            return Err(err!(
                "hypernetwork training needs steps and batch of at least 1"
            ));
        }
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return Err(err!("hypernetwork beta must be >= 0, got {}", self.beta));
        }
        Ok(())
    }
}

/// What a run measured.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HnetRun {
    /// a[k][i]: Task-IL accuracy (percent) on task i after task k (i ≤ k).
    pub task_il: Vec<Vec<f64>>,
    /// HNET+ENT Class-IL accuracy over every task's examples after the last task, and how
    /// often the task was inferred correctly (None where tasks share classes).
    pub class_il: Option<f64>,
    pub task_inferred: Option<f64>,
    /// Mean task loss over each task's last tenth of steps.
    pub final_loss: Vec<f64>,
    /// Generator parameters (trainable or not) after the last task, and the target's count.
    pub generator_params: usize,
    pub target_params: usize,
    pub seconds: f64,
}

impl HnetRun {
    /// Mean Task-IL accuracy over all tasks after the last.
    pub fn final_task_il(&self) -> f64 {
        self.task_il
            .last()
            .map_or(0.0, |r| r.iter().sum::<f64>() / r.len().max(1) as f64)
    }
}

/// Mean cross-entropy of `logits` over the columns `classes` with `labels` (global).
fn task_loss(logits: Tensor<2>, classes: &[u32], labels: &[u32]) -> Result<Tensor<1>> {
    let device = logits.device();
    let n = labels.len();
    let (sel, local) = restrict(logits, classes, labels, &device)?;
    let idx = Tensor::<2, Int>::from_data(TensorData::new(local, [n, 1]), &device);
    Ok(log_softmax(sel, 1).gather(1, idx).mean().neg().reshape([1]))
}

/// The logits of `classes` and each label's position among them.
fn restrict(
    logits: Tensor<2>,
    classes: &[u32],
    labels: &[u32],
    device: &Device,
) -> Result<(Tensor<2>, Vec<i64>)> {
    let cols = Tensor::<1, Int>::from_data(
        TensorData::new(
            classes.iter().map(|&c| c as i64).collect::<Vec<_>>(),
            [classes.len()],
        ),
        device,
    );
    let local = labels
        .iter()
        .map(|y| {
            classes
                .iter()
                .position(|c| c == y)
                .map(|p| p as i64)
                .ok_or_else(|| err!("label {y} is not one of the task's classes {classes:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((logits.select(1, cols), local))
}

/// θ of `tasks` (one row each) as plain values.
pub fn thetas(g: &dyn Generator, tasks: &[usize]) -> Result<Vec<Vec<f32>>> {
    let device = Device::flex().autodiff();
    let leaves = g.params().leaves(&device);
    let out = host(g.generate(&leaves, tasks)?);
    let n = out.len() / tasks.len().max(1);
    Ok(out.chunks(n.max(1)).map(<[f32]>::to_vec).collect())
}

/// The target's logits for rows `x` (`[n, dim]`) with weights `theta`, in batches of 1000.
pub fn logits(target: &TargetMlp, theta: &[f32], x: &[f32]) -> Result<Vec<f32>> {
    let device = Device::flex();
    let dim = target.sizes[0];
    let th = tensor(theta.to_vec(), [theta.len()], &device);
    let mut out = Vec::new();
    for rows in x.chunks(1000 * dim) {
        let n = rows.len() / dim;
        let xt = tensor(rows.to_vec(), [n, dim], &device);
        out.extend(host(target.forward(th.clone(), xt)?));
    }
    Ok(out)
}

/// The best of `classes` for each row of `logits` (`c` columns), and its softmax entropy
/// over those classes.
fn predict(logits: &[f32], c: usize, classes: &[u32]) -> Vec<(u32, f64)> {
    logits
        .chunks(c)
        .map(|row| {
            let v: Vec<f64> = classes.iter().map(|&k| row[k as usize] as f64).collect();
            let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = v.iter().map(|a| (a - m).exp()).sum();
            let ent = -v
                .iter()
                .map(|a| {
                    let p = (a - m).exp() / z;
                    if p > 0.0 { p * p.ln() } else { 0.0 }
                })
                .sum::<f64>();
            let best = (0..v.len())
                .max_by(|&a, &b| v[a].total_cmp(&v[b]).then(b.cmp(&a)))
                .unwrap_or(0);
            (classes[best], ent)
        })
        .collect()
}

/// Task-IL accuracy (percent) of θ on task `t`'s `part`.
pub fn task_accuracy(
    target: &TargetMlp,
    theta: &[f32],
    s: &Scenario,
    t: usize,
    part: Part,
) -> Result<f64> {
    let (x, y) = s.batch(t, part, s.tasks[t].indices(part));
    if y.is_empty() {
        return Err(err!("task {t} has no {part:?} examples"));
    }
    let l = logits(target, theta, &x)?;
    let c = target.sizes[target.sizes.len() - 1];
    let ok = predict(&l, c, &s.tasks[t].classes)
        .iter()
        .zip(&y)
        .filter(|((p, _), y)| p == *y)
        .count();
    Ok(100.0 * ok as f64 / y.len() as f64)
}

/// HNET+ENT: (Class-IL accuracy, share of examples whose task was inferred right), both in
/// percent, over every task's `part`, with θ of every task.
pub fn entropy_class_il(
    target: &TargetMlp,
    thetas: &[Vec<f32>],
    s: &Scenario,
    part: Part,
) -> Result<(f64, f64)> {
    let c = target.sizes[target.sizes.len() - 1];
    let (mut ok, mut right_task, mut n) = (0usize, 0usize, 0usize);
    for t in 0..s.tasks.len() {
        let (x, y) = s.batch(t, part, s.tasks[t].indices(part));
        let per_task: Vec<Vec<(u32, f64)>> = thetas
            .iter()
            .zip(&s.tasks)
            .map(|(th, task)| Ok(predict(&logits(target, th, &x)?, c, &task.classes)))
            .collect::<Result<_>>()?;
        for (i, &label) in y.iter().enumerate() {
            let best = (0..thetas.len())
                .min_by(|&a, &b| per_task[a][i].1.total_cmp(&per_task[b][i].1))
                .unwrap_or(0);
            ok += (per_task[best][i].0 == label) as usize;
            right_task += (best == t) as usize;
            n += 1;
        }
    }
    let pct = |k: usize| 100.0 * k as f64 / n.max(1) as f64;
    Ok((pct(ok), pct(right_task)))
}

/// Per-value weights of the regulariser: 1, or option (a)'s chunk weights.
fn reg_weights(g: &dyn Generator, chunk_weights: bool, count: usize) -> Vec<f32> {
    if !chunk_weights {
        return vec![1.0; count];
    }
    let used = g.chunks().used();
    let mean = used.iter().sum::<usize>() as f32 / used.len().max(1) as f32;
    used.iter()
        .flat_map(|&u| std::iter::repeat_n(u as f32 / mean, u))
        .collect()
}

/// Trains `g` on the tasks of `s` in order, evaluating every seen task on `part` (Valid to
/// choose settings, Test to report) after each. `on(task, step)` reports progress.
pub fn train(
    g: &mut dyn Generator,
    target: &TargetMlp,
    s: &Scenario,
    cfg: &HnetTrain,
    part: Part,
    seed: u64,
    on: &mut dyn FnMut(usize, usize),
) -> Result<HnetRun> {
    cfg.validate()?;
    if s.input_dim() != target.sizes[0] || s.num_outputs != target.sizes[target.sizes.len() - 1] {
        return Err(err!(
            "target MLP {:?} does not fit scenario {} ({} inputs, {} outputs)",
            target.sizes,
            s.name,
            s.input_dim(),
            s.num_outputs
        ));
    }
    let t0 = std::time::Instant::now();
    let device = Device::flex().autodiff();
    let count = target.count();
    let dim = target.sizes[0];
    let mut run = HnetRun {
        target_params: count,
        ..HnetRun::default()
    };
    for t in 0..s.tasks.len() {
        // The snapshot of the old tasks' outputs comes first: preparing task t may change
        // them (growth switches new units on), and that change must be regularised too.
        let old: Vec<usize> = (0..t).collect();
        let targets: Vec<f32> = match t {
            0 => Vec::new(),
            _ => thetas(g, &old)?.concat(),
        };
        g.add_task(t, seed)?;
        let p = g.params_mut();
        for old in 0..t {
            let i = super::target::task_index(p, old)?;
            p.set_frozen(i, true);
        }
        p.reset_optimizer();
        let weights = reg_weights(g, cfg.chunk_weights, count);
        let w_rep: Vec<f32> = (0..t).flat_map(|_| weights.iter().copied()).collect();
        let task = &s.tasks[t];
        if task.train.is_empty() {
            return Err(err!("task {t} of {} has no training examples", s.name));
        }
        let mut order: Vec<usize> = Vec::new();
        let mut pos = 0;
        let mut epoch = 0u64;
        let mut losses = Vec::new();
        for step in 0..cfg.steps {
            if pos + cfg.batch > order.len() {
                order = task.train.clone();
                Rng::keyed(seed, &format!("hnet-batches-{t}"), epoch).shuffle(&mut order);
                epoch += 1;
                pos = 0;
            }
            let idx = &order[pos..(pos + cfg.batch).min(order.len())];
            pos += cfg.batch;
            let (x, y) = s.batch(t, Part::Train, idx);
            let n = y.len();
            let lr = cfg.optimizer.lr_at(step, cfg.steps, 0);
            let leaves = g.params().leaves(&device);
            let theta = g.generate(&leaves, &[t])?.reshape([count]);
            let out = target.forward(theta, tensor(x, [n, dim], &device))?;
            let loss = task_loss(out, &task.classes, &y)?;
            losses.push(host(loss.clone())[0] as f64);
            let mut grads = leaves.grads(&loss.backward());
            // Frozen entries out before the look-ahead, so ΔΘ is a step the optimizer can take.
            g.mask_grads(t, &mut grads);
            if t > 0 && cfg.beta > 0.0 {
                let delta = cfg
                    .lookahead
                    .then(|| g.params().adam_delta(&grads, &cfg.optimizer, lr));
                let shifted = g.params().leaves_shifted(delta.as_deref(), &device);
                let now = g.generate(&shifted, &old)?.reshape([t * count]);
                let want = tensor(targets.clone(), [t * count], &device);
                let wt = tensor(w_rep.clone(), [t * count], &device);
                let reg = ((now - want).powf_scalar(2.0) * wt).sum() * (cfg.beta / t as f64);
                let gr = shifted.grads(&reg.backward());
                for (a, b) in grads.iter_mut().zip(&gr) {
                    for (x, y) in a.iter_mut().zip(b) {
                        *x += y;
                    }
                }
            }
            g.mask_grads(t, &mut grads);
            g.params_mut().adam_step(&grads, &cfg.optimizer, lr)?;
            on(t, step);
        }
        let tail = (cfg.steps / 10).max(1);
        let last = &losses[losses.len() - tail.min(losses.len())..];
        run.final_loss
            .push(last.iter().sum::<f64>() / last.len() as f64);
        let th = thetas(g, &(0..=t).collect::<Vec<_>>())?;
        run.task_il.push(
            (0..=t)
                .map(|i| task_accuracy(target, &th[i], s, i, part))
                .collect::<Result<_>>()?,
        );
    }
    let all: Vec<usize> = (0..s.tasks.len()).collect();
    let disjoint = {
        let mut seen = std::collections::BTreeSet::new();
        s.tasks
            .iter()
            .flat_map(|t| &t.classes)
            .all(|c| seen.insert(*c))
    };
    if disjoint && s.tasks.len() > 1 {
        let (acc, inferred) = entropy_class_il(target, &thetas(g, &all)?, s, part)?;
        run.class_il = Some(acc);
        run.task_inferred = Some(inferred);
    }
    run.generator_params = g.params().count();
    run.seconds = t0.elapsed().as_secs_f64();
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypernet::chunked::{ChunkedConfig, ChunkedHnet};
    use crate::hypernet::lstm::{LstmConfig, LstmHnet};
    use crate::scenario::config::ScenarioConfig;

    /// 4 classes in 8 dimensions, class k lit at coordinates 2k and 2k + 1, plus noise;
    /// two tasks of two classes.
    fn blobs_scenario() -> Scenario {
        let make = |n: usize, salt: u64| {
            let mut rng = Rng::keyed(7, "hnet-test-data", salt);
            let y: Vec<u32> = (0..n as u32).map(|i| i % 4).collect();
            let x = y
                .iter()
                .flat_map(|&c| {
                    let mut r = [0.0f32; 8];
                    r[2 * c as usize] = 0.8;
                    r[2 * c as usize + 1] = 0.6;
                    r.iter()
                        .map(|v| (v + 0.2 * rng.uniform()).min(1.0))
                        .collect::<Vec<_>>()
                })
                .collect();
            crate::data::Dataset {
                name: "lit".into(),
                x,
                y,
                dim: 8,
                image: None,
                num_classes: 4,
            }
        };
        let split = crate::data::Split {
            train: make(400, 0),
            test: make(80, 1),
            files: Vec::new(),
            meta: Default::default(),
        };
        ScenarioConfig::new("task-incremental", "blobs")
            .with("tasks", 2)
            .with("classes-per-task", 2)
            .build_with(split)
            .expect("test scenario")
    }

    fn train_cfg(steps: usize) -> HnetTrain {
        HnetTrain {
            steps,
            batch: 32,
            optimizer: OptimConfig::new(crate::optim::OptimKind::Adam, 1e-2),
            beta: 0.05,
            lookahead: true,
            chunk_weights: false,
        }
    }

    fn lstm(target: &TargetMlp, grow: usize) -> LstmHnet {
        let cfg = LstmConfig {
            task_emb: 4,
            chunk_emb: 4,
            hidden: 6,
            chunk: 16,
            grow,
            tasks: 3,
        };
        LstmHnet::new(target, &cfg, 1).expect("lstm hnet")
    }

    #[test]
    fn generated_weights_have_the_targets_shape_and_change_only_through_the_generator() -> Result<()>
    {
        let target = TargetMlp::new(&[5, 7, 3])?;
        let cfg = ChunkedConfig {
            task_emb: 3,
            chunk_emb: 2,
            hidden: vec![8],
            chunk: 10,
        };
        let mut gens: Vec<Box<dyn Generator>> = vec![
            Box::new(ChunkedHnet::new(&target, &cfg, 0)?),
            Box::new(lstm(&target, 2)),
        ];
        for g in &mut gens {
            g.add_task(0, 0)?;
            g.add_task(1, 0)?;
            let th = thetas(g.as_ref(), &[0, 1])?;
            assert_eq!(th.len(), 2);
            assert!(th.iter().all(|t| t.len() == target.count()));
            assert_ne!(th[0], th[1], "{}: tasks share θ", g.name());
            // The same parameters give the same θ; a change of one generator value changes it.
            assert_eq!(thetas(g.as_ref(), &[0, 1])?, th);
            let i = g.params().index("chunk_emb").expect("chunk_emb");
            g.params_mut().values_mut(i)[0] += 0.5;
            assert_ne!(thetas(g.as_ref(), &[0])?[0], th[0], "{}", g.name());
            let v = target.values(&th[0])?;
            for (name, shape) in target.shapes() {
                assert_eq!(v[&name].len(), shape.iter().product::<usize>());
            }
        }
        Ok(())
    }

    #[test]
    fn the_regulariser_is_zero_at_the_snapshot_and_keeps_old_outputs() -> Result<()> {
        // At the snapshot the squared error, and so its gradient, is zero.
        let target = TargetMlp::new(&[4, 5, 4])?;
        let mut g = lstm(&target, 0);
        g.add_task(0, 0)?;
        let snap = thetas(&g, &[0])?.concat();
        let device = Device::flex().autodiff();
        let leaves = g.params().leaves(&device);
        let n = snap.len();
        let reg = (g.generate(&leaves, &[0])?.reshape([n]) - tensor(snap, [n], &device))
            .powf_scalar(2.0)
            .sum();
        assert!(host(reg.clone())[0].abs() < 1e-12);
        let gr = leaves.grads(&reg.backward());
        assert!(gr.iter().flatten().all(|v| v.abs() < 1e-9));
        // Training a second task with the regulariser moves task 0's θ less than without.
        let s = blobs_scenario();
        let target = TargetMlp::new(&[s.input_dim(), 8, s.num_outputs])?;
        let drift = |beta: f64| -> Result<f64> {
            let mut g = lstm(&target, 0);
            let mut cfg = train_cfg(60);
            cfg.beta = beta;
            let one = Scenario {
                tasks: s.tasks[..1].to_vec(),
                ..s.clone()
            };
            train(&mut g, &target, &one, &cfg, Part::Test, 0, &mut |_, _| {})?;
            let before = thetas(&g, &[0])?.concat();
            train(&mut g, &target, &s, &cfg, Part::Test, 0, &mut |_, _| {})?;
            let after = thetas(&g, &[0])?.concat();
            Ok(before
                .iter()
                .zip(&after)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum())
        };
        let (free, held) = (drift(0.0)?, drift(1.0)?);
        assert!(
            held < free * 0.5,
            "drift with β = 1: {held}, without: {free}"
        );
        Ok(())
    }

    #[test]
    fn hypernetworks_learn_task_incremental_blobs_and_growth_freezes_old_units() -> Result<()> {
        let s = blobs_scenario();
        let target = TargetMlp::new(&[s.input_dim(), 32, s.num_outputs])?;
        let mut g = lstm(&target, 2);
        let run = train(
            &mut g,
            &target,
            &s,
            &train_cfg(150),
            Part::Test,
            0,
            &mut |_, _| {},
        )?;
        assert!(run.final_task_il() > 80.0, "{run:?}");
        assert!(run.class_il.is_some());
        assert!(run.generator_params > 0 && run.target_params == target.count());
        // Growth: task 1's gradient leaves the first block's gate weights alone.
        let mut grads: Vec<Vec<f32>> = (0..g.params().len())
            .map(|i| vec![1.0; g.params().values(i).len()])
            .collect();
        g.mask_grads(1, &mut grads);
        let wih = g.params().index("lstm.weight_ih").expect("wih");
        let units = g.units();
        // Column 0 is unit 0's input gate (block 0): frozen; unit 6 (block 1): trainable.
        assert_eq!(grads[wih][0], 0.0);
        assert_eq!(grads[wih][6], 1.0);
        assert_eq!(grads[wih][8 % (4 * units)], 0.0);
        Ok(())
    }
}
