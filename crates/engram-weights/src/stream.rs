//! Fixed-chunk streaming over the same tensor in several models: the one way engram splits a
//! tensor for parallel work (merges and their statistics passes, top-k selection, TALL masks,
//! bundles, task-vector sums), so that memory is a few chunks per thread whatever the model.
//!
//! Chunk boundaries depend only on the tensor (its length, and its row length for row-aligned
//! chunks), never on the thread count: random draws are keyed by chunk number and coded masks
//! are stored chunk by chunk, so boundaries must not move.

use crate::select::Pieces;
use engram_ckpt::{Result, TensorView};
use rayon::prelude::*;
use std::ops::Range;

/// Elements per chunk. A multiple of 8, so that the packed bit masks of chunks tile a tensor.
pub const CHUNK_ELEMS: usize = 1 << 18;

/// The same tensor in an optional base and several models (same shape), in fixed chunks.
#[derive(Clone, Copy)]
pub struct TensorChunks<'v, 'a> {
    base: Option<TensorView<'a>>,
    models: &'v [TensorView<'a>],
    numel: usize,
    /// Elements per chunk (the last chunk may be shorter).
    step: usize,
}

/// One chunk of the tensor, decoded to f32.
pub struct Chunk<'c> {
    /// Chunk number within the tensor (keys random streams and coded masks).
    pub index: usize,
    /// Element offset of the chunk within the tensor.
    pub start: usize,
    /// Number of elements in the chunk.
    pub len: usize,
    /// Base values; empty without a base.
    pub base: &'c [f32],
    /// One slice per model, in the order given.
    pub models: &'c [Vec<f32>],
}

impl<'v, 'a> TensorChunks<'v, 'a> {
    /// Chunks of [`CHUNK_ELEMS`] elements. The length is the base's, else the first model's.
    pub fn new(base: Option<TensorView<'a>>, models: &'v [TensorView<'a>]) -> Self {
        let numel = base.or(models.first().copied()).map_or(0, |v| v.numel());
        TensorChunks {
            base,
            models,
            numel,
            step: CHUNK_ELEMS,
        }
    }

    /// With `rows`, every chunk holds whole rows (last dimension; a scalar is one row of 1),
    /// for methods that work row by row.
    pub fn rows(mut self, rows: bool) -> Self {
        if rows {
            let shape = self
                .base
                .or(self.models.first().copied())
                .map_or(&[][..], |v| v.shape());
            let r = row_len(shape);
            self.step = (CHUNK_ELEMS / r).max(1) * r;
        }
        self
    }

    /// Number of chunks (none for an empty tensor).
    pub fn count(&self) -> usize {
        self.numel.div_ceil(self.step)
    }

    /// Element range of chunk `index`.
    pub fn range(&self, index: usize) -> Range<usize> {
        let start = index * self.step;
        start..(start + self.step).min(self.numel)
    }

    /// Gives the pages of `range` back to the kernel in every view (see
    /// `TensorView::release`): streaming keeps resident memory at a few chunks.
    pub fn release(&self, range: Range<usize>) {
        for v in self.base.iter().chain(self.models) {
            v.release(range.start, range.end);
        }
    }

    /// Decodes the base (if any) and every model over `range`.
    fn read(&self, range: Range<usize>) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        let n = range.len();
        let base = match &self.base {
            Some(b) => b.read_f32_vec(range.start, n)?,
            None => Vec::new(),
        };
        let models = self
            .models
            .iter()
            .map(|m| m.read_f32_vec(range.start, n))
            .collect::<Result<Vec<_>>>()?;
        Ok((base, models))
    }

    /// Decodes chunk `index`, releases its pages, and calls `f` on it.
    fn with_chunk<T>(&self, index: usize, f: impl FnOnce(&Chunk) -> T) -> Result<T> {
        let r = self.range(index);
        let (base, models) = self.read(r.clone())?;
        self.release(r.clone());
        Ok(f(&Chunk {
            index,
            start: r.start,
            len: r.len(),
            base: &base,
            models: &models,
        }))
    }

