//! Output models of the weight-space operations: which dtype each tensor gets, and the writer.

use engram_ckpt::{DType, ModelWriter, Result, TensorSpec, TensorView, WriteOptions};
use std::collections::BTreeMap;
use std::path::Path;

/// One spec per tensor: float tensors take `out_dtype` (default: their own), the others keep
/// theirs (they are copied byte for byte).
pub fn specs<'a>(
    views: impl Iterator<Item = TensorView<'a>>,
    out_dtype: Option<DType>,
) -> Vec<TensorSpec> {
    views
        .map(|v| {
            let dt = if v.dtype().is_float() {
                out_dtype.unwrap_or(v.dtype())
            } else {
                v.dtype()
            };
            TensorSpec::new(v.name(), dt, v.shape())
        })
        .collect()
}

/// A writer for one unsharded output with `metadata`.
pub fn writer(
    out: &Path,
    specs: Vec<TensorSpec>,
    metadata: &BTreeMap<String, String>,
) -> Result<ModelWriter> {
    ModelWriter::create(
        out,
        specs,
        &WriteOptions {
            max_shard_bytes: None,
            metadata: metadata.clone(),
        },
    )
}
