//! `engram inspect PATH`: what a checkpoint holds (tensors, shapes, dtypes, parameter and byte
//! counts, metadata, side files), summarised by layer group so that a 70B model fits on a
//! screen; `--all` lists every tensor, `--stats` adds value statistics, `--check-finite` scans
//! for NaN and infinite values (exit 1 naming the tensors), `--json` prints the structure
//! documented in `docs/json.md` ("engram inspect --json"). A `.gguf` file gets its header,
//! metadata and tensor list (`docs/gguf.md`).

use super::Ctx;
use super::util::{self, numbered, out, outln};
use anyhow::{Result, bail};
use engram_bench::inspect::{self, Group};
use engram_ckpt::{Model, Stats};
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

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    if engram_ckpt::gguf::is_gguf_path(&a.path) {
        return inspect_gguf(&a);
    }
    let model = Model::open(&a.path)?;
    if a.stats || a.check_finite {
        // These read every byte anyway: verify the stored checksums too.
        model.verify()?;
    }

    // Optional pass over the data: full statistics, or only the NaN/Inf scan.
    let scan = if a.stats || a.check_finite {
        let pb = super::progress::bar(ctx, model.data_bytes(), "scanning");
        let res = inspect::scan(&model, a.stats, &|n| pb.inc(n));
        pb.finish_and_clear();
        Some(res?)
    } else {
        None
    };
    let bad = inspect::non_finite(scan.as_deref());

    let groups = inspect::groups(&model);
    if a.json {
        let doc = inspect::to_json(&model, &groups, scan.as_deref(), a.stats, &bad);
        util::print_json(&doc)?;
    } else {
        util::emit(&text_report(&model, &groups, scan.as_deref(), &a))?;
    }
    if a.check_finite && !bad.is_empty() {
        bail!(inspect::non_finite_error(&model, &a.path, &bad, &util::esc));
    }
    Ok(())
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
    let dt: Vec<String> = inspect::dtype_totals(model)
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
    inspect::refuse_gguf_scan(&a.path, a.stats, a.check_finite)?;
    let f = engram_ckpt::gguf::GgufFile::open(&a.path)?;
    if a.json {
        return util::print_json(&inspect::gguf_json(&a.path, &f));
    }
    let (types, params) = inspect::gguf_totals(&f);
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
