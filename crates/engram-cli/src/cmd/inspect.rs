//! `engram inspect` (to be written).

use crate::Ctx;
use anyhow::{Result, bail};

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_ctx: &Ctx, _a: Args) -> Result<()> {
    bail!("engram inspect is not implemented yet")
}
