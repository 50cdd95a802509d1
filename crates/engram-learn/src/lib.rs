//! engram-learn: datasets, scenarios, models, trainer, strategies and metrics.
//! The deep-learning framework (burn) is used here only (DESIGN.md).
//!
//! Modules import only from the modules before them in this order (DESIGN.md: imports point
//! down): `data`; `scenario`; `backend`, `optim`; `model`; `metrics`, `eval`; `strategy`;
//! `train`; `lm` (the character language model's training and measures); `multilabel`
//! (multi-label grids and a network trained with binary cross-entropy); `binary` (binary-weight
//! networks in field space: the teacher-student perceptron, deep binary networks and their
//! baselines); `hypernet` (networks that write networks: data, scenario, optim, model); `adapt`
//! (test-time adapters, which use the trainer's optimizer), `qat` (quantization-aware
//! training, likewise); `config`, `curriculum` (phases of training: a stage each, evaluated on
//! every phase's data), `run`.
//! `error` is the crate's one error type, which wraps data's and scenario's own, and every
//! module may return it.
pub mod error;

pub mod adapt;
pub mod backend;
pub mod binary;
pub mod config;
pub mod curriculum;
pub mod data;
pub mod eval;
pub mod hypernet;
pub mod lm;
pub mod metrics;
pub mod model;
pub mod multilabel;
pub mod optim;
pub mod qat;
pub mod robust;
pub mod run;
pub mod scenario;
pub mod strategy;
pub mod train;

pub use error::{Error, Result};
