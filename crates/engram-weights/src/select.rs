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

/// Values of several sets (one per model), readable more than once in independent pieces
/// (chunks of one or more tensors), so that a pass can run the pieces in parallel and read
/// each piece once for all sets.
pub trait Pieces: Sync {
    fn pieces(&self) -> usize;
    /// Calls `f(set, values)` for the values of every set in `wanted` over piece `p`.
    fn piece(
        &self,
        p: usize,
        wanted: &[bool],
        f: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), engram_ckpt::Error>;
}

/// [`kth_largest_abs`] for every set `i` with `ks[i] = Some(k)` (`None` for the others or
/// when the set holds fewer than k values), in two parallel passes over the pieces whatever
/// the number of sets. Counts are integers, so the result does not depend on the thread
/// count.
pub fn kth_largest_abs_sets(
    s: &dyn Pieces,
    ks: &[Option<u64>],
) -> Result<Vec<Option<f32>>, engram_ckpt::Error> {
    let wanted: Vec<bool> = ks.iter().map(|k| k.is_some_and(|k| k > 0)).collect();
    if !wanted.iter().any(|&w| w) {
        return Ok(vec![None; ks.len()]);
    }
    let hi = histograms(s, &wanted, |_, x: u32| Some((x >> 16) as usize))?;
    let picks: Vec<Option<(usize, u64)>> = ks
        .iter()
        .zip(&hi)
        .zip(&wanted)
        .map(|((k, h), &w)| if w { find_from_top(h, (*k)?) } else { None })
        .collect();
    let wanted: Vec<bool> = picks.iter().map(Option::is_some).collect();
    let buckets: Vec<usize> = picks
        .iter()
        .map(|p| p.map_or(usize::MAX, |p| p.0))
        .collect();
    let lo = histograms(s, &wanted, |i, x: u32| {
        ((x >> 16) as usize == buckets[i]).then_some((x & 0xffff) as usize)
    })?;
    Ok(picks
        .iter()
        .zip(&lo)
        .map(|(p, h)| {
            let (bucket, rank) = (*p)?;
            let (low, _) = find_from_top(h, rank)?;
            Some(f32::from_bits(((bucket as u32) << 16) | low as u32))
        })
        .collect())
}

/// Per wanted set, a 2^16-bin histogram of `bin(set, bits of |x|)` over all pieces (NaNs and
/// `None` bins skipped); empty for the other sets.
fn histograms(
    s: &dyn Pieces,
    wanted: &[bool],
    bin: impl Fn(usize, u32) -> Option<usize> + Sync,
) -> Result<Vec<Vec<u64>>, engram_ckpt::Error> {
    use rayon::prelude::*;
    let empty = || -> Vec<Vec<u64>> {
        wanted
            .iter()
            .map(|&w| if w { vec![0u64; 1 << 16] } else { Vec::new() })
            .collect()
    };
    // One accumulator per thread over a contiguous run of pieces (pieces are of equal size),
    // rather than one per rayon split: each accumulator is 512 KiB per wanted set to zero.
    let pieces = s.pieces();
    let runs = rayon::current_num_threads().clamp(1, pieces.max(1));
    (0..runs)
        .into_par_iter()
        .map(|r| {
            let mut h = empty();
            for p in r * pieces / runs..(r + 1) * pieces / runs {
                s.piece(p, wanted, &mut |i, xs| {
                    let h = &mut h[i];
                    for x in xs {
                        if !x.is_nan()
                            && let Some(b) = bin(i, x.abs().to_bits())
                        {
                            h[b] += 1;
                        }
                    }
                })?;
            }
            Ok(h)
        })
        .try_reduce(empty, |mut a, b| {
            for (a, b) in a.iter_mut().zip(b) {
                for (a, b) in a.iter_mut().zip(b) {
                    *a += b;
                }
            }
            Ok(a)
        })
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

    /// Three sets in uneven pieces: each set's answer equals the one-set select's.
    #[test]
    fn sets_match_one_at_a_time() {
        struct Sets(Vec<Vec<f32>>);
        impl Pieces for Sets {
            fn pieces(&self) -> usize {
                self.0[0].len().div_ceil(1000)
            }
            fn piece(
                &self,
                p: usize,
                wanted: &[bool],
                f: &mut dyn FnMut(usize, &[f32]),
            ) -> Result<(), engram_ckpt::Error> {
                for (i, xs) in self.0.iter().enumerate() {
                    if wanted[i] {
                        let end = ((p + 1) * 1000).min(xs.len());
                        f(i, &xs[p * 1000..end]);
                    }
                }
                Ok(())
            }
        }
        let mut r = Rng::new(2);
        let sets = Sets(
            (0..3)
                .map(|j| {
                    (0..12_345)
                        .map(|i| match (j, i % 50) {
                            (2, 0) => f32::NAN,
                            (1, _) => (r.normal() * 0.01).round() * 0.5,
                            _ => r.normal() * (j + 1) as f32,
                        })
                        .collect()
                })
                .collect(),
        );
        for ks in [
            vec![Some(1), Some(7), Some(12_000)],
            vec![None, Some(6000), Some(12_345)],
            vec![Some(0), Some(12_346), Some(3)],
        ] {
            let got = kth_largest_abs_sets(&sets, &ks).unwrap();
            for (i, k) in ks.iter().enumerate() {
                let one = |f: &mut dyn FnMut(&[f32])| {
                    for c in sets.0[i].chunks(1000) {
                        f(c);
                    }
                    Ok(())
                };
                let want = match k {
                    Some(k) => kth_largest_abs(&one, *k).unwrap(),
                    None => None,
                };
                assert_eq!(got[i], want, "set {i}, k {k:?}");
            }
        }
    }
}
