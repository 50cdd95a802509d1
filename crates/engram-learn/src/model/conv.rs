//! engram's own 2-D convolution and 2×2 max-pooling for the small CNN.
//!
//! Why this file exists: on the `flex` CPU backend, burn 0.22's `Conv2d` and `MaxPool2d` made
//! one training epoch of the Fashion-MNIST CNN several times slower than PyTorch's on the same
//! threads (B4 in BENCHMARKS.md). Measured per layer (`examples/cnn_probe.rs`):
//! the 32→64 convolution's backward pass (a transposed convolution for the input gradient and
//! a convolution for the weight gradient) and the max-pool's forward pass (a scalar loop with
//! per-element window bounds) took most of the step, while burn's matrix product is at parity
//! with PyTorch's. Compositions of burn tensor ops (shifted slices stacked into columns,
//! reshape + `max_dim` pooling) were no faster: their backward passes are chains of full-size
//! zero fills, slice assignments and scatters.
//!
//! So each convolution here is im2col + one matrix product: a small kernel copies the k×k
//! windows of the input into rows (plus a column of ones, so that the bias is a row of the same
//! product), and engram's dense product (dense.rs, gemm in fixed pieces on rayon's pool) does
//! the arithmetic and its gradients. The two data movements have hand-written gradients too:
//! im2col's is col2im (the windows summed back), and the fused ReLU + 2×2 max-pool's sends
//! each output gradient to the input that won its window.
//! Activations stay channels-last (NHWC) between layers, so that every window row is one
//! contiguous copy; [`Conv::forward`] also takes and returns NCHW like burn's `Conv2d`.
//!
//! The kernels run on `flex` f32 tensors, with or without autodiff (`Autodiff<Flex>`, the
//! default checkpointing). Any other backend or dtype takes a fallback made of burn tensor ops
//! (slices and `max_pool2d`): slower, same results. `Conv` has `Conv2d`'s parameters, with the
//! same names, shapes and initialisation (`weight` [out, in, k, k], `bias` [out]), so
//! checkpoints and engram's weight-space commands see the same tensors.

use crate::Result;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::{FlexTensor, Layout as FlexLayout};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Flex};
use burn::module::Param;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::MaxPool2dConfig;
use burn::prelude::*;
use burn::tensor::{Bytes, DType};
use rayon::prelude::*;
use std::sync::Arc;

type AdFlex = Autodiff<Flex, NoCheckpointing>;

/// A k×k convolution, stride 1, no padding, with bias: burn's `Conv2d` parameters, engram's
/// computation (see the module comment).
#[derive(Module, Debug)]
pub struct Conv {
    /// [out, in, k, k]
    pub weight: Param<Tensor<4>>,
    /// [out]
    pub bias: Option<Param<Tensor<1>>>,
}

/// How an image batch is laid out in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// [batch, channels, height, width] (burn's and PyTorch's convention).
    Nchw,
    /// [batch, height, width, channels].
    Nhwc,
}

impl Conv {
    /// `channels` = [in, out]; a `kernel`×`kernel` window. Initialised exactly as
    /// `Conv2dConfig::new(channels, [kernel, kernel]).init(device)`.
    pub fn new(channels: [usize; 2], kernel: usize, device: &Device) -> Conv {
        Conv::from_conv2d(Conv2dConfig::new(channels, [kernel, kernel]).init(device))
    }

    /// Takes over a burn `Conv2d`'s parameters. Only stride 1, no padding, no dilation, one
    /// group and a square kernel are what this module computes; other settings are refused.
    pub fn try_from_conv2d(c: Conv2d) -> Result<Conv> {
        let [_, _, kh, kw] = c.weight.dims();
        if kh != kw
            || c.stride != [1, 1]
            || c.dilation != [1, 1]
            || c.groups != 1
            || !matches!(c.padding, PaddingConfig2d::Valid)
        {
            return Err("engram's Conv computes square kernels, stride 1, no padding, no dilation, one group".into());
        }
        Ok(Conv {
            weight: c.weight,
            bias: c.bias,
        })
    }

    fn from_conv2d(c: Conv2d) -> Conv {
        Conv {
            weight: c.weight,
            bias: c.bias,
        }
    }

    /// Kernel side.
    pub fn kernel(&self) -> usize {
        self.weight.dims()[2]
    }

