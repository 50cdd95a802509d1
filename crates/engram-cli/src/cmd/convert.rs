//! `engram convert` (to be written).

use crate::Ctx;
use anyhow::{Result, bail};

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_ctx: &Ctx, _a: Args) -> Result<()> {
    bail!("engram convert is not implemented yet")
}
