//! Models: an MLP, a residual MLP, a small CNN and a tiny patch transformer, behind one `Net`
//! type. Parameters
//! have stable names (`fc.0.weight`, `conv1.weight`, ...) and are saved and loaded as
//! safetensors through engram-ckpt, so that engram's weight-space commands work on them.

pub mod batchnorm;
pub mod bn_cnn;
pub mod calib;
pub mod char_lm;
pub mod cnn;
pub mod conv;
pub mod dense;
pub mod io;
pub mod mlp;
pub mod params;
pub mod qvit;
pub mod resmlp;
pub mod vit;

use crate::{Result, err};
use burn::prelude::*;

/// A network's output layer (`model.head`). Every model has a `linear` head; the MLP can
/// have SCoLe's weight-normalised one instead (`shared/methods/theory.md`, SCoLe).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Head {
    /// x·W + b.
    #[default]
    Linear,
    /// logits_j = x·(W_j/‖W_j‖₂), no bias, Kaiming-normal initial rows (mlp only).
    WeightNorm,
}

/// Run files write a model as `kind = "..."` with its keys; `head` is one of them (see
/// [`Head`]), refused on the models that have only a linear head.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(
    try_from = "raw::ModelFile",
    into = "raw::ModelFile",
    expecting = "a model table"
)]
pub enum ModelConfig {
    Mlp {
        hidden: Vec<usize>,
    },
    /// The MLP with SCoLe's weight-normalised output layer (`kind = "mlp"`, `head =
    /// "weightnorm"`).
    MlpWeightNorm {
        hidden: Vec<usize>,
    },
    /// Stem `in → width`, `blocks` residual blocks `width → hidden → width`, linear head.
    Resmlp {
        width: usize,
        hidden: usize,
        blocks: usize,
    },
    Cnn {
        channels: [usize; 2],
        hidden: usize,
    },
    /// The CNN with a BatchNorm after each convolution (test-time adaptation).
    BnCnn {
        channels: [usize; 2],
        hidden: usize,
    },
    Vit {
        patch: usize,
        d_model: usize,
        layers: usize,
        heads: usize,
    },
}

/// Most parameters a network may have: 2^28 values are 1 GiB of f32, a few GiB with their
/// gradients and optimizer moments, far beyond what engram trains on a CPU. A run file asking
/// for more (a typo, `hidden = [1000000000000]`) is refused before anything is allocated.
pub const MAX_PARAMS: u128 = 1 << 28;
/// Most activation values a batch may hold (batch size × each example's layer outputs).
pub const MAX_ACTIVATIONS: u128 = 1 << 28;
/// Most layers (mlp hidden layers, resmlp blocks, vit layers).
pub const MAX_DEPTH: usize = 1024;

fn default_hidden() -> Vec<usize> {
    vec![400, 400]
}
fn default_width() -> usize {
    256
}
fn default_res_hidden() -> usize {
    512
}
fn default_blocks() -> usize {
    4
}
fn default_channels() -> [usize; 2] {
    [32, 64]
}
fn default_cnn_hidden() -> usize {
    128
}
fn default_bn_channels() -> [usize; 2] {
    [16, 32]
}
fn default_bn_hidden() -> usize {
    64
}
fn default_patch() -> usize {
    7
}
fn default_d_model() -> usize {
    64
}
fn default_layers() -> usize {
    2
}
fn default_heads() -> usize {
    4
}

impl Default for ModelConfig {
    /// An MLP 400×400 with a linear head.
    fn default() -> Self {
        ModelConfig::Mlp {
            hidden: default_hidden(),
        }
    }
}

/// The variants differ in size, but a run holds one network: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Net {
    Mlp(mlp::Mlp),
    ResMlp(resmlp::ResMlp),
    Cnn(cnn::Cnn),
    BnCnn(bn_cnn::BnCnn),
    Vit(vit::TinyVit),
}

impl ModelConfig {
    /// The MLP with hidden widths `hidden` and output layer `head`.
    pub fn mlp(hidden: Vec<usize>, head: Head) -> ModelConfig {
        match head {
            Head::Linear => ModelConfig::Mlp { hidden },
            Head::WeightNorm => ModelConfig::MlpWeightNorm { hidden },
        }
    }

