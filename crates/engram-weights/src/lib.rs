//! engram-weights: weight-space operations on plain f32 slices, streamed over checkpoints.

pub mod rng;
pub mod synth;
