//! Checkpoints after each task: the model and the strategy's tensors as safetensors (through
//! engram-ckpt), then `state.json` naming them, written last and atomically. A run killed at
//! any point resumes from the last complete checkpoint; files of older checkpoints are removed
//! only after the new `state.json` is in place.

use super::trainer::RunOutput;
use crate::strategy::State;
use crate::{Error, Result, err};
use engram_ckpt::{DType, ModelWriter, TensorSpec, WriteOptions, write_atomic};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct Saved {
    /// Tasks completed.
    pub completed: usize,
    pub output: RunOutput,
    pub model_path: PathBuf,
    pub strategy_path: Option<PathBuf>,
    pub strategy_json: serde_json::Value,
}

impl Saved {
    pub fn new(completed: usize, output: RunOutput) -> Saved {
        Saved {
            completed,
            output,
            model_path: PathBuf::new(),
            strategy_path: None,
            strategy_json: serde_json::Value::Null,
        }
    }

    pub fn strategy_state(&self) -> Result<State> {
        let mut tensors = Vec::new();
        if let Some(p) = &self.strategy_path {
            let m = engram_ckpt::Model::open(p)?;
            for t in m.tensors() {
                tensors.push((t.name().to_string(), t.shape().to_vec(), t.to_f32()?));
            }
        }
        Ok(State {
            tensors,
            json: self.strategy_json.clone(),
        })
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StateFile {
    completed: usize,
    model: String,
    strategy: Option<String>,
    strategy_json: serde_json::Value,
    output: RunOutput,
}

pub fn save<M: burn::module::Module>(
    dir: &Path,
    saved: &Saved,
    net: &M,
    state: &State,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let k = saved.completed;
    let model = format!("task-{k}.model.safetensors");
    crate::model::io::save(net, &dir.join(&model), &BTreeMap::new())?;
    let strategy = if state.tensors.is_empty() {
        None
    } else {
        let name = format!("task-{k}.strategy.safetensors");
        let specs = state
            .tensors
            .iter()
            .map(|(n, s, _)| TensorSpec::new(n.clone(), DType::F32, s))
            .collect();
        let w = ModelWriter::create(&dir.join(&name), specs, &WriteOptions::default())?;
        for (n, _, v) in &state.tensors {
            w.write_f32(n, v)?;
        }
        w.finish(&[])?;
        Some(name)
    };
    let file = StateFile {
        completed: k,
        model,
        strategy,
        strategy_json: state.json.clone(),
        output: saved.output.clone(),
    };
    let text = serde_json::to_vec_pretty(&file).map_err(|e| err!("{e}"))?;
    write_atomic(&dir.join("state.json"), &text)?;
    // Older checkpoints are no longer referenced.
    for old in 0..k {
        for suffix in ["model", "strategy"] {
            let _ = std::fs::remove_file(dir.join(format!("task-{old}.{suffix}.safetensors")));
        }
    }
    Ok(())
}

/// The last complete checkpoint in `dir`, if any.
pub fn load_latest(dir: &Path) -> Result<Option<Saved>> {
    let path = dir.join("state.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let f: StateFile = serde_json::from_slice(&text)
        .map_err(|e| err!("{}: not a valid checkpoint state: {e}", path.display()))?;
    Ok(Some(Saved {
        completed: f.completed,
        output: f.output,
        model_path: dir.join(f.model),
        strategy_path: f.strategy.map(|s| dir.join(s)),
        strategy_json: f.strategy_json,
    }))
}
