//! Source: no adaptation, the baseline of every test-time adaptation table
//! (`shared/methods/test_time.md`): the trained model in evaluation mode, BatchNorm with its
//! running statistics. [`Fixed`] is also BN-adapt's body (bn_adapt.rs), which differs only in
//! the statistics.

use super::{Adapter, Source, frozen, host, input};
use crate::model::Net;
use crate::model::batchnorm::BnMode;
use crate::strategy::parse_keys;
use crate::{Result, err};
use burn::prelude::*;

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {}

/// A network that never changes, its BatchNorm layers in one mode.
pub struct Fixed {
    name: &'static str,
    mode: BnMode,
    net: Option<(Net, usize)>,
    device: Device,
}

impl Fixed {
    pub fn new(name: &'static str, mode: BnMode) -> Fixed {
        Fixed {
            name,
            mode,
            net: None,
            device: Device::flex(),
        }
    }
}

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Adapter>> {
    let _: Params = parse_keys("adapter", "source", v)?;
    Ok(Box::new(Fixed::new("source", BnMode::Running)))
}

impl Adapter for Fixed {
    fn name(&self) -> &'static str {
        self.name
    }

    fn needs_batchnorm(&self) -> bool {
        self.mode == BnMode::Batch
    }

    fn params(&self) -> serde_json::Value {
        serde_json::json!({})
    }

    fn reset(&mut self, source: &Source) -> Result<()> {
        if self.mode == BnMode::Batch {
            super::need_batchnorm(self.name, source)?;
        }
        self.net = Some((frozen(source, self.mode), source.dim));
        Ok(())
    }

    fn step(&mut self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let Some((net, dim)) = &self.net else {
            return Err(err!("adapter {}: step before reset", self.name));
        };
        Ok(host(net.forward(input(x, n, *dim, &self.device)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil;
    use super::*;

    #[test]
    fn source_uses_running_statistics_and_never_changes() {
        let src = testutil::source(1);
        let mut a = build(&serde_json::Value::Null).unwrap_or_else(|e| panic!("{e}"));
        assert!(a.step(&testutil::batch(2, 0), 2).is_err());
        a.reset(&src).unwrap_or_else(|e| panic!("{e}"));
        let x = testutil::batch(4, 2);
        let first = a.step(&x, 4).unwrap_or_else(|e| panic!("{e}"));
        // Running statistics: each example's logits do not depend on the rest of the batch.
        let one = a.step(&x[..144], 1).unwrap_or_else(|e| panic!("{e}"));
        for (p, q) in first[..3].iter().zip(&one) {
            assert!((p - q).abs() < 1e-5);
        }
        assert_eq!(a.step(&x, 4).unwrap_or_else(|e| panic!("{e}")), first);
        assert!(build(&serde_json::json!({"lr": 1})).is_err());
    }
}
