//! `engram bench ...`: benchmarks (to be written).

use crate::Ctx;
use anyhow::{Result, bail};

#[derive(clap::Subcommand)]
pub enum Bench {
    /// Read and convert throughput against the raw read bound.
    Io,
}

pub fn run(_ctx: &Ctx, _b: Bench) -> Result<()> {
    bail!("not implemented yet")
}
