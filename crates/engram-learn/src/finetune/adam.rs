//! AdamW on host slices, dense or over a sparse set of entries. The sparse form keeps its
//! moment vectors for the selected entries only (length K), which is what makes LIFT's
//! optimizer memory small (selective_finetuning.md, LIFT step 3); gradients stay dense.

/// AdamW hyper-parameters (decoupled weight decay).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// The optimizer state of one tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum State {
    Dense {
        m: Vec<f32>,
        v: Vec<f32>,
    },
    /// Moments of the entries `idx` (ascending) only.
    Sparse {
        idx: Vec<u32>,
        m: Vec<f32>,
        v: Vec<f32>,
    },
}

impl State {
    pub fn dense(n: usize) -> State {
        State::Dense {
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    pub fn sparse(idx: Vec<u32>) -> State {
        let k = idx.len();
        State::Sparse {
            idx,
            m: vec![0.0; k],
            v: vec![0.0; k],
        }
    }

    /// Entries this state may update.
    pub fn len(&self) -> usize {
        match self {
            State::Dense { m, .. } => m.len(),
            State::Sparse { idx, .. } => idx.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held: two f32 moments per entry, and a u32 index per entry when sparse.
    pub fn bytes(&self) -> usize {
        match self {
            State::Dense { m, v } => 4 * (m.len() + v.len()),
            State::Sparse { idx, m, v } => 4 * (idx.len() + m.len() + v.len()),
        }
    }

    /// A new sparse selection `idx` (ascending): entries kept in both selections keep their
    /// moments, new ones start at zero (LIFT's refresh). The step count lives outside and
    /// is not reset. No effect on a dense state.
    pub fn remask(&mut self, new: Vec<u32>) {
        let State::Sparse { idx, m, v } = self else {
            return;
        };
        let mut nm = vec![0.0; new.len()];
        let mut nv = vec![0.0; new.len()];
        let mut j = 0;
        for (k, &i) in new.iter().enumerate() {
            while j < idx.len() && idx[j] < i {
                j += 1;
            }
            if j < idx.len() && idx[j] == i {
                nm[k] = m[j];
                nv[k] = v[j];
            }
        }
        *idx = new;
        *m = nm;
        *v = nv;
    }
}

impl AdamW {
    /// One update of `w` from its dense gradient `g` at step `t` (1-based, for the bias
    /// correction).
    pub fn step(&self, st: &mut State, t: u64, w: &mut [f32], g: &[f32]) {
        let (b1, b2) = (self.beta1 as f32, self.beta2 as f32);
        let c1 = 1.0 - self.beta1.powi(t as i32);
        let c2 = 1.0 - self.beta2.powi(t as i32);
        let lr = self.lr as f32;
        let step = (self.lr * c2.sqrt() / c1) as f32;
        let eps = (self.eps * c2.sqrt()) as f32;
        let decay = 1.0 - lr * self.weight_decay as f32;
        let upd = |w: &mut f32, g: f32, m: &mut f32, v: &mut f32| {
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            *w = *w * decay - step * *m / (v.sqrt() + eps);
        };
        match st {
            State::Dense { m, v } => {
                for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m).zip(v) {
                    upd(w, g, m, v);
                }
            }
            State::Sparse { idx, m, v } => {
                for ((&i, m), v) in idx.iter().zip(m).zip(v) {
                    let i = i as usize;
                    upd(&mut w[i], g[i], m, v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_updates_only_its_entries_and_matches_dense_there() {
        let a = AdamW::default();
        let mut wd = vec![1.0f32, -2.0, 3.0, 0.5, 0.0];
        let mut ws = wd.clone();
        let mut d = State::dense(5);
        let mut s = State::sparse(vec![1, 3]);
        for t in 1..=5 {
            let g: Vec<f32> = (0..5).map(|i| (i as f32 - 2.0) * t as f32 * 0.1).collect();
            a.step(&mut d, t, &mut wd, &g);
            a.step(&mut s, t, &mut ws, &g);
        }
        assert_eq!([ws[0], ws[2], ws[4]], [1.0, 3.0, 0.0]);
        assert_eq!([ws[1], ws[3]], [wd[1], wd[3]]);
        assert_ne!(ws[1], -2.0);
        assert_eq!(s.len(), 2);
        assert_eq!(s.bytes(), 24);
        assert_eq!(d.bytes(), 40);
    }

    #[test]
    fn remask_keeps_moments_of_entries_in_both_and_zeroes_new_ones() {
        let mut s = State::Sparse {
            idx: vec![2, 5, 9],
            m: vec![0.2, 0.5, 0.9],
            v: vec![2.0, 5.0, 9.0],
        };
        s.remask(vec![1, 5, 9, 12]);
        assert_eq!(
            s,
            State::Sparse {
                idx: vec![1, 5, 9, 12],
                m: vec![0.0, 0.5, 0.9, 0.0],
                v: vec![0.0, 5.0, 9.0, 0.0],
            }
        );
    }
}
