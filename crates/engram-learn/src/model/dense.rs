//! engram's dense layer, `act(x·W + b)`, forward and backward, for the MLP, the CNN's linear
//! layers and the matrix product of its convolutions (conv.rs).
//!
//! Why this file exists (B4 in BENCHMARKS.md): on the `flex` CPU backend burn 0.22 computes a
//! linear layer as a matrix product, then a broadcast bias add, then a ReLU, each a separate
//! operation with its own output, the element-wise ones on one thread. Its matrix product
//! zero-fills every output and copies it into an aligned buffer before gemm writes it
//! (`FlexTensor::empty`: a tenth of a CNN step went to `memset` and `memmove`), and hands the
//! whole product to gemm's own parallelism, which does poorly on some of a small network's
//! shapes. `examples/mlp_probe.rs`, two threads, burn's product against this file's:
//! the MLP's first weight gradient (784×128×400) 1.53 ms against 0.45 ms, its first layer
//! forward (128×784×400) 0.57 against 0.35, the CNN's second convolution forward
//! (15488×290×64) 5.0 against 2.0 and its input gradient (15488×64×290) 16.4 against 2.5.
//!
//! Here each product is split into a fixed number of pieces that depends only on its shape
//! (so the result does not depend on the number of threads), each piece one single-threaded
//! `gemm` call on rayon's pool: rows of the output when the product is wide, or slices of the
//! reduction (summed afterwards, in a fixed order) when it is a long reduction into a small
//! matrix, as a weight gradient over many rows is. Outputs are written once, without zero
//! filling. The bias and the ReLU are applied to each piece of the output as soon as it is
//! computed, while it is in cache; the backward pass masks the output gradient by the ReLU once
//! and computes the three gradients from it (the input's only when the input needs one).
//!
//! On `flex` f32 tensors, with or without autodiff. Any other backend or dtype takes burn's
//! own operations (`matmul`, broadcast add, `relu`): same values up to rounding.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{FlexTensor, Layout as FlexLayout};
use burn::backend::{Autodiff, Flex};
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::{Bytes, DType};
use rayon::prelude::*;
use std::mem::MaybeUninit;

type AdFlex = Autodiff<Flex, NoCheckpointing>;

/// `relu(x·W + b)` (or without the ReLU), `x` [rows, in], `w` [in, out], `b` [out]: burn's
/// `Linear::forward` followed by `Relu::forward` when `relu`.
pub fn dense(x: Tensor<2>, w: Tensor<2>, b: Option<Tensor<1>>, relu: bool) -> Tensor<2> {
    let [_, k] = x.dims();
    let [kw, _] = w.dims();
    assert_eq!(k, kw, "dense: input width {k}, weight rows {kw}");
    let f32s = x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && b.as_ref().is_none_or(|b| b.dtype() == DType::F32);
    // The three as primitives of one backend, if all three are on it.
    macro_rules! on {
        ($backend:ty) => {
            match (
                x.clone().try_into_primitive::<$backend>(),
                w.clone().try_into_primitive::<$backend>(),
                b.clone()
                    .map(|b| b.try_into_primitive::<$backend>())
                    .transpose(),
            ) {
                (Ok(x), Ok(w), Ok(b)) => Some((x, w, b)),
                _ => None,
            }
        };
    }
    if f32s {
        if let Some((x, w, b)) = on!(AdFlex) {
            return Tensor::from_primitive::<AdFlex>(dense_ad(x, w, b, relu));
        }
        if let Some((x, w, b)) = on!(Flex) {
            return Tensor::from_primitive::<Flex>(forward(&x, &w, b.as_ref(), relu));
        }
    }
    burn_ops(x, w, b, relu)
}

