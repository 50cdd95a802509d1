//! Exact k-th largest magnitude of several streamed sets of values (one per model), in two
//! passes and memory independent of the number of values.
//!
//! Non-negative f32 values order like their bit patterns, so a radix select works: the first
//! pass histograms the high 16 bits of |x|, which fixes the bucket holding the k-th largest;
//! the second pass histograms the low 16 bits inside that bucket. This is how engram finds
//! top-k thresholds per tensor and over a whole model without loading the model
//! (merging.md, "Model scope in practice").

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

/// The k-th largest |x| (NaNs ignored) of every set `i` with `ks[i] = Some(k)`, k ≥ 1
/// (`None` for the others, for k = 0, and when the set holds fewer than k values), in two
/// parallel passes over the pieces whatever the number of sets. Counts are integers, so the result does not depend on the thread
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

    /// Sets of equal length, served in pieces of 777 values.
    struct Sets(Vec<Vec<f32>>);

    const PIECE: usize = 777;

    impl Pieces for Sets {
        fn pieces(&self) -> usize {
            self.0[0].len().div_ceil(PIECE)
        }
        fn piece(
            &self,
            p: usize,
            wanted: &[bool],
            f: &mut dyn FnMut(usize, &[f32]),
        ) -> Result<(), engram_ckpt::Error> {
            for (i, xs) in self.0.iter().enumerate() {
                if wanted[i] {
                    let end = ((p + 1) * PIECE).min(xs.len());
                    f(i, &xs[p * PIECE..end]);
                }
            }
            Ok(())
        }
    }

    /// The k-th largest |x| by sorting (NaNs dropped).
    fn by_sorting(xs: &[f32], k: u64) -> Option<f32> {
        let mut a: Vec<f32> = xs.iter().filter(|x| !x.is_nan()).map(|x| x.abs()).collect();
        a.sort_by(|a, b| b.total_cmp(a));
        k.checked_sub(1).and_then(|i| a.get(i as usize).copied())
    }

    #[test]
    fn matches_sorting() {
        let mut r = Rng::new(1);
        let xs: Vec<f32> = (0..10_000).map(|_| r.normal() * 3.0).collect();
        let mut sorted: Vec<f32> = xs.iter().map(|x| x.abs()).collect();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let one = Sets(vec![xs]);
        for k in [1u64, 2, 10, 5000, 9999, 10_000] {
            assert_eq!(
                kth_largest_abs_sets(&one, &[Some(k)]).unwrap(),
                vec![Some(sorted[k as usize - 1])],
                "k={k}"
            );
        }
        assert_eq!(
            kth_largest_abs_sets(&one, &[Some(10_001)]).unwrap(),
            vec![None]
        );
        assert_eq!(kth_largest_abs_sets(&one, &[Some(0)]).unwrap(), vec![None]);
    }

    /// Three sets in uneven pieces (one full of ties, one with NaNs): each set's answer
    /// equals sorting that set alone.
    #[test]
    fn sets_match_sorting_each_alone() {
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
                let want = k.and_then(|k| by_sorting(&sets.0[i], k));
                assert_eq!(got[i], want, "set {i}, k {k:?}");
            }
        }
    }
}
