//! The trainer: runs a strategy through a scenario's tasks, evaluating after every task.

pub mod alloc;
pub mod checkpoint;
pub mod fused;
pub mod stage;
pub mod trainer;

pub use trainer::{Event, Masking, RunOutput, Start, TrainConfig, Trainer};
