//! `engram inspect PATH`: what a checkpoint holds (tensors, shapes, dtypes, parameter and byte
//! counts, metadata, side files), summarised by layer group so that a 70B model fits on a
//! screen; `--all` lists every tensor, `--stats` adds value statistics, `--check-finite` scans
//! for NaN and infinite values (exit 1 naming the tensors), `--json` prints the structure
//! documented in `docs/json.md` ("engram inspect --json"). A `.gguf` file gets its header,
//! metadata and tensor list (`docs/gguf.md`).

use super::Ctx;
use super::util::{self, group_of, numbered, out, outln};
use anyhow::{Result, bail};
use engram_ckpt::{Model, Stats};
use rayon::prelude::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A .safetensors file, a model folder, or a model.safetensors.index.json.
    pub path: PathBuf,
    /// Print JSON (the structure documented in docs/json.md) instead of text.
    #[arg(long)]
    pub json: bool,
    /// List every tensor (default: a summary by layer group and the first and last few).
    #[arg(long)]
    pub all: bool,
    /// Tensors shown at each end of the list when not --all.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub head: usize,
    /// Scan every float tensor for NaN and infinite values; exit 1 naming them if found.
    #[arg(long)]
    pub check_finite: bool,
    /// Read every value and report min, max, mean, std and L2 norm per tensor.
    #[arg(long)]
    pub stats: bool,
}

struct Group {
    name: String,
    tensors: usize,
    params: u64,
    bytes: u64,
    /// (name suffix after the group, dtype, shape) of each tensor, to fold identical layers.
    signature: Vec<(String, String, Vec<usize>)>,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    if engram_ckpt::gguf::is_gguf_path(&a.path) {
        return inspect_gguf(&a);
    }
    let model = Model::open(&a.path)?;
    if a.stats || a.check_finite {
        // These read every byte anyway: verify the stored checksums too.
        model.verify()?;
    }
    let n = model.len();

    // Optional pass over the data: full statistics, or only the NaN/Inf scan.
    let scan: Option<Vec<Stats>> = if a.stats || a.check_finite {
        let pb = super::progress::bar(ctx, model.data_bytes(), "scanning");
        let res = (0..n)
            .into_par_iter()
            .map(|i| {
                let t = model.tensor_at(i);
                let s = if a.stats {
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
                pb.inc(t.bytes.len() as u64);
                Ok(s)
            })
            .collect::<Result<Vec<_>, engram_ckpt::Error>>();
        pb.finish_and_clear();
        Some(res?)
    } else {
        None
    };
    let bad: Vec<(usize, u64, u64)> = scan
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, s)| s.nan + s.inf > 0)
        .map(|(i, s)| (i, s.nan, s.inf))
        .collect();

    let groups = groups(&model);
    if a.json {
        let doc = to_json(&model, &groups, scan.as_deref(), a.stats, &bad);
        util::print_json(&doc)?;
    } else {
        util::emit(&text_report(&model, &groups, scan.as_deref(), &a))?;
    }
    if a.check_finite && !bad.is_empty() {
        let list: Vec<String> = bad
            .iter()
            .take(10)
            .map(|&(i, nan, inf)| {
                let t = model.tensor_at(i);
                format!(
                    "{}: tensor '{}': holds {nan} NaN and {inf} infinite values",
                    t.path.display(),
                    util::esc(t.name())
                )
            })
            .collect();
        let more = if bad.len() > 10 {
            format!("\n(and {} more tensors)", bad.len() - 10)
        } else {
            String::new()
        };
        bail!(
            "{} tensor(s) of {} hold NaN or infinite values:\n{}{more}",
            bad.len(),
            a.path.display(),
            list.join("\n")
        );
    }
    Ok(())
}

fn groups(model: &Model) -> Vec<Group> {
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
fn dtype_totals(model: &Model) -> BTreeMap<&'static str, (u64, u64, u64)> {
    let mut dtypes: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
    for t in model.tensors() {
        let e = dtypes.entry(t.dtype().name()).or_default();
        e.0 += 1;
        e.1 += t.numel() as u64;
        e.2 += t.bytes.len() as u64;
    }
    dtypes
}

