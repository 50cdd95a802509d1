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

/// Several selections over the same sets: `inner`'s n sets repeated, set j being `inner`'s
/// set j mod n, as many times as the caller's `wanted` asks. Each value is decoded once and
/// counted into every copy that wants it, so two cuts of one model's |τ| (breadcrumbs' band)
/// share their passes.
pub struct Repeated<'p> {
    pub inner: &'p dyn Pieces,
    /// Sets of `inner`.
    pub sets: usize,
}

impl Pieces for Repeated<'_> {
    fn pieces(&self) -> usize {
        self.inner.pieces()
    }
    fn piece(
        &self,
        p: usize,
        wanted: &[bool],
        f: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), engram_ckpt::Error> {
        let n = self.sets;
        let inner: Vec<bool> = (0..n)
            .map(|i| wanted.iter().skip(i).step_by(n).any(|&w| w))
            .collect();
        self.inner.piece(p, &inner, &mut |i, xs| {
            for (j, &w) in wanted.iter().enumerate().skip(i).step_by(n) {
                if w {
                    f(j, xs);
                }
            }
        })
    }
}

/// The k-th largest |x| (NaNs ignored) of every set `i` with `ks[i] = Some(k)`, k ≥ 1
/// (`None` for the others, for k = 0, and when the set holds fewer than k values), in two
/// parallel passes over the pieces whatever the number of sets. Counts are integers, so the result does not depend on the thread
/// count.
pub fn kth_largest_abs_sets(
    s: &dyn Pieces,
    ks: &[Option<u64>],
) -> Result<Vec<Option<f32>>, engram_ckpt::Error> {
    let picks = top_buckets(s, ks)?;
    resolve_buckets(s, &picks)
}

/// The second pass of [`kth_largest_abs_sets`]: the exact k-th largest |x| of every set with
/// a bucket from [`top_buckets`], by a histogram of the low bits inside the bucket.
pub fn resolve_buckets(
    s: &dyn Pieces,
    picks: &[Option<Bucket>],
) -> Result<Vec<Option<f32>>, engram_ckpt::Error> {
    let known: Vec<Option<f32>> = picks.iter().map(|p| p.and_then(|b| b.known())).collect();
    let wanted: Vec<bool> = picks
        .iter()
        .zip(&known)
        .map(|(p, k)| p.is_some() && k.is_none())
        .collect();
    if !wanted.iter().any(|&w| w) {
        return Ok(known);
    }
    let lo = histograms::<{ 1 << 16 }>(s, &wanted, |i, x: u32| {
        picks[i]
            .filter(|b| b.holds(x))
            .map(|_| (x & 0xffff) as usize)
    })?;
    Ok(picks
        .iter()
        .zip(&lo)
        .zip(known)
        .map(|((p, h), known)| {
            let b = (*p)?;
            if known.is_some() {
                return known;
            }
            let (low, _) = find_from_top(h, b.rank)?;
            Some(b.value(low as u16))
        })
        .collect())
}

/// Where the k-th largest |x| of a set lies after the first pass: its bucket (the high 16
/// bits of |x|, a 1/128 octave), its rank among the bucket's values (1-based, from the top),
/// and how many values the bucket holds, of which how many are exactly zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub high: u32,
    pub rank: u64,
    pub count: u64,
    /// The bucket's values that are exactly 0 (only the lowest bucket, `high` 0, has any).
    pub zeros: u64,
}

impl Bucket {
    /// Whether |x| (its bits) lies in the bucket.
    #[inline]
    pub fn holds(&self, abs_bits: u32) -> bool {
        abs_bits >> 16 == self.high
    }

    /// The smallest magnitude in the bucket: every |x| at or above it is in the bucket or
    /// above, every one below it below.
    pub fn floor(&self) -> f32 {
        f32::from_bits(self.high << 16)
    }

    /// The magnitude with these low 16 bits in the bucket.
    pub fn value(&self, low: u16) -> f32 {
        f32::from_bits((self.high << 16) | u32::from(low))
    }

