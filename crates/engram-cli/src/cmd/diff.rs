//! `engram diff A B`: compares two checkpoints tensor by tensor: ‖A−B‖, the relative change
//! ‖A−B‖/‖A‖, the cosine of A and B, the largest absolute difference, and how many values
//! changed; tensors present in only one model and shape or dtype mismatches are reported.
//! Tensors are streamed in chunks of `CHUNK` values, in parallel over (tensor, chunk), with
//! f64 accumulators combined in a fixed order (the result does not depend on thread count).
//! `--json` prints the structure documented in `docs/json.md` ("engram diff --json").

use super::Ctx;
use super::util::{self, outln};
use anyhow::Result;
use engram_ckpt::DiffStats;
use engram_ckpt::chunk::{self, CHUNK};
use rayon::prelude::*;
use serde_json::{Value, json};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The reference model (file, folder or index).
    pub a: PathBuf,
    /// The model compared with it.
    pub b: PathBuf,
    /// How many of the most-changed tensors to list.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top: usize,
    /// List every compared tensor, in model order.
    #[arg(long)]
    pub all: bool,
    /// Print JSON (the structure documented in docs/json.md) instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    let ma = super::models::open(&a.a)?;
    let mb = super::models::open(&a.b)?;

    let mut pairs = Vec::new();
    let mut only_a = Vec::new();
    let mut mismatched = Vec::new();
    let mut dtype_differs = Vec::new();
    for ta in ma.tensors() {
        let Some(tb) = mb.get(ta.name()) else {
            only_a.push(ta.name().to_string());
            continue;
        };
        if ta.shape() != tb.shape() {
            mismatched.push(json!({
                "name": ta.name(),
                "a_dtype": ta.dtype().name(), "a_shape": ta.shape(),
                "b_dtype": tb.dtype().name(), "b_shape": tb.shape(),
            }));
            continue;
        }
        if ta.dtype() != tb.dtype() {
            dtype_differs.push(ta.name().to_string());
        }
        pairs.push((ta, tb));
    }
    let only_b: Vec<String> = mb
        .names()
        .filter(|n| ma.get(n).is_none())
        .map(str::to_string)
        .collect();

    // Parallel over (pair, chunk); each item's partial sums land at its own index.
    let items = chunk::items(pairs.iter().map(|p| p.0.numel()));
    let total: u64 = pairs.iter().map(|p| p.0.numel() as u64).sum();
    let pb = super::progress::bar(ctx, total, "diff");
    let partial = items
        .par_iter()
        .map_init(
            || (vec![0f32; CHUNK], vec![0f32; CHUNK]),
            |(ba, bb), &(pi, start, k)| -> Result<DiffStats, engram_ckpt::Error> {
                let ta = pairs[pi].0;
                let tb = pairs[pi].1;
                ta.read_f32_into(start, &mut ba[..k])?;
                tb.read_f32_into(start, &mut bb[..k])?;
                let mut d = DiffStats::default();
                d.add(&ba[..k], &bb[..k]);
                ta.release(start, start + k);
                tb.release(start, start + k);
                pb.inc(k as u64);
                Ok(d)
            },
        )
        .collect::<Result<Vec<_>, _>>();
    pb.finish_and_clear();
    let partial = partial?;
    let mut per = vec![DiffStats::default(); pairs.len()];
    for (&(pi, _, _), d) in items.iter().zip(&partial) {
        per[pi].merge(d);
    }
    let mut overall = DiffStats::default();
    for d in &per {
        overall.merge(d);
    }

    // Most changed first: by relative change, tensors with an all-zero A (no relative change)
    // ranked by their absolute change after those.
    let mut order: Vec<usize> = (0..pairs.len()).filter(|&i| per[i].changed > 0).collect();
    order.sort_by(|&x, &y| {
        let key = |i: usize| {
            (
                per[i].rel_change().unwrap_or(f64::INFINITY),
                per[i].l2_diff(),
            )
        };
        let (kx, ky) = (key(x), key(y));
        ky.0.total_cmp(&kx.0).then(ky.1.total_cmp(&kx.1))
    });
    let top: Vec<usize> = order.iter().take(a.top).copied().collect();
    let identical = per.iter().filter(|d| d.changed == 0).count();

    let tensor_json = |i: usize| -> Value {
        let (ta, tb) = pairs[i];
        let d = &per[i];
        json!({
            "name": ta.name(),
            "a_dtype": ta.dtype().name(),
            "b_dtype": tb.dtype().name(),
            "shape": ta.shape(),
            "numel": ta.numel(),
            "l2_diff": d.l2_diff(),
            "norm_a": d.norm_a(),
            "norm_b": d.norm_b(),
            "rel_change": d.rel_change(),
            "cosine": d.cosine(),
            "max_abs": d.max_abs,
            "changed": d.changed,
            "non_finite": d.non_finite,
        })
    };
    if a.json {
        let doc = json!({
            "engram_diff": 1,
            "a": ma.source().display().to_string(),
            "b": mb.source().display().to_string(),
            "summary": {
                "compared": pairs.len(),
                "identical": identical,
                "changed_tensors": pairs.len() - identical,
                "only_in_a": only_a.len(),
                "only_in_b": only_b.len(),
                "shape_mismatch": mismatched.len(),
                "dtype_differs": dtype_differs.len(),
                "values": overall.count,
                "changed_values": overall.changed,
                "non_finite": overall.non_finite,
                "l2_diff": overall.l2_diff(),
                "norm_a": overall.norm_a(),
                "norm_b": overall.norm_b(),
                "rel_change": overall.rel_change(),
                "cosine": overall.cosine(),
                "max_abs": overall.max_abs,
            },
            "only_in_a": only_a,
            "only_in_b": only_b,
            "shape_mismatch": mismatched,
            "dtype_differs": dtype_differs,
            "top": top.iter().map(|&i| pairs[i].0.name()).collect::<Vec<_>>(),
            "tensors": (0..pairs.len()).map(tensor_json).collect::<Vec<_>>(),
        });
        return util::print_json(&doc);
    }

    let mut o = String::new();

    outln!(
        o,
        "A  {} ({} tensors)\nB  {} ({} tensors)",
        ma.source().display(),
        ma.len(),
        mb.source().display(),
        mb.len()
    );
    outln!(
        o,
        "compared {} tensors ({} values): {} changed, {} identical",
        pairs.len(),
        util::count(overall.count),
        pairs.len() - identical,
        identical
    );
    let list = |v: &[String]| {
        let mut s = v
            .iter()
            .take(10)
            .map(|n| util::esc(n))
            .collect::<Vec<_>>()
            .join(", ");
        if v.len() > 10 {
            s += &format!(" (and {} more)", v.len() - 10);
        }
        s
    };
    if !only_a.is_empty() {
        outln!(o, "only in A ({}): {}", only_a.len(), list(&only_a));
    }
    if !only_b.is_empty() {
        outln!(o, "only in B ({}): {}", only_b.len(), list(&only_b));
    }
    for m in &mismatched {
        outln!(
            o,
            "shape mismatch: {}: A {} {} vs B {} {}",
            util::esc(m["name"].as_str().unwrap_or_default()),
            m["a_dtype"].as_str().unwrap_or_default(),
            m["a_shape"],
            m["b_dtype"].as_str().unwrap_or_default(),
            m["b_shape"]
        );
    }
    if !dtype_differs.is_empty() {
        outln!(
            o,
            "dtype differs, values compared as f32 ({}): {}",
            dtype_differs.len(),
            list(&dtype_differs)
        );
    }
    if overall.non_finite > 0 {
        outln!(
            o,
            "{} positions hold NaN or infinite values in A or B (left out of the sums)",
            overall.non_finite
        );
    }
    outln!(
        o,
        "overall  |A-B| {}  |A| {}  relative {}  cosine {}  max |A-B| {}",
        util::num(Some(overall.l2_diff())),
        util::num(Some(overall.norm_a())),
        util::num(overall.rel_change()),
        util::num(overall.cosine()),
        util::num(Some(overall.max_abs))
    );
    let rows: Vec<usize> = if a.all {
        (0..pairs.len()).collect()
    } else {
        top.clone()
    };
    if rows.is_empty() {
        return util::emit(&o);
    }
    outln!(o);
    if a.all {
        outln!(o, "all compared tensors:");
    } else {
        outln!(
            o,
            "most changed tensors (top {} of {}):",
            rows.len(),
            order.len()
        );
    }
    let w = util::column(
        rows.iter()
            .map(|&i| util::esc(pairs[i].0.name()).chars().count()),
        6,
    );
    outln!(
        o,
        "{:<w$}  {:>11}  {:>11}  {:>11}  {:>11}  {:>9}",
        "tensor",
        "rel change",
        "|A-B|",
        "cosine",
        "max |A-B|",
        "changed"
    );
    for i in rows {
        let d = &per[i];
        let pct = if d.count > 0 {
            100.0 * d.changed as f64 / d.count as f64
        } else {
            0.0
        };
        outln!(
            o,
            "{:<w$}  {:>11}  {:>11}  {:>11}  {:>11}  {:>8.1}%",
            util::esc(pairs[i].0.name()),
            util::num(d.rel_change()),
            util::num(Some(d.l2_diff())),
            util::num(d.cosine()),
            util::num(Some(d.max_abs)),
            pct
        );
    }
    util::emit(&o)
}
