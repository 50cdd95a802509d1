//! `engram bench hypernet` (B10): networks that write networks. Card:
//! shared/methods/hypernetworks.md.
//!
//! - **Task-conditioned hypernetworks** (`tasks`, see [`tasks`]): the chunked-MLP hypernetwork
//!   (von Oswald et al.) and the LSTM (dependency-preserving) hypernetwork at one parameter
//!   budget, with the card's options (a) and (b), against EWC and SI on the target MLP, on
//!   Split Fashion-MNIST (Task-IL, with HNET+ENT's Class-IL) and Permuted Fashion-MNIST.
//! - **HY-WU** (`hywu`, see [`hywu`]): instance-conditioned LoRA generation against one shared
//!   LoRA on 4 conflicting label permutations, joint and sequential, with the shared LoRA's
//!   cross-task gradient cosines.
//! - **KNOW** (`know`, see [`know`]): weight nowcasting against naive and linear
//!   extrapolation, 5 seeds.
//!
//! Output under `--out` (default `bench-out/hypernet`, or `bench-out/hypernet-quick`): `runs/`
//! (one JSON per finished unit of work, read back by a later invocation with the same
//! settings), `results.json` and `report/index.html` (one atomic switch).

pub mod hywu;
pub mod know;
pub mod page;
pub mod tasks;

use crate::Progress;
pub use crate::machine::{cached, store};
pub use crate::parts::{Ctx, PartOut, Verdict};
use crate::parts::{Study, render_claims, run_parts};
use anyhow::Result;
use serde_json::Value;

/// Settings of `engram bench hypernet` (`--parts`: tasks, hywu, know).
pub use crate::parts::Options;

pub const PARTS: [&str; 3] = ["tasks", "hywu", "know"];

/// Runs the study; returns `results.json`'s document.
pub fn run(o: &Options, progress: &mut dyn FnMut(Progress)) -> Result<Value> {
    let study = Study {
        name: "hypernet",
        card: CARD,
        parts: &PARTS,
    };
    let mut part = |p: &str, cx: &Ctx, progress: &mut dyn FnMut(Progress)| match p {
        "tasks" => tasks::run(cx, progress),
        "hywu" => hywu::run(cx, progress),
        _ => know::run(cx, progress),
    };
    run_parts(&study, o, &mut part, page::render, progress)
}

/// The verdicts as text.
pub fn render_verdicts(v: &[Verdict]) -> String {
    render_claims(CARD, v)
}

pub const CARD: &str = "shared/methods/hypernetworks.md";
