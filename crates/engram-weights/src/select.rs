//! Exact k-th largest magnitude over a stream of values, in two passes and O(1) memory.
//!
//! Non-negative f32 values order like their bit patterns, so a radix select works: the first
//! pass histograms the high 16 bits of |x|, which fixes the bucket holding the k-th largest;
//! the second pass histograms the low 16 bits inside that bucket. This is how engram finds
//! top-k thresholds per tensor and over a whole model without loading the model
//! (merging.md, "Model scope in practice").

/// A source of values that can be streamed more than once: it calls `f` on successive
/// slices covering all values.
pub trait Stream {
    fn each(&self, f: &mut dyn FnMut(&[f32])) -> Result<(), engram_ckpt::Error>;
}

impl<F> Stream for F
where
    F: Fn(&mut dyn FnMut(&[f32])) -> Result<(), engram_ckpt::Error>,
{
    fn each(&self, f: &mut dyn FnMut(&[f32])) -> Result<(), engram_ckpt::Error> {
        self(f)
    }
}

/// The k-th largest |x| (k >= 1) over the stream, NaNs ignored; `None` if the stream holds
/// fewer than k values.
pub fn kth_largest_abs(s: &dyn Stream, k: u64) -> Result<Option<f32>, engram_ckpt::Error> {
    if k == 0 {
        return Ok(None);
    }
    let mut hi = vec![0u64; 1 << 16];
    s.each(&mut |xs| {
        for x in xs {
            if !x.is_nan() {
                hi[(x.abs().to_bits() >> 16) as usize] += 1;
            }
        }
    })?;
    let Some((bucket, rank)) = find_from_top(&hi, k) else {
        return Ok(None);
    };
    let mut lo = vec![0u64; 1 << 16];
    s.each(&mut |xs| {
        for x in xs {
            let b = x.abs().to_bits();
            if !x.is_nan() && (b >> 16) as usize == bucket {
                lo[(b & 0xffff) as usize] += 1;
            }
        }
    })?;
    let (low, _) = find_from_top(&lo, rank).expect("bucket count covers rank");
    Ok(Some(f32::from_bits(((bucket as u32) << 16) | low as u32)))
}

/// Walking the histogram from the top, the bucket where the cumulative count reaches k,
/// and the rank of the wanted value within that bucket (1-based).
fn find_from_top(h: &[u64], k: u64) -> Option<(usize, u64)> {
    let mut seen = 0u64;
    for (i, &c) in h.iter().enumerate().rev() {
        if seen + c >= k {
            return Some((i, k - seen));
        }
        seen += c;
    }
    None
}

/// Number of values to keep for a density: mergekit's `int(density * n)`.
pub fn keep_count(density: f64, n: u64) -> u64 {
    ((density.clamp(0.0, 1.0)) * n as f64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn matches_sorting() {
        let mut r = Rng::new(1);
        let xs: Vec<f32> = (0..10_000).map(|_| r.normal() * 3.0).collect();
        let mut sorted: Vec<f32> = xs.iter().map(|x| x.abs()).collect();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let s = |f: &mut dyn FnMut(&[f32])| {
            for c in xs.chunks(777) {
                f(c);
            }
            Ok(())
        };
        for k in [1u64, 2, 10, 5000, 9999, 10_000] {
            assert_eq!(
                kth_largest_abs(&s, k).unwrap(),
                Some(sorted[k as usize - 1]),
                "k={k}"
            );
        }
        assert_eq!(kth_largest_abs(&s, 10_001).unwrap(), None);
        assert_eq!(kth_largest_abs(&s, 0).unwrap(), None);
    }
}
