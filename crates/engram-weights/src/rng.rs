//! engram's one random-number generator: small deterministic streams keyed by (seed, name,
//! index), for the weight-space methods (DARE masks, synthetic models) and for engram-learn
//! (scenarios, buffers, batch order).
//!
//! Randomness must not depend on thread count or visiting order, so every tensor (and every
//! chunk of a large tensor), every scenario decision and every epoch draws from its own
//! stream derived from the run's seed and a key. SplitMix64 is enough for that: it is fast,
//! passes BigCrush as a generator, and is trivially seedable.

#[derive(Clone, Debug)]
pub struct Rng(u64);

/// FNV-1a over the bytes of `s`: a stable hash (std's hasher is randomised per process).
pub fn hash_str(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(mix(seed ^ 0x9e37_79b9_7f4a_7c15))
    }

    /// The stream for (seed, key, index): e.g. (run seed, tensor name, chunk number).
    pub fn keyed(seed: u64, key: &str, index: u64) -> Rng {
        Rng::new(mix(seed) ^ mix(hash_str(key).wrapping_add(index.wrapping_mul(0x9e37_79b9))))
    }

    /// The stream whose state is `state` itself (not mixed): the trainer's batch order is
    /// drawn this way from a value that already mixes (seed, task, epoch).
    pub fn from_state(state: u64) -> Rng {
        Rng(state)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in [0, 1) with 24 bits of resolution.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in [0, 1) with 53 bits of resolution.
    pub fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A standard normal by Box-Muller (exact distribution; use for small draws).
    pub fn normal_f64(&mut self) -> f64 {
        let u1 = self.uniform_f64().max(1e-300);
        let u2 = self.uniform_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// [`Rng::normal_f64`] rounded to f32.
    pub fn normal(&mut self) -> f32 {
        self.normal_f64() as f32
    }

    /// An approximately normal value with mean 0 and variance 1: the sum of four uniforms
    /// (Irwin-Hall), bell-shaped and bounded at ±3.46. Cheap enough for billions of draws.
    pub fn bell(&mut self) -> f32 {
        let a = self.next_u64();
        let b = self.next_u64();
        let s = (a & 0xffff_ffff) as f32
            + (a >> 32) as f32
            + (b & 0xffff_ffff) as f32
            + (b >> 32) as f32;
        // Each term is uniform on [0, 2^32); the sum has mean 2^33 and variance 4/12 * 2^64.
        (s - 8_589_934_592.0) * (1.732_050_8 / 4_294_967_296.0)
    }

    /// Uniform integer in 0..n (unbiased: Lemire's multiply-shift with rejection).
    /// Returns 0 for n = 0.
    pub fn below(&mut self, n: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        let n = n as u64;
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as usize;
            }
        }
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }

    /// A random permutation of 0..n.
    pub fn permutation(&mut self, n: usize) -> Vec<u32> {
        let mut p: Vec<u32> = (0..n as u32).collect();
        self.shuffle(&mut p);
        p
    }

    /// `k` distinct elements of `items` chosen uniformly (partial Fisher-Yates), returned in
    /// ascending order. All of them (sorted) when `k >= items.len()`.
    pub fn choose_sorted(&mut self, items: &[usize], k: usize) -> Vec<usize> {
        let mut v = items.to_vec();
        let k = k.min(v.len());
        for i in 0..k {
            let j = i + self.below(v.len() - i);
            v.swap(i, j);
        }
        v.truncate(k);
        v.sort_unstable();
        v
    }

    /// Index drawn with probability proportional to `weights` (non-negative, positive sum).
    pub fn weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut r = self.uniform_f64() * total;
        let mut last = 0;
        for (i, &w) in weights.iter().enumerate() {
            if w > 0.0 {
                if r < w {
                    return i;
                }
                r -= w;
                last = i;
            }
        }
        // Rounding left r just above the total: the last positive weight.
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Rng::keyed(1, "w", 0).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(
            Rng::keyed(1, "w", 0).next_u64(),
            Rng::keyed(1, "w", 1).next_u64()
        );
        assert_ne!(
            Rng::keyed(1, "w", 0).next_u64(),
            Rng::keyed(2, "w", 0).next_u64()
        );
        assert_ne!(
            Rng::keyed(1, "w", 0).next_u64(),
            Rng::keyed(1, "v", 0).next_u64()
        );
    }

    #[test]
    fn bell_has_unit_variance() {
        let mut r = Rng::new(7);
        let n = 200_000;
        let xs: Vec<f32> = (0..n).map(|_| r.bell()).collect();
        let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut r = Rng::new(7);
        let mut counts = [0usize; 6];
        for _ in 0..60_000 {
            counts[r.below(6)] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
        assert_eq!(r.below(0), 0);
        assert_eq!(r.below(1), 0);
    }

    #[test]
    fn permutation_and_choice() {
        let mut r = Rng::new(3);
        let mut p = r.permutation(100);
        p.sort_unstable();
        assert_eq!(p, (0..100).collect::<Vec<u32>>());
        let items: Vec<usize> = (10..50).collect();
        let c = r.choose_sorted(&items, 7);
        assert_eq!(c.len(), 7);
        assert!(c.windows(2).all(|w| w[0] < w[1]));
        assert!(c.iter().all(|x| items.contains(x)));
        assert_eq!(r.choose_sorted(&items, 100), items);
    }

    #[test]
    fn weighted_skips_zero_weights() {
        let mut r = Rng::new(5);
        for _ in 0..1000 {
            let i = r.weighted(&[0.0, 1.0, 0.0, 3.0, 0.0]);
            assert!(i == 1 || i == 3);
        }
    }
}
