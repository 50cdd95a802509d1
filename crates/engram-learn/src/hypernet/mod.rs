//! Networks that write networks (card: shared/methods/hypernetworks.md): task-conditioned
//! hypernetworks that generate a target MLP's weights from a task embedding, chunk by chunk
//! with an MLP ([`chunked`], von Oswald et al.) or in sequence with an LSTM ([`lstm`], the
//! dependency-preserving hypernetwork), trained task after task with the output regulariser
//! ([`task`]; a run file of its own, [`run`], is `engram hypernet`); HY-WU's
//! instance-conditioned LoRA generation on a frozen network ([`hywu`]); and KNOW's weight
//! nowcasting ([`know`]).
//!
//! Generators keep their parameters as plain values ([`params::ParamSet`]) made into autodiff
//! leaves each step, and the target network's forward pass takes its weights as tensors
//! ([`target`]), so that gradients reach the generator.

pub mod chunked;
pub mod hywu;
pub mod know;
pub mod lstm;
pub mod params;
pub mod run;
pub mod target;
pub mod task;
