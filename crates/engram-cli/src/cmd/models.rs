//! Helpers of the weight-space commands: opening models with a clear error, and the options
//! every TALL-based command shares.

use anyhow::{Context, Result, bail};
use engram_ckpt::{DType, Model};
use engram_weights::tall::{LAMBDA_GRID, MtlRecipe, Tall};
use std::path::{Path, PathBuf};

/// Opens a model and verifies the checksums engram records in the files it writes (models
/// written by other tools carry none); every command that reads a model's data opens it here.
pub fn open(path: &Path) -> Result<Model> {
    let m = Model::open(path).with_context(|| format!("cannot open model {}", path.display()))?;
    m.verify()?;
    Ok(m)
}

pub fn open_all(paths: &[PathBuf]) -> Result<Vec<Model>> {
    paths.iter().map(|p| open(p)).collect()
}

/// The dtype of a model's first float tensor (f32 if it has none): the dtype a merged vector
/// over it is stored in unless the user says otherwise.
pub fn float_dtype_of(m: &Model) -> DType {
    m.tensors()
        .find(|v| v.dtype().is_float())
        .map(|v| v.dtype())
        .unwrap_or(DType::F32)
}

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
}

impl TallArgs {
    pub fn task_names(&self) -> Result<Vec<String>> {
        if !self.tasks.is_empty() {
            if self.tasks.len() != self.models.len() {
                bail!(
                    "{} task names for {} models",
                    self.tasks.len(),
                    self.models.len()
                );
            }
            return Ok(self.tasks.clone());
        }
        let names: Vec<String> = self
            .models
            .iter()
            .map(|p| {
                p.file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or("task")
                    .replace('.', "_")
            })
            .collect();
        let mut uniq = names.clone();
        uniq.sort();
        uniq.dedup();
        if uniq.len() != names.len() {
            return Ok((1..=names.len()).map(|i| format!("task{i}")).collect());
        }
        Ok(names)
    }

    pub fn lambdas(&self) -> Result<Vec<f32>> {
        if self.lambdas.is_empty() {
            return Ok(vec![self.lambda; self.models.len()]);
        }
        if self.lambdas.len() != self.models.len() {
            bail!(
                "{} lambdas for {} models",
                self.lambdas.len(),
                self.models.len()
            );
        }
        Ok(self.lambdas.clone())
    }

    pub fn recipe(&self) -> Result<MtlRecipe> {
        match (self.tau.as_str(), self.density) {
            ("ties", d) => Ok(MtlRecipe::Ties {
                density: d.unwrap_or(0.2),
            }),
            (tau, Some(_)) => bail!("--density applies to --tau ties only, not --tau {tau}"),
            _ => Ok(MtlRecipe::Sum),
        }
    }

    pub fn params_json(&self) -> serde_json::Value {
        serde_json::json!({
            "base": self.base, "models": self.models, "tasks": self.tasks,
            "lambda": self.lambda, "lambdas": self.lambdas, "tau": self.tau, "density": self.density,
            "lambda_grid_reference": LAMBDA_GRID,
        })
    }

    /// Opens the models and builds the masks' plan (TIES thresholds take one pass).
    pub fn open(&self) -> Result<(Model, Vec<Model>)> {
        // The options are checked before any model is read.
        let _ = (self.recipe()?, self.task_names()?, self.lambdas()?);
        Ok((open(&self.base)?, open_all(&self.models)?))
    }

    pub fn tall<'a>(&self, base: &'a Model, models: &'a [Model]) -> Result<Tall<'a>> {
        Ok(Tall::new(
            base,
            models.iter().collect(),
            self.task_names()?,
            self.recipe()?,
            self.lambdas()?,
        )?)
    }
}