    /// The network's output layer.
    pub fn head(&self) -> Head {
        match self {
            ModelConfig::MlpWeightNorm { .. } => Head::WeightNorm,
            _ => Head::Linear,
        }
    }

    /// Whether the network has BatchNorm layers.
    pub fn has_batchnorm(&self) -> bool {
        matches!(self, ModelConfig::BnCnn { .. })
    }

    /// Builds the network for inputs of `dim` features (`image` = (c, h, w) when they are
    /// images) and `outputs` classes; parameters are drawn from the device's seeded RNG.
    pub fn build(
        &self,
        dim: usize,
        image: Option<(usize, usize, usize)>,
        outputs: usize,
        device: &Device,
    ) -> Result<Net> {
        self.build_with_feedback(dim, image, outputs, false, device)
    }

    /// [`ModelConfig::build`], with a feedback input of width `outputs` when `feedback` (a
    /// strategy asks for it, IDER). Its parameters (`fb.*`) come last in visiting order, so when
    /// the network is first visited whole (the trainer counts parameters right after building)
    /// the rest of it is initialised exactly as without it.
    pub fn build_with_feedback(
        &self,
        dim: usize,
        image: Option<(usize, usize, usize)>,
        outputs: usize,
        feedback: bool,
        device: &Device,
    ) -> Result<Net> {
        // Parameters are drawn from burn's process-wide generator when first visited: draw
        // them all now, in visiting order, under the RNG guard (see `rng_guard`).
        let _rng = crate::backend::rng_guard();
        let net = self.build_plain(dim, image, outputs, device)?;
        let net = if !feedback {
            net
        } else {
            match net {
                Net::Mlp(m) => Net::Mlp(m.with_feedback(outputs, device)?),
                Net::ResMlp(_) => return Err("the resmlp has no feedback input".into()),
                Net::Cnn(m) => Net::Cnn(m.with_feedback(outputs, device)),
                Net::BnCnn(_) => return Err("the bn-cnn has no feedback input".into()),
                Net::Vit(m) => Net::Vit(m.with_feedback(outputs, device)),
            }
        };
        params::param_count(&net);
        Ok(net)
    }

    fn build_plain(
        &self,
        dim: usize,
        image: Option<(usize, usize, usize)>,
        outputs: usize,
        device: &Device,
    ) -> Result<Net> {
        self.check()?;
        self.check_size(dim, image, outputs, 1)?;
        let img = || {
            image
                .map(|(c, h, w)| [c, h, w])
                .ok_or_else(|| err!("this model needs image inputs"))
        };
        Ok(match self {
            ModelConfig::Mlp { hidden } => Net::Mlp(mlp::Mlp::new(dim, hidden, outputs, device)),
            ModelConfig::MlpWeightNorm { hidden } => Net::Mlp(mlp::Mlp::with_head(
                dim,
                hidden,
                outputs,
                Head::WeightNorm,
                device,
            )),
            ModelConfig::Resmlp {
                width,
                hidden,
                blocks,
            } => Net::ResMlp(resmlp::ResMlp::new(
                dim, *width, *hidden, *blocks, outputs, device,
            )),
            ModelConfig::Cnn { channels, hidden } => {
                let im = img()?;
                if im[1] < 10 || im[2] < 10 {
                    return Err(err!(
                        "the cnn needs images of at least 10×10, got {}×{}",
                        im[1],
                        im[2]
                    ));
                }
                Net::Cnn(cnn::Cnn::new(im, *channels, *hidden, outputs, device))
            }
            ModelConfig::BnCnn { channels, hidden } => {
                let im = img()?;
                if im[1] < 10 || im[2] < 10 {
                    return Err(err!(
                        "the bn-cnn needs images of at least 10×10, got {}×{}",
                        im[1],
                        im[2]
                    ));
                }
                Net::BnCnn(bn_cnn::BnCnn::new(im, *channels, *hidden, outputs, device))
            }
            ModelConfig::Vit {
                patch,
                d_model,
                layers,
                heads,
            } => {
                let im = img()?;
                if im[1] % patch != 0 || im[2] % patch != 0 {
                    return Err(err!(
                        "vit patch {patch} must divide the image side ({}×{})",
                        im[1],
                        im[2]
                    ));
                }
                Net::Vit(vit::TinyVit::new(
                    im, *patch, *d_model, *layers, *heads, outputs, device,
                ))
            }
        })
    }

