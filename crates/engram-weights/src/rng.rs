//! Small deterministic random streams keyed by (seed, name, index).
//!
//! Randomness in engram (DARE masks, synthetic models) must not depend on thread count or
//! visiting order, so every tensor (and every chunk of a large tensor) draws from its own
//! stream derived from the run's seed and the tensor's name. SplitMix64 is enough for that:
//! it is fast, passes BigCrush as a generator, and is trivially seedable.

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
    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform_f64().max(1e-300);
        let u2 = self.uniform_f64();
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
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

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
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
}