    /// [out, in]
    pub fn channels(&self) -> [usize; 2] {
        let [o, i, _, _] = self.weight.dims();
        [i, o]
    }

    /// NCHW in, NCHW out, like `Conv2d::forward`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_layout(x, Layout::Nchw).permute([0, 3, 1, 2])
    }

    /// NHWC in, NHWC out: the layout the CNN keeps between layers.
    pub fn forward_nhwc(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_layout(x, Layout::Nhwc)
    }

    /// Input in `layout`; output [batch, out_h, out_w, out] (NHWC).
    fn forward_layout(&self, x: Tensor<4>, layout: Layout) -> Tensor<4> {
        let dims = x.dims();
        let (b, h, w) = match layout {
            Layout::Nchw => (dims[0], dims[2], dims[3]),
            Layout::Nhwc => (dims[0], dims[1], dims[2]),
        };
        let k = self.kernel();
        let [_, o] = self.channels();
        let cols = im2col(x, k, layout);
        let (ho, wo) = (h + 1 - k, w + 1 - k);
        super::dense::dense(cols, self.weight_matrix(layout).transpose(), None, false)
            .reshape([b, ho, wo, o])
    }

    /// [out, k·k·in + 1]: the kernel flattened in the column order of `im2col` for `layout`,
    /// then the bias.
    fn weight_matrix(&self, layout: Layout) -> Tensor<2> {
        let [o, c, k, _] = self.weight.dims();
        let w = self.weight.val();
        let w: Tensor<2> = match layout {
            Layout::Nchw => w.reshape([o, c * k * k]),
            Layout::Nhwc => w.permute([0, 2, 3, 1]).reshape([o, k * k * c]),
        };
        let b = match &self.bias {
            Some(b) => b.val(),
            None => Tensor::zeros([o], &w.device()),
        };
        Tensor::cat(vec![w, b.reshape([o, 1])], 1)
    }
}

/// The shape of one im2col: input [b, c, h, w] in `layout`, k×k windows.
#[derive(Clone, Copy, Debug)]
struct Geo {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    layout: Layout,
}

impl Geo {
    fn new(dims: [usize; 4], k: usize, layout: Layout) -> Geo {
        let [b, d1, d2, d3] = dims;
        let (c, h, w) = match layout {
            Layout::Nchw => (d1, d2, d3),
            Layout::Nhwc => (d3, d1, d2),
        };
        Geo {
            b,
            c,
            h,
            w,
            k,
            layout,
        }
    }
    fn ho(&self) -> usize {
        self.h + 1 - self.k
    }
    fn wo(&self) -> usize {
        self.w + 1 - self.k
    }
    /// Columns: k·k·c values, then a one.
    fn width(&self) -> usize {
        self.k * self.k * self.c + 1
    }
    fn rows(&self) -> usize {
        self.b * self.ho() * self.wo()
    }
    fn in_dims(&self) -> Vec<usize> {
        match self.layout {
            Layout::Nchw => vec![self.b, self.c, self.h, self.w],
            Layout::Nhwc => vec![self.b, self.h, self.w, self.c],
        }
    }
}

/// The k×k windows of `x` as rows: [b·out_h·out_w, k·k·c + 1], rows in (b, y, x) order, each
/// row the window in (ky, kx, c) order for NHWC input or (c, ky, kx) for NCHW, then a one.
pub fn im2col(x: Tensor<4>, k: usize, layout: Layout) -> Tensor<2> {
    let g = Geo::new(x.dims(), k, layout);
    assert!(
        k >= 1 && g.h >= k && g.w >= k,
        "im2col: {k}×{k} windows do not fit in {}×{}",
        g.h,
        g.w
    );
    if x.dtype() == DType::F32 {
        if let Ok(t) = x.clone().try_into_primitive::<AdFlex>() {
            return Tensor::from_primitive::<AdFlex>(im2col_ad(t, g));
        }
        if let Ok(t) = x.clone().try_into_primitive::<Flex>() {
            return Tensor::from_primitive::<Flex>(im2col_flex(&t, &g));
        }
    }
    im2col_ops(x, g)
}