    /// Checks the keys that do not depend on the data (run files check them before loading
    /// it): widths positive, at most [`MAX_DEPTH`] layers, and a network within the limits
    /// even for the smallest inputs.
    pub fn check(&self) -> Result<()> {
        let (depth, zero) = match self {
            ModelConfig::Mlp { hidden } | ModelConfig::MlpWeightNorm { hidden } => {
                (hidden.len(), hidden.contains(&0))
            }
            ModelConfig::Resmlp {
                width,
                hidden,
                blocks,
            } => (*blocks, [width, hidden, blocks].contains(&&0)),
            ModelConfig::Cnn { channels, hidden } | ModelConfig::BnCnn { channels, hidden } => {
                (2, channels.contains(&0) || *hidden == 0)
            }
            ModelConfig::Vit {
                patch,
                d_model,
                layers,
                heads,
            } => {
                if *heads != 0 && d_model % heads != 0 {
                    return Err(err!(
                        "model.d_model = {d_model} must be a multiple of model.heads = {heads}"
                    ));
                }
                (*layers, [patch, d_model, layers, heads].contains(&&0))
            }
        };
        if zero {
            return Err(err!("{}: sizes must be positive", self.size_keys()));
        }
        if depth > MAX_DEPTH {
            return Err(err!(
                "{}: {depth} layers, more than the limit of {MAX_DEPTH}",
                self.size_keys()
            ));
        }
        self.check_size(1, None, 1, 1)
    }

    /// Checks, before anything is allocated, that the network for these inputs has at most
    /// [`MAX_PARAMS`] parameters and that a batch of `batch` examples holds at most
    /// [`MAX_ACTIVATIONS`] activation values.
    pub fn check_size(
        &self,
        dim: usize,
        image: Option<(usize, usize, usize)>,
        outputs: usize,
        batch: usize,
    ) -> Result<()> {
        let (params, act) = self.size(dim, image, outputs);
        if params > MAX_PARAMS {
            return Err(err!(
                "{}: the network would have at least {params} parameters, more than the \
                 limit of {MAX_PARAMS} (2^28)",
                self.size_keys()
            ));
        }
        let act = act.saturating_mul(batch as u128);
        if act > MAX_ACTIVATIONS {
            return Err(err!(
                "{}: a batch of {batch} examples (train.batch-size, train.eval-batch) holds \
                 {act} activation values, more than the limit of {MAX_ACTIVATIONS} (2^28)",
                self.size_keys()
            ));
        }
        Ok(())
    }

    /// The keys that set the network's size, with their values, for messages.
    fn size_keys(&self) -> String {
        match self {
            ModelConfig::Mlp { hidden } | ModelConfig::MlpWeightNorm { hidden }
                if hidden.len() > 8 =>
            {
                format!(
                    "model.hidden = {:?}... ({} widths)",
                    &hidden[..8],
                    hidden.len()
                )
            }
            ModelConfig::Mlp { hidden } | ModelConfig::MlpWeightNorm { hidden } => {
                format!("model.hidden = {hidden:?}")
            }
            ModelConfig::Resmlp {
                width,
                hidden,
                blocks,
            } => format!("model.width = {width}, model.hidden = {hidden}, model.blocks = {blocks}"),
            ModelConfig::Cnn { channels, hidden } | ModelConfig::BnCnn { channels, hidden } => {
                format!("model.channels = {channels:?}, model.hidden = {hidden}")
            }
            ModelConfig::Vit {
                patch,
                d_model,
                layers,
                heads,
            } => format!(
                "model.patch = {patch}, model.d_model = {d_model}, model.layers = {layers}, \
                 model.heads = {heads}"
            ),
        }
    }

