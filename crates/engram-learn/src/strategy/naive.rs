//! Naive fine-tuning: train on each task in turn with no protection (the lower bound).
//! Card: methods/metrics.md (baselines of every comparison).

use super::{Strategy, parse_params};
use crate::Result;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {}

pub struct Naive;

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    let _: Params = parse_params("naive", v)?;
    Ok(Box::new(Naive))
}

impl Strategy for Naive {
    fn name(&self) -> &'static str {
        "naive"
    }
}