/// ReLU then 2×2 max-pooling (stride 2, a trailing odd row or column dropped), NHWC in and out.
/// Equal to max-pooling after ReLU, with the gradient sent to the window's maximum when it is
/// positive.
pub fn relu_max_pool2_nhwc(x: Tensor<4>) -> Tensor<4> {
    let [_, h, w, _] = x.dims();
    assert!(
        h >= 2 && w >= 2,
        "relu_max_pool2_nhwc: a {h}×{w} image has no 2×2 window"
    );
    if x.dtype() == DType::F32 {
        if let Ok(t) = x.clone().try_into_primitive::<AdFlex>() {
            return Tensor::from_primitive::<AdFlex>(pool_ad(t));
        }
        if let Ok(t) = x.clone().try_into_primitive::<Flex>() {
            return Tensor::from_primitive::<Flex>(pool_flex(&t).0);
        }
    }
    pool_ops(x)
}

// ---- kernels on flex f32 tensors -------------------------------------------------------------
//
// Each kernel works image by image, the images in parallel on rayon's pool (burn's own threads).

/// A zeroed contiguous f32 tensor. Built from a `Vec<f32>`: `FlexTensor::zeros` allocates bytes
/// and then copies them into an aligned buffer, a second pass over the memory.
fn f32_tensor(dims: Vec<usize>) -> FlexTensor {
    let n = dims.iter().product();
    FlexTensor::new(
        Bytes::from_elems(vec![0.0f32; n]),
        FlexLayout::contiguous(Shape::from(dims)),
        DType::F32,
    )
}

/// `dst = src` for runs of `R` values (`R` = 0: any length). A fixed length compiles to a few
/// moves instead of a call to `memcpy`, which matters for the first layer's 3-value runs.
#[inline(always)]
fn copy_run<const R: usize>(dst: &mut [f32], src: &[f32]) {
    // A constant-length copy is inlined.
    let n = if R == 0 { dst.len() } else { R };
    dst[..n].copy_from_slice(&src[..n]);
}

/// `dst += src`, as [`copy_run`].
#[inline(always)]
fn add_run<const R: usize>(dst: &mut [f32], src: &[f32]) {
    let n = if R == 0 { dst.len() } else { R };
    for (d, s) in dst[..n].iter_mut().zip(&src[..n]) {
        *d += s;
    }
}

fn im2col_flex(x: &FlexTensor, g: &Geo) -> FlexTensor {
    let x = x.to_contiguous();
    let xs: &[f32] = x.storage();
    let mut out = f32_tensor(vec![g.rows(), g.width()]);
    let os: &mut [f32] = out.storage_mut();
    let per_in = g.c * g.h * g.w;
    let per_out = g.ho() * g.wo() * g.width();
    let one = |(bi, ob): (usize, &mut [f32])| {
        let xb = &xs[bi * per_in..(bi + 1) * per_in];
        match (g.layout, g.k * g.c) {
            (Layout::Nhwc, 3) => im2col_nhwc::<3>(xb, ob, g),
            (Layout::Nhwc, _) => im2col_nhwc::<0>(xb, ob, g),
            (Layout::Nchw, _) if g.k == 3 => im2col_nchw::<3>(xb, ob, g),
            (Layout::Nchw, _) => im2col_nchw::<0>(xb, ob, g),
        }
    };
    os.par_chunks_mut(per_out).enumerate().for_each(one);
    out
}

/// One NHWC image: window row `ky` of output (y, x) is `k·c` contiguous inputs (`R` of them,
/// when `R` > 0).
#[inline(never)]
fn im2col_nhwc<const R: usize>(xb: &[f32], ob: &mut [f32], g: &Geo) {
    let (c, w, k, wo, width) = (g.c, g.w, g.k, g.wo(), g.width());
    let run = k * c;
    for (r, row) in ob.chunks_exact_mut(width).enumerate() {
        let (y, x0) = (r / wo, r % wo);
        for ky in 0..k {
            let src = ((y + ky) * w + x0) * c;
            copy_run::<R>(&mut row[ky * run..(ky + 1) * run], &xb[src..src + run]);
        }
        row[width - 1] = 1.0;
    }
}

/// One NCHW image, columns in (c, ky, kx) order (`R` = k when > 0).
#[inline(never)]
fn im2col_nchw<const R: usize>(xb: &[f32], ob: &mut [f32], g: &Geo) {
    let (c, h, w, k, wo, width) = (g.c, g.h, g.w, g.k, g.wo(), g.width());
    for (r, row) in ob.chunks_exact_mut(width).enumerate() {
        let (y, x0) = (r / wo, r % wo);
        for ch in 0..c {
            for ky in 0..k {
                let src = (ch * h + y + ky) * w + x0;
                let dst = (ch * k + ky) * k;
                copy_run::<R>(&mut row[dst..dst + k], &xb[src..src + k]);
            }
        }
        row[width - 1] = 1.0;
    }
}