    /// Parameters and activation values per example (the layers' outputs) of the network for
    /// these inputs, computed without overflow (saturating); `image` defaults to 1×1×1.
    fn size(
        &self,
        dim: usize,
        image: Option<(usize, usize, usize)>,
        outputs: usize,
    ) -> (u128, u128) {
        let n = |v: usize| v as u128;
        let (c, h, w) = image.map_or((1, 1, 1), |(c, h, w)| (n(c), n(h), n(w)));
        let mul = |v: &[u128]| v.iter().fold(1u128, |a, &b| a.saturating_mul(b));
        let linear = |a: u128, b: u128| mul(&[a, b]).saturating_add(b);
        let sum = |v: &[u128]| v.iter().fold(0u128, |a, &b| a.saturating_add(b));
        let (dim, outputs) = (n(dim), n(outputs));
        match self {
            ModelConfig::Mlp { hidden } | ModelConfig::MlpWeightNorm { hidden } => {
                let mut dims = vec![dim];
                dims.extend(hidden.iter().map(|&v| n(v)));
                dims.push(outputs);
                let p: Vec<u128> = dims.windows(2).map(|d| linear(d[0], d[1])).collect();
                // The weight-normalised head has no bias.
                let bias = match self {
                    ModelConfig::MlpWeightNorm { .. } => outputs,
                    _ => 0,
                };
                (sum(&p).saturating_sub(bias), sum(&dims[1..]))
            }
            ModelConfig::Resmlp {
                width,
                hidden,
                blocks,
            } => {
                let (wd, hd, b) = (n(*width), n(*hidden), n(*blocks));
                let block = linear(wd, hd).saturating_add(linear(hd, wd));
                let p = sum(&[linear(dim, wd), mul(&[b, block]), linear(wd, outputs)]);
                (p, sum(&[wd, mul(&[b, hd + wd]), outputs]))
            }
            ModelConfig::Cnn { channels, hidden } | ModelConfig::BnCnn { channels, hidden } => {
                let (c0, c1, hd) = (n(channels[0]), n(channels[1]), n(*hidden));
                let side = |s: u128| (s.saturating_sub(2) / 2).saturating_sub(2) / 2;
                let conv = |a: u128, b: u128| linear(mul(&[a, 9]), b);
                let flat = mul(&[c1, side(h), side(w)]);
                // BatchNorm: γ, β and the two running statistics per channel.
                let bn = match self {
                    ModelConfig::BnCnn { .. } => mul(&[4, c0 + c1]),
                    _ => 0,
                };
                let p = sum(&[
                    conv(c, c0),
                    conv(c0, c1),
                    linear(flat, hd),
                    linear(hd, outputs),
                    bn,
                ]);
                let a = sum(&[mul(&[c0, h, w]), mul(&[c1, h, w]) / 4, hd, outputs]);
                (p, a)
            }
            ModelConfig::Vit {
                patch,
                d_model,
                layers,
                heads,
            } => {
                let (p, d, l) = (n((*patch).max(1)), n(*d_model), n(*layers));
                let tokens = mul(&[h / p, w / p]).max(1);
                let layer = sum(&[
                    mul(&[4, linear(d, d)]),
                    linear(d, mul(&[2, d])),
                    linear(mul(&[2, d]), d),
                    mul(&[4, d]),
                ]);
                let params = sum(&[
                    linear(mul(&[c, p, p]), d),
                    mul(&[tokens, d]),
                    mul(&[l, layer]),
                    mul(&[2, d]),
                    linear(d, outputs),
                ]);
                let per_layer = sum(&[mul(&[n(*heads), tokens, tokens]), mul(&[10, tokens, d])]);
                (params, sum(&[mul(&[l, per_layer]), outputs]))
            }
        }
    }
}

