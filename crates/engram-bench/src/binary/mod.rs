//! `engram bench binary` (B12 in BENCHMARKS.md): the last two seed papers whose parts fit a
//! CPU toolkit, judged at our scale.
//!
//! - Binary-weight continual learning in field space (Phys. Rev. E 108, 014309 (2023); card
//!   shared/methods/theory.md): the teacher–student perceptron (`perceptron`, see
//!   [`perceptron`]) and deep binary networks on Permuted Fashion-MNIST against a
//!   straight-through and a metaplastic binary network (`deep`, see [`deep`]).
//! - The Ker-VLJEPA parts (arXiv 2603.23308; card shared/methods/robustness_safety.md):
//!   anisotropy and whitening of a CNN's and a character language model's features
//!   (`whiten`, see [`whiten`]), a two-phase freeze-and-anchor curriculum (`curriculum`, see
//!   [`curriculum`]) and per-class thresholds for macro-F1 (`thresholds`, see [`thresholds`]).
//!
//! Output under `--out` (default `bench-out/binary`, or `bench-out/binary-quick`): `runs/`
//! (finished units, read back by a later invocation with the same settings), `results.json`
//! and `report/index.html` (one atomic switch).

pub mod curriculum;
pub mod deep;
pub mod page;
pub mod perceptron;
pub mod thresholds;
pub mod whiten;

use crate::Progress;
pub use crate::parts::Options;
pub use crate::parts::{Ctx, PartOut, Verdict};
use crate::parts::{Study, run_parts};
use anyhow::Result;
use serde_json::Value;

/// The binary-weight card.
pub const CARD_BINARY: &str = "shared/methods/theory.md (binary-weight variational CL)";
/// The Ker-VLJEPA card.
pub const CARD_KER: &str = "shared/methods/robustness_safety.md (Ker-VLJEPA parts)";
pub const CARD: &str = "shared/methods/theory.md (binary-weight variational CL) and \
                        shared/methods/robustness_safety.md (Ker-VLJEPA parts)";

pub const PARTS: [&str; 5] = ["perceptron", "deep", "whiten", "curriculum", "thresholds"];

/// Runs the study; returns `results.json`'s document.
pub fn run(o: &Options, progress: &mut dyn FnMut(Progress)) -> Result<Value> {
    let study = Study {
        name: "binary",
        card: CARD,
        parts: &PARTS,
    };
    let mut part = |p: &str, cx: &Ctx, progress: &mut dyn FnMut(Progress)| match p {
        "perceptron" => perceptron::run(cx, progress),
        "deep" => deep::run(cx, progress),
        "whiten" => whiten::run(cx, progress),
        "curriculum" => curriculum::run(cx, progress),
        _ => thresholds::run(cx, progress),
    };
    run_parts(&study, o, &mut part, page::render, progress)
}
