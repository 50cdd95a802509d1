//! The options every TALL-based front-end function shares (`engram tall`, `consensus`,
//! `compress` and their Python twins): the base, the fine-tunes, task names, λ and how τ_MTL
//! is built, checked and turned into a [`Tall`] plan in one place.

use crate::spelling::Spelling;
use crate::tall::{LAMBDA_GRID, MtlRecipe, Tall};
use engram_ckpt::{Error, Model};
use std::path::PathBuf;

/// The TALL options as the user gave them (defaults: λ 0.6 for every task, `tau` "sum").
#[derive(Clone, Debug)]
pub struct TallOptions {
    /// The base (pre-trained) model all fine-tunes start from.
    pub base: PathBuf,
    /// Fine-tuned models, one per task.
    pub models: Vec<PathBuf>,
    /// Task names in model order; empty: from the model files' names.
    pub tasks: Vec<String>,
    /// λ of every task's mask, unless `lambdas` gives one per task.
    pub lambda: f32,
    pub lambdas: Vec<f32>,
    /// `sum`, `ta` (both: Task Arithmetic, unscaled) or `ties`.
    pub tau: String,
    /// With `tau` ties only: share of each task vector kept (default 0.2).
    pub density: Option<f64>,
}

impl TallOptions {
    /// Every check of the options, before any model is read; `spelling` names them.
    pub fn check(&self, spelling: Spelling) -> Result<(), String> {
        self.recipe(spelling)?;
        self.task_names()?;
        self.lambdas()?;
        Ok(())
    }

    /// The task names: given, else the model files' stems (`.` as `_`), else `task1`, ...
    /// where two stems are equal.
    pub fn task_names(&self) -> Result<Vec<String>, String> {
        if !self.tasks.is_empty() {
            if self.tasks.len() != self.models.len() {
                return Err(format!(
                    "{} task names for {} models",
                    self.tasks.len(),
                    self.models.len()
                ));
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

    /// One λ per task.
    pub fn lambdas(&self) -> Result<Vec<f32>, String> {
        if self.lambdas.is_empty() {
            return Ok(vec![self.lambda; self.models.len()]);
        }
        if self.lambdas.len() != self.models.len() {
            return Err(format!(
                "{} lambdas for {} models",
                self.lambdas.len(),
                self.models.len()
            ));
        }
        Ok(self.lambdas.clone())
    }

    /// How τ_MTL is built; a density without `tau` ties is an error.
    pub fn recipe(&self, spelling: Spelling) -> Result<MtlRecipe, String> {
        match (self.tau.as_str(), self.density) {
            ("ties", d) => Ok(MtlRecipe::Ties {
                density: d.unwrap_or(0.2),
            }),
            (tau, Some(_)) => Err(format!(
                "{} applies to {} only, not {}",
                spelling.name("density"),
                spelling.set("tau", "ties"),
                spelling.set("tau", tau)
            )),
            _ => Ok(MtlRecipe::Sum),
        }
    }

    /// The parameters recorded as provenance in the files written.
    pub fn params_json(&self) -> serde_json::Value {
        serde_json::json!({
            "base": self.base, "models": self.models, "tasks": self.tasks,
            "lambda": self.lambda, "lambdas": self.lambdas, "tau": self.tau, "density": self.density,
            "lambda_grid_reference": LAMBDA_GRID,
        })
    }

    /// The masks' plan over the opened `base` and `models` (the TIES recipe's histogram pass;
    /// [`Tall`] finishes its thresholds later).
    pub fn tall<'a>(&self, base: &'a Model, models: &'a [Model]) -> engram_ckpt::Result<Tall<'a>> {
        let (tasks, lambdas) = (self.task_names(), self.lambdas());
        let recipe = self.recipe(Spelling::Flags);
        let (tasks, recipe, lambdas) = (
            tasks.map_err(Error::Invalid)?,
            recipe.map_err(Error::Invalid)?,
            lambdas.map_err(Error::Invalid)?,
        );
        Tall::new(base, models.iter().collect(), tasks, recipe, lambdas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(models: &[&str]) -> TallOptions {
        TallOptions {
            base: "base".into(),
            models: models.iter().map(PathBuf::from).collect(),
            tasks: Vec::new(),
            lambda: 0.6,
            lambdas: Vec::new(),
            tau: "sum".into(),
            density: None,
        }
    }

    #[test]
    fn names_lambdas_recipe() {
        let mut o = opts(&["ft/a.b.safetensors", "ft/c.safetensors"]);
        assert_eq!(o.task_names().unwrap(), ["a_b", "c"]);
        assert_eq!(o.lambdas().unwrap(), [0.6, 0.6]);
        o.models = vec!["x/m.safetensors".into(), "y/m.safetensors".into()];
        assert_eq!(o.task_names().unwrap(), ["task1", "task2"]);
        o.lambdas = vec![0.2];
        assert_eq!(o.lambdas().unwrap_err(), "1 lambdas for 2 models");
        o.density = Some(0.1);
        assert_eq!(
            o.recipe(Spelling::Flags).unwrap_err(),
            "--density applies to --tau ties only, not --tau sum"
        );
        assert_eq!(
            o.recipe(Spelling::Keywords).unwrap_err(),
            "density applies to tau='ties' only, not tau='sum'"
        );
        o.tau = "ties".into();
        assert_eq!(
            o.recipe(Spelling::Flags).unwrap(),
            MtlRecipe::Ties { density: 0.1 }
        );
    }
}
