//! A character-level causal language model (Deep Ignorance's text analogue,
//! `shared/methods/robustness_safety.md`): byte embedding, learned positions, pre-norm causal
//! transformer layers, a linear head over the 256 byte values.
//!
//! Why a transformer and not the card's other choice, a 2-layer GRU: on burn's CPU backend a
//! recurrent network runs one small operation per character and layer (forward and backward),
//! and that per-operation cost, not arithmetic, sets its speed on two cores; a transformer
//! layer is a few large matrix products over the whole window. "Characters" are bytes: every
//! UTF-8 text is a valid input and no vocabulary file is needed.

use crate::{Result, err};
use burn::module::Param;
use burn::nn::attention::generate_autoregressive_mask;
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::log_softmax;

/// Byte values.
pub const VOCAB: usize = 256;

/// The model's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CharLmConfig {
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    /// The longest window the model reads (learned positions).
    pub context: usize,
}

impl Default for CharLmConfig {
    /// The card's 4 × 128 causal transformer, 256 bytes of context.
    fn default() -> Self {
        CharLmConfig {
            d_model: 128,
            layers: 4,
            heads: 4,
            context: 256,
        }
    }
}

impl CharLmConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(err!("char-lm: {m}"));
        if !(8..=4096).contains(&self.d_model) {
            return bad("d-model must be in 8..=4096");
        }
        if !(1..=64).contains(&self.layers) {
            return bad("layers must be in 1..=64");
        }
        if self.heads == 0 || !self.d_model.is_multiple_of(self.heads) {
            return bad("heads must divide d-model");
        }
        if !(2..=65536).contains(&self.context) {
            return bad("context must be in 2..=65536");
        }
        Ok(())
    }

    /// The number of parameters.
    pub fn params(&self) -> usize {
        let d = self.d_model;
        // embedding, positions, per layer: 4 attention projections (+bias), feed-forward
        // d → 4d → d (+biases), two norms; final norm; head (+bias).
        VOCAB * d
            + self.context * d
            + self.layers * (4 * (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 4 * d)
            + 2 * d
            + d * VOCAB
            + VOCAB
    }

    pub fn init(&self, device: &Device) -> Result<CharLm> {
        self.validate()?;
        let _g = crate::backend::rng_guard();
        Ok(CharLm {
            embed: EmbeddingConfig::new(VOCAB, self.d_model).init(device),
            pos: Param::from_tensor(Tensor::random(
                [self.context, self.d_model],
                Distribution::Normal(0.0, 0.02),
                device,
            )),
            encoder: TransformerEncoderConfig::new(
                self.d_model,
                4 * self.d_model,
                self.heads,
                self.layers,
            )
            .with_dropout(0.0)
            .with_norm_first(true)
            .init(device),
            norm: LayerNormConfig::new(self.d_model).init(device),
            head: LinearConfig::new(self.d_model, VOCAB).init(device),
            context: self.context,
        })
    }
}

#[derive(Module, Debug)]
pub struct CharLm {
    pub embed: Embedding,
    pub pos: Param<Tensor<2>>,
    pub encoder: TransformerEncoder,
    pub norm: LayerNorm,
    pub head: Linear,
    #[module(skip)]
    context: usize,
}

impl CharLm {
    pub fn context(&self) -> usize {
        self.context
    }

    /// The last layer's normalised hidden states, `[b, s, d]`, for bytes `x` (`[b, s]`, s at
    /// most the context).
    pub fn hidden(&self, x: Tensor<2, Int>) -> Tensor<3> {
        let [b, s] = x.dims();
        let device = x.device();
        let pos = self.pos.val().slice(0..s).unsqueeze_dim(0);
        let h = self.embed.forward(x) + pos;
        let mask = generate_autoregressive_mask(b, s, &device);
        let y = self
            .encoder
            .forward(TransformerEncoderInput::new(h).mask_attn(mask));
        self.norm.forward(y)
    }

    /// Next-byte logits, `[b, s, 256]`.
    pub fn logits(&self, x: Tensor<2, Int>) -> Tensor<3> {
        self.head.forward(self.hidden(x))
    }

    /// Negative log-likelihood (nats) of each next byte `y` (`[b, s]`) after `x` (`[b, s]`).
    pub fn nll(&self, x: Tensor<2, Int>, y: Tensor<2, Int>) -> Tensor<2> {
        let [b, s] = x.dims();
        let logp = log_softmax(self.logits(x), 2);
        let idx: Tensor<3, Int> = y.reshape([b, s, 1]);
        logp.gather(2, idx).reshape([b, s]).neg()
    }
}

/// Byte windows as the model's inputs and targets: `rows` windows of `s + 1` bytes each give
/// x = the first s bytes, y = the last s.
pub fn windows(rows: &[&[u8]], device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let b = rows.len();
    let s = rows.first().map_or(0, |r| r.len().saturating_sub(1));
    let mut x = Vec::with_capacity(b * s);
    let mut y = Vec::with_capacity(b * s);
    for r in rows {
        debug_assert_eq!(r.len(), s + 1);
        x.extend(r[..s].iter().map(|&c| c as i64));
        y.extend(r[1..].iter().map(|&c| c as i64));
    }
    (
        Tensor::from_data(TensorData::new(x, [b, s]), device),
        Tensor::from_data(TensorData::new(y, [b, s]), device),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> CharLmConfig {
        CharLmConfig {
            d_model: 16,
            layers: 2,
            heads: 2,
            context: 12,
        }
    }

    #[test]
    fn parameter_count_matches_the_module() {
        let m = tiny().init(&Device::flex()).unwrap();
        assert_eq!(m.num_params(), tiny().params());
    }

    #[test]
    fn a_byte_never_sees_the_bytes_after_it() {
        let d = Device::flex();
        let m = tiny().init(&d).unwrap();
        let a: &[u8] = b"to be or not to";
        let mut b = a.to_vec();
        b[9] = b'Z';
        let (xa, _) = windows(&[&a[..11]], &d);
        let (xb, _) = windows(&[&b[..11]], &d);
        let la = crate::backend::host(m.logits(xa));
        let lb = crate::backend::host(m.logits(xb));
        // Positions 0..8 read bytes 0..8 only: equal; position 9 reads the changed byte.
        let n = 9 * VOCAB;
        assert_eq!(la[..n], lb[..n]);
        assert_ne!(la[n..], lb[n..]);
    }

    #[test]
    fn sizes_are_checked() {
        let mut c = tiny();
        c.heads = 3;
        assert!(c.validate().unwrap_err().to_string().contains("heads"));
        c = tiny();
        c.context = 1;
        assert!(c.init(&Device::flex()).is_err());
    }
}
