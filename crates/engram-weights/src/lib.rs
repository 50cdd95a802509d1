//! engram-weights: weight-space operations on plain f32 slices, streamed over checkpoints.

pub mod compat;
pub mod compress;
pub mod embed;
pub mod graft;
pub mod lora;
pub mod maskcode;
pub mod merge;
pub mod nowcast;
pub mod output;
pub mod patch;
pub mod quant;
pub mod rng;
pub mod select;
pub mod spectral;
pub mod spelling;
pub mod stream;
pub mod synth;
pub mod tall;
pub mod tall_options;
#[cfg(test)]
pub mod testutil;
pub mod tv;
