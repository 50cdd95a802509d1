//! A test-only strategy that records every hook call in order, to prove the trainer calls
//! each hook when and as often as the contract says (DESIGN.md, "The strategy contract").

use super::{Batch, Ctx, State, Strategy, parse_params};
use crate::Result;
use crate::model::Net;
use burn::optim::GradientsParams;
use burn::prelude::*;
use std::sync::{Arc, Mutex};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {}

/// The shared log: `before_task 0`, `loss 0`, `after_backward 0`, `after_step 0`, ...
#[derive(Clone, Default)]
pub struct Probe {
    pub log: Arc<Mutex<Vec<String>>>,
}

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    let _: Params = parse_params("probe", v)?;
    Ok(Box::new(Probe::default()))
}

impl Probe {
    fn push(&self, s: String) {
        if let Ok(mut l) = self.log.lock() {
            l.push(s);
        }
    }
}

impl Strategy for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }
    fn before_task(&mut self, cx: &Ctx, net: Net) -> Result<Net> {
        self.push(format!("before_task {}", cx.task));
        Ok(net)
    }
    fn train_examples(&mut self, cx: &Ctx) -> Vec<(usize, usize)> {
        self.push(format!("train_examples {}", cx.task));
        cx.scenario.tasks[cx.task]
            .train
            .iter()
            .map(|&i| (cx.task, i))
            .collect()
    }
    fn loss(
        &mut self,
        cx: &Ctx,
        _net: &Net,
        _b: &Batch,
        _logits: Tensor<2>,
        loss: Tensor<1>,
    ) -> Tensor<1> {
        self.push(format!("loss {} {}", cx.task, cx.step));
        loss
    }
    fn after_backward(&mut self, cx: &Ctx, _net: &Net, _grads: &mut GradientsParams) {
        self.push(format!("after_backward {} {}", cx.task, cx.step));
    }
    fn after_step(&mut self, cx: &Ctx, net: Net) -> Net {
        self.push(format!("after_step {} {}", cx.task, cx.step));
        net
    }
    fn after_task(&mut self, cx: &Ctx, net: Net) -> Result<Net> {
        self.push(format!("after_task {}", cx.task));
        Ok(net)
    }
    fn state(&self) -> State {
        State::default()
    }
}