/// The adjoint of im2col: each window's gradient added back to the inputs it came from.
fn col2im_flex(grad: &FlexTensor, g: &Geo) -> FlexTensor {
    let grad = grad.to_contiguous();
    let gs: &[f32] = grad.storage();
    let mut out = f32_tensor(g.in_dims());
    let os: &mut [f32] = out.storage_mut();
    let per_out = g.ho() * g.wo() * g.width();
    let one = |(bi, xb): (usize, &mut [f32])| {
        let gb = &gs[bi * per_out..(bi + 1) * per_out];
        match (g.layout, g.k * g.c) {
            (Layout::Nhwc, 3) => col2im_nhwc::<3>(gb, xb, g),
            (Layout::Nhwc, _) => col2im_nhwc::<0>(gb, xb, g),
            (Layout::Nchw, _) if g.k == 3 => col2im_nchw::<3>(gb, xb, g),
            (Layout::Nchw, _) => col2im_nchw::<0>(gb, xb, g),
        }
    };
    os.par_chunks_mut(g.c * g.h * g.w).enumerate().for_each(one);
    out
}

#[inline(never)]
fn col2im_nhwc<const R: usize>(gb: &[f32], xb: &mut [f32], g: &Geo) {
    let (c, w, k, wo, width) = (g.c, g.w, g.k, g.wo(), g.width());
    let run = k * c;
    for (r, row) in gb.chunks_exact(width).enumerate() {
        let (y, x0) = (r / wo, r % wo);
        for ky in 0..k {
            let dst = ((y + ky) * w + x0) * c;
            add_run::<R>(&mut xb[dst..dst + run], &row[ky * run..(ky + 1) * run]);
        }
    }
}

#[inline(never)]
fn col2im_nchw<const R: usize>(gb: &[f32], xb: &mut [f32], g: &Geo) {
    let (c, h, w, k, wo, width) = (g.c, g.h, g.w, g.k, g.wo(), g.width());
    for (r, row) in gb.chunks_exact(width).enumerate() {
        let (y, x0) = (r / wo, r % wo);
        for ch in 0..c {
            for ky in 0..k {
                let dst = (ch * h + y + ky) * w + x0;
                let src = (ch * k + ky) * k;
                add_run::<R>(&mut xb[dst..dst + k], &row[src..src + k]);
            }
        }
    }
}

/// Which input of each 2×2 window won (0..4 in (dy, dx) order), or `CLIPPED` when the maximum
/// was not positive (the ReLU passes no gradient).
const CLIPPED: u8 = 4;

/// Offsets of a 2×2 window's four inputs in an NHWC image (channel 0), for output (y, x).
#[inline(always)]
fn window(y: usize, x: usize, w: usize, c: usize) -> [usize; 4] {
    let top = ((2 * y) * w + 2 * x) * c;
    let bottom = top + w * c;
    [top, top + c, bottom, bottom + c]
}

/// Forward of the fused ReLU + max-pool on NHWC input: the output and the winners.
fn pool_flex(x: &FlexTensor) -> (FlexTensor, Vec<u8>) {
    let x = x.to_contiguous();
    let xs: &[f32] = x.storage();
    let dims = x.layout().shape().to_vec();
    let (b, h, w, c) = (dims[0], dims[1], dims[2], dims[3]);
    let per_out = (h / 2) * (w / 2) * c;
    let mut out = f32_tensor(vec![b, h / 2, w / 2, c]);
    let mut idx = vec![0u8; b * per_out];
    let os: &mut [f32] = out.storage_mut();
    os.par_chunks_mut(per_out)
        .zip(idx.par_chunks_mut(per_out))
        .enumerate()
        .for_each(|(bi, (ob, ib))| {
            pool_one(&xs[bi * h * w * c..(bi + 1) * h * w * c], ob, ib, [h, w, c])
        });
    (out, idx)
}

