//! Joint training: at task k, train on the union of the data of tasks 1..k (engram's
//! cumulative form of the upper bound; the last row of its accuracy matrix is the joint model).
//! Card: methods/metrics.md (baselines of every comparison).

use super::{Ctx, Strategy, parse_params};
use crate::Result;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {}

pub struct Joint;

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    let _: Params = parse_params("joint", v)?;
    Ok(Box::new(Joint))
}

impl Strategy for Joint {
    fn name(&self) -> &'static str {
        "joint"
    }

    fn train_examples(&mut self, cx: &Ctx) -> Vec<(usize, usize)> {
        (0..=cx.task)
            .flat_map(|t| cx.scenario.tasks[t].train.iter().map(move |&i| (t, i)))
            .collect()
    }
}