impl Net {
    /// Logits for a batch of flat inputs `[batch, dim]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Net::Mlp(m) => m.forward(x),
            Net::ResMlp(m) => m.forward(x),
            Net::Cnn(m) => m.forward(x),
            Net::BnCnn(m) => m.forward(x),
            Net::Vit(m) => m.forward(x),
        }
    }

    /// The representation before the output layer.
    pub fn features(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Net::Mlp(m) => m.features(x),
            Net::ResMlp(m) => m.features(x),
            Net::Cnn(m) => m.features(x),
            Net::BnCnn(m) => m.features(x),
            Net::Vit(m) => m.features(x),
        }
    }

    /// Logits with the feedback vector `y` `[batch, outputs]` (IDER's f(x, y)); `None` is the
    /// uniform vector, which is what [`Net::forward`] uses. Without a feedback input `y` is
    /// ignored.
    pub fn forward_fb(&self, x: Tensor<2>, y: Option<Tensor<2>>) -> Tensor<2> {
        match self {
            Net::Mlp(m) => m.forward_fb(x, y),
            Net::ResMlp(m) => m.forward(x),
            Net::Cnn(m) => m.forward_fb(x, y),
            Net::BnCnn(m) => m.forward(x),
            Net::Vit(m) => m.forward_fb(x, y),
        }
    }

    /// Whether the network has a feedback input.
    pub fn has_feedback(&self) -> bool {
        match self {
            Net::Mlp(m) => m.fb.is_some(),
            Net::ResMlp(_) => false,
            Net::Cnn(m) => m.fb.is_some(),
            Net::BnCnn(_) => false,
            Net::Vit(m) => m.fb.is_some(),
        }
    }

    /// The network's output layer.
    pub fn head(&self) -> Head {
        match self {
            Net::Mlp(m) => m.head(),
            _ => Head::Linear,
        }
    }

    /// Stable names of the output layer's weight `[features, classes]` and bias `[classes]`.
    pub fn head_names(&self) -> (String, String) {
        let p = match self {
            Net::Mlp(m) => format!("fc.{}", m.fc.len() - 1),
            Net::ResMlp(_) => "head".to_string(),
            Net::Cnn(_) | Net::BnCnn(_) => "fc2".to_string(),
            Net::Vit(_) => "head".to_string(),
        };
        (format!("{p}.weight"), format!("{p}.bias"))
    }

    /// The network with every BatchNorm layer in `mode`; networks without BatchNorm are
    /// returned as they are (see [`Net::has_batchnorm`]).
    pub fn with_bn_mode(self, mode: batchnorm::BnMode) -> Net {
        match self {
            Net::BnCnn(m) => Net::BnCnn(m.with_bn_mode(mode)),
            other => other,
        }
    }

    pub fn has_batchnorm(&self) -> bool {
        matches!(self, Net::BnCnn(_))
    }

    /// A copy that shares no state with `self` (a plain clone shares BatchNorm running
    /// statistics; see `batchnorm::BatchNorm::detached`).
    pub fn detached(&self) -> Net {
        match self {
            Net::BnCnn(m) => Net::BnCnn(m.detached()),
            other => other.clone(),
        }
    }

    /// Names of the BatchNorm affine parameters (γ, β of every layer); empty without BatchNorm.
    pub fn bn_affine_names(&self) -> Vec<String> {
        match self {
            Net::BnCnn(_) => bn_cnn::BnCnn::bn_affine_names(),
            _ => Vec::new(),
        }
    }
}

/// The serde form of [`ModelConfig`]: `kind` and the kind's keys, `head` among them.
mod raw {
    use super::*;

    #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
    #[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
    pub enum ModelFile {
        Mlp {
            #[serde(default = "default_hidden")]
            hidden: Vec<usize>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            head: Option<Head>,
        },
        Resmlp {
            #[serde(default = "default_width")]
            width: usize,
            #[serde(default = "default_res_hidden")]
            hidden: usize,
            #[serde(default = "default_blocks")]
            blocks: usize,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            head: Option<Head>,
        },
        Cnn {
            #[serde(default = "default_channels")]
            channels: [usize; 2],
            #[serde(default = "default_cnn_hidden")]
            hidden: usize,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            head: Option<Head>,
        },
        BnCnn {
            #[serde(default = "default_bn_channels")]
            channels: [usize; 2],
            #[serde(default = "default_bn_hidden")]
            hidden: usize,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            head: Option<Head>,
        },
        Vit {
            #[serde(default = "default_patch")]
            patch: usize,
            #[serde(default = "default_d_model")]
            d_model: usize,
            #[serde(default = "default_layers")]
            layers: usize,
            #[serde(default = "default_heads")]
            heads: usize,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            head: Option<Head>,
        },
    }