#[inline(never)]
fn pool_one(xb: &[f32], ob: &mut [f32], ib: &mut [u8], [h, w, c]: [usize; 3]) {
    let wo = w / 2;
    for y in 0..h / 2 {
        for x0 in 0..wo {
            let o = (y * wo + x0) * c;
            let p = window(y, x0, w, c);
            let (ob, ib) = (&mut ob[o..o + c], &mut ib[o..o + c]);
            let (q0, q1, q2, q3) = (
                &xb[p[0]..p[0] + c],
                &xb[p[1]..p[1] + c],
                &xb[p[2]..p[2] + c],
                &xb[p[3]..p[3] + c],
            );
            for ch in 0..c {
                // The first maximum wins; NaN wins, as in burn's max-pool.
                let (mut m, mut at) = (q0[ch], 0u8);
                for (v, q) in [(q1[ch], 1u8), (q2[ch], 2), (q3[ch], 3)] {
                    if v > m || v.is_nan() {
                        (m, at) = (v, q);
                    }
                }
                let keep = m > 0.0 || m.is_nan();
                ob[ch] = if keep { m } else { 0.0 };
                ib[ch] = if keep { at } else { CLIPPED };
            }
        }
    }
}

/// Backward of the fused ReLU + max-pool: each output gradient to its window's winner.
fn unpool_flex(grad: &FlexTensor, idx: &[u8], in_dims: [usize; 4]) -> FlexTensor {
    let grad = grad.to_contiguous();
    let gs: &[f32] = grad.storage();
    let [b, h, w, c] = in_dims;
    let per = (h / 2) * (w / 2) * c;
    let mut out = f32_tensor(vec![b, h, w, c]);
    let os: &mut [f32] = out.storage_mut();
    os.par_chunks_mut(h * w * c)
        .enumerate()
        .for_each(|(bi, xb)| {
            unpool_one(
                &gs[bi * per..(bi + 1) * per],
                &idx[bi * per..(bi + 1) * per],
                xb,
                [h, w, c],
            )
        });
    out
}

#[inline(never)]
fn unpool_one(gb: &[f32], ib: &[u8], xb: &mut [f32], [h, w, c]: [usize; 3]) {
    let wo = w / 2;
    for y in 0..h / 2 {
        for x0 in 0..wo {
            let o = (y * wo + x0) * c;
            let p = window(y, x0, w, c);
            for ch in 0..c {
                let at = ib[o + ch];
                if at != CLIPPED {
                    xb[p[at as usize] + ch] = gb[o + ch];
                }
            }
        }
    }
}

// ---- the same kernels as autodiff operations -------------------------------------------------

#[derive(Debug)]
struct Im2colBackward;

impl Backward<Flex, 1> for Im2colBackward {
    type State = Geo;

    fn backward(self, ops: Ops<Geo, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let g = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| col2im_flex(&grad, &g));
    }
}

