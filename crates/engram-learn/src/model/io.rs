//! Saving and loading models as safetensors through engram-ckpt (stable tensor names, F32).

use super::params::{host_params, load_params};
use crate::{Result, err};
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
    write_named(
        out,
        params
            .iter()
            .map(|(i, v)| (i.name.as_str(), i.shape.as_slice(), v.as_slice())),
        metadata,
    )
}

/// Writes weights kept by name (as `engram_learn::train::stage` returns them) to `out`, each
/// with its shape from `shapes` (flat when it has none there).
pub fn save_values(
    out: &Path,
    values: &BTreeMap<String, Vec<f32>>,
    shapes: &BTreeMap<String, Vec<usize>>,
    metadata: &BTreeMap<String, String>,
) -> engram_ckpt::Result<()> {
    let shaped: Vec<(&str, Vec<usize>, &[f32])> = values
        .iter()
        .map(|(k, v)| {
            let shape = shapes.get(k).cloned().unwrap_or_else(|| vec![v.len()]);
            (k.as_str(), shape, v.as_slice())
        })
        .collect();
    write_named(
        out,
        shaped.iter().map(|(n, s, v)| (*n, s.as_slice(), *v)),
        metadata,
    )
}

/// F32 tensors (name, shape, values) to a checkpoint, in the order given.
fn write_named<'a>(
    out: &Path,
    tensors: impl Iterator<Item = (&'a str, &'a [usize], &'a [f32])> + Clone,
    metadata: &BTreeMap<String, String>,
) -> engram_ckpt::Result<()> {
    let specs = tensors
        .clone()
        .map(|(n, shape, _)| TensorSpec::new(n, DType::F32, shape))
        .collect();
    let w = ModelWriter::create(
        out,
        specs,
        &WriteOptions {
            max_shard_bytes: None,
            metadata: metadata.clone(),
        },
    )?;
    for (n, _, v) in tensors {
        w.write_f32(n, v)?;
    }
    w.finish(&[])?;
    Ok(())
}

/// Reads all float tensors of a checkpoint by name, after verifying its checksums.
pub fn read_values(path: &Path) -> engram_ckpt::Result<BTreeMap<String, Vec<f32>>> {
    let m = Model::open(path)?;
    m.verify()?;
    m.tensors()
        .filter(|t| t.dtype().is_float())
        .map(|t| Ok((t.name().to_string(), t.to_f32()?)))
        .collect()
}

/// Loads a checkpoint into `m` (which must have the same architecture).
pub fn load<M: burn::module::Module>(m: M, path: &Path) -> Result<M> {
    let values = read_values(path)?;
    load_params(m, &values).map_err(|e| err!("{}: {e}", path.display()))
}