fn to_json(
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

/// One line of the group table: a single group, or a run of identical numbered ones.
fn group_rows(groups: &[Group]) -> Vec<(String, String, String, String)> {
    let mut rows = Vec::new();
    let mut i = 0;
    while i < groups.len() {
        let g = &groups[i];
        let mut j = i + 1;
        if let Some((stem, first)) = numbered(&g.name) {
            while j < groups.len() {
                let same = numbered(&groups[j].name)
                    .is_some_and(|(s, k)| s == stem && k == first + (j - i) as u64)
                    && groups[j].signature == g.signature;
                if !same {
                    break;
                }
                j += 1;
            }
            if j - i > 1 {
                let k = j - i;
                rows.push((
                    format!("{}.[{first}-{}]", util::esc(stem), first + k as u64 - 1),
                    format!("{k} x {}", g.tensors),
                    format!("{k} x {}", util::count(g.params)),
                    format!("{k} x {}", util::bytes(g.bytes)),
                ));
                i = j;
                continue;
            }
        }
        rows.push((
            util::esc(&g.name).into_owned(),
            g.tensors.to_string(),
            util::count(g.params),
            util::bytes(g.bytes),
        ));
        i += 1;
    }
    rows
}

fn text_report(model: &Model, groups: &[Group], scan: Option<&[Stats]>, a: &Args) -> String {
    let mut o = String::new();
    let files = model.files();
    outln!(
        o,
        "model       {} ({} file{}, {})",
        util::esc(&model.source().display().to_string()),
        files.len(),
        if files.len() == 1 { "" } else { "s" },
        util::bytes(model.file_bytes())
    );
    outln!(
        o,
        "tensors     {}, {} parameters ({}), {} of data",
        model.len(),
        util::count(model.param_count()),
        model.param_count(),
        util::bytes(model.data_bytes())
    );
    let dt: Vec<String> = dtype_totals(model)
        .iter()
        .map(|(d, (n, p, _))| format!("{d} ({n} tensors, {})", util::count(*p)))
        .collect();
    outln!(o, "dtypes      {}", dt.join(", "));
    let md = model.metadata();
    if md.is_empty() {
        outln!(o, "metadata    (none)");
    } else {
        outln!(o, "metadata");
        for (k, v) in &md {
            let v = if v.chars().count() > 100 {
                format!("{}...", v.chars().take(97).collect::<String>())
            } else {
                v.clone()
            };
            outln!(o, "  {}: {}", util::esc(k), util::esc(&v));
        }
    }
    if !model.index_metadata().is_empty() {
        let im: Vec<String> = model
            .index_metadata()
            .iter()
            .map(|(k, v)| format!("{}={}", util::esc(k), util::esc(&v.to_string())))
            .collect();
        outln!(o, "index       {}", im.join(", "));
    }
    if files.len() > 1 {
        outln!(o, "shards");
        for f in files {
            outln!(
                o,
                "  {} ({} tensors, {})",
                util::esc(&f.path().display().to_string()),
                f.tensors().len(),
                util::bytes(f.len_bytes())
            );
        }
    }
    let sides: Vec<String> = model
        .side_files()
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    outln!(
        o,
        "side files  {}",
        if sides.is_empty() {
            "(none)".into()
        } else {
            sides.join(", ")
        }
    );

    outln!(o);
    let rows = group_rows(groups);
    let w = util::column(rows.iter().map(|r| r.0.chars().count()), 5);
    outln!(
        o,
        "{:<w$}  {:>10}  {:>14}  {:>16}",
        "group",
        "tensors",
        "params",
        "bytes"
    );
    for (name, t, p, b) in &rows {
        outln!(o, "{name:<w$}  {t:>10}  {p:>14}  {b:>16}");
    }

    outln!(o);
    let n = model.len();
    let all = a.all || n <= a.head.saturating_mul(2).saturating_add(2);
    let shown: Vec<usize> = if all {
        (0..n).collect()
    } else {
        (0..a.head).chain(n - a.head..n).collect()
    };
    let w = util::column(
        shown
            .iter()
            .map(|&i| util::esc(model.tensor_at(i).name()).chars().count()),
        6,
    );
    let with_stats = a.stats && scan.is_some();
    out!(
        o,
        "{:<w$}  {:<8}  {:<20}  {:>10}",
        "tensor",
        "dtype",
        "shape",
        "params"
    );
    if with_stats {
        out!(
            o,
            "  {:>11}  {:>11}  {:>11}  {:>11}",
            "min",
            "max",
            "mean",
            "std"
        );
    }
    outln!(o);
    for (k, &i) in shown.iter().enumerate() {
        if !all && k == a.head {
            outln!(
                o,
                "... {} more tensors (--all lists them) ...",
                n - 2 * a.head
            );
        }
        let t = model.tensor_at(i);
        out!(
            o,
            "{:<w$}  {:<8}  {:<20}  {:>10}",
            util::esc(t.name()),
            t.dtype().name(),
            util::shape(t.shape()),
            util::count(t.numel() as u64)
        );
        if let (true, Some(s)) = (with_stats, scan.map(|s| &s[i])) {
            let fin = s.finite() > 0;
            out!(
                o,
                "  {:>11}  {:>11}  {:>11}  {:>11}",
                util::num(fin.then_some(s.min)),
                util::num(fin.then_some(s.max)),
                util::num(s.mean()),
                util::num(s.std())
            );
        }
        outln!(o);
    }
    if let Some(scan) = scan {
        let bad = scan.iter().filter(|s| s.nan + s.inf > 0).count();
        if bad == 0 {
            outln!(o, "\nall values finite");
        }
    }
    o
}

/// A GGUF metadata value as JSON: scalars as they are (non-finite floats as null), arrays as
/// their element type, length and first few elements (a vocabulary has 100,000).
fn gguf_value_json(v: &engram_ckpt::gguf::Value) -> Value {
    use engram_ckpt::gguf::Value as G;
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

/// A GGUF metadata value in one line of text (arrays: type, length and first elements).
fn gguf_value_text(v: &engram_ckpt::gguf::Value) -> String {
    let t = match v {
        engram_ckpt::gguf::Value::Array(t, items) => {
            let head: Vec<String> = items.iter().take(8).map(gguf_value_text).collect();
            format!("[{} x {t:?}] {}", items.len(), head.join(", "))
        }
        other => other.to_text().unwrap_or_default(),
    };
    if t.chars().count() > 100 {
        format!("{}...", t.chars().take(97).collect::<String>())
    } else {
        t
    }
}

/// `engram inspect FILE.gguf`: the header, metadata and tensors of a GGUF file (shapes
/// outermost first, as for safetensors).
fn inspect_gguf(a: &Args) -> Result<()> {
    if a.stats || a.check_finite {
        bail!(
            "--stats and --check-finite read safetensors models; convert {} first (engram convert FILE.gguf -o model.safetensors)",
            a.path.display()
        );
    }
    let f = engram_ckpt::gguf::GgufFile::open(&a.path)?;
    let mut types: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
    for t in f.tensors() {
        let e = types.entry(t.ty.name()).or_default();
        e.0 += 1;
        e.1 += t.numel() as u64;
        e.2 += (t.end - t.start) as u64;
    }
    let params: u64 = f.tensors().iter().map(|t| t.numel() as u64).sum();
    if a.json {
        let doc = json!({
            "engram_inspect": 1,
            "format": "gguf",
            "source": a.path.display().to_string(),
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
        });
        return util::print_json(&doc);
    }
    let mut o = String::new();
    outln!(
        o,
        "model       {} (GGUF v{}, alignment {}, {})",
        util::esc(&a.path.display().to_string()),
        f.header().version,
        f.header().alignment,
        util::bytes(f.len_bytes())
    );
    outln!(
        o,
        "tensors     {}, {} parameters ({params}), {} of data",
        f.len(),
        util::count(params),
        util::bytes(f.data_bytes())
    );
    let dt: Vec<String> = types
        .iter()
        .map(|(d, (n, p, _))| format!("{d} ({n} tensors, {})", util::count(*p)))
        .collect();
    outln!(o, "dtypes      {}", dt.join(", "));
    if f.metadata().is_empty() {
        outln!(o, "metadata    (none)");
    } else {
        outln!(o, "metadata");
        for (k, v) in f.metadata() {
            outln!(o, "  {}: {}", util::esc(k), util::esc(&gguf_value_text(v)));
        }
    }
    outln!(o);
    let n = f.len();
    let all = a.all || n <= a.head.saturating_mul(2).saturating_add(2);
    let shown: Vec<usize> = if all {
        (0..n).collect()
    } else {
        (0..a.head).chain(n - a.head..n).collect()
    };
    let ts = f.tensors();
    let w = util::column(
        shown
            .iter()
            .map(|&i| util::esc(&ts[i].name).chars().count()),
        6,
    );
    outln!(
        o,
        "{:<w$}  {:<8}  {:<20}  {:>10}",
        "tensor",
        "dtype",
        "shape",
        "params"
    );
    for (k, &i) in shown.iter().enumerate() {
        if !all && k == a.head {
            outln!(
                o,
                "... {} more tensors (--all lists them) ...",
                n - 2 * a.head
            );
        }
        let t = &ts[i];
        outln!(
            o,
            "{:<w$}  {:<8}  {:<20}  {:>10}",
            util::esc(&t.name),
            t.ty.name(),
            util::shape(&t.shape),
            util::count(t.numel() as u64)
        );
    }
    util::emit(&o)
}
