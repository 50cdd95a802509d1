//! Models: an MLP, a small CNN and a tiny patch transformer, behind one `Net` type. Parameters
//! have stable names (`fc.0.weight`, `conv1.weight`, ...) and are saved and loaded as
//! safetensors through engram-ckpt, so that engram's weight-space commands work on them.

pub mod cnn;
pub mod conv;
pub mod io;
pub mod mlp;
pub mod params;
pub mod vit;

use burn::prelude::*;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ModelConfig {
    Mlp {
        #[serde(default = "default_hidden")]
        hidden: Vec<usize>,
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
    ) -> Result<Net, String> {
        let img = || {
            image
                .map(|(c, h, w)| [c, h, w])
                .ok_or_else(|| "this model needs image inputs".to_string())
        };
        Ok(match self {
            ModelConfig::Mlp { hidden } => {
                if hidden.contains(&0) {
                    return Err("mlp hidden widths must be positive".into());
                }
                Net::Mlp(mlp::Mlp::new(dim, hidden, outputs, device))
            }
            ModelConfig::Cnn { channels, hidden } => {
                let im = img()?;
                if im[1] < 10 || im[2] < 10 {
                    return Err(format!(
                        "the cnn needs images of at least 10×10, got {}×{}",
                        im[1], im[2]
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
                    return Err(format!(
                        "vit patch {patch} must divide the image side ({}×{})",
                        im[1], im[2]
                    ));
                }
                if *heads == 0 || d_model % heads != 0 || *layers == 0 {
                    return Err(format!(
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
            Net::Cnn(m) => m.forward(x),
            Net::Vit(m) => m.forward(x),
        }
    }

    /// The representation before the output layer.
    pub fn features(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Net::Mlp(m) => m.features(x),
            Net::Cnn(m) => m.features(x),
            Net::Vit(m) => m.features(x),
        }
    }
}
