//! A tiny patch transformer with engram's own attention, for quantization-aware training
//! (OFQ, arXiv 2302.02210, nbasyl/OFQ). Card: shared/methods/quantization.md ("OFQ").
//!
//! The shape of `model/vit.rs` (linear patch embedding, learned position embeddings, pre-norm
//! blocks, mean pooling, LayerNorm, linear head), written out instead of burn's encoder so that
//! every block linear can be quantized and the query-key product reparametrized (QKR cannot
//! live inside a stock encoder). Each block is
//! `x + proj(attention(norm1(x)))`, then `x + fc2(gelu(fc1(norm2(x))))`.
//!
//! Parameters are named `blocks.{i}.attn.{q,k,v,proj}.weight` and
//! `blocks.{i}.mlp.{fc1,fc2}.weight` (with `.bias`, and `.scale` when a learned quantizer
//! scale is attached); [`Layer::of_param`] recovers the layer type from a name. Weights are
//! laid out as burn's `Linear` keeps them, `[in, out]`: an output channel (a row of PyTorch's
//! `[out, in]` weight) is a column here.
//!
//! The query and key projections have no bias, as in the reference's QKR attention: then
//! `(x·W_q)(x·W_k)ᵀ = x·(W_q·W_kᵀ)·xᵀ` exactly, and a model trained without QKR can be
//! reparametrized without changing its function.
//!
//! The model knows nothing of quantization: a forward pass takes a [`Weights`] value that says
//! what each block linear multiplies with (the float weights, or a quantizer's output) and
//! may compute the attention logits from the query and key weights directly (QKR). The
//! quantizers live in `crate::qat`, above the models.

use burn::module::Param;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::{gelu, softmax};

/// The block linears a transformer block holds, and `Qk`: the reparametrized query-key
/// product of QKR (no parameter of its own; computed from `q` and `k`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Layer {
    Q,
    K,
    V,
    Proj,
    Fc1,
    Fc2,
    Qk,
}

impl Layer {
    /// The six block linears (every layer that has a weight of its own).
    pub const LINEARS: [Layer; 6] = [
        Layer::Q,
        Layer::K,
        Layer::V,
        Layer::Proj,
        Layer::Fc1,
        Layer::Fc2,
    ];

    /// `q`, `k`, `v`, `proj`, `fc1`, `fc2` or `qk`.
    pub fn name(self) -> &'static str {
        match self {
            Layer::Q => "q",
            Layer::K => "k",
            Layer::V => "v",
            Layer::Proj => "proj",
            Layer::Fc1 => "fc1",
            Layer::Fc2 => "fc2",
            Layer::Qk => "qk",
        }
    }

    /// The layer type of a block parameter (`blocks.0.attn.q.weight` → `Q`); `None` for the
    /// parameters outside the block linears (patch embedding, norms, head).
    pub fn of_param(name: &str) -> Option<Layer> {
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() != 5 || parts[0] != "blocks" {
            return None;
        }
        let layer = Layer::LINEARS.into_iter().find(|l| l.name() == parts[3])?;
        let group = if matches!(layer, Layer::Fc1 | Layer::Fc2) {
            "mlp"
        } else {
            "attn"
        };
        (parts[2] == group).then_some(layer)
    }
}

/// What a forward pass multiplies with (see the module comment).
pub trait Weights {
    /// The weight layer `layer` multiplies with, given its stored weight `w` (`[in, out]`)
    /// and its learned per-output-channel scale, if it has one.
    fn weight(&self, layer: Layer, w: Tensor<2>, scale: Option<Tensor<1>>) -> Tensor<2>;

    /// Attention logits `[batch, heads, tokens, tokens]`, before the 1/√d_head scaling,
    /// computed from the block input `x` (`[batch, tokens, d]`) and the query and key
    /// weights directly (QKR); `None` (the default) for the usual `(x·W_q)·(x·W_k)ᵀ`.
    fn qk_logits(
        &self,
        _x: &Tensor<3>,
        _wq: Tensor<2>,
        _wk: Tensor<2>,
        _heads: usize,
    ) -> Option<Tensor<4>> {
        None
    }
}

/// The float model: every weight as stored.
pub struct Float;

impl Weights for Float {
    fn weight(&self, _layer: Layer, w: Tensor<2>, _scale: Option<Tensor<1>>) -> Tensor<2> {
        w
    }
}

/// The sizes of a [`QVit`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QVitConfig {
    /// Side of the square patches (must divide the image sides).
    pub patch: usize,
    pub d_model: usize,
    pub heads: usize,
    pub layers: usize,
    /// Width of the MLP's hidden layer (2·d_model, as `model/vit.rs`).
    pub mlp_hidden: usize,
}

