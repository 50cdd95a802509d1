//! The fine-tuning testbed's parameters as plain host matrices, by name. Every tensor is a
//! matrix: a weight `[in, out]` (inputs multiply from the left, as in burn's `Linear`) or a
//! bias `[1, out]`; adapters and expanded blocks add their own names. The host copy is the
//! truth: a training step uploads the tensors it needs and writes the updates back, so that
//! which entries may move is decided in plain Rust (and tested there).

use crate::data::rng::Rng;
use burn::prelude::*;
use std::collections::BTreeMap;

/// A row-major `rows × cols` matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Host {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Host {
    pub fn zeros(rows: usize, cols: usize) -> Host {
        Host {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    /// U(−1/√fan_in, 1/√fan_in), burn's default for `Linear` weights and biases.
    pub fn uniform(rows: usize, cols: usize, fan_in: usize, rng: &mut Rng) -> Host {
        let b = 1.0 / (fan_in.max(1) as f64).sqrt();
        Host {
            rows,
            cols,
            data: (0..rows * cols)
                .map(|_| ((rng.uniform() * 2.0 - 1.0) * b) as f32)
                .collect(),
        }
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    pub fn tensor(&self, device: &Device) -> Tensor<2> {
        Tensor::<2>::from_data(
            TensorData::new(self.data.clone(), [self.rows, self.cols]),
            device,
        )
    }
}

/// Named matrices, ordered by name.
pub type Params = BTreeMap<String, Host>;

/// Whether a name is a weight matrix (as opposed to a bias or a gate).
pub fn is_weight(name: &str) -> bool {
    name.ends_with(".weight")
}

/// A tensor's values back on the host.
pub fn to_host(t: Tensor<2>) -> Result<Vec<f32>, String> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| format!("reading a tensor back: {e:?}"))
}
