//! The report of `engram inspect` (docs/json.md, "engram inspect --json"): what a checkpoint
//! holds, its tensors grouped by layer, and optionally every tensor's value statistics or its
//! NaN and infinite values. The command line and the Python module both compose it here.

use anyhow::{Result, bail};
use engram_ckpt::gguf::{GgufFile, Value as GgufValue};
use engram_ckpt::names::group_of;
use engram_ckpt::{Model, Stats};
use rayon::prelude::*;
use serde_json::{Value, json};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

/// The tensors of one group (see [`group_of`]), in model order of first appearance.
pub struct Group {
    pub name: String,
    pub tensors: usize,
    pub params: u64,
    pub bytes: u64,
    /// (name suffix after the group, dtype, shape) of each tensor, to fold identical layers.
    pub signature: Vec<(String, String, Vec<usize>)>,
}

/// The groups of a model's tensors, in order of first appearance.
pub fn groups(model: &Model) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    let mut at: BTreeMap<&str, usize> = BTreeMap::new();
    for t in model.tensors() {
        let g = group_of(t.name());
        let i = *at.entry(g).or_insert_with(|| {
            out.push(Group {
                name: g.to_string(),
                tensors: 0,
                params: 0,
                bytes: 0,
                signature: Vec::new(),
            });
            out.len() - 1
        });
        let grp = &mut out[i];
        grp.tensors += 1;
        grp.params += t.numel() as u64;
        grp.bytes += t.bytes.len() as u64;
        grp.signature.push((
            t.name()[g.len()..].to_string(),
            t.dtype().name().to_string(),
            t.shape().to_vec(),
        ));
    }
    out
}

/// Tensors, parameters and bytes of each dtype, by dtype name.
pub fn dtype_totals(model: &Model) -> BTreeMap<&'static str, (u64, u64, u64)> {
    let mut dtypes: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
    for t in model.tensors() {
        let e = dtypes.entry(t.dtype().name()).or_default();
        e.0 += 1;
        e.1 += t.numel() as u64;
        e.2 += t.bytes.len() as u64;
    }
    dtypes
}

