//! `engram analyze MODEL --embeddings NAME [--labels NAME]`: the anisotropy of an embedding
//! matrix (mean cosine c̄, effective dimensionality, and with labels d′), and the readers of
//! embedding and label tensors that `engram whiten` shares. Card:
//! shared/methods/robustness_safety.md, "Ker-VLJEPA parts".
//!
//! An embedding matrix is any 2-D float tensor, `rows × dim` (an embedding table inside a
//! model, or features saved as safetensors); bf16, f16 and f8 are decoded to f32. Labels are
//! a 1-D tensor of the same file with one non-negative integer per row: any integer or
//! boolean dtype, or a float dtype holding whole numbers.

use super::Ctx;
use super::util::{emit, num, print_json};
use anyhow::Result;
use engram_ckpt::{DType, Error as CkptError, Model};
use engram_weights::embed::{Anisotropy, anisotropy};
use std::path::Path;

/// The embedding matrix `name` of `m` as f32 values, its rows and its dimensions.
pub fn read_matrix(m: &Model, name: &str) -> Result<(Vec<f32>, usize, usize)> {
    let v = m.require(name)?;
    let terr = |msg: String| CkptError::tensor(v.path, name, msg);
    if !v.dtype().is_float() {
        return Err(terr(format!(
            "{} is not a float type: embeddings are a 2-D float tensor (rows × dim)",
            v.dtype()
        ))
        .into());
    }
    let &[rows, dim] = v.shape() else {
        return Err(terr(format!(
            "shape {:?} is not 2-D: embeddings are rows × dim",
            v.shape()
        ))
        .into());
    };
    let x = v.to_f32()?;
    v.release(0, v.numel());
    Ok((x, rows, dim))
}

/// The label tensor `name` of `m`: one non-negative integer (at most 2³² − 1) per row.
pub fn read_labels(m: &Model, name: &str, rows: usize) -> Result<Vec<u32>> {
    let v = m.require(name)?;
    let terr = |msg: String| CkptError::tensor(v.path, name, msg);
    if v.shape() != [rows] {
        return Err(terr(format!(
            "shape {:?}: labels are one per embedding row, shape [{rows}]",
            v.shape()
        ))
        .into());
    }
    let dt = v.dtype();
    let size = dt.size();
    let b = v.bytes;
    let at = |i: usize| -> [u8; 8] {
        let mut a = [0u8; 8];
        a[..size].copy_from_slice(&b[i * size..(i + 1) * size]);
        a
    };
    // Every value as f64: exact for integers below 2⁵³ (larger ones are out of range anyway);
    // the 8- and 16-bit integers and booleans are exact through the f32 decoder.
    let int = |i: usize| -> f64 {
        let a = at(i);
        let four = [a[0], a[1], a[2], a[3]];
        match dt {
            DType::I64 => i64::from_le_bytes(a) as f64,
            DType::U64 => u64::from_le_bytes(a) as f64,
            DType::I32 => i32::from_le_bytes(four) as f64,
            DType::U32 => u32::from_le_bytes(four) as f64,
            _ => f64::from_le_bytes(a),
        }
    };
    let values: Vec<f64> = match dt {
        DType::I64 | DType::U64 | DType::I32 | DType::U32 | DType::F64 => {
            (0..rows).map(int).collect()
        }
        _ => {
            let mut out = vec![0f32; rows];
            engram_ckpt::dtype::decode_f32(dt, b, &mut out);
            out.into_iter().map(f64::from).collect()
        }
    };
    values
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            if x.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&x) {
                Ok(x as u32)
            } else {
                Err(terr(format!(
                    "element {i} is {x}: labels are whole numbers from 0 to {}",
                    u32::MAX
                ))
                .into())
            }
        })
        .collect()
}

/// [`anisotropy`] with errors naming the file and the tensor (`what` says which values).
pub fn measure(
    m: &Model,
    name: &str,
    what: &str,
    x: &[f32],
    rows: usize,
    dim: usize,
    labels: Option<&[u32]>,
) -> Result<Anisotropy> {
    anisotropy(x, rows, dim, labels)
        .map_err(|e| CkptError::tensor(m.source(), name, format!("{what}: {e}")).into())
}

/// One text line of an anisotropy: c̄, d′ (if any), effective dimensionality, and the zero
/// rows left out of c̄ and d′ (if any).
pub fn summary(a: &Anisotropy) -> String {
    let mut s = format!("mean cos {}", num(Some(a.mean_cos)));
    if let (Some(d), Some(p)) = (a.d_prime, &a.pairs) {
        s.push_str(&format!(", d' {} ({} labels)", num(Some(d)), p.classes));
    }
    s.push_str(&format!(", eff. dim {:.2}", a.eff_dim));
    if a.zero_rows > 0 {
        s.push_str(&format!(
            " ({} zero row(s) left out of the cosines)",
            a.zero_rows
        ));
    }
    s
}

/// The `--embeddings` mode of `engram analyze`.
pub fn analyze(ctx: &Ctx, path: &Path, name: &str, labels: Option<&str>, json: bool) -> Result<()> {
    let m = super::models::open(path)?;
    let (x, rows, dim) = read_matrix(&m, name)?;
    let l = labels.map(|l| read_labels(&m, l, rows)).transpose()?;
    let a = measure(&m, name, "embeddings", &x, rows, dim, l.as_deref())?;
    if json {
        return print_json(&serde_json::json!({
            "engram_analyze_embeddings": 1,
            "model": m.source().display().to_string(),
            "tensor": name,
            "dtype": m.require(name)?.dtype().name(),
            "labels": labels,
            "anisotropy": a,
        }));
    }
    if ctx.quiet {
        return Ok(());
    }
    emit(&format!(
        "embeddings '{name}' in {}: {rows} rows × {dim} dims, {}\n",
        m.source().display(),
        summary(&a)
    ))
}