    /// The k-th largest |x| when the first pass fixes it already: in the lowest bucket, with
    /// the rank past the bucket's non-zero values (which rank first), the value is 0. Sparse
    /// deltas (most entries of a bf16 fine-tune's delta are often exactly 0) end here for
    /// every density above their share of non-zero entries.
    pub fn known(&self) -> Option<f32> {
        (self.high == 0 && self.rank > self.count - self.zeros).then_some(0.0)
    }

    /// The k-th largest |x| from the low 16 bits of every value in the bucket (`lows`, in
    /// any order; reordered). `None` if `lows` does not hold the bucket's count.
    pub fn resolve(&self, lows: &mut [u16]) -> Option<f32> {
        if lows.len() as u64 != self.count || self.rank == 0 || self.rank > self.count {
            return None;
        }
        let at = (self.rank - 1) as usize;
        let (_, low, _) = lows.select_nth_unstable_by(at, |a, b| b.cmp(a));
        Some(self.value(*low))
    }
}

/// The first pass of [`kth_largest_abs_sets`] alone: per set `i` with `ks[i] = Some(k)`,
/// k ≥ 1, the bucket of the k-th largest |x| (NaNs ignored); `None` for the other sets, for
/// k = 0, and when the set holds fewer than k values. A caller that sees the values again
/// anyway (a merge pass) finishes the selection with [`Bucket::resolve`] on the low bits of
/// the values that fall in the bucket, instead of a second pass.
pub fn top_buckets(
    s: &dyn Pieces,
    ks: &[Option<u64>],
) -> Result<Vec<Option<Bucket>>, engram_ckpt::Error> {
    let wanted: Vec<bool> = ks.iter().map(|k| k.is_some_and(|k| k > 0)).collect();
    if !wanted.iter().any(|&w| w) {
        return Ok(vec![None; ks.len()]);
    }
    // |x| has its top bit clear and NaNs are skipped, so the high bits stay at or below
    // 0x7f80 (infinity) and bin 0x7fff is free: exact zeros are counted there (then moved back
    // into bin 0), at no extra cost per value.
    const ZEROS: usize = 0x7fff;
    let hi = histograms::<{ 1 << 15 }>(s, &wanted, |_, x: u32| {
        Some((x >> 16) as usize | (usize::from(x == 0) * ZEROS))
    })?;
    Ok(ks
        .iter()
        .zip(hi)
        .zip(&wanted)
        .map(|((k, mut h), &w)| {
            if !w {
                return None;
            }
            let zeros = std::mem::take(&mut h[ZEROS]);
            h[0] += zeros;
            let (high, rank) = find_from_top(&h, (*k)?)?;
            Some(Bucket {
                high: high as u32,
                rank,
                count: h[high],
                zeros: if high == 0 { zeros } else { 0 },
            })
        })
        .collect())
}