    /// Calls `f` on every chunk, in parallel.
    pub fn for_each(&self, f: &(dyn Fn(&Chunk) -> Result<()> + Sync)) -> Result<()> {
        (0..self.count())
            .into_par_iter()
            .try_for_each(|index| self.with_chunk(index, f)?)
    }

    /// Maps every chunk to a value, in parallel, and returns the values in chunk order, so
    /// that folding them in order gives the same result whatever the thread count.
    pub fn map<T: Send>(&self, f: &(dyn Fn(&Chunk) -> Result<T> + Sync)) -> Result<Vec<T>> {
        (0..self.count())
            .into_par_iter()
            .map(|index| self.with_chunk(index, f)?)
            .collect()
    }
}

/// The task vectors τ_i = model_i − base, one set per model, a piece per chunk (without a
/// base, the models' values).
impl Pieces for TensorChunks<'_, '_> {
    fn pieces(&self) -> usize {
        self.count()
    }

    fn piece(&self, p: usize, wanted: &[bool], f: &mut dyn FnMut(usize, &[f32])) -> Result<()> {
        let range = self.range(p);
        let n = range.len();
        // The base is decoded once for all models; one buffer serves every model in turn.
        let mut b = Vec::new();
        if let Some(base) = &self.base {
            b = vec![0f32; n];
            base.read_f32_into(range.start, &mut b)?;
        }
        let mut d = vec![0f32; n];
        for (i, m) in self.models.iter().enumerate() {
            if !wanted.get(i).copied().unwrap_or(false) {
                continue;
            }
            m.read_f32_into(range.start, &mut d)?;
            for (x, y) in d.iter_mut().zip(&b) {
                *x -= y;
            }
            f(i, &d);
        }
        self.release(range);
        Ok(())
    }
}

/// Length of the last dimension (1 for scalars).
pub fn row_len(shape: &[usize]) -> usize {
    shape.last().copied().unwrap_or(1).max(1)
}

/// Packs booleans MSB first (numpy's `packbits` order): bit 7 of byte 0 is element 0.
pub fn pack_bits(bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, &b) in bits.iter().enumerate() {
        if b {
            out[i / 8] |= 0x80 >> (i % 8);
        }
    }
    out
}

/// Reads element `i` of an MSB-first packed bit array.
#[inline]
pub fn bit(packed: &[u8], i: usize) -> bool {
    packed[i / 8] & (0x80 >> (i % 8)) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{random_family, values};

    #[test]
    fn packing_is_msb_first() {
        let bits = [true, false, false, false, false, false, false, true, true];
        let p = pack_bits(&bits);
        assert_eq!(p, vec![0b1000_0001, 0b1000_0000]);
        assert!((0..bits.len()).all(|i| bit(&p, i) == bits[i]));
    }

    /// Chunks tile the tensor in order, row-aligned ones end on row boundaries, and every
    /// chunk holds the values at its offset.
    #[test]
    fn chunks_tile_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let shapes: &[(&str, &[usize])] = &[("w", &[700, 600]), ("e", &[0, 4])];
        let (base, models) = random_family(dir.path(), shapes, 2, 3);
        let b = base.require("w").unwrap();
        let ms: Vec<TensorView> = models.iter().map(|m| m.require("w").unwrap()).collect();
        let whole: Vec<Vec<f32>> = models.iter().map(|m| values(m, "w")).collect();
        for rows in [false, true] {
            let c = TensorChunks::new(Some(b), &ms).rows(rows);
            let step = if rows {
                (CHUNK_ELEMS / 600) * 600
            } else {
                CHUNK_ELEMS
            };
            assert_eq!(c.count(), 420_000usize.div_ceil(step));
            let got = c
                .map(&|ch: &Chunk| {
                    assert_eq!(ch.start, ch.index * step);
                    for (m, w) in ch.models.iter().zip(&whole) {
                        assert_eq!(m[..], w[ch.start..ch.start + m.len()]);
                    }
                    Ok(ch.base.len())
                })
                .unwrap();
            assert_eq!(got.iter().sum::<usize>(), 420_000);
        }
        let e = [models[0].require("e").unwrap()];
        assert_eq!(TensorChunks::new(None, &e).rows(true).count(), 0);
    }
}