/// One pass over the data, in parallel over tensors: full statistics (`stats`), or only the
/// NaN/Inf counts; `progress` gets the bytes read.
pub fn scan(
    model: &Model,
    stats: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> engram_ckpt::Result<Vec<Stats>> {
    (0..model.len())
        .into_par_iter()
        .map(|i| {
            let t = model.tensor_at(i);
            let s = if stats {
                Stats::of(&t)?
            } else {
                let (nan, inf) = t.count_non_finite()?;
                Stats {
                    count: t.numel() as u64,
                    nan: nan as u64,
                    inf: inf as u64,
                    ..Stats::default()
                }
            };
            progress(t.bytes.len() as u64);
            Ok(s)
        })
        .collect()
}

/// The tensors that hold NaN or infinite values: (index, NaN count, infinite count).
pub fn non_finite(scan: Option<&[Stats]>) -> Vec<(usize, u64, u64)> {
    scan.iter()
        .copied()
        .flatten()
        .enumerate()
        .filter(|(_, s)| s.nan + s.inf > 0)
        .map(|(i, s)| (i, s.nan, s.inf))
        .collect()
}

/// The error of `--check-finite` over `path` for the tensors `bad` (as [`non_finite`] gives
/// them): the first ten named, `name` showing each tensor name.
pub fn non_finite_error(
    model: &Model,
    path: &Path,
    bad: &[(usize, u64, u64)],
    name: &dyn Fn(&str) -> Cow<'_, str>,
) -> String {
    let list: Vec<String> = bad
        .iter()
        .take(10)
        .map(|&(i, nan, inf)| {
            let t = model.tensor_at(i);
            format!(
                "{}: tensor '{}': holds {nan} NaN and {inf} infinite values",
                t.path.display(),
                name(t.name())
            )
        })
        .collect();
    let more = if bad.len() > 10 {
        format!("\n(and {} more tensors)", bad.len() - 10)
    } else {
        String::new()
    };
    format!(
        "{} tensor(s) of {} hold NaN or infinite values:\n{}{more}",
        bad.len(),
        path.display(),
        list.join("\n")
    )
}

/// The JSON report of a safetensors model: with `scan`, the non-finite tensors `bad`, and
/// with `with_stats` every tensor's statistics too.
pub fn to_json(
    model: &Model,
    groups: &[Group],
    scan: Option<&[Stats]>,
    with_stats: bool,
    bad: &[(usize, u64, u64)],
) -> Value {
    let dtypes = dtype_totals(model);
    let tensors: Vec<Value> = model
        .tensors()
        .enumerate()
        .map(|(i, t)| {
            let mut v = json!({
                "name": t.name(),
                "dtype": t.dtype().name(),
                "shape": t.shape(),
                "params": t.numel(),
                "bytes": t.bytes.len(),
                "file": t.path.display().to_string(),
                "data_offsets": [t.info.start, t.info.end],
            });
            if let (true, Some(s)) = (with_stats, scan.map(|s| &s[i])) {
                v["stats"] = json!({
                    "min": (s.finite() > 0).then_some(s.min),
                    "max": (s.finite() > 0).then_some(s.max),
                    "mean": s.mean(),
                    "std": s.std(),
                    "l2": s.l2(),
                    "sum": s.sum,
                    "nan": s.nan,
                    "inf": s.inf,
                });
            }
            v
        })
        .collect();
    let mut doc = json!({
        "engram_inspect": 1,
        "source": model.source().display().to_string(),
        "files": model.files().iter().map(|f| json!({
            "path": f.path().display().to_string(),
            "bytes": f.len_bytes(),
            "tensors": f.tensors().len(),
        })).collect::<Vec<_>>(),
        "tensor_count": model.len(),
        "param_count": model.param_count(),
        "data_bytes": model.data_bytes(),
        "file_bytes": model.file_bytes(),
        "dtypes": dtypes.iter().map(|(d, (n, p, b))| json!({
            "dtype": d, "tensors": n, "params": p, "bytes": b,
        })).collect::<Vec<_>>(),
        "metadata": model.metadata(),
        "index_metadata": model.index_metadata(),
        "side_files": model.side_files().iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "groups": groups.iter().map(|g| json!({
            "name": g.name, "tensors": g.tensors, "params": g.params, "bytes": g.bytes,
        })).collect::<Vec<_>>(),
        "tensors": tensors,
    });
    if scan.is_some() {
        doc["non_finite"] = bad
            .iter()
            .map(
                |&(i, nan, inf)| json!({"name": model.tensor_at(i).name(), "nan": nan, "inf": inf}),
            )
            .collect();
    }
    doc
}

/// A GGUF file is not scanned: `--stats` and `--check-finite` are refused for it.
pub fn refuse_gguf_scan(path: &Path, stats: bool, check_finite: bool) -> Result<()> {
    if stats || check_finite {
        bail!(
            "--stats and --check-finite read safetensors models; convert {} first (engram convert FILE.gguf -o model.safetensors)",
            path.display()
        );
    }
    Ok(())
}

/// Tensors, parameters and bytes of each GGUF tensor type, by type name; and all parameters.
pub fn gguf_totals(f: &GgufFile) -> (BTreeMap<&'static str, (u64, u64, u64)>, u64) {
    let mut types: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
    for t in f.tensors() {
        let e = types.entry(t.ty.name()).or_default();
        e.0 += 1;
        e.1 += t.numel() as u64;
        e.2 += (t.end - t.start) as u64;
    }
    let params: u64 = f.tensors().iter().map(|t| t.numel() as u64).sum();
    (types, params)
}

/// A GGUF metadata value as JSON: scalars as they are (non-finite floats as null), arrays as
/// their element type, length and first few elements (a vocabulary has 100,000).
fn gguf_value_json(v: &GgufValue) -> Value {
    use GgufValue as G;
    match v {
        G::Array(t, items) => json!({
            "array_of": format!("{t:?}").to_ascii_lowercase(),
            "len": items.len(),
            "head": items.iter().take(8).map(gguf_value_json).collect::<Vec<_>>(),
        }),
        G::String(s) => json!(s),
        G::Bool(b) => json!(b),
        G::F32(x) => json!(x.is_finite().then_some(*x)),
        G::F64(x) => json!(x.is_finite().then_some(*x)),
        G::U64(x) => json!(x),
        G::I64(x) => json!(x),
        other => json!(other.to_text().and_then(|t| t.parse::<i64>().ok())),
    }
}

/// The JSON report of the GGUF file `f`, read from `path`: header, metadata and tensors
/// (shapes outermost first, as for safetensors).
pub fn gguf_json(path: &Path, f: &GgufFile) -> Value {
    let (types, params) = gguf_totals(f);
    json!({
        "engram_inspect": 1,
        "format": "gguf",
        "source": path.display().to_string(),
        "version": f.header().version,
        "alignment": f.header().alignment,
        "file_bytes": f.len_bytes(),
        "tensor_count": f.len(),
        "param_count": params,
        "data_bytes": f.data_bytes(),
        "dtypes": types.iter().map(|(d, (n, p, b))| json!({
            "dtype": d, "tensors": n, "params": p, "bytes": b,
        })).collect::<Vec<_>>(),
        "metadata": f.metadata().iter()
            .map(|(k, v)| (k.clone(), gguf_value_json(v)))
            .collect::<serde_json::Map<_, _>>(),
        "tensors": f.tensors().iter().map(|t| json!({
            "name": t.name,
            "dtype": t.ty.name(),
            "shape": t.shape,
            "params": t.numel(),
            "bytes": t.end - t.start,
            "data_offsets": [t.start, t.end],
        })).collect::<Vec<_>>(),
    })
}