/// Per wanted set, a `B`-bin histogram of `bin(set, bits of |x|)` over all pieces (NaNs and
/// `None` bins skipped); empty for the other sets. `bin` must return bins below `B`, a power
/// of 2 (2^15 for the high bits of |x|, 2^16 for the low bits).
fn histograms<const B: usize>(
    s: &dyn Pieces,
    wanted: &[bool],
    bin: impl Fn(usize, u32) -> Option<usize> + Sync,
) -> Result<Vec<Vec<u64>>, engram_ckpt::Error> {
    use rayon::prelude::*;
    let empty = || -> Vec<Vec<u64>> {
        wanted
            .iter()
            .map(|&w| if w { vec![0u64; B] } else { Vec::new() })
            .collect()
    };
    // One accumulator per thread over a contiguous run of pieces (pieces are of equal size),
    // rather than one per rayon split: each accumulator is 16·B bytes per wanted set to zero
    // and add up, and the passes run once per tensor.
    let pieces = s.pieces();
    let runs = rayon::current_num_threads().clamp(1, pieces.max(1));
    (0..runs)
        .into_par_iter()
        .map(|r| {
            let mut h: Vec<Option<Counts<B>>> =
                wanted.iter().map(|&w| w.then(Counts::new)).collect();
            for p in r * pieces / runs..(r + 1) * pieces / runs {
                s.piece(p, wanted, &mut |i, xs| {
                    if let Some(c) = h[i].as_mut() {
                        c.add(xs, |x| bin(i, x));
                    }
                })?;
            }
            Ok(h.into_iter()
                .map(|c| c.map_or_else(Vec::new, Counts::finish))
                .collect())
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

/// A histogram counted in four interleaved tables (value j of a slice goes to table j mod 4),
/// added up at the end. With one table, runs of values in one bin (deltas of bf16 fine-tunes
/// take few distinct values) wait on each other's increment, a store and a reload each;
/// four tables make four independent chains. Measured (`perf` on a TIES merge of the
/// synthetic 100M family, N = 2): the two histogram passes took a third of the samples.
/// The tables count in u32, emptied into the u64 totals before any could overflow.
struct Counts<const B: usize> {
    ways: [Box<[u32; B]>; 4],
    /// Values counted into `ways` since they were last emptied.
    pending: u64,
    /// Empty until the tables are first emptied (most histograms never overflow a table).
    totals: Vec<u64>,
}

impl<const B: usize> Counts<B> {
    fn new() -> Counts<B> {
        let table = || -> Box<[u32; B]> {
            vec![0u32; B]
                .into_boxed_slice()
                .try_into()
                .expect("B entries")
        };
        Counts {
            ways: [table(), table(), table(), table()],
            pending: 0,
            totals: Vec::new(),
        }
    }

    fn add(&mut self, xs: &[f32], bin: impl Fn(u32) -> Option<usize>) {
        #[inline(always)]
        fn count<const B: usize>(t: &mut [u32; B], x: f32, bin: &impl Fn(u32) -> Option<usize>) {
            if !x.is_nan()
                && let Some(b) = bin(x.abs().to_bits())
            {
                debug_assert!(b < B, "bin {b}");
                t[b & (B - 1)] += 1;
            }
        }
        // No table can pass u32::MAX: each slice part adds at most its length to one table.
        for part in xs.chunks(1 << 30) {
            if self.pending + part.len() as u64 > u64::from(u32::MAX) {
                self.empty_ways();
            }
            self.pending += part.len() as u64;
            let [a, b, c, d] = &mut self.ways;
            let (quads, rest) = part.as_chunks::<4>();
            for q in quads {
                count(a, q[0], &bin);
                count(b, q[1], &bin);
                count(c, q[2], &bin);
                count(d, q[3], &bin);
            }
            for &x in rest {
                count(a, x, &bin);
            }
        }
    }

    fn empty_ways(&mut self) {
        self.totals.resize(B, 0);
        for t in &mut self.ways {
            for (total, n) in self.totals.iter_mut().zip(t.iter_mut()) {
                *total += u64::from(std::mem::take(n));
            }
        }
        self.pending = 0;
    }

    fn finish(mut self) -> Vec<u64> {
        if self.totals.is_empty() {
            let [a, b, c, d] = &self.ways;
            return (0..B)
                .map(|j| u64::from(a[j]) + u64::from(b[j]) + u64::from(c[j]) + u64::from(d[j]))
                .collect();
        }
        self.empty_ways();
        self.totals
    }
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

/// Per density, the rank of the magnitude that keeps that share of `n` values ([`keep_count`]);
/// `None` for a density ≥ 1, which keeps all.
pub fn keep_ranks(densities: &[f64], n: u64) -> Vec<Option<u64>> {
    densities
        .iter()
        .map(|&d| (d < 1.0).then(|| keep_count(d, n)))
        .collect()
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

    /// The interleaved tables count what one table would: runs of one value (every table
    /// on the same bin), slice lengths that are not multiples of 4, NaNs and `None` bins
    /// skipped, and tables emptied into the totals when they could overflow.
    #[test]
    fn interleaved_counts_equal_a_plain_histogram() {
        let mut r = Rng::new(5);
        let mut xs: Vec<f32> = (0..10_001)
            .map(|i| match i % 7 {
                0 => f32::NAN,
                1 | 2 => -0.25,
                _ => r.normal(),
            })
            .collect();
        xs.extend(std::iter::repeat_n(3.0f32, 1003));
        let bin = |x: u32| (x >> 16 != 0x3f80).then_some((x >> 16) as usize);
        const BINS: usize = 1 << 16;
        let mut want = vec![0u64; BINS];
        for x in xs.iter().filter(|x| !x.is_nan()) {
            if let Some(b) = bin(x.abs().to_bits()) {
                want[b] += 1;
            }
        }
        let mut c = Counts::<BINS>::new();
        for part in xs.chunks(333) {
            c.add(part, bin);
            // As if four billion values had been counted: the next slice empties the tables.
            c.pending = u64::from(u32::MAX) - 100;
        }
        assert_eq!(c.finish(), want);
        // Never emptied before the end.
        let mut c = Counts::<BINS>::new();
        c.add(&xs, bin);
        assert_eq!(c.finish(), want);
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

    /// The first pass and the low bits of the bucket's values give the two-pass answer.
    #[test]
    fn buckets_resolve_to_the_two_pass_answer() {
        let mut r = Rng::new(3);
        let xs: Vec<f32> = (0..20_000)
            .map(|i| match i % 7 {
                0 => 0.25, // many equal values
                _ => r.normal(),
            })
            .collect();
        let one = Sets(vec![xs.clone()]);
        for k in [1u64, 100, 2857, 2858, 2900, 19_999, 20_000] {
            let b = top_buckets(&one, &[Some(k)]).unwrap()[0].unwrap();
            let mut lows: Vec<u16> = xs
                .iter()
                .map(|x| x.abs().to_bits())
                .filter(|&x| b.holds(x))
                .map(|x| (x & 0xffff) as u16)
                .collect();
            assert_eq!(lows.len() as u64, b.count);
            let want = kth_largest_abs_sets(&one, &[Some(k)]).unwrap()[0];
            assert_eq!(b.resolve(&mut lows), want, "k={k}");
            assert!(want.unwrap() >= b.floor());
        }
        assert_eq!(
            top_buckets(&one, &[Some(20_001), None]).unwrap(),
            vec![None, None]
        );
    }

    /// A sparse set (most values exactly 0, a few non-zero ones in the lowest bucket too):
    /// the first pass alone fixes the answer exactly when it is 0, and the answer is
    /// sorting's for every k, known or resolved.
    #[test]
    fn zeros_are_known_after_the_first_pass() {
        let mut r = Rng::new(4);
        let mut xs: Vec<f32> = (0..9_000)
            .map(|i| match i % 9 {
                0..=5 => {
                    if i % 2 == 0 {
                        0.0
                    } else {
                        -0.0
                    }
                }
                6 => f32::from_bits(3 + i as u32 % 5) * if i % 4 == 0 { -1.0 } else { 1.0 },
                _ => r.normal(),
            })
            .collect();
        xs.push(f32::NAN);
        let one = Sets(vec![xs.clone()]);
        let nonzero = xs.iter().filter(|x| !x.is_nan() && **x != 0.0).count() as u64;
        let tiny = xs
            .iter()
            .filter(|x| **x != 0.0 && x.abs().to_bits() >> 16 == 0)
            .count() as u64;
        assert!(tiny > 0);
        for k in [
            1,
            500,
            nonzero - tiny,
            nonzero - 1,
            nonzero,
            nonzero + 1,
            8_000,
            9_000,
        ] {
            let b = top_buckets(&one, &[Some(k)]).unwrap()[0].unwrap();
            let want = by_sorting(&xs, k);
            assert_eq!(b.known().is_some(), want == Some(0.0), "k={k}");
            if let Some(v) = b.known() {
                assert_eq!(Some(v), want);
            }
            assert_eq!(
                kth_largest_abs_sets(&one, &[Some(k)]).unwrap(),
                vec![want],
                "k={k}"
            );
        }
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
