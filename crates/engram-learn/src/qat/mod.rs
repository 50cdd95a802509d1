//! Quantization-aware training: OFQ (arXiv 2302.02210, nbasyl/OFQ) on the tiny transformer
//! `model::qvit`. Card: shared/methods/quantization.md ("OFQ").
//!
//! One file per piece: the quantizers (`statsq`, `lsq`), query-key reparametrization (`qkr`),
//! confidence-guided annealing (`cga`), oscillation tracking (`oscillation`) and the
//! experiment runner (`ofq`) that benchmarks call.

pub mod cga;
pub mod lsq;
pub mod ofq;
pub mod oscillation;
pub mod qkr;
pub mod statsq;

pub use ofq::{FpModel, OfqArm, OfqConfig, OfqResult, OscPoint, pretrain, run_arm};
pub use oscillation::OscStat;
