//! Saving and loading models as safetensors through engram-ckpt (stable tensor names, F32).

use super::params::{host_params, load_params};
use engram_ckpt::{DType, Model, ModelWriter, TensorSpec, WriteOptions};
use std::collections::BTreeMap;
use std::path::Path;

/// Writes every float parameter of `m` to `out` (a `.safetensors` file or a model folder).
pub fn save<M: burn::module::Module>(
    m: &M,
    out: &Path,
    metadata: &BTreeMap<String, String>,
) -> engram_ckpt::Result<()> {
    let params = host_params(m);
    let specs = params
        .iter()
        .map(|(i, _)| TensorSpec::new(i.name.clone(), DType::F32, &i.shape))
        .collect();
    let w = ModelWriter::create(
        out,
        specs,
        &WriteOptions {
            max_shard_bytes: None,
            metadata: metadata.clone(),
        },
    )?;
    for (i, v) in &params {
        w.write_f32(&i.name, v)?;
    }
    w.finish(&[])?;
    Ok(())
}

/// Reads all float tensors of a checkpoint by name.
pub fn read_values(path: &Path) -> engram_ckpt::Result<BTreeMap<String, Vec<f32>>> {
    let m = Model::open(path)?;
    m.tensors()
        .filter(|t| t.dtype().is_float())
        .map(|t| Ok((t.name().to_string(), t.to_f32()?)))
        .collect()
}

/// Loads a checkpoint into `m` (which must have the same architecture).
pub fn load<M: burn::module::Module>(m: M, path: &Path) -> Result<M, String> {
    let values = read_values(path).map_err(|e| e.to_string())?;
    load_params(m, &values).map_err(|e| format!("{}: {e}", path.display()))
}