impl Default for QVitConfig {
    /// 7×7 patches, d = 64, 4 heads, 4 layers, MLP 128 (the card's small-scale model).
    fn default() -> Self {
        QVitConfig {
            patch: 7,
            d_model: 64,
            heads: 4,
            layers: 4,
            mlp_hidden: 128,
        }
    }
}

/// Largest width and depth accepted: far above what engram trains on a CPU, low enough that
/// a typo is refused before anything is allocated.
const MAX_WIDTH: usize = 1 << 14;
const MAX_LAYERS: usize = 1024;

impl QVitConfig {
    /// Checks the sizes alone: positive, `heads` dividing `d_model`, within the limits.
    pub fn check(&self) -> crate::Result<()> {
        let QVitConfig {
            patch,
            d_model,
            heads,
            layers,
            mlp_hidden,
        } = *self;
        if [patch, d_model, heads, layers, mlp_hidden].contains(&0) {
            return Err(crate::err!(
                "qvit sizes must be positive (patch {patch}, d_model {d_model}, heads {heads}, \
                 layers {layers}, mlp_hidden {mlp_hidden})"
            ));
        }
        if d_model % heads != 0 {
            return Err(crate::err!(
                "qvit d_model = {d_model} must be a multiple of heads = {heads}"
            ));
        }
        if d_model > MAX_WIDTH || mlp_hidden > MAX_WIDTH || patch > MAX_WIDTH {
            return Err(crate::err!(
                "qvit d_model = {d_model}, mlp_hidden = {mlp_hidden}, patch = {patch}: \
                 at most {MAX_WIDTH}"
            ));
        }
        if layers > MAX_LAYERS {
            return Err(crate::err!(
                "qvit layers = {layers} is more than the limit of {MAX_LAYERS}"
            ));
        }
        Ok(())
    }

    /// Checks that the model fits images of shape (c, h, w).
    pub fn check_image(&self, image: (usize, usize, usize)) -> crate::Result<()> {
        let (c, h, w) = image;
        if c == 0 || h % self.patch != 0 || w % self.patch != 0 || h == 0 || w == 0 {
            return Err(crate::err!(
                "qvit patch {} must divide the image sides ({c}×{h}×{w})",
                self.patch
            ));
        }
        Ok(())
    }
}

/// A linear layer whose weight a [`Weights`] value may replace (a quantizer's output), with
/// an optional learned per-output-channel scale for the quantizer (LSQ).
#[derive(Module, Debug)]
pub struct QLinear {
    /// `[in, out]`.
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
    /// `[out]`: the step size of a learned quantizer, `None` until one is attached.
    pub scale: Option<Param<Tensor<1>>>,
}

impl QLinear {
    /// burn's `Linear` initialisation (uniform ±1/√in for weight and bias).
    pub fn new(d_in: usize, d_out: usize, bias: bool, device: &Device) -> QLinear {
        let Linear { weight, bias, .. } =
            LinearConfig::new(d_in, d_out).with_bias(bias).init(device);
        QLinear {
            weight,
            bias,
            scale: None,
        }
    }

    fn forward<const D: usize>(&self, x: Tensor<D>, layer: Layer, w: &dyn Weights) -> Tensor<D> {
        let weight = w.weight(
            layer,
            self.weight.val(),
            self.scale.as_ref().map(|s| s.val()),
        );
        burn::tensor::module::linear(x, weight, self.bias.as_ref().map(|b| b.val()))
    }
}

/// Multi-head self-attention with separate query, key, value and output projections.
#[derive(Module, Debug)]
pub struct Attention {
    pub q: QLinear,
    pub k: QLinear,
    pub v: QLinear,
    pub proj: QLinear,
    #[module(skip)]
    heads: usize,
}

impl Attention {
    fn new(d: usize, heads: usize, device: &Device) -> Attention {
        Attention {
            q: QLinear::new(d, d, false, device),
            k: QLinear::new(d, d, false, device),
            v: QLinear::new(d, d, true, device),
            proj: QLinear::new(d, d, true, device),
            heads,
        }
    }

    pub fn heads(&self) -> usize {
        self.heads
    }

    /// `[b, t, d]` → `[b, heads, t, d/heads]`.
    fn split(&self, x: Tensor<3>) -> Tensor<4> {
        let [b, t, d] = x.dims();
        x.reshape([b, t, self.heads, d / self.heads])
            .swap_dims(1, 2)
    }

