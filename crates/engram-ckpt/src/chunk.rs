//! How the checkpoint layer splits tensors into chunks: the chunk size, the ranges of one
//! tensor (the sequential readers: [`Stats::of`](crate::Stats::of),
//! [`TensorView::count_non_finite`](crate::TensorView::count_non_finite)) and the work items
//! over many tensors that whole-checkpoint passes share out between threads (`engram diff`,
//! `engram convert`).
//!
//! This is not `engram_weights::stream::TensorChunks`, and should not become it. That type
//! walks the same tensor in several models, decodes every chunk into fresh buffers, and fixes
//! its chunk boundaries because random draws and coded masks are keyed by chunk number. The
//! passes here walk all the tensors of one or two checkpoints at once, reuse one buffer per
//! thread, copy raw bytes where no conversion is needed, and combine their partial sums in
//! chunk order: they need only the ranges, and the layer that owns the readers owns them.

use std::ops::Range;

/// Elements per chunk when streaming through a tensor (1 Mi floats = 4 MiB).
pub const CHUNK: usize = 1 << 20;

/// The element ranges of a tensor of `numel` elements, [`CHUNK`] at most each, in order
/// (none for an empty tensor).
pub fn ranges(numel: usize) -> impl Iterator<Item = Range<usize>> {
    (0..numel)
        .step_by(CHUNK)
        .map(move |start| start..(start + CHUNK).min(numel))
}

/// Work items `(tensor index, first element, element count)` covering every tensor in chunks
/// of at most [`CHUNK`] elements, so that large tensors are split across threads. An empty
/// tensor gets one empty item, so that every tensor is visited.
pub fn items(numels: impl Iterator<Item = usize>) -> Vec<(usize, usize, usize)> {
    let mut v = Vec::new();
    for (i, n) in numels.enumerate() {
        if n == 0 {
            v.push((i, 0, 0));
        }
        v.extend(ranges(n).map(|r| (i, r.start, r.len())));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_tile_the_tensor() {
        assert_eq!(ranges(0).count(), 0);
        assert_eq!(ranges(3).collect::<Vec<_>>(), vec![0..3]);
        assert_eq!(
            ranges(2 * CHUNK + 1).collect::<Vec<_>>(),
            vec![0..CHUNK, CHUNK..2 * CHUNK, 2 * CHUNK..2 * CHUNK + 1]
        );
    }

    #[test]
    fn items_cover_every_tensor() {
        let c = items([0, CHUNK + 5, 3].into_iter());
        assert_eq!(c, vec![(0, 0, 0), (1, 0, CHUNK), (1, CHUNK, 5), (2, 0, 3)]);
    }
}
