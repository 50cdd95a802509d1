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
use crate::parts::{Asked, Study, run_parts};
pub use crate::parts::{Ctx, PartOut, Verdict};
use anyhow::Result;
use serde_json::Value;
use std::path::PathBuf;

pub const CARD: &str = "shared/methods/robustness_safety.md (Deep Ignorance)";

/// Settings of `engram bench ignorance`.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Output folder (default `bench-out/ignorance`, or `bench-out/ignorance-quick`).
    pub out: Option<PathBuf>,
    /// Seeds (default 0, 1, 2; `quick` 0).
    pub seeds: Vec<u64>,
    /// Short training and attacks: the pipeline end to end, not the benchmark's numbers.
    pub quick: bool,
    /// Parts to run: text, image (default both).
    pub parts: Vec<String>,
    pub data_dir: Option<PathBuf>,
    /// The command line, recorded.
    pub command: String,
}

pub const PARTS: [&str; 2] = ["text", "image"];

impl Options {
    pub fn out(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| {
            PathBuf::from(match self.quick {
                true => "bench-out/ignorance-quick",
                false => "bench-out/ignorance",
            })
        })
    }
}

/// Runs the study; returns `results.json`'s document.
pub fn run(o: &Options, progress: &mut dyn FnMut(Progress)) -> Result<Value> {
    let study = Study {
        name: "ignorance",
        card: CARD,
        parts: &PARTS,
    };
    let asked = Asked {
        out: o.out(),
        parts: &o.parts,
        quick: o.quick,
        seeds: &o.seeds,
        data_dir: o.data_dir.as_deref(),
        command: &o.command,
    };
    let mut part = |p: &str, cx: &Ctx, progress: &mut dyn FnMut(Progress)| match p {
        "text" => text::run(cx, progress),
        _ => image::run(cx, progress),
    };
    run_parts(&study, &asked, &mut part, page::render, progress)
}