    impl TryFrom<ModelFile> for ModelConfig {
        type Error = String;
        fn try_from(f: ModelFile) -> std::result::Result<ModelConfig, String> {
            let linear_only = |kind: &str, head: Option<Head>| match head {
                Some(Head::WeightNorm) => Err(format!(
                    "model.head = \"weightnorm\" is supported by kind = \"mlp\" only; \
                     the {kind} has a linear head"
                )),
                _ => Ok(()),
            };
            Ok(match f {
                ModelFile::Mlp { hidden, head } => {
                    ModelConfig::mlp(hidden, head.unwrap_or_default())
                }
                ModelFile::Resmlp {
                    width,
                    hidden,
                    blocks,
                    head,
                } => {
                    linear_only("resmlp", head)?;
                    ModelConfig::Resmlp {
                        width,
                        hidden,
                        blocks,
                    }
                }
                ModelFile::Cnn {
                    channels,
                    hidden,
                    head,
                } => {
                    linear_only("cnn", head)?;
                    ModelConfig::Cnn { channels, hidden }
                }
                ModelFile::BnCnn {
                    channels,
                    hidden,
                    head,
                } => {
                    linear_only("bn-cnn", head)?;
                    ModelConfig::BnCnn { channels, hidden }
                }
                ModelFile::Vit {
                    patch,
                    d_model,
                    layers,
                    heads,
                    head,
                } => {
                    linear_only("vit", head)?;
                    ModelConfig::Vit {
                        patch,
                        d_model,
                        layers,
                        heads,
                    }
                }
            })
        }
    }

    /// A linear head is written as before the key existed (no `head`), so that recorded
    /// settings compare equal.
    impl From<ModelConfig> for ModelFile {
        fn from(m: ModelConfig) -> ModelFile {
            match m {
                ModelConfig::Mlp { hidden } => ModelFile::Mlp { hidden, head: None },
                ModelConfig::MlpWeightNorm { hidden } => ModelFile::Mlp {
                    hidden,
                    head: Some(Head::WeightNorm),
                },
                ModelConfig::Resmlp {
                    width,
                    hidden,
                    blocks,
                } => ModelFile::Resmlp {
                    width,
                    hidden,
                    blocks,
                    head: None,
                },
                ModelConfig::Cnn { channels, hidden } => ModelFile::Cnn {
                    channels,
                    hidden,
                    head: None,
                },
                ModelConfig::BnCnn { channels, hidden } => ModelFile::BnCnn {
                    channels,
                    hidden,
                    head: None,
                },
                ModelConfig::Vit {
                    patch,
                    d_model,
                    layers,
                    heads,
                } => ModelFile::Vit {
                    patch,
                    d_model,
                    layers,
                    heads,
                    head: None,
                },
            }
        }
    }
}

