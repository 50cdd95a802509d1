//! Models: an MLP, a residual MLP, a small CNN and a tiny patch transformer, behind one `Net`
//! type. Parameters
//! have stable names (`fc.0.weight`, `conv1.weight`, ...) and are saved and loaded as
//! safetensors through engram-ckpt, so that engram's weight-space commands work on them.

pub mod cnn;
pub mod conv;
pub mod io;
pub mod mlp;
pub mod params;
pub mod resmlp;
pub mod vit;

use crate::{Result, err};
use burn::prelude::*;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ModelConfig {
    Mlp {
        #[serde(default = "default_hidden")]
        hidden: Vec<usize>,
    },
    /// Stem `in → width`, `blocks` residual blocks `width → hidden → width`, linear head.
    Resmlp {
        #[serde(default = "default_width")]
        width: usize,
        #[serde(default = "default_res_hidden")]
        hidden: usize,
        #[serde(default = "default_blocks")]
        blocks: usize,
    },
    Cnn {
        #[serde(default = "default_channels")]
        channels: [usize; 2],
        #[serde(default = "default_cnn_hidden")]
        hidden: usize,
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
    },
}

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
    Vit(vit::TinyVit),
}

impl ModelConfig {
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
        let img = || {
            image
                .map(|(c, h, w)| [c, h, w])
                .ok_or_else(|| err!("this model needs image inputs"))
        };
        Ok(match self {
            ModelConfig::Mlp { hidden } => {
                if hidden.contains(&0) {
                    return Err("mlp hidden widths must be positive".into());
                }
                Net::Mlp(mlp::Mlp::new(dim, hidden, outputs, device))
            }
            ModelConfig::Resmlp {
                width,
                hidden,
                blocks,
            } => {
                if *width == 0 || *hidden == 0 {
                    return Err("resmlp width and hidden must be positive".into());
                }
                Net::ResMlp(resmlp::ResMlp::new(
                    dim, *width, *hidden, *blocks, outputs, device,
                ))
            }
            ModelConfig::Cnn { channels, hidden } => {
                let im = img()?;
                if im[1] < 10 || im[2] < 10 {
                    return Err(err!(
                        "the cnn needs images of at least 10×10, got {}×{}",
                        im[1],
                        im[2]
                    ));
                }
                if channels.contains(&0) || *hidden == 0 {
                    return Err("cnn channels and hidden width must be positive".into());
                }
                Net::Cnn(cnn::Cnn::new(im, *channels, *hidden, outputs, device))
            }
            ModelConfig::Vit {
                patch,
                d_model,
                layers,
                heads,
            } => {
                let im = img()?;
                if *patch == 0 || im[1] % patch != 0 || im[2] % patch != 0 {
                    return Err(err!(
                        "vit patch {patch} must divide the image side ({}×{})",
                        im[1],
                        im[2]
                    ));
                }
                if *heads == 0 || d_model % heads != 0 || *layers == 0 {
                    return Err(err!(
                        "vit d_model {d_model} must be a multiple of heads {heads}, layers > 0"
                    ));
                }
                Net::Vit(vit::TinyVit::new(
                    im, *patch, *d_model, *layers, *heads, outputs, device,
                ))
            }
        })
    }
}

impl Net {
    /// Logits for a batch of flat inputs `[batch, dim]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Net::Mlp(m) => m.forward(x),
            Net::ResMlp(m) => m.forward(x),
            Net::Cnn(m) => m.forward(x),
            Net::Vit(m) => m.forward(x),
        }
    }

    /// The representation before the output layer.
    pub fn features(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Net::Mlp(m) => m.features(x),
            Net::ResMlp(m) => m.features(x),
            Net::Cnn(m) => m.features(x),
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
            Net::Vit(m) => m.forward_fb(x, y),
        }
    }

    /// Whether the network has a feedback input.
    pub fn has_feedback(&self) -> bool {
        match self {
            Net::Mlp(m) => m.fb.is_some(),
            Net::ResMlp(_) => false,
            Net::Cnn(m) => m.fb.is_some(),
            Net::Vit(m) => m.fb.is_some(),
        }
    }

    /// Stable names of the output layer's weight `[features, classes]` and bias `[classes]`.
    pub fn head_names(&self) -> (String, String) {
        let p = match self {
            Net::Mlp(m) => format!("fc.{}", m.fc.len() - 1),
            Net::ResMlp(_) => "head".to_string(),
            Net::Cnn(_) => "fc2".to_string(),
            Net::Vit(_) => "head".to_string(),
        };
        (format!("{p}.weight"), format!("{p}.bias"))
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
}