/// [`dense`] from burn's own operations (any backend and dtype; the tests' reference).
fn burn_ops(x: Tensor<2>, w: Tensor<2>, b: Option<Tensor<1>>, relu: bool) -> Tensor<2> {
    let y = x.matmul(w);
    let y = match b {
        Some(b) => y + b.unsqueeze_dim(0),
        None => y,
    };
    if relu {
        burn::tensor::activation::relu(y)
    } else {
        y
    }
}

/// `l.forward(x)`, then a ReLU when `relu`, through [`dense`].
pub fn linear(l: &Linear, x: Tensor<2>, relu: bool) -> Tensor<2> {
    dense(x, l.weight.val(), l.bias.as_ref().map(|b| b.val()), relu)
}

// ---- the product --------------------------------------------------------------------------

/// A strided f32 matrix: element (i, j) at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy, Debug)]
struct Mat {
    ptr: *const f32,
    rows: usize,
    cols: usize,
    rs: isize,
    cs: isize,
}

// SAFETY: a `Mat` only reads, and lives no longer than the tensor it points into (every use
// below keeps that tensor alive for the call).
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}

impl Mat {
    fn t(self) -> Mat {
        Mat {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Rows `lo..hi`.
    fn rows(self, lo: usize, hi: usize) -> Mat {
        Mat {
            // SAFETY: within the matrix (lo ≤ rows).
            ptr: unsafe { self.ptr.offset(lo as isize * self.rs) },
            rows: hi - lo,
            ..self
        }
    }

    /// Columns `lo..hi`.
    fn cols(self, lo: usize, hi: usize) -> Mat {
        Mat {
            // SAFETY: within the matrix (lo ≤ cols).
            ptr: unsafe { self.ptr.offset(lo as isize * self.cs) },
            cols: hi - lo,
            ..self
        }
    }
}

/// A 2-D f32 tensor as a [`Mat`], with the tensor that holds its values (a contiguous copy when
/// its strides are not positive).
fn mat(t: &FlexTensor) -> (FlexTensor, Mat) {
    let l = t.layout();
    let usable = l.num_dims() == 2 && l.strides().iter().all(|&s| s > 0);
    let t = if usable { t.clone() } else { t.to_contiguous() };
    let l = t.layout();
    let (rows, cols, rs, cs) = l.as_2d_strides().expect("dense: a 2-D tensor");
    let off = l.start_offset();
    let ptr = t.storage::<f32>()[off..].as_ptr();
    (
        t,
        Mat {
            ptr,
            rows,
            cols,
            rs,
            cs,
        },
    )
}

/// A contiguous row-major f32 tensor from its values.
fn tensor(values: Vec<f32>, dims: Vec<usize>) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(values),
        FlexLayout::contiguous(Shape::from(dims)),
        DType::F32,
    )
}

/// `n` floats, every one written by `fill` before it returns.
fn written(n: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v: Vec<MaybeUninit<f32>> = Vec::with_capacity(n);
    // SAFETY: MaybeUninit values need no initialisation.
    unsafe { v.set_len(n) };
    fill(&mut v);
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: `fill` wrote every value (its contract), and f32 has MaybeUninit<f32>'s layout.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity()) }
}

/// `s` once every value has been written.
/// SAFETY: the caller has written every value of `s`.
unsafe fn assume_written(s: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: the caller's contract; same layout.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<f32>(), s.len()) }
}

/// Multiply-adds below which a product is one call on the calling thread.
const SMALL: usize = 1 << 20;

/// `dst (m×n, row-major) = a·b`; one single-threaded gemm call that writes every value of
/// `dst` (also when k = 0) and reads none.
fn gemm1(dst: &mut [MaybeUninit<f32>], a: Mat, b: Mat) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(k == b.rows && dst.len() == m * n, "dense: product sizes");
    // SAFETY: `dst` holds m·n values; `a` and `b` point into tensors their callers keep alive
    // ([`Mat`]); alpha 0 without reading `dst`: gemm writes every value and reads none.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().cast::<f32>(),
            1,
            n as isize,
            false,
            a.ptr,
            a.cs,
            a.rs,
            b.ptr,
            b.cs,
            b.rs,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// How a product is split: (pieces of the reduction, pieces of the output's rows). Depends on