/// The feedback path: LeakyReLU(Linear(y)) with y the uniform vector 1/C when `None`.
fn feedback(
    fb: &burn::nn::Linear,
    y: Option<Tensor<2>>,
    batch: usize,
    device: &Device,
) -> Tensor<2> {
    let c = fb.weight.dims()[0];
    let y = y.unwrap_or_else(|| Tensor::<2>::full([batch, c], 1.0 / c as f32, device));
    burn::tensor::activation::leaky_relu(fb.forward(y), 0.01)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::host_params;
    use burn::tensor::Distribution;

    /// A feedback input leaves the rest of the network as without it (same parameters from
    /// the same seed), and the plain forward is the feedback forward with the uniform vector.
    #[test]
    fn feedback_input_is_an_addition_that_changes_nothing_else() {
        let image = Some((1, 12, 12));
        for cfg in [
            ModelConfig::Mlp { hidden: vec![6, 5] },
            ModelConfig::Cnn {
                channels: [2, 3],
                hidden: 4,
            },
            ModelConfig::Vit {
                patch: 4,
                d_model: 8,
                layers: 1,
                heads: 2,
            },
        ] {
            // Parameters are drawn when first visited (in field order, as the trainer's
            // parameter count does right after building): visit each net at once.
            let make = |fb: bool| {
                let d = Device::flex();
                let _rng = crate::backend::seeded(&d, 11);
                let d = d.autodiff();
                let net = cfg.build_with_feedback(144, image, 7, fb, &d).expect("net");
                let values: Vec<(String, Vec<f32>)> = host_params(&net)
                    .into_iter()
                    .map(|(i, v)| (i.name, v))
                    .filter(|(n, _)| !n.starts_with("fb."))
                    .collect();
                (net, values)
            };
            let ((plain, p), (with, w)) = (make(false), make(true));
            assert!(!plain.has_feedback() && with.has_feedback());
            assert_eq!(p, w, "{cfg:?}");
            let d = Device::flex().autodiff();
            let x = Tensor::<2>::random([3, 144], Distribution::Uniform(0.0, 1.0), &d);
            let u = Tensor::<2>::full([3, 7], 1.0 / 7.0, &d);
            let a = with.forward(x.clone());
            let b = with.forward_fb(x.clone(), Some(u));
            assert!((a.clone() - b).abs().max().into_scalar::<f32>() < 1e-6);
            // Another feedback vector changes the output; the plain net ignores it.
            let e = Tensor::<2>::random([3, 7], Distribution::Uniform(0.0, 5.0), &d);
            let c = with.forward_fb(x.clone(), Some(e.clone()));
            assert!((a - c).abs().max().into_scalar::<f32>() > 1e-5, "{cfg:?}");
            let q = plain.forward(x.clone());
            let r = plain.forward_fb(x, Some(e));
            assert!((q - r).abs().max().into_scalar::<f32>() == 0.0);
        }
        let d = Device::flex();
        assert!(
            ModelConfig::Mlp { hidden: vec![] }
                .build_with_feedback(4, None, 3, true, &d)
                .is_err()
        );
    }

    /// `model.head` is read with the model's keys: `weightnorm` on the mlp, refused (naming
    /// the key) on the others and for unknown values; a linear head is written as before the
    /// key existed.
    #[test]
    fn head_key_is_validated() {
        let parse = |j: &str| serde_json::from_str::<ModelConfig>(j).map_err(|e| e.to_string());
        assert_eq!(
            parse(r#"{"kind": "mlp", "hidden": [8], "head": "weightnorm"}"#),
            Ok(ModelConfig::MlpWeightNorm { hidden: vec![8] })
        );
        assert_eq!(
            parse(r#"{"kind": "mlp", "head": "linear"}"#),
            Ok(ModelConfig::Mlp {
                hidden: vec![400, 400]
            })
        );
        assert_eq!(
            parse(r#"{"kind": "cnn", "head": "linear"}"#).map(|m| m.head()),
            Ok(Head::Linear)
        );
        for kind in ["resmlp", "cnn", "vit"] {
            let e = parse(&format!(r#"{{"kind": "{kind}", "head": "weightnorm"}}"#));
            let e = e.err().unwrap_or_default();
            assert!(e.contains("model.head") && e.contains(kind), "{kind}: {e}");
        }
        let e = parse(r#"{"kind": "mlp", "head": "cosine"}"#)
            .err()
            .unwrap_or_default();
        assert!(e.contains("cosine") && e.contains("weightnorm"), "{e}");
        assert!(parse(r#"{"kind": "mlp", "heads": 2}"#).is_err());
        // Written back: the same config; no `head` key for a linear head.
        for m in [
            ModelConfig::mlp(vec![3], Head::WeightNorm),
            ModelConfig::mlp(vec![3], Head::Linear),
            ModelConfig::Cnn {
                channels: [2, 3],
                hidden: 4,
            },
        ] {
            let j = serde_json::to_string(&m).expect("json");
            assert_eq!(j.contains("head"), m.head() == Head::WeightNorm, "{j}");
            assert_eq!(parse(&j), Ok(m));
        }
        // TOML (run files) names the key too.
        let e = toml::from_str::<ModelConfig>("kind = \"vit\"\nhead = \"weightnorm\"")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("model.head"), "{e}");
    }

    /// Sizes are refused before anything is allocated, naming the keys; the estimate is
    /// the built network's exact parameter count for the plain models.
    #[test]
    fn sizes_are_checked_before_allocation() {
        let vit = |patch, d_model, layers, heads| ModelConfig::Vit {
            patch,
            d_model,
            layers,
            heads,
        };
        let cnn = |channels, hidden| ModelConfig::Cnn { channels, hidden };
        let resmlp = |width, hidden, blocks| ModelConfig::Resmlp {
            width,
            hidden,
            blocks,
        };
        let mlp = |hidden: &[usize]| ModelConfig::Mlp {
            hidden: hidden.to_vec(),
        };
        let image = Some((1, 28, 28));
        for cfg in [
            mlp(&[7, 5]),
            ModelConfig::mlp(vec![7, 5], Head::WeightNorm),
            resmlp(8, 16, 2),
            cnn([2, 3], 4),
            vit(7, 8, 2, 2),
        ] {
            let net = cfg.build(784, image, 10, &Device::flex()).expect("net");
            let want = params::param_count(&net) as u128;
            assert_eq!(cfg.size(784, image, 10).0, want, "{cfg:?}");
        }
        let huge = 1_000_000_000_000;
        for (cfg, key) in [
            (mlp(&[huge]), "model.hidden = [1000000000000]"),
            (mlp(&[usize::MAX, usize::MAX]), "model.hidden"),
            (mlp(&[0]), "must be positive"),
            (mlp(&[4; MAX_DEPTH + 1]), "layers, more than"),
            (resmlp(huge, 4, 1), "model.width = 1000000000000"),
            (resmlp(64, 64, 1 << 20), "model.blocks = 1048576"),
            (resmlp(8, 0, 1), "must be positive"),
            (cnn([1 << 20, 1 << 20], 4), "model.channels"),
            (cnn([4, 0], 4), "must be positive"),
            (vit(1 << 20, 8, 1, 2), "model.patch = 1048576"),
            (vit(7, 1 << 16, 1, 2), "model.d_model = 65536"),
            (vit(7, 64, 1 << 20, 2), "model.layers = 1048576"),
            (vit(7, 64, 1, 0), "model.heads = 0"),
            (vit(4, 0, 1, 1), "model.d_model = 0"),
            (vit(4, 8, 0, 2), "must be positive"),
            (resmlp(0, 4, 1), "must be positive"),
            (resmlp(8, 4, 0), "must be positive"),
            (cnn([0, 4], 4), "must be positive"),
            (cnn([4, 4], 0), "must be positive"),
            (vit(7, 64, 1, huge), "multiple of model.heads"),
            (vit(0, 8, 1, 2), "must be positive"),
        ] {
            let e = cfg
                .check()
                .map_or_else(|e| e.to_string(), |_| "<no error>".into());
            assert!(e.contains(key), "{cfg:?}: {e}");
        }
        // Within the limits alone, too large for the data: refused before building, and a
        // batch that holds too many activations too.
        let wide = mlp(&[1 << 16]);
        assert!(wide.check().is_ok());
        let e = wide.build(1 << 16, None, 10, &Device::flex()).err();
        assert!(e.is_some_and(|e| e.to_string().contains("more than the limit")));
        let e = cnn([64, 64], 32).check_size(784, image, 10, 1 << 13).err();
        assert!(e.is_some_and(|e| e.to_string().contains("activation values")));
        assert!(cnn([64, 64], 32).check_size(784, image, 10, 128).is_ok());
    }
}
