//! Output models of the weight-space operations: which dtype each tensor gets, and the writer.

use crate::stream::TensorChunks;
use engram_ckpt::{DType, Error, ModelWriter, Result, TensorSpec, TensorView, WriteOptions};
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

/// The one check of computed values before they are written (merges, task-vector and patch
/// arithmetic), always on: a value that is not finite in the output dtype `dt` (NaN, an
/// infinity, or a magnitude that rounds to one: at least 65520 in f16) where every input at
/// its position was finite is an overflow (a scale or λ too large) and an error naming the
/// tensor; with `strict` (`--check-finite`) any non-finite value is. One vectorized scan;
/// `inputs_finite(k)` (element `k` of the chunk) is asked only where a value fails.
pub fn check_values(
    out: &Path,
    name: &str,
    dt: DType,
    start: usize,
    vals: &[f32],
    strict: bool,
    inputs_finite: &dyn Fn(usize) -> bool,
) -> Result<()> {
    let lim = match dt {
        DType::F16 => 65520.0,
        DType::BF16 => 3.396_177_6e38,
        _ => f32::INFINITY,
    };
    let fits = |v: f32| v.abs() < lim; // false for NaN
    if vals.iter().all(|&v| fits(v)) {
        return Ok(());
    }
    for (k, v) in vals.iter().enumerate().filter(|(_, v)| !fits(**v)) {
        if inputs_finite(k) {
            return Err(Error::tensor(
                out,
                name,
                format!(
                    "element {}: the result {v} is not finite as {dt} although every input there is finite (an overflow: is a scale or lambda too large?)",
                    start + k
                ),
            ));
        }
        if strict {
            return Err(Error::tensor(out, name, "result includes NaN or infinity"));
        }
    }
    Ok(())
}