/// the shape only, so that the result does not depend on the number of threads.
fn split(m: usize, k: usize, n: usize) -> (usize, usize) {
    let macs = m.saturating_mul(k).saturating_mul(n);
    if macs < 2 * SMALL {
        return (1, 1);
    }
    let most = (macs / SMALL).min(4);
    // A long reduction into a small matrix (a weight gradient over many rows): slices of the
    // reduction, each into its own buffer.
    if k >= 2048 && k >= 8 * m.max(n) {
        return ((k / 1024).min(most).max(1), 1);
    }
    // Otherwise pieces of at least 64 rows.
    (1, (m / 64).min(most).max(1))
}

/// `out = a·b` as a new row-major buffer, with `then(rows)` applied to each piece of whole
/// rows once its values are final.
fn product(a: Mat, b: Mat, then: &(dyn Fn(&mut [f32]) + Sync)) -> Vec<f32> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "dense: product of {m}×{k} and {}×{n}", b.rows);
    let (ks, ms) = split(m, k, n);
    written(m * n, |out| {
        if ks == 1 {
            let rows = m.div_ceil(ms).max(1);
            let piece = |(p, o): (usize, &mut [MaybeUninit<f32>])| {
                let lo = p * rows;
                let hi = (lo + rows).min(m);
                gemm1(o, a.rows(lo, hi), b);
                // SAFETY: gemm1 wrote every value of `o`.
                then(unsafe { assume_written(o) });
            };
            if ms == 1 || n == 0 {
                piece((0, out));
            } else {
                out.par_chunks_mut(rows * n).enumerate().for_each(piece);
            }
            return;
        }
        // Slices of the reduction: the first into `out`, the others into their own buffers,
        // then added to `out` in order.
        let len = k.div_ceil(ks);
        let slice = |p: usize| (p * len, ((p + 1) * len).min(k));
        let ((), parts) = rayon::join(
            || {
                let (lo, hi) = slice(0);
                gemm1(out, a.cols(lo, hi), b.rows(lo, hi));
            },
            || {
                (1..ks)
                    .into_par_iter()
                    .map(|p| {
                        let (lo, hi) = slice(p);
                        written(m * n, |o| gemm1(o, a.cols(lo, hi), b.rows(lo, hi)))
                    })
                    .collect::<Vec<Vec<f32>>>()
            },
        );
        // SAFETY: gemm1 wrote every value of `out`.
        let out = unsafe { assume_written(out) };
        let rows = m.div_ceil(4).max(1);
        out.par_chunks_mut(rows * n).enumerate().for_each(|(p, o)| {
            let (at, len) = (p * rows * n, o.len());
            for part in &parts {
                add_to(o, &part[at..at + len]);
            }
            then(o);
        });
    })
}

