//! Binary-weight continual learning (issue 22; card `shared/methods/theory.md`, "Binary-weight
//! variational continual learning (field space)"; Phys. Rev. E 108, 014309 (2023)).
//!
//! - [`gauss`]: the Gaussian tail H(u) in logarithms, stable far into the tail.
//! - [`perceptron`]: the teacher–student binary perceptron learnt in field space, two tasks.
//! - [`deep`]: a 784-512-512-10 binary network on a sequence of tasks, in four arms: the
//!   field network with the per-step proximal term or the task anchor, a straight-through
//!   binary network, and the metaplastic one of Laborieux et al. (2021).
//! - [`tasks`]: the deep experiment's task sequence (permuted images).
//! - [`update`]: the element-wise parameter updates of the four arms.

pub mod deep;
pub mod gauss;
pub mod perceptron;
pub mod tasks;
pub mod update;

pub use deep::{Arm, DeepConfig, DeepNet, DeepOut, DeepProgress, META_M, beta_schedule, run};
pub use gauss::{dlog_h, log_h};
pub use perceptron::{
    PerceptronConfig, Task1Out, Task2, Task2Out, export_sign, generalization_error, kl_fields,
    train_task1, train_task2,
};
pub use tasks::{Task, permuted_tasks};
