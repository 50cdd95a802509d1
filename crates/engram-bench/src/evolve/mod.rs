//! `engram evolve`: CMA-ES over merge parameters (per-model weights and densities, optionally
//! per layer group), each candidate merged and scored by the user's command, as
//! mergekit-evolve does. (Issue 24; CMA-ES after Hansen's tutorial, arXiv 1604.00772.)
//!
//! - [`config`]: the YAML configuration and its checks;
//! - [`cmaes`]: the strategy (ask/tell, seeded);
//! - [`candidate`]: a point of [0, 1]ⁿ as a mergekit config, and the job that evaluates it;
//! - [`command`]: the score command, run with a time limit;
//! - [`run`]: the search loop over generations, through the sweep runner, resumable.

pub mod candidate;
pub mod cmaes;
pub mod command;
pub mod config;
pub mod run;

pub use run::{EvolveResults, Options, run};