#[inline(always)]
fn add_to_any(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// Rows of `n` values: each plus `bias` (when not empty), then through the ReLU (when
/// `relu`: burn's, values ≤ 0 become 0, NaN stays). Written as selects so that they vectorize.
#[inline(always)]
fn bias_relu_any(rows: &mut [f32], bias: &[f32], n: usize, relu: bool) {
    for r in rows.chunks_exact_mut(n) {
        match (bias.is_empty(), relu) {
            (false, true) => {
                for (v, b) in r.iter_mut().zip(bias) {
                    let x = *v + b;
                    *v = if x <= 0.0 { 0.0 } else { x };
                }
            }
            (false, false) => {
                for (v, b) in r.iter_mut().zip(bias) {
                    *v += b;
                }
            }
            (true, true) => {
                for v in r.iter_mut() {
                    *v = if *v <= 0.0 { 0.0 } else { *v };
                }
            }
            (true, false) => {}
        }
    }
}

/// The output gradient through the ReLU: `g` where the output `y` is not ≤ 0, else 0.
#[inline(always)]
fn relu_mask_any(o: &mut [MaybeUninit<f32>], g: &[f32], y: &[f32]) {
    for ((o, &g), &y) in o.iter_mut().zip(g).zip(y) {
        o.write(if y <= 0.0 { 0.0 } else { g });
    }
}

/// Column sums of rows of `n` values, added into `sums`.
#[inline(always)]
fn col_sums_any(rows: &[f32], n: usize, sums: &mut [f32]) {
    for r in rows.chunks_exact(n) {
        for (s, v) in sums.iter_mut().zip(r) {
            *s += v;
        }
    }
}

engram_ckpt::avx2_dispatch!(fn add_to(dst: &mut [f32], src: &[f32]) = add_to_any;);
engram_ckpt::avx2_dispatch!(fn bias_relu_rows(rows: &mut [f32], bias: &[f32], n: usize, relu: bool) = bias_relu_any;);
engram_ckpt::avx2_dispatch!(fn relu_mask(o: &mut [MaybeUninit<f32>], g: &[f32], y: &[f32]) = relu_mask_any;);
engram_ckpt::avx2_dispatch!(fn col_sums(rows: &[f32], n: usize, sums: &mut [f32]) = col_sums_any;);

/// The forward pass on flex tensors.
fn forward(x: &FlexTensor, w: &FlexTensor, b: Option<&FlexTensor>, relu: bool) -> FlexTensor {
    let (_xk, xm) = mat(x);
    let (_wk, wm) = mat(w);
    let b = b.map(|b| b.to_contiguous());
    let bias = b.as_ref().map(|b| b.storage::<f32>());
    let n = wm.cols;
    let bias = bias.unwrap_or(&[]);
    let then = |rows: &mut [f32]| {
        if n > 0 && (relu || !bias.is_empty()) {
            bias_relu_rows(rows, bias, n, relu)
        }
    };
    let y = product(xm, wm, &then);
    tensor(y, vec![xm.rows, n])
}

// ---- autodiff ---------------------------------------------------------------------------

/// What the backward pass needs: the input (for the weight's gradient), the weight (for the
/// input's), and the output when there is a ReLU (its mask).
#[derive(Clone, Debug)]
struct Saved {
    x: FlexTensor,
    w: FlexTensor,
    y: Option<FlexTensor>,
}

#[derive(Debug)]
struct DenseBackward;

#[derive(Debug)]
struct DenseBiasBackward;

impl Backward<Flex, 2> for DenseBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 2>, grads: &mut Gradients, _c: &mut Checkpointer) {
        let g = grads.consume::<Flex>(&ops.node);
        let [x, w] = ops.parents.map(|p| p.map(|p| p.id));
        backward(ops.state, g, [x, w, None], grads);
    }
}

impl Backward<Flex, 3> for DenseBiasBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _c: &mut Checkpointer) {
        let g = grads.consume::<Flex>(&ops.node);
        let [x, w, b] = ops.parents.map(|p| p.map(|p| p.id));
        backward(ops.state, g, [x, w, b], grads);
    }
}

