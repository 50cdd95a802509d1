//! Helpers of the weight-space commands: opening models with a clear error, and the options
//! every TALL-based command shares.

use anyhow::Result;
use engram_ckpt::Model;
use engram_weights::spelling::Spelling;
use engram_weights::tall::Tall;
use engram_weights::tall_options::TallOptions;
use std::path::PathBuf;

/// Opens a model and verifies its checksums (`engram_bench::open_model`); every command that
/// reads a model's data opens it here.
pub use engram_bench::{open_model as open, open_models as open_all};

#[derive(clap::Args, Debug)]
pub struct TallArgs {
    /// The base (pre-trained) model all fine-tunes start from.
    #[arg(long)]
    pub base: PathBuf,
    /// Fine-tuned models, one per task.
    #[arg(required = true, num_args = 1..)]
    pub models: Vec<PathBuf>,
    /// Task names, comma-separated, in model order (default: the model folder names).
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// λ of every task's mask m_t = |τ_t| > λ·|τ_MTL − τ_t| (reference grid 0.2..0.6).
    #[arg(long, default_value_t = 0.6, conflicts_with = "lambdas")]
    pub lambda: f32,
    /// One λ per task, comma-separated (e.g. chosen on validation data).
    #[arg(long, value_delimiter = ',')]
    pub lambdas: Vec<f32>,
    /// How τ_MTL is built: `sum` (Task Arithmetic, unscaled) or `ties` (top-k over the
    /// whole model, elected sign, disjoint sum).
    #[arg(long, default_value = "sum", value_parser = ["sum", "ta", "ties"])]
    pub tau: String,
    /// With --tau ties (only): share of each task vector kept over the whole model
    /// (default 0.2).
    #[arg(long)]
    pub density: Option<f64>,
    /// With --tau ties: find the thresholds by two selection passes first, as engram did
    /// before it finished them during the pass over the masks (the same output; for
    /// `engram bench merge`'s comparison).
    #[arg(long, hide = true)]
    pub select_first: bool,
}

impl TallArgs {
    /// The options as the library reads them (`engram_weights::tall_options`).
    pub fn options(&self) -> TallOptions {
        TallOptions {
            base: self.base.clone(),
            models: self.models.clone(),
            tasks: self.tasks.clone(),
            lambda: self.lambda,
            lambdas: self.lambdas.clone(),
            tau: self.tau.clone(),
            density: self.density,
        }
    }

    pub fn params_json(&self) -> serde_json::Value {
        self.options().params_json()
    }

    /// Opens the models; the options are checked before any model is read.
    pub fn open(&self) -> Result<(Model, Vec<Model>)> {
        self.options()
            .check(Spelling::Flags)
            .map_err(anyhow::Error::msg)?;
        Ok((open(&self.base)?, open_all(&self.models)?))
    }

    /// The masks' plan (the TIES recipe's histogram pass; its thresholds are finished
    /// during the pass over the masks, or first with --select-first).
    pub fn tall<'a>(&self, base: &'a Model, models: &'a [Model]) -> Result<Tall<'a>> {
        let tall = self.options().tall(base, models)?;
        if self.select_first {
            tall.thresholds()?;
        }
        Ok(tall)
    }
}
