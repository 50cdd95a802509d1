//! Output models of the weight-space operations: which dtype each tensor gets, and the writer.

use crate::stream::TensorChunks;
use engram_ckpt::{DType, Error, Model, ModelWriter, Result, TensorSpec, TensorView, WriteOptions};
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

/// Non-float tensors (integer, boolean) are copied from one input, never computed: `other`'s
/// tensor `x` must be the same as `v` of `first` (dtype, shape and bytes), else its values
/// would be lost. An error naming the tensor.
pub fn same_non_float(first: &Model, v: &TensorView, other: &Model, x: &TensorView) -> Result<()> {
    if (x.dtype(), x.shape(), x.bytes) == (v.dtype(), v.shape(), v.bytes) {
        return Ok(());
    }
    Err(Error::tensor(
        other.source(),
        x.name(),
        format!(
            "{} {:?} differs from the {} {:?} in {} (a non-float tensor is copied, not computed: it would be lost)",
            x.dtype(),
            x.shape(),
            v.dtype(),
            v.shape(),
            first.source().display()
        ),
    ))
}

/// [`same_non_float`] over every non-float tensor of `first` and `others`: each input holds
/// the same ones, none only some inputs have.
pub fn same_non_floats(first: &Model, others: &[&Model]) -> Result<()> {
    same_non_floats_except(first, others, |_| false)
}

/// [`same_non_floats`], except that a tensor for which `shape_only(name)` holds need only
/// have the same dtype and shape in every input (e.g. a BatchNorm counter, which
/// fine-tuning advances).
pub fn same_non_floats_except(
    first: &Model,
    others: &[&Model],
    shape_only: impl Fn(&str) -> bool,
) -> Result<()> {
    for m in others {
        for v in first.tensors().filter(|v| !v.dtype().is_float()) {
            match m.get(v.name()) {
                Some(x)
                    if shape_only(v.name()) && (x.dtype(), x.shape()) == (v.dtype(), v.shape()) => {
                }
                Some(x) => same_non_float(first, &v, m, &x)?,
                None => {
                    let why = format!(
                        "missing (a {} tensor of {}); no tensor is skipped",
                        v.dtype(),
                        first.source().display()
                    );
                    return Err(Error::tensor(m.source(), v.name(), why));
                }
            }
        }
        if let Some(x) = m
            .tensors()
            .find(|x| !x.dtype().is_float() && first.get(x.name()).is_none())
        {
            let why = format!(
                "a {} tensor that {} lacks; no tensor is skipped",
                x.dtype(),
                first.source().display()
            );
            return Err(Error::tensor(m.source(), x.name(), why));
        }
    }
    Ok(())
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

/// The smallest magnitude that `dt` cannot hold: it rounds (to nearest even) beyond the
/// largest finite value, to an infinity in f16/bf16; the f8 encoders would saturate it to
/// ±448 (e4m3) or ±57344 (e5m2). Values must stay below it (NaN fails `fits` too).
pub fn range_limit(dt: DType) -> f32 {
    match dt {
        DType::F16 => 65520.0,
        DType::BF16 => 3.396_177_6e38,
        DType::F8E4M3 => 464f32.next_up(), // 464 ties to 448
        DType::F8E5M2 => 61440.0,
        _ => f32::INFINITY,
    }
}

/// Whether `v` is finite and within the range of `dt` (see [`range_limit`]).
pub fn fits(dt: DType, v: f32) -> bool {
    v.abs() < range_limit(dt)
}

/// The one check of computed values before they are written (merges, task-vector and patch
/// arithmetic, synthetic models), always on: a value that does not fit the output dtype `dt`
/// (NaN, an infinity, or a magnitude beyond its range: 65520 in f16, 448 in f8_e4m3; see
/// [`range_limit`]) where every input at its position was finite is an overflow (a scale or λ
/// too large) and an error naming the tensor and element; with `strict` (`--check-finite`)
/// any non-finite value is. One vectorized scan; `inputs_finite(k)` (element `k` of the
/// chunk) is asked only where a value fails.
pub fn check_values(
    out: &Path,
    name: &str,
    dt: DType,
    start: usize,
    vals: &[f32],
    strict: bool,
    inputs_finite: &dyn Fn(usize) -> bool,
) -> Result<()> {
    let lim = range_limit(dt);
    let fits = |v: f32| v.abs() < lim; // false for NaN
    // Blocks folded without stopping early: `all` over the values stops at the first failure
    // and compiled to one value per iteration (a tenth of a Task Arithmetic merge in `perf`).
    if vals
        .chunks(256)
        .all(|b| b.iter().fold(true, |ok, &v| ok & fits(v)))
    {
        return Ok(());
    }
    for (k, v) in vals.iter().enumerate().filter(|(_, v)| !fits(**v)) {
        if inputs_finite(k) {
            return Err(Error::tensor(
                out,
                name,
                format!(
                    "element {}: the result {v} is {} although every input there is finite (an overflow: is a scale or lambda too large?)",
                    start + k,
                    match v.is_finite() {
                        true => format!("beyond the range of {dt}"),
                        false => "not finite".into(),
                    }
                ),
            ));
        }
        if strict {
            return Err(Error::tensor(out, name, "result includes NaN or infinity"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_ckpt::dtype::{decode_f32, encode_f32};

    #[test]
    fn range_limits_match_the_encoders() {
        // The largest value that fits round-trips to a finite value; the limit does not fit.
        for (dt, max) in [
            (DType::F16, 65504.0),
            (DType::BF16, 3.389_531_4e38),
            (DType::F8E4M3, 448.0),
            (DType::F8E5M2, 57344.0),
        ] {
            let lim = range_limit(dt);
            let below = lim.next_down();
            assert!(fits(dt, below) && !fits(dt, lim) && !fits(dt, -lim), "{dt}");
            let mut b = vec![0u8; dt.size()];
            let mut back = [0f32];
            encode_f32(dt, &[below], &mut b);
            decode_f32(dt, &b, &mut back);
            assert_eq!(back[0], max, "{dt}");
        }
        let e = check_values(
            Path::new("o"),
            "w",
            DType::F8E4M3,
            10,
            &[1.0, -500.0],
            false,
            &|_| true,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("w") && e.contains("element 11") && e.contains("F8_E4M3"),
            "{e}"
        );
        assert!(
            check_values(
                Path::new("o"),
                "w",
                DType::F8E4M3,
                0,
                &[f32::NAN],
                false,
                &|_| false
            )
            .is_ok()
        );
    }
}
