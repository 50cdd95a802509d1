//! Streaming statistics of one tensor, and of the difference between two tensors, with f64
//! accumulators. Values are fed chunk by chunk (`add`) and partial results of chunks read in
//! parallel are combined with `merge`; combining the chunks of a tensor in a fixed order gives
//! the same result whatever the thread count. NaN and infinite values are counted and left out
//! of every sum, so that one bad value does not hide the statistics of the others.

use crate::chunk::{self, CHUNK};
use crate::error::Result;
use crate::file::TensorView;

/// Independent accumulators per pass (a fixed number, so results do not depend on the machine).
const LANES: usize = 8;

/// How many values are NaN or infinite (exponent bits all ones), branch-free.
pub fn non_finite(vals: &[f32]) -> usize {
    vals.iter()
        .map(|v| (v.to_bits() & 0x7f80_0000 == 0x7f80_0000) as u32)
        .sum::<u32>() as usize
}

/// Statistics of one tensor's values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    /// Values seen (finite or not).
    pub count: u64,
    pub nan: u64,
    pub inf: u64,
    /// Smallest and largest finite values (`+inf`/`-inf` while none has been seen).
    pub min: f64,
    pub max: f64,
    /// Sum and sum of squares of the finite values.
    pub sum: f64,
    pub sum_sq: f64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            count: 0,
            nan: 0,
            inf: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sum: 0.0,
            sum_sq: 0.0,
        }
    }
}

impl Stats {
    pub fn add(&mut self, vals: &[f32]) {
        self.count += vals.len() as u64;
        if non_finite(vals) == 0 {
            // The common case: independent lanes that the compiler vectorizes.
            let (mut s, mut q) = ([0f64; LANES], [0f64; LANES]);
            let (mut lo, mut hi) = ([f64::INFINITY; LANES], [f64::NEG_INFINITY; LANES]);
            let mut step = |k: usize, v: f32| {
                let v = v as f64;
                s[k] += v;
                q[k] += v * v;
                lo[k] = if v < lo[k] { v } else { lo[k] };
                hi[k] = if v > hi[k] { v } else { hi[k] };
            };
            let mut it = vals.chunks_exact(LANES);
            for c in &mut it {
                for (k, &v) in c.iter().enumerate() {
                    step(k, v);
                }
            }
            for (k, &v) in it.remainder().iter().enumerate() {
                step(k, v);
            }
            self.sum += s.iter().sum::<f64>();
            self.sum_sq += q.iter().sum::<f64>();
            self.min = lo.iter().fold(self.min, |a, &b| a.min(b));
            self.max = hi.iter().fold(self.max, |a, &b| a.max(b));
            return;
        }
        let (mut sum, mut sq) = (0f64, 0f64);
        let (mut lo, mut hi) = (self.min, self.max);
        for &v in vals {
            if v.is_finite() {
                let v = v as f64;
                sum += v;
                sq += v * v;
                lo = lo.min(v);
                hi = hi.max(v);
            } else if v.is_nan() {
                self.nan += 1;
            } else {
                self.inf += 1;
            }
        }
        self.sum += sum;
        self.sum_sq += sq;
        self.min = lo;
        self.max = hi;
    }

    pub fn merge(&mut self, o: &Stats) {
        self.count += o.count;
        self.nan += o.nan;
        self.inf += o.inf;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.sum += o.sum;
        self.sum_sq += o.sum_sq;
    }

    pub fn finite(&self) -> u64 {
        self.count - self.nan - self.inf
    }

    /// Mean of the finite values (`None` if there are none).
    pub fn mean(&self) -> Option<f64> {
        let n = self.finite();
        (n > 0).then(|| self.sum / n as f64)
    }

    /// Population standard deviation of the finite values.
    pub fn std(&self) -> Option<f64> {
        let n = self.finite();
        let m = self.mean()?;
        Some((self.sum_sq / n as f64 - m * m).max(0.0).sqrt())
    }

