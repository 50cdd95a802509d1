//! engram-learn: datasets, scenarios, models, trainer, strategies and metrics.
//! The deep-learning framework (burn) is used here only (DESIGN.md).

pub mod config;
pub mod data;
pub mod finetune;
pub mod metrics;
pub mod model;
pub mod scenario;
pub mod strategy;
pub mod train;
