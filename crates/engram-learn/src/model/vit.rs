//! A tiny transformer encoder on image patches (ViT-style): linear patch embedding, learned
//! position embeddings, pre-norm encoder layers, mean pooling, linear head.

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
            image,
            patch,
        }
    }

    pub fn features(&self, x: Tensor<2>) -> Tensor<2> {
        let b = x.dims()[0];
        let [c, h, w] = self.image;
        let p = self.patch;
        let (gh, gw) = (h / p, w / p);
        // [b, c, gh, p, gw, p] -> [b, gh, gw, c, p, p] -> [b, gh*gw, c*p*p]
        let x: Tensor<6> = x.reshape([b, c, gh, p, gw, p]);
        let x = x.permute([0, 2, 4, 1, 3, 5]);
        let x: Tensor<3> = x.reshape([b, gh * gw, c * p * p]);
        let tokens = self.patch_embed.forward(x) + self.pos_embed.val().unsqueeze_dim(0);
        let y = self.encoder.forward(TransformerEncoderInput::new(tokens));
        let pooled: Tensor<2> = y.mean_dim(1).squeeze_dim(1);
        self.norm.forward(pooled)
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.head.forward(self.features(x))
    }
}
