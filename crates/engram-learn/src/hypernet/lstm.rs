// Dependency-preserving hypernetwork for continual learning (arXiv 2209.07712, WACV 2023): an LSTM
// generates the target's chunks in layer order. Card: shared/methods/hypernetworks.md, step 2.

//! The LSTM hypernetwork (engram design following the paper's abstract; it published no
//! code): h₀ = c₀ = 0, (h_k, c_k) = LSTM([e_t; c_k], h_{k−1}, c_{k−1}), chunk k = A·h_k + b,
//! θ_t the chunks in the target's layer order (layer-aligned, [`Chunks`]), so later layers
//! are generated knowing the earlier ones through the hidden state. Gates in PyTorch's order
//! (input, forget, cell, output), weights stored `[in, 4H]` for x·W.
//!
//! **Growth** (the card's option (b), engram design, not the paper's): the LSTM has `hidden`
//! units for the first task and `grow` more for each later one; the gate weights of the units
//! of earlier tasks are frozen (their columns of the input and recurrent matrices and their
//! bias), new units read every older unit but old units never read newer ones (a block-
//! triangular recurrence), and units of tasks not yet begun are held at zero. The chunk
//! embeddings and the output layer keep training under the output regulariser.

use super::params::{Leaves, ParamSet, normal_init, tensor, uniform_init};
use super::target::{Chunks, Generator, TargetMlp, task_rows};
use crate::{Result, err};
use burn::prelude::*;
use burn::tensor::activation::{sigmoid, tanh};

/// Sizes of an LSTM hypernetwork.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LstmConfig {
    pub task_emb: usize,
    pub chunk_emb: usize,
    /// Hidden units (for the first task when growing).
    pub hidden: usize,
    pub chunk: usize,
    /// Units added per later task (0: no growth).
    #[serde(default)]
    pub grow: usize,
    /// Tasks the network is sized for (growth only).
    #[serde(default)]
    pub tasks: usize,
}

pub struct LstmHnet {
    cfg: LstmConfig,
    chunks: Chunks,
    p: ParamSet,
    seed: u64,
    /// Total units (all tasks' when growing).
    units: usize,
    /// The task the network is set up for (growth: units of later tasks are off).
    current: usize,
    idx: Idx,
}

#[derive(Clone, Copy)]
struct Idx {
    chunk_emb: usize,
    wih: usize,
    whh: usize,
    b: usize,
    head_w: usize,
    head_b: usize,
}

impl LstmHnet {
    pub fn new(target: &TargetMlp, cfg: &LstmConfig, seed: u64) -> Result<LstmHnet> {
        if cfg.task_emb == 0 || cfg.chunk_emb == 0 || cfg.hidden == 0 || cfg.chunk == 0 {
            return Err(err!(
                "LSTM hypernetwork {cfg:?}: every size must be at least 1"
            ));
        }
        if cfg.grow > 0 && cfg.tasks == 0 {
            return Err(err!("LSTM hypernetwork growth needs the number of tasks"));
        }
        let chunks = Chunks::new(target, cfg.chunk)?;
        let units = cfg.hidden + cfg.grow * cfg.tasks.saturating_sub(1);
        let (k, inp, h4) = (chunks.count(), cfg.task_emb + cfg.chunk_emb, 4 * units);
        let mut p = ParamSet::new();
        let init = |n: usize, key: &str| uniform_init(n, units, seed, key);
        // Growth: the output rows of later blocks start at zero, so switching a block on leaves
        // the old tasks' weights as they were (their gates still train from the first step on).
        let mut head = init(units * cfg.chunk, "head-w");
        if cfg.grow > 0 {
            head[cfg.hidden * cfg.chunk..].fill(0.0);
        }
        let idx = Idx {
            chunk_emb: p.add(
                "chunk_emb",
                &[k, cfg.chunk_emb],
                normal_init(k * cfg.chunk_emb, 1.0, seed, "hnet-chunk-emb"),
            )?,
            wih: p.add("lstm.weight_ih", &[inp, h4], init(inp * h4, "lstm-wih"))?,
            whh: p.add("lstm.weight_hh", &[units, h4], init(units * h4, "lstm-whh"))?,
            b: p.add("lstm.bias", &[h4], init(h4, "lstm-b"))?,
            head_w: p.add("head.weight", &[units, cfg.chunk], head)?,
            head_b: p.add("head.bias", &[cfg.chunk], init(cfg.chunk, "head-b"))?,
        };
        Ok(LstmHnet {
            cfg: cfg.clone(),
            chunks,
            p,
            seed,
            units,
            current: 0,
            idx,
        })
    }

    /// The growth block of unit `u` (0 for the first task's units).
    fn block(&self, u: usize) -> usize {
        match (u < self.cfg.hidden, self.cfg.grow) {
            (true, _) | (_, 0) => 0,
            _ => 1 + (u - self.cfg.hidden) / self.cfg.grow,
        }
    }

    /// Units on while training or using task `current` (all of them without growth).
    fn active(&self, u: usize) -> bool {
        self.block(u) <= self.current
    }

