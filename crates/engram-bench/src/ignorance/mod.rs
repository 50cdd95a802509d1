//! `engram bench ignorance`: knowledge that never enters the weights (Deep Ignorance, arXiv
//! 2508.06601). Card: shared/methods/robustness_safety.md, "Deep Ignorance".
//!
//! - **Text** (`text`, see [`text`]): a character-level language model pretrained on
//!   Shakespeare's scenes, unfiltered, blocklist-filtered, and unfiltered then unlearned by
//!   gradient ascent; each attacked by fine-tuning on held-out hazard scenes (0, 10, 50, 200,
//!   1000 steps, one budget and learning rate for all), with a benign fine-tune as control and
//!   the hazard text given in context.
//! - **Image** (`image`, see [`image`]): the card's fast analogue on Fashion-MNIST, classes 7
//!   and 9 the "hazard" (label knowledge, not generation).
//!
//! Output under `--out` (default `bench-out/ignorance`, or `bench-out/ignorance-quick`):
//! `runs/` (finished units, read back by a later invocation with the same settings),
//! `results.json` and `report/index.html` (one atomic switch).

pub mod image;
pub mod page;
pub mod text;

use crate::Progress;
pub use crate::parts::{Ctx, PartOut, Verdict};
use crate::parts::{Study, run_parts};
use anyhow::Result;
use serde_json::Value;

pub const CARD: &str = "shared/methods/robustness_safety.md (Deep Ignorance)";

/// Settings of `engram bench ignorance` (`--parts`: text, image).
pub use crate::parts::Options;

pub const PARTS: [&str; 2] = ["text", "image"];

/// Runs the study; returns `results.json`'s document.
pub fn run(o: &Options, progress: &mut dyn FnMut(Progress)) -> Result<Value> {
    let study = Study {
        name: "ignorance",
        card: CARD,
        parts: &PARTS,
    };
    let mut part = |p: &str, cx: &Ctx, progress: &mut dyn FnMut(Progress)| match p {
        "text" => text::run(cx, progress),
        _ => image::run(cx, progress),
    };
    run_parts(&study, o, &mut part, page::render, progress)
}
