//! Adam/AdamW over a chosen subset of a tensor's entries (LIFT's sparse AdamW, card
//! shared/methods/selective_finetuning.md): moments of length K for K entries, the run's
//! settings, the one element update of [`crate::optim::AdamStep`]. Re-choosing the entries
//! ([`SparseState::remask`]) keeps the moments of entries in both sets and starts new ones at
//! zero; the step count goes on.

use crate::optim::{OptimConfig, OptimKind};
use crate::{Result, err};

#[derive(Clone, Debug, PartialEq)]
pub struct SparseState {
    /// Chosen entries, ascending.
    pub idx: Vec<u32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// Steps taken (for the bias correction).
    pub t: u64,
}

impl SparseState {
    pub fn new(idx: Vec<u32>) -> SparseState {
        let k = idx.len();
        SparseState {
            idx,
            m: vec![0.0; k],
            v: vec![0.0; k],
            t: 0,
        }
    }

    /// Values the optimizer may change.
    pub fn len(&self) -> usize {
        self.idx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.idx.is_empty()
    }

    /// Bytes held: two f32 moments and one u32 index per entry.
    pub fn bytes(&self) -> usize {
        12 * self.idx.len()
    }

    /// Moves to the entries `new` (ascending): moments of entries in both sets are kept, new
    /// entries start at zero.
    pub fn remask(&mut self, new: Vec<u32>) {
        let (mut m, mut v) = (vec![0.0; new.len()], vec![0.0; new.len()]);
        let mut j = 0;
        for (k, &i) in new.iter().enumerate() {
            while j < self.idx.len() && self.idx[j] < i {
                j += 1;
            }
            if j < self.idx.len() && self.idx[j] == i {
                m[k] = self.m[j];
                v[k] = self.v[j];
            }
        }
        self.idx = new;
        self.m = m;
        self.v = v;
    }

    /// One step on `w` from its dense gradient `g` at learning rate `lr`, with `cfg`'s betas,
    /// eps and weight decay (decoupled for AdamW). An error for an SGD run: the method is
    /// defined with Adam's moments.
    pub fn step(&mut self, cfg: &OptimConfig, lr: f64, w: &mut [f32], g: &[f32]) -> Result<()> {
        if cfg.kind == OptimKind::Sgd {
            return Err(
                "a sparse Adam update needs the run's optimizer to be adam or adamw".into(),
            );
        }
        if w.len() != g.len() {
            return Err(err!("{} weights, {} gradients", w.len(), g.len()));
        }
        self.t += 1;
        let k = cfg.adam_step(lr, self.t);
        for ((&i, m), v) in self.idx.iter().zip(&mut self.m).zip(&mut self.v) {
            let i = i as usize;
            k.apply(&mut w[i], g[i], m, v);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_updates_only_its_entries_and_matches_dense_there() {
        let cfg = OptimConfig::new(OptimKind::Adamw, 1e-3);
        let mut wd = vec![1.0f32, -2.0, 3.0, 0.5, 0.0];
        let mut ws = wd.clone();
        let mut d = SparseState::new((0..5).collect());
        let mut s = SparseState::new(vec![1, 3]);
        for t in 1..=5 {
            let g: Vec<f32> = (0..5).map(|i| (i as f32 - 2.0) * t as f32 * 0.1).collect();
            d.step(&cfg, 1e-3, &mut wd, &g).unwrap();
            s.step(&cfg, 1e-3, &mut ws, &g).unwrap();
        }
        assert_eq!([ws[0], ws[2], ws[4]], [1.0, 3.0, 0.0]);
        assert_eq!([ws[1], ws[3]], [wd[1], wd[3]]);
        assert_ne!(ws[1], -2.0);
        assert_eq!((s.len(), s.bytes()), (2, 24));
        let sgd = OptimConfig::new(OptimKind::Sgd, 0.1);
        assert!(s.step(&sgd, 0.1, &mut ws, &[0.0; 5]).is_err());
    }

    #[test]
    fn remask_keeps_moments_of_entries_in_both_and_zeroes_new_ones() {
        let mut s = SparseState {
            idx: vec![2, 5, 9],
            m: vec![0.2, 0.5, 0.9],
            v: vec![2.0, 5.0, 9.0],
            t: 7,
        };
        s.remask(vec![1, 5, 9, 12]);
        assert_eq!(
            s,
            SparseState {
                idx: vec![1, 5, 9, 12],
                m: vec![0.0, 0.5, 0.9, 0.0],
                v: vec![0.0, 5.0, 9.0, 0.0],
                t: 7,
            }
        );
    }
}