fn im2col_ad(x: FloatTensor<AdFlex>, g: Geo) -> FloatTensor<AdFlex> {
    let (x, node) = x.into_parts();
    let out = im2col_flex(&x, &g);
    match Im2colBackward
        .prepare::<NoCheckpointing>([node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(g, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

#[derive(Debug)]
struct PoolBackward;

impl Backward<Flex, 1> for PoolBackward {
    /// The winners and the input's dims.
    type State = (Arc<Vec<u8>>, [usize; 4]);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (idx, dims) = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            unpool_flex(&grad, &idx, dims)
        });
    }
}

fn pool_ad(x: FloatTensor<AdFlex>) -> FloatTensor<AdFlex> {
    let (x, node) = x.into_parts();
    let d = x.layout().shape().to_vec();
    let dims = [d[0], d[1], d[2], d[3]];
    let (out, idx) = pool_flex(&x);
    match PoolBackward
        .prepare::<NoCheckpointing>([node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((Arc::new(idx), dims), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

// ---- fallbacks from burn tensor ops (any backend, any float dtype) ---------------------------

fn im2col_ops(x: Tensor<4>, g: Geo) -> Tensor<2> {
    let (b, c, k, ho, wo) = (g.b, g.c, g.k, g.ho(), g.wo());
    let mut parts = Vec::with_capacity(k * k);
    for ky in 0..k {
        for kx in 0..k {
            parts.push(match g.layout {
                Layout::Nhwc => x.clone().slice([0..b, ky..ky + ho, kx..kx + wo, 0..c]),
                Layout::Nchw => x.clone().slice([0..b, 0..c, ky..ky + ho, kx..kx + wo]),
            });
        }
    }
    let cols: Tensor<2> = match g.layout {
        // [b, ho, wo, k·k, c]
        Layout::Nhwc => Tensor::stack::<5>(parts, 3).reshape([g.rows(), k * k * c]),
        // [b, c, k·k, ho, wo] -> [b, ho, wo, c, k·k]
        Layout::Nchw => Tensor::stack::<5>(parts, 2)
            .permute([0, 3, 4, 1, 2])
            .reshape([g.rows(), c * k * k]),
    };
    let ones = cols.clone().slice([0..g.rows(), 0..1]).ones_like();
    Tensor::cat(vec![cols, ones], 1)
}

fn pool_ops(x: Tensor<4>) -> Tensor<4> {
    let nchw = burn::tensor::activation::relu(x.permute([0, 3, 1, 2]));
    MaxPool2dConfig::new([2, 2])
        .init()
        .forward(nchw)
        .permute([0, 2, 3, 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    /// A seeded autodiff device and the RNG guard the test holds while it draws.
    fn ad() -> (Device, crate::backend::RngGuard) {
        let d = Device::flex();
        let g = crate::backend::seeded(&d, 7);
        (d.autodiff(), g)
    }

    /// Forward and all gradients of `Conv` (NCHW and NHWC entry points, and the fallback)
    /// against burn's `Conv2d` with the same parameters.
    #[test]
    fn conv_equals_burn_conv2d_forward_and_gradients() {
        let (d, _rng) = ad();
        for (c, o, k, h, w) in [
            (1, 4, 3, 9, 8),
            (3, 5, 3, 7, 10),
            (2, 3, 2, 5, 5),
            (4, 2, 1, 3, 4),
        ] {
            let reference = Conv2dConfig::new([c, o], [k, k]).init(&d);
            let conv = Conv::from_conv2d(reference.clone());
            let x = Tensor::<4>::random([3, c, h, w], Distribution::Normal(0.0, 1.0), &d)
                .require_grad();
            let r = Tensor::<4>::random(
                [3, o, h + 1 - k, w + 1 - k],
                Distribution::Normal(0.0, 1.0),
                &d,
            );

            let want = reference.forward(x.clone());
            let gw = (want.clone() * r.clone()).sum().backward();
            let wx = x.grad(&gw);
            let ww = reference.weight.val().grad(&gw);
            let wb = reference.bias.as_ref().and_then(|b| b.val().grad(&gw));

            type Fwd<'a> = Box<dyn Fn(Tensor<4>) -> Tensor<4> + 'a>;
            let ways: [(&str, Fwd); 3] = [
                ("nchw", Box::new(|x| conv.forward(x))),
                (
                    "nhwc",
                    Box::new(|x: Tensor<4>| {
                        conv.forward_nhwc(x.permute([0, 2, 3, 1]))
                            .permute([0, 3, 1, 2])
                    }),
                ),
                (
                    "fallback",
                    Box::new(|x: Tensor<4>| {
                        let g = Geo::new(x.dims(), k, Layout::Nchw);
                        let y =
                            im2col_ops(x, g).matmul(conv.weight_matrix(Layout::Nchw).transpose());
                        y.reshape([3, h + 1 - k, w + 1 - k, o])
                            .permute([0, 3, 1, 2])
                    }),
                ),
            ];
            for (name, f) in ways {
                let got = f(x.clone());
                assert_eq!(got.dims(), want.dims(), "{name}");
                let e = max_diff(got.clone(), want.clone());
                assert!(e < 1e-4, "{name} c{c} o{o} k{k}: forward differs by {e}");
                let g = (got * r.clone()).sum().backward();
                let pairs = [
                    ("x", x.grad(&g), wx.clone()),
                    ("weight", conv.weight.val().grad(&g), ww.clone()),
                ];
                for (what, a, b) in pairs {
                    let (Some(a), Some(b)) = (a, b) else {
                        panic!("{name}: no gradient for {what}")
                    };
                    let e = max_diff(a, b);
                    assert!(
                        e < 1e-3,
                        "{name} c{c} o{o} k{k}: gradient of {what} differs by {e}"
                    );
                }
                let gb = conv.bias.as_ref().and_then(|b| b.val().grad(&g));
                let (Some(a), Some(b)) = (gb, wb.clone()) else {
                    panic!("{name}: no bias gradient")
                };
                assert!(max_diff(a, b) < 1e-3, "{name}: bias gradient differs");
            }
        }
    }

    /// Without autodiff (evaluation), the plain flex kernels give the same output.
    #[test]
    fn conv_without_autodiff_matches() {
        let d = Device::flex();
        let _rng = crate::backend::seeded(&d, 3);
        let reference = Conv2dConfig::new([3, 6], [3, 3]).init(&d);
        let conv = Conv::from_conv2d(reference.clone());
        let x = Tensor::<4>::random([2, 3, 8, 6], Distribution::Normal(0.0, 1.0), &d);
        assert!(max_diff(conv.forward(x.clone()), reference.forward(x.clone())) < 1e-4);
        let nhwc = conv
            .forward_nhwc(x.clone().permute([0, 2, 3, 1]))
            .permute([0, 3, 1, 2]);
        assert!(max_diff(nhwc, reference.forward(x)) < 1e-4);
    }

    #[test]
    fn relu_max_pool_equals_burn_forward_and_gradient() {
        let (d, _rng) = ad();
        let pool = MaxPool2dConfig::new([2, 2]).init();
        for (h, w) in [(26, 26), (11, 11), (4, 7), (2, 2)] {
            let x = Tensor::<4>::random([2, 3, h, w], Distribution::Normal(0.0, 1.0), &d)
                .require_grad();
            let r = Tensor::<4>::random([2, 3, h / 2, w / 2], Distribution::Normal(0.0, 1.0), &d);
            let want = pool.forward(burn::tensor::activation::relu(x.clone()));
            let gw = (want.clone() * r.clone()).sum().backward();
            let Some(wx) = x.grad(&gw) else {
                panic!("no reference gradient")
            };
            for fallback in [false, true] {
                let xn = x.clone().permute([0, 2, 3, 1]);
                let got = if fallback {
                    pool_ops(xn)
                } else {
                    relu_max_pool2_nhwc(xn)
                }
                .permute([0, 3, 1, 2]);
                assert!(
                    max_diff(got.clone(), want.clone()) < 1e-6,
                    "{h}×{w} fallback={fallback}: forward"
                );
                let g = (got * r.clone()).sum().backward();
                let Some(gx) = x.grad(&g) else {
                    panic!("no gradient")
                };
                assert!(
                    max_diff(gx, wx.clone()) < 1e-6,
                    "{h}×{w} fallback={fallback}: gradient"
                );
            }
            let plain = relu_max_pool2_nhwc(x.clone().inner().permute([0, 2, 3, 1]));
            assert!(max_diff(plain.permute([0, 3, 1, 2]), want.inner()) < 1e-6);
        }
    }

    #[test]
    fn im2col_rows_are_windows_then_one() {
        let d = Device::flex();
        // One image 1×3×3 holding 0..9: the four 2×2 windows.
        let x = Tensor::<4>::from_data(
            TensorData::new((0..9).map(|v| v as f32).collect::<Vec<_>>(), [1, 1, 3, 3]),
            &d,
        );
        let cols = im2col(x, 2, Layout::Nchw).into_data().try_into_vec::<f32>();
        let want = [
            0., 1., 3., 4., 1., 1., 2., 4., 5., 1., 3., 4., 6., 7., 1., 4., 5., 7., 8., 1.,
        ];
        assert_eq!(cols.ok().as_deref(), Some(&want[..]));
    }

    /// The kernels, not the fallback, run on flex f32 tensors with and without autodiff.
    #[test]
    fn flex_tensors_take_the_kernels() {
        let x = Tensor::<4>::zeros([1, 2, 3, 4], &Device::flex());
        assert!(x.clone().try_into_primitive::<Flex>().is_ok());
        let x = Tensor::<4>::zeros([1, 2, 3, 4], &Device::flex().autodiff()).require_grad();
        assert!(x.try_into_primitive::<AdFlex>().is_ok());
    }

    #[test]
    fn refuses_what_it_does_not_compute() {
        let d = Device::flex();
        let strided = Conv2dConfig::new([1, 2], [3, 3])
            .with_stride([2, 2])
            .init(&d);
        assert!(Conv::try_from_conv2d(strided).is_err());
        let plain = Conv2dConfig::new([1, 2], [3, 3]).init(&d);
        assert!(Conv::try_from_conv2d(plain).is_ok());
    }
}
