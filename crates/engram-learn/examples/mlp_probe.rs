//! The matrix products of one training step of the B4 networks (BENCHMARKS.md), each timed
//! through burn-flex's `matmul` (gemm's own parallelism) and through engram's dense layer
//! (model/dense.rs: fixed pieces, one single-threaded gemm call each), on the `flex` CPU backend
//! without autodiff, at batch 128. Wall time, median of 5 rounds; random inputs, no data.
//!
//! `cargo run --release -p engram-learn --example mlp_probe [calls per round]`
//! (`RAYON_NUM_THREADS=1` for one thread).

use burn::prelude::*;
use burn::tensor::Distribution;
use engram_learn::model::dense::dense;
use std::time::Instant;

/// Milliseconds per call of `f`: median of 5 rounds of `n` calls, after 3 warm-up calls.
fn time(n: usize, mut f: impl FnMut() -> f32) -> f64 {
    let mut sink = 0.0f32;
    for _ in 0..3 {
        sink += f();
    }
    let mut rounds: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                sink += f();
            }
            t.elapsed().as_secs_f64() * 1e3 / n as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    std::hint::black_box(sink);
    rounds[2]
}

fn main() {
    let calls: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let d = Device::flex();
    println!(
        "rayon threads: {}; ms per product (GFLOP/s)",
        rayon::current_num_threads()
    );
    // (what, m, k, n, a given transposed, b given transposed): y = a·b, a m×k, b k×n.
    let shapes = [
        ("mlp fc1 forward", 128, 784, 400, false, false),
        ("mlp fc2 forward", 128, 400, 400, false, false),
        ("mlp fc2 weight grad", 400, 128, 400, true, false),
        ("mlp fc2 input grad", 128, 400, 400, false, true),
        ("mlp fc1 weight grad", 784, 128, 400, true, false),
        ("cnn conv2 forward", 15488, 290, 64, false, true),
        ("cnn conv2 weight grad", 290, 15488, 64, true, false),
        ("cnn conv2 input grad", 15488, 64, 290, false, false),
        ("cnn conv1 weight grad", 10, 86528, 32, true, false),
        ("cnn fc1 forward", 128, 1600, 128, false, false),
    ];
    for (what, m, k, n, ta, tb) in shapes {
        let draw = |r: usize, c: usize, t: bool| {
            let dims = if t { [c, r] } else { [r, c] };
            let x = Tensor::<2>::random(dims, Distribution::Normal(0.0, 1.0), &d);
            if t { x.transpose() } else { x }
        };
        let (a, b) = (draw(m, k, ta), draw(k, n, tb));
        let first = |y: Tensor<2>| y.slice([0..1, 0..1]).into_scalar::<f32>();
        let burn = time(calls, || first(a.clone().matmul(b.clone())));
        let ours = time(calls, || first(dense(a.clone(), b.clone(), None, false)));
        let gf = |ms: f64| 2.0 * (m * k * n) as f64 / ms / 1e6;
        println!(
            "{what:<24} {m}×{k}×{n}: burn {burn:.3} ({:.0}), engram {ours:.3} ({:.0})",
            gf(burn),
            gf(ours)
        );
    }
}