    /// Multipliers holding off units of later tasks and newer-to-older recurrences:
    /// (input matrix, recurrent matrix, bias, head), or None without growth.
    fn masks(&self) -> Option<[Vec<f32>; 4]> {
        if self.cfg.grow == 0 {
            return None;
        }
        let (n, inp) = (self.units, self.cfg.task_emb + self.cfg.chunk_emb);
        let col = |j: usize| self.active(j % n);
        let wih = (0..inp * 4 * n)
            .map(|i| col(i % (4 * n)) as u8 as f32)
            .collect();
        let whh = (0..n * 4 * n)
            .map(|i| {
                let (r, j) = (i / (4 * n), i % (4 * n));
                (col(j) && self.active(r) && self.block(r) <= self.block(j % n)) as u8 as f32
            })
            .collect();
        let b = (0..4 * n).map(|j| col(j) as u8 as f32).collect();
        let head = (0..n * self.cfg.chunk)
            .map(|i| self.active(i / self.cfg.chunk) as u8 as f32)
            .collect();
        Some([wih, whh, b, head])
    }

    pub fn units(&self) -> usize {
        self.units
    }
}

impl Generator for LstmHnet {
    fn params(&self) -> &ParamSet {
        &self.p
    }

    fn params_mut(&mut self) -> &mut ParamSet {
        &mut self.p
    }

    fn generate(&self, leaves: &Leaves, tasks: &[usize]) -> Result<Tensor<2>> {
        let (s, k, n) = (tasks.len(), self.chunks.count(), self.units);
        let e = task_rows(&self.p, leaves, tasks)?;
        let device = e.device();
        let (mut wih, mut whh, mut b, mut head) = (
            leaves.mat(self.idx.wih),
            leaves.mat(self.idx.whh),
            leaves.vec(self.idx.b),
            leaves.mat(self.idx.head_w),
        );
        let inp = self.cfg.task_emb + self.cfg.chunk_emb;
        if let Some([mi, mh, mb, mo]) = self.masks() {
            wih = wih * tensor(mi, [inp, 4 * n], &device);
            whh = whh * tensor(mh, [n, 4 * n], &device);
            b = b * tensor(mb, [4 * n], &device);
            head = head * tensor(mo, [n, self.cfg.chunk], &device);
        }
        let te = self.cfg.task_emb;
        // [e_t; c_k]·W_ih = e_t·W_e + c_k·W_c: the task part once, every chunk's part at once.
        let xe = e.matmul(wih.clone().slice([0..te, 0..4 * n])) + b.reshape([1, 4 * n]);
        let xc = leaves
            .mat(self.idx.chunk_emb)
            .matmul(wih.slice([te..inp, 0..4 * n]));
        let mut h = Tensor::<2>::zeros([s, n], &device);
        let mut c = Tensor::<2>::zeros([s, n], &device);
        let mut hs = Vec::with_capacity(k);
        for step in 0..k {
            let g =
                xe.clone() + xc.clone().slice([step..step + 1, 0..4 * n]) + h.matmul(whh.clone());
            let ifo = sigmoid(g.clone().slice([0..s, 0..2 * n]));
            let i = ifo.clone().slice([0..s, 0..n]);
            let f = ifo.slice([0..s, n..2 * n]);
            let cand = tanh(g.clone().slice([0..s, 2 * n..3 * n]));
            let o = sigmoid(g.slice([0..s, 3 * n..4 * n]));
            c = f * c + i * cand;
            h = o * tanh(c.clone());
            hs.push(h.clone());
        }
        let hk = Tensor::stack::<3>(hs, 1).reshape([s * k, n]);
        let out = hk.matmul(head) + leaves.vec(self.idx.head_b).reshape([1, self.cfg.chunk]);
        Ok(self.chunks.assemble(out.reshape([s, k * self.cfg.chunk])))
    }

    fn add_task(&mut self, t: usize, _seed: u64) -> Result<()> {
        if self.cfg.grow > 0 && t >= self.cfg.tasks {
            return Err(err!(
                "LSTM hypernetwork grown for {} tasks, asked for task {t}",
                self.cfg.tasks
            ));
        }
        let name = format!("task.{t}");
        if self.p.index(&name).is_none() {
            let v = normal_init(self.cfg.task_emb, 1.0, self.seed, &name);
            self.p.add(&name, &[self.cfg.task_emb], v)?;
        }
        self.current = self.current.max(t);
        Ok(())
    }

    fn mask_grads(&self, t: usize, g: &mut [Vec<f32>]) {
        if self.cfg.grow == 0 {
            return;
        }
        // Only the units of task t's block change among the gate weights.
        let n = self.units;
        let new = |j: usize| self.block(j % n) == t.min(self.block(n - 1));
        for (i, v) in g[self.idx.wih].iter_mut().enumerate() {
            if !new(i % (4 * n)) {
                *v = 0.0;
            }
        }
        for (i, v) in g[self.idx.whh].iter_mut().enumerate() {
            if !new(i % (4 * n)) {
                *v = 0.0;
            }
        }
        for (j, v) in g[self.idx.b].iter_mut().enumerate() {
            if !new(j) {
                *v = 0.0;
            }
        }
    }

    fn chunks(&self) -> &Chunks {
        &self.chunks
    }

    fn name(&self) -> String {
        match self.cfg.grow {
            0 => "lstm".into(),
            _ => "lstm-grow".into(),
        }
    }
}