    /// Euclidean norm of the finite values.
    pub fn l2(&self) -> f64 {
        self.sum_sq.sqrt()
    }

    /// Streams a whole tensor in chunks of [`CHUNK`] elements.
    pub fn of(view: &TensorView) -> Result<Stats> {
        let mut s = Stats::default();
        let n = view.numel();
        let mut buf = vec![0f32; CHUNK.min(n)];
        for r in chunk::ranges(n) {
            let v = &mut buf[..r.len()];
            view.read_f32_into(r.start, v)?;
            s.add(v);
            view.release(r.start, r.end);
        }
        Ok(s)
    }
}

/// Statistics of the difference between two tensors of the same shape, A and B.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DiffStats {
    /// Positions compared.
    pub count: u64,
    /// Positions where A or B is NaN or infinite (left out of the sums below).
    pub non_finite: u64,
    /// Positions where A and B differ as f32 values (a NaN differs from everything).
    pub changed: u64,
    pub sum_a2: f64,
    pub sum_b2: f64,
    pub sum_ab: f64,
    /// Sum of (A - B)^2.
    pub sum_d2: f64,
    /// Largest |A - B|.
    pub max_abs: f64,
}

impl DiffStats {
    pub fn add(&mut self, a: &[f32], b: &[f32]) {
        debug_assert_eq!(a.len(), b.len());
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        self.count += n as u64;
        if non_finite(a) == 0 && non_finite(b) == 0 {
            // The common case: independent lanes that the compiler vectorizes.
            let (mut a2, mut b2, mut ab, mut d2) =
                ([0f64; LANES], [0f64; LANES], [0f64; LANES], [0f64; LANES]);
            let mut mx = [0f64; LANES];
            let mut changed = [0u32; LANES];
            let mut step = |k: usize, x: f32, y: f32| {
                changed[k] += (x != y) as u32;
                let (x, y) = (x as f64, y as f64);
                let d = x - y;
                a2[k] += x * x;
                b2[k] += y * y;
                ab[k] += x * y;
                d2[k] += d * d;
                mx[k] = if d.abs() > mx[k] { d.abs() } else { mx[k] };
            };
            let (mut ia, mut ib) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
            for (ca, cb) in (&mut ia).zip(&mut ib) {
                for k in 0..LANES {
                    step(k, ca[k], cb[k]);
                }
            }
            for (k, (&x, &y)) in ia.remainder().iter().zip(ib.remainder()).enumerate() {
                step(k, x, y);
            }
            self.changed += changed.iter().map(|&c| c as u64).sum::<u64>();
            self.sum_a2 += a2.iter().sum::<f64>();
            self.sum_b2 += b2.iter().sum::<f64>();
            self.sum_ab += ab.iter().sum::<f64>();
            self.sum_d2 += d2.iter().sum::<f64>();
            self.max_abs = mx.iter().fold(self.max_abs, |m, &v| m.max(v));
            return;
        }
        let (mut a2, mut b2, mut ab, mut d2, mut mx) = (0f64, 0f64, 0f64, 0f64, self.max_abs);
        let (mut bad, mut changed) = (0u64, 0u64);
        for (&x, &y) in a.iter().zip(b) {
            // Compared as values: -0.0 equals 0.0, and NaN equals nothing.
            changed += (x != y) as u64;
            if !(x.is_finite() && y.is_finite()) {
                bad += 1;
                continue;
            }
            let (x, y) = (x as f64, y as f64);
            let d = x - y;
            a2 += x * x;
            b2 += y * y;
            ab += x * y;
            d2 += d * d;
            mx = mx.max(d.abs());
        }
        self.non_finite += bad;
        self.changed += changed;
        self.sum_a2 += a2;
        self.sum_b2 += b2;
        self.sum_ab += ab;
        self.sum_d2 += d2;
        self.max_abs = mx;
    }