/// Gradients of the input, the weight and the bias (those whose parents are tracked).
/// `g`: the output's gradient; the parents' ids where they are tracked.
fn backward(s: Saved, g: FlexTensor, [px, pw, pb]: [Option<NodeId>; 3], grads: &mut Gradients) {
    let g = g.to_contiguous();
    let [m, n] = [g.layout().shape()[0], g.layout().shape()[1]];
    // The output gradient through the ReLU: kept where the output is not ≤ 0.
    let g: FlexTensor = match &s.y {
        None => g,
        Some(y) => {
            let y = y.to_contiguous();
            let (ys, gs) = (y.storage::<f32>(), g.storage::<f32>());
            let masked = written(m * n, |o| {
                let chunk = 1 << 14;
                o.par_chunks_mut(chunk)
                    .zip(gs.par_chunks(chunk).zip(ys.par_chunks(chunk)))
                    .for_each(|(o, (g, y))| relu_mask(o, g, y));
            });
            tensor(masked, vec![m, n])
        }
    };
    let (_gk, gm) = mat(&g);
    if let Some(pb) = pb {
        // Column sums over the rows, in fixed pieces of rows summed in order.
        let gs = g.storage::<f32>();
        let rows = 256;
        let mut db = vec![0.0f32; n];
        if n > 0 {
            let parts: Vec<Vec<f32>> = gs
                .par_chunks(rows * n)
                .map(|c| {
                    let mut s = vec![0.0f32; n];
                    col_sums(c, n, &mut s);
                    s
                })
                .collect();
            for p in parts {
                add_to(&mut db, &p);
            }
        }
        grads.register::<Flex>(pb, tensor(db, vec![n]));
    }
    if let Some(pw) = pw {
        // dW = xᵀ·g
        let (_xk, xm) = mat(&s.x);
        let dw = product(xm.t(), gm, &|_| {});
        grads.register::<Flex>(pw, tensor(dw, vec![xm.cols, n]));
    }
    if let Some(px) = px {
        // dx = g·Wᵀ
        let (_wk, wm) = mat(&s.w);
        let dx = product(gm, wm.t(), &|_| {});
        grads.register::<Flex>(px, tensor(dx, vec![m, wm.rows]));
    }
}

fn dense_ad(x: FlexTensorAd, w: FlexTensorAd, b: Option<FlexTensorAd>, relu: bool) -> FlexTensorAd {
    let (x, nx) = x.into_parts();
    let (w, nw) = w.into_parts();
    match b {
        None => {
            let y = forward(&x, &w, None, relu);
            match DenseBackward
                .prepare::<NoCheckpointing>([nx, nw])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(saved(&x, &w, &y, relu), y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            }
        }
        Some(b) => {
            let (b, nb) = b.into_parts();
            let y = forward(&x, &w, Some(&b), relu);
            match DenseBiasBackward
                .prepare::<NoCheckpointing>([nx, nw, nb])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(saved(&x, &w, &y, relu), y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            }
        }
    }
}

type FlexTensorAd = burn::backend::tensor::FloatTensor<AdFlex>;

