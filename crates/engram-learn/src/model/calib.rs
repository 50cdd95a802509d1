//! The inputs each weight matrix of a network sees, as plain rows: calibration data for
//! data-driven quantizers (NUPES, `shared/methods/quantization.md`), which minimise a layer's
//! output error ‖X·Wᵀ − X·Ŵᵀ‖² on them. A Linear's rows are its input vectors; a
//! convolution's are its unfolded k×k windows in (in, ky, kx) order, the order of its weight
//! `[out, in, k, k]` flattened. MLP and CNN only: the transformer's attention layers live
//! inside burn's encoder, whose intermediate inputs are not reachable.

use super::conv::{Layout, im2col, relu_max_pool2_nhwc};
use super::{ModelConfig, Net, params::load_params};
use crate::{Result, err};
use burn::prelude::*;
use burn::tensor::activation::relu;
use std::collections::BTreeMap;

/// Inputs of one weight: `rows` rows of `cols` values.
#[derive(Clone, Debug)]
pub struct LayerInputs {
    pub rows: usize,
    pub cols: usize,
    pub values: Vec<f32>,
}

fn host(t: Tensor<2>) -> LayerInputs {
    let [rows, cols] = t.dims();
    let values = t
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default();
    LayerInputs { rows, cols, values }
}

/// Unfolded 3×3 (kernel `k`) windows of an NHWC batch, without im2col's trailing one.
fn windows(x: Tensor<4>, k: usize) -> Tensor<2> {
    let cols = im2col(x.permute([0, 3, 1, 2]), k, Layout::Nchw);
    let [r, c] = cols.dims();
    cols.slice([0..r, 0..c - 1])
}

/// The inputs of every weight matrix of the network `model` holding `values`, on the `n`
/// examples `x` (row-major, `dim` features each; `image` their shape), keyed by the weight's
/// name (`fc.0.weight`, `conv1.weight`, ...).
pub fn layer_inputs(
    model: &ModelConfig,
    values: &BTreeMap<String, Vec<f32>>,
    x: &[f32],
    dim: usize,
    image: Option<(usize, usize, usize)>,
    outputs: usize,
) -> Result<BTreeMap<String, LayerInputs>> {
    let n = x.len() / dim.max(1);
    if n == 0 || n * dim != x.len() {
        return Err(err!(
            "{} calibration values are not whole examples of {dim}",
            x.len()
        ));
    }
    let device = Device::flex();
    let net = model.build(dim, image, outputs, &device)?;
    let net = load_params(net, values)?;
    let xt = Tensor::<2>::from_data(TensorData::new(x.to_vec(), [n, dim]), &device);
    let mut out = BTreeMap::new();
    match &net {
        Net::Mlp(m) if m.fb.is_none() && !m.norm_head => {
            let mut h = xt;
            for (i, l) in m.fc.iter().enumerate() {
                out.insert(format!("fc.{i}.weight"), host(h.clone()));
                h = l.forward(h);
                if i + 1 < m.fc.len() {
                    h = relu(h);
                }
            }
        }
        Net::Cnn(m) if m.fb.is_none() => {
            let (c, hh, ww) = image.ok_or_else(|| err!("the cnn needs image inputs"))?;
            let x4: Tensor<4> = xt.reshape([n, c, hh, ww]).permute([0, 2, 3, 1]);
            out.insert(
                "conv1.weight".into(),
                host(windows(x4.clone(), m.conv1.kernel())),
            );
            let h1 = relu_max_pool2_nhwc(m.conv1.forward_nhwc(x4));
            out.insert(
                "conv2.weight".into(),
                host(windows(h1.clone(), m.conv2.kernel())),
            );
            let h2 = relu_max_pool2_nhwc(m.conv2.forward_nhwc(h1));
            let [_, ph, pw, pc] = h2.dims();
            let f: Tensor<2> = h2.permute([0, 3, 1, 2]).reshape([n, pc * ph * pw]);
            out.insert("fc1.weight".into(), host(f.clone()));
            let f1 = relu(m.fc1.forward(f));
            out.insert("fc2.weight".into(), host(f1));
        }
        _ => {
            return Err(err!(
                "layer inputs are available for the plain mlp and cnn only"
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::named_values;

    /// The captured inputs reproduce each layer's output: X·W (+ b) through the next layer
    /// gives the network's logits.
    #[test]
    fn inputs_reproduce_the_logits() {
        let device = Device::flex();
        for (model, dim, image) in [
            (
                ModelConfig::Mlp {
                    hidden: vec![12, 8],
                },
                20,
                None,
            ),
            (
                ModelConfig::Cnn {
                    channels: [3, 4],
                    hidden: 6,
                },
                16 * 16,
                Some((1, 16, 16)),
            ),
        ] {
            let net = model.build(dim, image, 5, &device).unwrap();
            let vals = named_values(&net);
            let x: Vec<f32> = (0..3 * dim)
                .map(|i| ((i * 37 % 101) as f32) / 101.0)
                .collect();
            let ins = layer_inputs(&model, &vals, &x, dim, image, 5).unwrap();
            let (last, w) = match model {
                ModelConfig::Mlp { .. } => ("fc.2", "fc.2.weight"),
                _ => ("fc2", "fc2.weight"),
            };
            let li = &ins[w];
            assert_eq!(li.rows, 3);
            // burn's Linear weight is [in, out].
            let wv = &vals[w];
            let b = &vals[&format!("{last}.bias")];
            let outs = b.len();
            let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [3, dim]), &device);
            let logits = net_forward(&model, &vals, xt, dim, image);
            for r in 0..3 {
                for o in 0..outs {
                    let z: f32 = (0..li.cols)
                        .map(|k| li.values[r * li.cols + k] * wv[k * outs + o])
                        .sum::<f32>()
                        + b[o];
                    assert!((z - logits[r * outs + o]).abs() < 1e-4, "{model:?}");
                }
            }
            if let Some(c) = ins.get("conv2.weight") {
                // 16 → conv 14 → pool 7 → conv 5: 25 windows of 3·3·3 per image.
                assert_eq!((c.rows, c.cols), (3 * 25, 27));
            }
        }
    }

    fn net_forward(
        model: &ModelConfig,
        vals: &BTreeMap<String, Vec<f32>>,
        x: Tensor<2>,
        dim: usize,
        image: Option<(usize, usize, usize)>,
    ) -> Vec<f32> {
        let device = Device::flex();
        let net = load_params(model.build(dim, image, 5, &device).unwrap(), vals).unwrap();
        net.forward(x)
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }
}
