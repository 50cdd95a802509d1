//! `engram study`: end-to-end studies that train models with engram-learn and then work on
//! their weights with engram-weights.

pub mod merge8;

use crate::Ctx;
use anyhow::Result;

#[derive(clap::Subcommand)]
pub enum Study {
    /// The merge-8 study (B2, B6): eight image tasks from Fashion-MNIST and MNIST digits, one
    /// pre-trained base, eight fine-tunes; Task Arithmetic, TIES, TALL masks, Consensus and
    /// compression, evaluated on real test data, with an HTML report.
    Merge8(merge8::Args),
}

pub fn run(ctx: &Ctx, s: Study) -> Result<()> {
    match s {
        Study::Merge8(a) => merge8::run(ctx, a),
    }
}
