//! engram-learn: datasets, scenarios, models, trainer, strategies and metrics.
//!
//! The training engine is built by its own issue; this crate holds the layer's place in the
//! workspace so that the dependency arrows (cli -> report -> learn -> weights -> ckpt) exist
//! from the start.