/// The state to keep (shared storage, no copies).
fn saved(x: &FlexTensor, w: &FlexTensor, y: &FlexTensor, relu: bool) -> Saved {
    Saved {
        x: x.clone(),
        w: w.clone(),
        y: relu.then(|| y.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn rel_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        let scale = b.clone().abs().max().into_scalar::<f32>().max(1.0);
        (a - b).abs().max().into_scalar::<f32>() / scale
    }

    /// Forward values and the gradients of the input, the weight and the bias against burn's
    /// operations, for shapes that take each way of splitting the products (one piece; pieces
    /// of rows; slices of the reduction, which the weight's gradient over 4096 rows takes),
    /// with and without bias and ReLU, a weight given as a transposed view, and an input that
    /// needs no gradient.
    #[test]
    fn dense_equals_burn_operations_forward_and_gradients() {
        let d = Device::flex();
        let _rng = crate::backend::seeded(&d, 9);
        let ad = d.clone().autodiff();
        // (rows, in, out): one piece; pieces of rows (forward and input gradient); slices of
        // the reduction (weight gradient: 40×4096×24).
        for (m, k, n) in [(5, 7, 3), (256, 128, 96), (4096, 40, 24)] {
            assert_eq!(split(5, 7, 3), (1, 1));
            for (bias, relu, transposed, x_grad) in [
                (true, true, false, true),
                (false, false, true, true),
                (true, false, false, false),
                (false, true, true, false),
            ] {
                let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &ad);
                let x = if x_grad { x.require_grad() } else { x };
                let w = if transposed {
                    Tensor::<2>::random([n, k], Distribution::Normal(0.0, 0.3), &ad).require_grad()
                } else {
                    Tensor::<2>::random([k, n], Distribution::Normal(0.0, 0.3), &ad).require_grad()
                };
                // One view per graph: a backward pass consumes the nodes it goes through.
                let wv = || {
                    if transposed {
                        w.clone().transpose()
                    } else {
                        w.clone()
                    }
                };
                let b = bias.then(|| {
                    Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &ad).require_grad()
                });
                let r = Tensor::<2>::random([m, n], Distribution::Normal(0.0, 1.0), &ad);
                let ours = dense(x.clone(), wv(), b.clone(), relu);
                let theirs = burn_ops(x.clone(), wv(), b.clone(), relu);
                let what = format!("{m}×{k}×{n} bias {bias} relu {relu} transposed {transposed}");
                assert!(rel_diff(ours.clone(), theirs.clone()) < 1e-5, "{what}");
                let (ga, gb) = (
                    (ours * r.clone()).sum().backward(),
                    (theirs * r).sum().backward(),
                );
                let pairs = [
                    (x.grad(&ga), x.grad(&gb), "x"),
                    (w.grad(&ga), w.grad(&gb), "w"),
                ];
                for (u, v, name) in pairs {
                    match (u, v) {
                        (Some(u), Some(v)) => assert!(rel_diff(u, v) < 1e-5, "{what}: {name}"),
                        (None, None) => assert!(name == "x" && !x_grad, "{what}: {name}"),
                        _ => panic!("{what}: gradient of {name} on one side only"),
                    }
                }
                if let Some(b) = &b {
                    let (u, v) = (b.grad(&ga).unwrap(), b.grad(&gb).unwrap());
                    assert!(rel_diff(u, v) < 1e-5, "{what}: bias");
                }
            }
        }
        assert_eq!(split(256, 128, 96), (1, 3));
        assert_eq!(split(40, 4096, 24), (3, 1));
    }

    /// Without autodiff (evaluation), the same values as burn's operations; through a
    /// `Linear`, the same as `Linear::forward`.
    #[test]
    fn flex_path_and_linear_equal_burn() {
        let d = Device::flex();
        let _rng = crate::backend::seeded(&d, 4);
        let x = Tensor::<2>::random([300, 50], Distribution::Normal(0.0, 1.0), &d);
        let l = burn::nn::LinearConfig::new(50, 70).init(&d);
        let w = l.weight.val();
        let b = l.bias.as_ref().map(|b| b.val());
        for relu in [false, true] {
            let ours = dense(x.clone(), w.clone(), b.clone(), relu);
            assert!(rel_diff(ours, burn_ops(x.clone(), w.clone(), b.clone(), relu)) < 1e-5);
        }
        assert!(rel_diff(linear(&l, x.clone(), false), l.forward(x)) < 1e-5);
    }

    /// The bits of a product do not depend on the number of threads (the pieces depend on the
    /// shape only), and repeat.
    #[test]
    fn products_do_not_depend_on_the_thread_count() {
        let d = Device::flex();
        let _rng = crate::backend::seeded(&d, 2);
        let ad = d.autodiff();
        let x = Tensor::<2>::random([4096, 33], Distribution::Normal(0.0, 1.0), &ad);
        let w = Tensor::<2>::random([33, 20], Distribution::Normal(0.0, 1.0), &ad).require_grad();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let y = dense(x.clone(), w.clone(), None, true);
                let g = y.clone().sum().backward();
                let gw = w.grad(&g).unwrap();
                (crate::backend::host(y), crate::backend::host(gw))
            })
        };
        let one = run(1);
        for threads in [1, 2, 3] {
            let other = run(threads);
            let same = |a: &[f32], b: &[f32]| {
                a.len() == b.len() && a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits())
            };
            assert!(
                same(&one.0, &other.0) && same(&one.1, &other.1),
                "{threads} threads"
            );
        }
    }
}