    fn forward(&self, x: Tensor<3>, w: &dyn Weights) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let dh = d / self.heads;
        let logits = match w.qk_logits(&x, self.q.weight.val(), self.k.weight.val(), self.heads) {
            Some(l) => l,
            None => {
                let q = self.split(self.q.forward(x.clone(), Layer::Q, w));
                let k = self.split(self.k.forward(x.clone(), Layer::K, w));
                q.matmul(k.swap_dims(2, 3))
            }
        };
        let attn = softmax(logits.div_scalar((dh as f32).sqrt()), 3);
        let v = self.split(self.v.forward(x, Layer::V, w));
        let y = attn.matmul(v).swap_dims(1, 2).reshape([b, t, d]);
        self.proj.forward(y, Layer::Proj, w)
    }
}

#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: QLinear,
    pub fc2: QLinear,
}

#[derive(Module, Debug)]
pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
}

impl Block {
    fn forward(&self, x: Tensor<3>, w: &dyn Weights) -> Tensor<3> {
        let x = x.clone() + self.attn.forward(self.norm1.forward(x), w);
        let h = self
            .mlp
            .fc1
            .forward(self.norm2.forward(x.clone()), Layer::Fc1, w);
        x + self.mlp.fc2.forward(gelu(h), Layer::Fc2, w)
    }
}

/// The transformer (see the module comment).
#[derive(Module, Debug)]
pub struct QVit {
    pub patch_embed: Linear,
    pub pos_embed: Param<Tensor<2>>,
    pub blocks: Vec<Block>,
    pub norm: LayerNorm,
    pub head: Linear,
    #[module(skip)]
    image: [usize; 3],
    #[module(skip)]
    patch: usize,
}

impl QVit {
    /// A fresh network for images `image` = (c, h, w) and `outputs` classes. Parameters are
    /// drawn from burn's generator for `device` when first visited: callers seed it and visit
    /// the network once under `crate::backend::rng_guard` (as [`QVit::build`] does).
    pub fn new(
        cfg: &QVitConfig,
        image: (usize, usize, usize),
        outputs: usize,
        device: &Device,
    ) -> crate::Result<QVit> {
        cfg.check()?;
        cfg.check_image(image)?;
        if outputs == 0 {
            return Err("qvit needs at least one output".into());
        }
        let (c, h, w) = image;
        let d = cfg.d_model;
        let tokens = (h / cfg.patch) * (w / cfg.patch);
        let blocks = (0..cfg.layers)
            .map(|_| Block {
                norm1: LayerNormConfig::new(d).init(device),
                attn: Attention::new(d, cfg.heads, device),
                norm2: LayerNormConfig::new(d).init(device),
                mlp: Mlp {
                    fc1: QLinear::new(d, cfg.mlp_hidden, true, device),
                    fc2: QLinear::new(cfg.mlp_hidden, d, true, device),
                },
            })
            .collect();
        Ok(QVit {
            patch_embed: LinearConfig::new(c * cfg.patch * cfg.patch, d).init(device),
            pos_embed: Param::from_tensor(Tensor::random(
                [tokens, d],
                Distribution::Normal(0.0, 0.02),
                device,
            )),
            blocks,
            norm: LayerNormConfig::new(d).init(device),
            head: LinearConfig::new(d, outputs).init(device),
            image: [c, h, w],
            patch: cfg.patch,
        })
    }

    /// [`QVit::new`] with burn's generator seeded with `seed`, every parameter drawn at once
    /// under the RNG guard: the same seed gives the same network whatever else runs.
    pub fn build(
        cfg: &QVitConfig,
        image: (usize, usize, usize),
        outputs: usize,
        seed: u64,
        device: &Device,
    ) -> crate::Result<QVit> {
        let _rng = crate::backend::seeded(device, seed);
        let net = QVit::new(cfg, image, outputs, device)?;
        super::params::param_count(&net);
        Ok(net)
    }

