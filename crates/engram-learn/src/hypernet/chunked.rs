// Continual learning with hypernetworks (von Oswald et al., arXiv 1906.00695; chrhenning/hypercl):
// the chunked MLP hypernetwork. Card: shared/methods/hypernetworks.md, "Algorithm" step 1.

//! The chunked MLP hypernetwork: for task embedding e_t and learned chunk embeddings c_k,
//! chunk k of θ is `MLP([e_t; c_k])`, each chunk generated independently of the others (the
//! dependency the LSTM hypernetwork adds is exactly what this one lacks). Hidden layers ReLU
//! (hypercl's splitMNIST setting), output linear; chunks layer-aligned ([`Chunks`]).

use super::params::{Leaves, ParamSet, normal_init, uniform_init};
use super::target::{Chunks, Generator, TargetMlp, task_rows};
use crate::{Result, err};
use burn::prelude::*;

/// Sizes of a chunked hypernetwork.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChunkedConfig {
    pub task_emb: usize,
    pub chunk_emb: usize,
    pub hidden: Vec<usize>,
    pub chunk: usize,
}

pub struct ChunkedHnet {
    cfg: ChunkedConfig,
    chunks: Chunks,
    p: ParamSet,
    seed: u64,
    /// Indices in `p`: the chunk embeddings, each layer's (weight, bias).
    chunk_emb: usize,
    fc: Vec<(usize, usize)>,
}

impl ChunkedHnet {
    pub fn new(target: &TargetMlp, cfg: &ChunkedConfig, seed: u64) -> Result<ChunkedHnet> {
        if cfg.task_emb == 0 || cfg.chunk_emb == 0 || cfg.hidden.contains(&0) {
            return Err(err!(
                "chunked hypernetwork {cfg:?}: every size must be at least 1"
            ));
        }
        let chunks = Chunks::new(target, cfg.chunk)?;
        let mut p = ParamSet::new();
        let k = chunks.count();
        let chunk_emb = p.add(
            "chunk_emb",
            &[k, cfg.chunk_emb],
            normal_init(k * cfg.chunk_emb, 1.0, seed, "hnet-chunk-emb"),
        )?;
        let mut dims = vec![cfg.task_emb + cfg.chunk_emb];
        dims.extend(&cfg.hidden);
        dims.push(cfg.chunk);
        let mut fc = Vec::new();
        for l in 0..dims.len() - 1 {
            let (i, o) = (dims[l], dims[l + 1]);
            let w = p.add(
                &format!("fc.{l}.weight"),
                &[i, o],
                uniform_init(i * o, i, seed, &format!("hnet-fc{l}-w")),
            )?;
            let b = p.add(
                &format!("fc.{l}.bias"),
                &[o],
                uniform_init(o, i, seed, &format!("hnet-fc{l}-b")),
            )?;
            fc.push((w, b));
        }
        Ok(ChunkedHnet {
            cfg: cfg.clone(),
            chunks,
            p,
            seed,
            chunk_emb,
            fc,
        })
    }
}

impl Generator for ChunkedHnet {
    fn params(&self) -> &ParamSet {
        &self.p
    }

    fn params_mut(&mut self) -> &mut ParamSet {
        &mut self.p
    }

    fn generate(&self, leaves: &Leaves, tasks: &[usize]) -> Result<Tensor<2>> {
        let (s, k) = (tasks.len(), self.chunks.count());
        let e = task_rows(&self.p, leaves, tasks)?;
        let c = leaves.mat(self.chunk_emb);
        let w0 = leaves.mat(self.fc[0].0);
        let h1 = w0.dims()[1];
        let te = self.cfg.task_emb;
        let we = w0.clone().slice([0..te, 0..h1]);
        let wc = w0.slice([te..te + self.cfg.chunk_emb, 0..h1]);
        // [e_t; c_k]·W0 = e_t·W0_e + c_k·W0_c, for every (t, k) at once.
        let a = e.matmul(we).reshape([s, 1, h1]).expand([s, k, h1]);
        let b = c.matmul(wc).reshape([1, k, h1]).expand([s, k, h1]);
        let b0 = leaves.vec(self.fc[0].1).reshape([1, h1]);
        let mut h = (a + b).reshape([s * k, h1]) + b0;
        for &(wi, bi) in &self.fc[1..] {
            h = burn::tensor::activation::relu(h);
            let w = leaves.mat(wi);
            let o = w.dims()[1];
            h = h.matmul(w) + leaves.vec(bi).reshape([1, o]);
        }
        Ok(self.chunks.assemble(h.reshape([s, k * self.cfg.chunk])))
    }

    fn add_task(&mut self, t: usize, _seed: u64) -> Result<()> {
        let name = format!("task.{t}");
        if self.p.index(&name).is_none() {
            let v = normal_init(self.cfg.task_emb, 1.0, self.seed, &name);
            self.p.add(&name, &[self.cfg.task_emb], v)?;
        }
        Ok(())
    }

    fn chunks(&self) -> &Chunks {
        &self.chunks
    }

    fn name(&self) -> String {
        "chunked-mlp".into()
    }
}
