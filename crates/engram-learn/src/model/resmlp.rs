//! A residual MLP (the selective fine-tuning testbed of shared/methods/selective_finetuning.md):
//! a stem `in → width` with ReLU, `blocks` residual blocks h ← h + W₂·ReLU(W₁·h), and a linear
//! head. Blocks can be expanded in the manner of Control LLM (arXiv 2501.10979, same card): a
//! parallel copy of the block sees the same input and the two outputs are blended,
//! lerp with α = sigmoid(a) or dlerp with a per-example α = sigmoid(Linear_{2d→1}([h_pre;
//! h_exp])). The copy starts equal to the block, so an expanded network starts as the
//! original function.

use crate::{Result, err};
use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{relu, sigmoid};
use engram_weights::rng::Rng;

/// One residual branch W₂·ReLU(W₁·h).
#[derive(Module, Debug)]
pub struct Block {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Block {
    fn forward(&self, h: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(relu(self.fc1.forward(h)))
    }

    /// A copy with its own parameters (fresh ids, so that training the copy leaves the
    /// original alone), detached from any graph.
    fn copy(&self) -> Block {
        Block {
            fc1: copy_linear(&self.fc1),
            fc2: copy_linear(&self.fc2),
        }
    }
}

fn copy_linear(l: &Linear) -> Linear {
    Linear {
        weight: Param::from_tensor(l.weight.val().detach()),
        bias: l
            .bias
            .as_ref()
            .map(|b| Param::from_tensor(b.val().detach())),
    }
}

/// How an expanded block blends its two branches.
#[derive(Module, Debug)]
pub enum Blend {
    /// α = sigmoid(a), a single value.
    Lerp(Param<Tensor<1>>),
    /// α = sigmoid(Linear([h_pre; h_exp])) per example.
    Dlerp(Linear),
}

/// The parallel copy of a block and its blend.
#[derive(Module, Debug)]
pub struct Expansion {
    pub block: Block,
    pub blend: Blend,
}

/// How far an expanded branch is from the original (Control LLM's divergence losses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Divergence {
    /// mean (h_exp − h_pre)².
    #[default]
    Mse,
    /// mean over examples of smoothL1(ReLU(1 − cos(h_pre, h_exp))) on the block outputs
    /// (residual included).
    Cosine,
}

#[derive(Module, Debug)]
pub struct ResMlp {
    pub stem: Linear,
    pub blocks: Vec<Block>,
    /// One entry per block: its expansion, if any.
    pub exp: Vec<Option<Expansion>>,
    pub head: Linear,
}

impl ResMlp {
    pub fn new(
        input: usize,
        width: usize,
        hidden: usize,
        blocks: usize,
        outputs: usize,
        device: &Device,
    ) -> ResMlp {
        ResMlp {
            stem: LinearConfig::new(input, width).init(device),
            blocks: (0..blocks)
                .map(|_| Block {
                    fc1: LinearConfig::new(width, hidden).init(device),
                    fc2: LinearConfig::new(hidden, width).init(device),
                })
                .collect(),
            exp: (0..blocks).map(|_| None).collect(),
            head: LinearConfig::new(width, outputs).init(device),
        }
    }

