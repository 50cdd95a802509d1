//! A tiny transformer encoder on image patches (ViT-style): linear patch embedding, learned
//! position embeddings, pre-norm encoder layers, mean pooling, linear head. With a feedback
//! input (IDER, `shared/methods/replay_distillation.md`) a label-space vector enters through
//! `fb` (Linear + LeakyReLU), added to every token before the encoder.

use burn::module::Param;
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::Distribution;

#[derive(Module, Debug)]
pub struct TinyVit {
    pub patch_embed: Linear,
    pub pos_embed: Param<Tensor<2>>,
    pub encoder: TransformerEncoder,
    pub norm: LayerNorm,
    pub head: Linear,
    /// Feedback input (classes → d_model); `None` for a plain ViT.
    pub fb: Option<Linear>,
    #[module(skip)]
    image: [usize; 3],
    #[module(skip)]
    patch: usize,
}

impl TinyVit {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        image: [usize; 3],
        patch: usize,
        d_model: usize,
        layers: usize,
        heads: usize,
        outputs: usize,
        device: &Device,
    ) -> TinyVit {
        let [c, h, w] = image;
        let n_patches = (h / patch) * (w / patch);
        TinyVit {
            patch_embed: LinearConfig::new(c * patch * patch, d_model).init(device),
            pos_embed: Param::from_tensor(Tensor::random(
                [n_patches, d_model],
                Distribution::Normal(0.0, 0.02),
                device,
            )),
            encoder: TransformerEncoderConfig::new(d_model, 2 * d_model, heads, layers)
                .with_dropout(0.0)
                .with_norm_first(true)
                .init(device),
            norm: LayerNormConfig::new(d_model).init(device),
            head: LinearConfig::new(d_model, outputs).init(device),
            fb: None,
            image,
            patch,
        }
    }

    /// Adds the feedback input of width `classes` (added to the tokens).
    pub fn with_feedback(mut self, classes: usize, device: &Device) -> TinyVit {
        // The (eager) position embeddings give d_model without drawing a lazy parameter early.
        let d = self.pos_embed.val().dims()[1];
        self.fb = Some(LinearConfig::new(classes, d).init(device));
        self
    }

    pub fn features(&self, x: Tensor<2>) -> Tensor<2> {
        self.features_fb(x, None)
    }

    /// Features with the feedback vector `y` (`None`: the uniform vector); `y` is ignored
    /// without a feedback input.
    pub fn features_fb(&self, x: Tensor<2>, y: Option<Tensor<2>>) -> Tensor<2> {
        let b = x.dims()[0];
        let [c, h, w] = self.image;
        let p = self.patch;
        let (gh, gw) = (h / p, w / p);
        // [b, c, gh, p, gw, p] -> [b, gh, gw, c, p, p] -> [b, gh*gw, c*p*p]
        let x: Tensor<6> = x.reshape([b, c, gh, p, gw, p]);
        let x = x.permute([0, 2, 4, 1, 3, 5]);
        let x: Tensor<3> = x.reshape([b, gh * gw, c * p * p]);
        let mut tokens = self.patch_embed.forward(x) + self.pos_embed.val().unsqueeze_dim(0);
        if let Some(fb) = &self.fb {
            let e = super::feedback(fb, y, b, &tokens.device());
            tokens = tokens + e.unsqueeze_dim(1);
        }
        let y = self.encoder.forward(TransformerEncoderInput::new(tokens));
        let pooled: Tensor<2> = y.mean_dim(1).squeeze_dim(1);
        self.norm.forward(pooled)
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.head.forward(self.features(x))
    }

    pub fn forward_fb(&self, x: Tensor<2>, y: Option<Tensor<2>>) -> Tensor<2> {
        self.head.forward(self.features_fb(x, y))
    }
}
