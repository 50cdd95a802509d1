//! TENT (Wang et al., "Tent: Fully Test-Time Adaptation by Entropy Minimization", ICLR 2021,
//! arXiv 2006.10726), continual: card `shared/methods/test_time.md` ("TENT in the same
//! repository": CoTTA's optimizer on the BatchNorm affine parameters only).
//!
//! Every BatchNorm layer normalises by the batch's statistics; each test batch takes one Adam
//! step on the mean prediction entropy −Σ_k p_k log p_k (gradient through both factors, as
//! the reference's `softmax_entropy`), updating only γ and β. The predictions returned are
//! the logits of the forward pass the step was computed from (before the update). Never
//! reset within a stream: that is the continual setting whose error rises over rounds.

use super::{
    Adapter, Source, adam, check_lr, default_lr, host, input, need_batchnorm, soft_cross_entropy,
    trainable,
};
use crate::model::Net;
use crate::model::params::{drop_grad, param_infos};
use crate::strategy::parse_keys;
use crate::train::fused::Optimizer;
use crate::{Result, err};
use burn::optim::GradientsParams;
use burn::prelude::*;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Params {
    /// Adam's learning rate (reference: 1e-3, betas (0.9, 0.999), no weight decay).
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Optimizer steps per test batch (reference: 1).
    #[serde(default = "one")]
    pub steps: usize,
}

/// Most optimizer steps per test batch (the reference takes 1).
pub const MAX_STEPS: usize = 100;

fn one() -> usize {
    1
}

pub struct Tent {
    p: Params,
    state: Option<State>,
}

struct State {
    student: Net,
    opt: Optimizer,
    affine: Vec<String>,
    dim: usize,
    device: Device,
}

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Adapter>> {
    let p: Params = parse_keys("adapter", "tent", v)?;
    check_lr("tent", p.lr)?;
    if !(1..=MAX_STEPS).contains(&p.steps) {
        return Err(err!(
            "adapter tent: steps = {} must be 1 to {MAX_STEPS}",
            p.steps
        ));
    }
    Ok(Box::new(Tent { p, state: None }))
}

impl Adapter for Tent {
    fn name(&self) -> &'static str {
        "tent"
    }

    fn needs_batchnorm(&self) -> bool {
        true
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.p).unwrap_or_default()
    }

    fn reset(&mut self, source: &Source) -> Result<()> {
        need_batchnorm("tent", source)?;
        let (student, device) = trainable("tent", source)?;
        self.state = Some(State {
            device,
            affine: student.bn_affine_names(),
            student,
            opt: Optimizer::new(&adam(self.p.lr)),
            dim: source.dim,
        });
        Ok(())
    }

    fn step(&mut self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let Some(st) = self.state.as_mut() else {
            return Err(err!("adapter tent: step before reset"));
        };
        let x = input(x, n, st.dim, &st.device)?;
        // The predictions are the logits of the last pass, as the reference's `forward`
        // returns (with one step: before the update).
        let mut last = None;
        for _ in 0..self.p.steps {
            let z = st.student.forward(x.clone());
            let p = burn::tensor::activation::softmax(z.clone(), 1);
            let loss = soft_cross_entropy(p, z.clone());
            let mut grads = GradientsParams::from_grads(loss.backward(), &st.student);
            for info in param_infos(&st.student) {
                if !st.affine.contains(&info.name) {
                    drop_grad(&mut grads, &info);
                }
            }
            let student = st.student.clone();
            st.student = st.opt.step(self.p.lr, student, grads);
            last = Some(z);
        }
        Ok(last.map(host).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil;
    use super::*;
    use crate::model::params::named_values;

    #[test]
    fn tent_changes_only_batchnorm_affine_parameters_and_lowers_entropy() {
        let src = testutil::source(3);
        let mut a = Tent {
            p: Params { lr: 0.05, steps: 1 },
            state: None,
        };
        a.reset(&src).unwrap_or_else(|e| panic!("{e}"));
        let before = named_values(&src.net);
        let x = testutil::batch(16, 5);
        let entropy = |z: &[f32]| -> f64 {
            z.chunks(3)
                .map(|r| {
                    let m = r.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
                    let e: Vec<f64> = r.iter().map(|&v| (v as f64 - m).exp()).collect();
                    let s: f64 = e.iter().sum();
                    -e.iter().map(|v| v / s * (v / s).ln()).sum::<f64>()
                })
                .sum::<f64>()
                / 16.0
        };
        let z0 = a.step(&x, 16).unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..20 {
            a.step(&x, 16).unwrap_or_else(|e| panic!("{e}"));
        }
        let z1 = a.step(&x, 16).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            entropy(&z1) < entropy(&z0),
            "{} {}",
            entropy(&z1),
            entropy(&z0)
        );
        let Some(st) = &a.state else { panic!() };
        let after = named_values(&st.student);
        for (name, v) in &before {
            let moved = v.iter().zip(&after[name]).any(|(p, q)| p != q);
            let affine = name.starts_with("bn") && !name.contains("running");
            assert_eq!(moved, affine, "{name}");
        }
        assert!(build(&serde_json::json!({"lr": 0})).is_err());
        assert!(build(&serde_json::json!({"steps": 0})).is_err());
    }
}
