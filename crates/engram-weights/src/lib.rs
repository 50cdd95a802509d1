//! engram-weights: weight-space operations on plain f32 slices, streamed over checkpoints.

pub mod compress;
pub mod embed;
pub mod graft;
pub mod maskcode;
pub mod merge;
pub mod nowcast;
pub mod output;
pub mod patch;
pub mod quant;
pub mod rng;
pub mod select;
pub mod spectral;
pub mod stream;
pub mod synth;
pub mod tall;
#[cfg(test)]
pub mod testutil;
pub mod tv;