    /// Expands `blocks` (indices) with copies blended by `lerp`: `Some(a)` starts at
    /// α = sigmoid(a); `None` is dlerp with a zero-bias gate whose weight is drawn uniformly
    /// in ±1/√(2·width) (a linear layer's default) from the stream (`seed`, block). An error
    /// for no block, an index out of range or a block already expanded.
    pub fn expand(
        mut self,
        blocks: &[usize],
        lerp: Option<f32>,
        seed: u64,
        device: &Device,
    ) -> Result<ResMlp> {
        if blocks.is_empty() {
            return Err(err!("no block to expand"));
        }
        for &b in blocks {
            let Some(block) = self.blocks.get(b) else {
                return Err(err!(
                    "the network has {} blocks: no block {b} to expand",
                    self.blocks.len()
                ));
            };
            if self.exp[b].is_some() {
                return Err(err!("block {b} is already expanded"));
            }
            let width = block.fc2.weight.dims()[1];
            let blend = match lerp {
                Some(a) => Blend::Lerp(Param::from_tensor(Tensor::<1>::from_data(
                    TensorData::new(vec![a], [1]),
                    device,
                ))),
                None => {
                    let bound = 1.0 / ((2 * width) as f64).sqrt();
                    let mut rng = Rng::keyed(seed, "dlerp-gate", b as u64);
                    let w: Vec<f32> = (0..2 * width)
                        .map(|_| ((rng.uniform_f64() * 2.0 - 1.0) * bound) as f32)
                        .collect();
                    Blend::Dlerp(Linear {
                        weight: Param::from_tensor(Tensor::<2>::from_data(
                            TensorData::new(w, [2 * width, 1]),
                            device,
                        )),
                        bias: Some(Param::from_tensor(Tensor::<1>::zeros([1], device))),
                    })
                }
            };
            self.exp[b] = Some(Expansion {
                block: block.copy(),
                blend,
            });
        }
        Ok(self)
    }

    /// Features before the head, and each expanded block's divergence (in block order).
    pub fn features_div(&self, x: Tensor<2>, div: Divergence) -> (Tensor<2>, Vec<Tensor<1>>) {
        let mut h = relu(self.stem.forward(x));
        let mut divs = Vec::new();
        for (block, exp) in self.blocks.iter().zip(&self.exp) {
            let pre = block.forward(h.clone());
            let f = match exp {
                None => pre,
                Some(e) => {
                    let ex = e.block.forward(h.clone());
                    let diff = ex.clone() - pre.clone();
                    divs.push(match div {
                        Divergence::Mse => diff.clone().square().mean(),
                        Divergence::Cosine => {
                            cosine_divergence(h.clone() + pre.clone(), h.clone() + ex.clone())
                        }
                    });
                    // pre + α·(exp − pre), i.e. (1 − α)·pre + α·exp.
                    let alpha = match &e.blend {
                        Blend::Lerp(a) => sigmoid(a.val()).unsqueeze_dim::<2>(0),
                        Blend::Dlerp(g) => {
                            let both =
                                Tensor::cat(vec![h.clone() + pre.clone(), h.clone() + ex], 1);
                            sigmoid(g.forward(both))
                        }
                    };
                    pre + diff * alpha
                }
            };
            h = h + f;
        }
        (h, divs)
    }

    pub fn features(&self, x: Tensor<2>) -> Tensor<2> {
        self.features_div(x, Divergence::Mse).0
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.head.forward(self.features(x))
    }

    /// Folds each lerp-expanded block into one: W ← (1 − α)·W_pre + α·W_exp. This changes
    /// the function unless α is 0 or 1 (a ReLU sits between the two layers). An error for a
    /// dlerp expansion, which blends per example and cannot be folded.
    pub fn merge_back(mut self) -> Result<ResMlp> {
        for (b, slot) in self.exp.iter_mut().enumerate() {
            let Some(e) = slot.take() else { continue };
            let Blend::Lerp(a) = &e.blend else {
                return Err(err!("block {b}: only a lerp blend can be merged back"));
            };
            let alpha: f32 = sigmoid(a.val()).into_scalar::<f32>();
            // (1 − α)·pre + α·exp as a new leaf parameter (on any backend, autodiff too).
            fn blend<const D: usize>(a: Tensor<D>, b: Tensor<D>, alpha: f32) -> Param<Tensor<D>> {
                let device = a.device();
                let t = a.detach().mul_scalar(1.0 - alpha) + b.detach().mul_scalar(alpha);
                Param::from_tensor(Tensor::from_data(t.into_data(), &device))
            }
            let mix = |pre: &Linear, ex: &Linear| Linear {
                weight: blend(pre.weight.val(), ex.weight.val(), alpha),
                bias: match (&pre.bias, &ex.bias) {
                    (Some(p), Some(x)) => Some(blend(p.val(), x.val(), alpha)),
                    _ => None,
                },
            };
            let pre = &self.blocks[b];
            let merged = Block {
                fc1: mix(&pre.fc1, &e.block.fc1),
                fc2: mix(&pre.fc2, &e.block.fc2),
            };
            self.blocks[b] = merged;
        }
        Ok(self)
    }