    pub fn merge(&mut self, o: &DiffStats) {
        self.count += o.count;
        self.non_finite += o.non_finite;
        self.changed += o.changed;
        self.sum_a2 += o.sum_a2;
        self.sum_b2 += o.sum_b2;
        self.sum_ab += o.sum_ab;
        self.sum_d2 += o.sum_d2;
        self.max_abs = self.max_abs.max(o.max_abs);
    }

    /// ‖A − B‖.
    pub fn l2_diff(&self) -> f64 {
        self.sum_d2.sqrt()
    }

    pub fn norm_a(&self) -> f64 {
        self.sum_a2.sqrt()
    }

    pub fn norm_b(&self) -> f64 {
        self.sum_b2.sqrt()
    }

    /// ‖A − B‖ / ‖A‖; `None` when A is all zeros (0 when B is too).
    pub fn rel_change(&self) -> Option<f64> {
        if self.sum_a2 > 0.0 {
            Some(self.l2_diff() / self.norm_a())
        } else if self.sum_d2 == 0.0 {
            Some(0.0)
        } else {
            None
        }
    }

    /// Cosine similarity of A and B; 1 when both are all zeros, `None` when only one is.
    pub fn cosine(&self) -> Option<f64> {
        if self.sum_a2 > 0.0 && self.sum_b2 > 0.0 {
            Some((self.sum_ab / (self.sum_a2 * self.sum_b2).sqrt()).clamp(-1.0, 1.0))
        } else if self.sum_a2 == 0.0 && self.sum_b2 == 0.0 {
            Some(1.0)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_skip_non_finite_values() {
        let mut s = Stats::default();
        s.add(&[1.0, -2.0, f32::NAN]);
        let mut t = Stats::default();
        t.add(&[f32::INFINITY, 3.0]);
        s.merge(&t);
        assert_eq!((s.count, s.nan, s.inf, s.finite()), (5, 1, 1, 3));
        assert_eq!((s.min, s.max, s.sum, s.sum_sq), (-2.0, 3.0, 2.0, 14.0));
        assert!((s.mean().unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(Stats::default().mean(), None);
    }

    #[test]
    fn diff_of_known_vectors() {
        let mut d = DiffStats::default();
        d.add(&[3.0, 0.0], &[0.0, 4.0]);
        assert_eq!(d.l2_diff(), 5.0);
        assert_eq!(d.rel_change(), Some(5.0 / 3.0));
        assert_eq!(d.cosine(), Some(0.0));
        assert_eq!(d.max_abs, 4.0);
        assert_eq!(d.changed, 2);

        let mut same = DiffStats::default();
        same.add(&[1.0, -0.0, 2.0], &[1.0, 0.0, 2.0]);
        assert_eq!((same.l2_diff(), same.changed), (0.0, 0));
        assert_eq!(same.cosine(), Some(1.0));

        let mut zeros = DiffStats::default();
        zeros.add(&[0.0; 3], &[0.0; 3]);
        assert_eq!((zeros.rel_change(), zeros.cosine()), (Some(0.0), Some(1.0)));
        let mut one_zero = DiffStats::default();
        one_zero.add(&[0.0; 2], &[1.0, 1.0]);
        assert_eq!((one_zero.rel_change(), one_zero.cosine()), (None, None));

        let mut nan = DiffStats::default();
        nan.add(&[f32::NAN, 1.0], &[f32::NAN, 2.0]);
        assert_eq!((nan.non_finite, nan.changed, nan.l2_diff()), (1, 2, 1.0));
    }

    #[test]
    fn merged_chunks_equal_one_pass() {
        let a: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.41).cos()).collect();
        let mut whole = DiffStats::default();
        whole.add(&a, &b);
        let mut parts = DiffStats::default();
        for (x, y) in a.chunks(97).zip(b.chunks(97)) {
            let mut p = DiffStats::default();
            p.add(x, y);
            parts.merge(&p);
        }
        assert!((whole.sum_d2 - parts.sum_d2).abs() < 1e-9);
        assert_eq!(whole.max_abs, parts.max_abs);
        assert_eq!(whole.count, parts.count);
    }
}
