//! BN-adapt (Schneider et al., arXiv 2006.16971; Nado et al., arXiv 2006.10963): the source
//! model normalising each test batch by its own statistics instead of the running ones; no
//! parameter changes. Card: `shared/methods/test_time.md` (the "BN-adapt" column, and the
//! statistics CoTTA's anchor uses).

use super::Adapter;
use super::source::{Fixed, Params};
use crate::Result;
use crate::model::batchnorm::BnMode;
use crate::strategy::parse_keys;

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Adapter>> {
    let _: Params = parse_keys("adapter", "bn-adapt", v)?;
    Ok(Box::new(Fixed::new("bn-adapt", BnMode::Batch)))
}

#[cfg(test)]
mod tests {
    use super::super::testutil;
    use super::*;

    #[test]
    fn bn_adapt_normalises_by_the_batch() {
        let src = testutil::source(1);
        let mut a = build(&serde_json::Value::Null).unwrap_or_else(|e| panic!("{e}"));
        a.reset(&src).unwrap_or_else(|e| panic!("{e}"));
        let x = testutil::batch(4, 2);
        let all = a.step(&x, 4).unwrap_or_else(|e| panic!("{e}"));
        // Batch statistics: an example's logits depend on the rest of its batch.
        let two = a.step(&x[..288], 2).unwrap_or_else(|e| panic!("{e}"));
        let d: f32 = all[..6].iter().zip(&two).map(|(p, q)| (p - q).abs()).sum();
        assert!(d > 1e-4, "{d}");
        // Without BatchNorm there is nothing to adapt: refused.
        let mut plain = testutil::source(1);
        plain.net = crate::model::ModelConfig::default()
            .build(144, None, 3, &burn::prelude::Device::flex())
            .unwrap_or_else(|e| panic!("{e}"));
        let e = a
            .reset(&plain)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("bn-cnn"), "{e}");
    }
}