    /// Whether any block is expanded.
    pub fn is_expanded(&self) -> bool {
        self.exp.iter().any(Option::is_some)
    }
}

/// Control LLM's placement: with `layers` blocks and `expansions` copies, every
/// (layers/expansions)-th block, i.e. indices with (i + 1) mod (layers/expansions) = 0.
pub fn placement(layers: usize, expansions: usize) -> Vec<usize> {
    if expansions == 0 || layers == 0 {
        return Vec::new();
    }
    let every = (layers / expansions).max(1);
    (0..layers).filter(|i| (i + 1) % every == 0).collect()
}

/// mean over rows of smoothL1(ReLU(1 − cos(a, b))) (β = 1: ½d² below 1, d − ½ above).
pub fn cosine_divergence(a: Tensor<2>, b: Tensor<2>) -> Tensor<1> {
    let dot = (a.clone() * b.clone()).sum_dim(1);
    let na = a.square().sum_dim(1).sqrt();
    let nb = b.square().sum_dim(1).sqrt();
    let cos = dot / (na * nb).add_scalar(1e-8);
    let d = relu(cos.neg().add_scalar(1.0));
    let q = d.clone().clamp_max(1.0);
    (q.clone().square().mul_scalar(0.5) + d - q).mean()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_divergence_is_zero_for_parallel_rows_and_half_for_orthogonal_ones() {
        let d = Device::flex();
        let t = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [2, 2]), &d);
        let same = cosine_divergence(t(vec![1.0, 2.0, -3.0, 1.0]), t(vec![2.0, 4.0, -1.5, 0.5]));
        assert!(same.into_scalar::<f32>().abs() < 1e-6);
        // Row 0 orthogonal (d = 1: ½), row 1 opposite (d = 2: 2 − ½).
        let v = cosine_divergence(t(vec![1.0, 0.0, 1.0, 1.0]), t(vec![0.0, 3.0, -1.0, -1.0]));
        assert!((v.into_scalar::<f32>() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn placement_follows_control_llm() {
        assert_eq!(placement(32, 8), vec![3, 7, 11, 15, 19, 23, 27, 31]);
        assert_eq!(placement(4, 2), vec![1, 3]);
        assert!(placement(4, 0).is_empty());
    }

    #[test]
    fn an_expanded_network_starts_as_the_original_and_merges_back_exactly_at_the_ends() {
        let d = Device::flex();
        let _g = crate::backend::seeded(&d, 3);
        // On the training (autodiff) device, as after a run.
        let d = d.autodiff();
        let net = ResMlp::new(6, 8, 12, 4, 3, &d);
        let x = Tensor::<2>::random([5, 6], burn::tensor::Distribution::Default, &d);
        let out = |n: &ResMlp| -> Vec<f32> {
            n.forward(x.clone())
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap()
        };
        let y0 = out(&net);
        for lerp in [Some(0.0), Some(2.0), None] {
            let e = net.clone().expand(&[1, 3], lerp, 5, &d).unwrap();
            for (a, b) in out(&e).iter().zip(&y0) {
                assert!((a - b).abs() < 1e-5, "{lerp:?}");
            }
            assert!(e.clone().expand(&[1], lerp, 5, &d).is_err());
            assert!(e.clone().expand(&[4], lerp, 5, &d).is_err());
            match lerp {
                Some(_) => {
                    let m = e.merge_back().unwrap();
                    assert!(!m.is_expanded());
                    for (a, b) in out(&m).iter().zip(&y0) {
                        assert!((a - b).abs() < 1e-5);
                    }
                }
                None => assert!(e.merge_back().is_err()),
            }
        }
    }
}