    /// Logits of the float model.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_with(x, &Float)
    }

    /// Logits with the block linears' weights as `w` says (flat images `[batch, c·h·w]` in).
    pub fn forward_with(&self, x: Tensor<2>, w: &dyn Weights) -> Tensor<2> {
        let b = x.dims()[0];
        let [c, h, wd] = self.image;
        let p = self.patch;
        let (gh, gw) = (h / p, wd / p);
        // [b, c, gh, p, gw, p] -> [b, gh, gw, c, p, p] -> [b, gh*gw, c*p*p]
        let x: Tensor<6> = x.reshape([b, c, gh, p, gw, p]);
        let x: Tensor<3> = x
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b, gh * gw, c * p * p]);
        let mut x = self.patch_embed.forward(x) + self.pos_embed.val().unsqueeze_dim(0);
        for block in &self.blocks {
            x = block.forward(x, w);
        }
        let pooled: Tensor<2> = x.mean_dim(1).squeeze_dim(1);
        self.head.forward(self.norm.forward(pooled))
    }

    /// Every block linear: its parameter prefix (`blocks.0.attn.q`), its type and the layer.
    pub fn linears(&self) -> Vec<(String, Layer, &QLinear)> {
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            let a = &b.attn;
            for (l, m) in [
                (Layer::Q, &a.q),
                (Layer::K, &a.k),
                (Layer::V, &a.v),
                (Layer::Proj, &a.proj),
            ] {
                out.push((format!("blocks.{i}.attn.{}", l.name()), l, m));
            }
            for (l, m) in [(Layer::Fc1, &b.mlp.fc1), (Layer::Fc2, &b.mlp.fc2)] {
                out.push((format!("blocks.{i}.mlp.{}", l.name()), l, m));
            }
        }
        out
    }

    /// Mutable access to every block linear, as [`QVit::linears`].
    pub fn linears_mut(&mut self) -> Vec<(String, Layer, &mut QLinear)> {
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let a = &mut b.attn;
            for (l, m) in [
                (Layer::Q, &mut a.q),
                (Layer::K, &mut a.k),
                (Layer::V, &mut a.v),
                (Layer::Proj, &mut a.proj),
            ] {
                out.push((format!("blocks.{i}.attn.{}", l.name()), l, m));
            }
            for (l, m) in [(Layer::Fc1, &mut b.mlp.fc1), (Layer::Fc2, &mut b.mlp.fc2)] {
                out.push((format!("blocks.{i}.mlp.{}", l.name()), l, m));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::param_infos;

    fn tiny() -> QVitConfig {
        QVitConfig {
            patch: 4,
            d_model: 8,
            heads: 2,
            layers: 2,
            mlp_hidden: 12,
        }
    }

    /// Names carry the layer type; the patch embedding, norms and head are no block linear.
    #[test]
    fn parameter_names_give_layer_types() -> crate::Result<()> {
        let d = Device::flex();
        let net = QVit::build(&tiny(), (1, 8, 8), 3, 1, &d)?;
        let names: Vec<String> = param_infos(&net).into_iter().map(|p| p.name).collect();
        for n in [
            "blocks.0.attn.q.weight",
            "blocks.1.attn.k.weight",
            "blocks.1.attn.v.bias",
            "blocks.0.attn.proj.weight",
            "blocks.0.mlp.fc1.weight",
            "blocks.1.mlp.fc2.bias",
            "patch_embed.weight",
            "pos_embed",
            "head.weight",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} not in {names:?}");
        }
        // Query and key have no bias (QKR is then exact).
        assert!(!names.iter().any(|x| x == "blocks.0.attn.q.bias"));
        assert_eq!(Layer::of_param("blocks.3.attn.q.weight"), Some(Layer::Q));
        assert_eq!(Layer::of_param("blocks.0.mlp.fc2.weight"), Some(Layer::Fc2));
        assert_eq!(
            Layer::of_param("blocks.0.attn.proj.scale"),
            Some(Layer::Proj)
        );
        assert_eq!(Layer::of_param("blocks.0.mlp.q.weight"), None);
        assert_eq!(Layer::of_param("blocks.0.norm1.gamma"), None);
        assert_eq!(Layer::of_param("head.weight"), None);
        let typed = names.iter().filter(|n| Layer::of_param(n).is_some());
        // 2 blocks × (q, k, v, proj, fc1, fc2 weights + v, proj, fc1, fc2 biases).
        assert_eq!(typed.count(), 2 * 10);
        let lin = net.linears();
        assert_eq!(lin.len(), 12);
        assert_eq!(lin[4].0, "blocks.0.mlp.fc1");
        // Same seed, same network; the forward runs and has the right shape.
        let again = QVit::build(&tiny(), (1, 8, 8), 3, 1, &d)?;
        let x = Tensor::<2>::random([5, 64], Distribution::Uniform(0.0, 1.0), &d);
        let (a, b) = (net.forward(x.clone()), again.forward(x));
        assert_eq!(a.dims(), [5, 3]);
        assert_eq!(a.into_data(), b.into_data());
        Ok(())
    }

    #[test]
    fn bad_sizes_are_refused() {
        let d = Device::flex();
        let mut c = tiny();
        c.heads = 3;
        assert!(QVit::new(&c, (1, 8, 8), 3, &d).is_err());
        let e = QVit::new(&tiny(), (1, 10, 8), 3, &d)
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("patch 4")));
        c = tiny();
        c.layers = 0;
        assert!(c.check().is_err());
    }
}
