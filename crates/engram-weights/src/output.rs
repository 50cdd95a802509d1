//! Output models of the weight-space operations: which dtype each tensor gets, and the writer.

use crate::stream::TensorChunks;
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

/// Copies a tensor's stored bytes to `name` in `w` in 64 MiB pieces, releasing the source
/// pages after each, so that copying a large model does not keep it resident.
pub fn copy_bytes_released(w: &ModelWriter, name: &str, v: &TensorView) -> Result<()> {
    const STEP: usize = 64 << 20;
    let es = v.dtype().size().max(1);
    let step = STEP / es * es;
    let mut off = 0;
    while off < v.bytes.len() {
        let end = (off + step).min(v.bytes.len());
        w.write_bytes_at(name, off / es, &v.bytes[off..end])?;
        v.release(off / es, end / es);
        off = end;
    }
    Ok(())
}

/// Copies a float tensor into `w` through f32 (the writer converts to the declared dtype),
/// chunk by chunk in parallel.
pub fn copy_as_f32(w: &ModelWriter, v: &TensorView) -> Result<()> {
    TensorChunks::new(None, std::slice::from_ref(v))
        .for_each(&|c| w.write_f32_at(v.name(), c.start, &c.models[0]))
}
