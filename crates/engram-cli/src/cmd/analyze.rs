//! `engram analyze MODEL`: the spectrum of every weight matrix (singular values, KappaTune's
//! condition number κ, effective rank, stable rank, norms) and, with `--lift-masks`, LIFT's
//! principal-weight masks. Card: shared/methods/selective_finetuning.md (LIFT, KappaTune).
//!
//! Float tensors with two or more dimensions are read as `out × rest` matrices; the others
//! are listed as skipped. Tensors stream one at a time per worker thread (decoded to f32,
//! analysed, dropped, their file pages released), so memory stays near threads × the largest
//! matrix's working set. Output: a text table, or `--json` (docs/json.md, "engram analyze"),
//! and with `--out DIR` also `analysis.json` and `analysis.html` (charts and the table).

use super::Ctx;
use super::util::{self, outln};
use anyhow::{Context, Result};
use engram_bench::analyze::{AnalyzeOptions, Plan, Row, Skipped};
use engram_ckpt::Model;
use engram_report::html::Page;
use engram_report::svg::{LineChart, Series, bar_chart, line_chart};
use engram_weights::spelling::Spelling;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// A .safetensors file, a model folder, or a model.safetensors.index.json.
    pub path: PathBuf,
    /// Print JSON (the structure documented in docs/json.md) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Include every singular value in the JSON (all min(m, n) of an exact spectrum, the top
    /// --top-k of a randomized one).
    #[arg(long)]
    pub values: bool,
    /// Also write analysis.json and analysis.html (charts of log10 κ and effective rank) here.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Exact SVD when the matrix's smaller side is at most N; above it, a randomized SVD of
    /// the top --top-k singular values only (then σ_min, κ and effective rank are not given).
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_dim: usize,
    /// Exact SVD only for matrices of at most N entries (the f64 matrix and its factors stay
    /// in memory: 2^26 entries is about 0.5 GB each); larger ones are randomized as above.
    #[arg(long, default_value_t = 1 << 26, value_name = "N")]
    pub max_values: usize,
    /// Singular values a randomized spectrum reports.
    #[arg(long, default_value_t = 32, value_name = "K")]
    pub top_k: usize,
    /// Seed of the randomized SVD (the same seed gives the same numbers).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Analyse only tensors whose name contains SUBSTR; repeatable (any of them).
    #[arg(long, value_name = "SUBSTR")]
    pub include: Vec<String>,
    /// Skip tensors whose name contains SUBSTR; repeatable.
    #[arg(long, value_name = "SUBSTR")]
    pub exclude: Vec<String>,
    /// Write LIFT principal-weight masks to FILE.safetensors: one BOOL tensor per analysed
    /// matrix (same name and shape), true at the K = min((m + n)·r, m·n) largest entries of
    /// |W′|, W′ the rank --filter-rank approximation and r = --lift-rank. Every analysed
    /// matrix gets a mask (embeddings and output heads included) unless --lift-exclude
    /// leaves it out.
    #[arg(long, value_name = "FILE")]
    pub lift_masks: Option<PathBuf>,
    /// LIFT's filter rank: rank of the approximation W′ whose largest entries are chosen.
    #[arg(long, default_value_t = 8, value_name = "R")]
    pub filter_rank: usize,
    /// LIFT's r_lora: the mask holds as many entries as a rank-R LoRA has parameters.
    #[arg(long, default_value_t = 8, value_name = "R")]
    pub lift_rank: usize,
    /// No LIFT mask for tensors whose name contains SUBSTR (they are still analysed);
    /// repeatable. E.g. `--lift-exclude lm_head --lift-exclude embed_tokens`, as the LIFT
    /// paper leaves the output head and embeddings frozen.
    #[arg(long, value_name = "SUBSTR")]
    pub lift_exclude: Vec<String>,
    /// Instead of the spectra: the anisotropy of this embedding matrix (any 2-D float tensor,
    /// rows × dim): mean cosine c̄, effective dimensionality, and with --labels d′
    /// (Ker-VLJEPA; docs/json.md, "engram analyze MODEL --embeddings").
    #[arg(long, value_name = "NAME", conflicts_with_all = [
        "values", "out", "max_dim", "max_values", "top_k", "seed", "include", "exclude",
        "lift_masks", "filter_rank", "lift_rank", "lift_exclude",
    ])]
    pub embeddings: Option<String>,
    /// With --embeddings: a tensor of the same file holding one integer label per row, for
    /// d′ (same-label against different-label pairs).
    #[arg(long, value_name = "NAME", requires = "embeddings")]
    pub labels: Option<String>,
}

impl Args {
    /// The options as the library reads them.
    fn options(&self) -> AnalyzeOptions {
        AnalyzeOptions {
            source: self.path.display().to_string(),
            values: self.values,
            max_dim: self.max_dim,
            max_values: self.max_values,
            top_k: self.top_k,
            seed: self.seed,
            include: self.include.clone(),
            exclude: self.exclude.clone(),
            lift_masks: self.lift_masks.clone(),
            filter_rank: self.filter_rank,
            lift_rank: self.lift_rank,
            lift_exclude: self.lift_exclude.clone(),
        }
    }
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    if let Some(name) = &a.embeddings {
        let labels = a.labels.as_deref();
        return super::embeddings::analyze(ctx, &a.path, name, labels, a.json);
    }
    let opts = a.options();
    opts.check(Spelling::Flags)?;
    let start = Instant::now();
    let model = super::models::open(&a.path)?;
    // The report folder is staged before any output is written: a bad --out fails a run
    // that has written nothing (the masks file included).
    let staged = a.out.as_deref().map(engram_ckpt::Staged::new).transpose()?;
    let plan = Plan::new(&model, &opts, &ctx.command_line)?;
    let pb = super::progress::bar(ctx, plan.params(), "analyzing");
    let res = plan.run(start, &|n| pb.inc(n));
    pb.finish_and_clear();
    let mut an = res?;

    let doc = an.to_json(&model, &opts);
    if let (Some(staged), Some(dir)) = (&staged, &a.out) {
        // analysis.json and analysis.html are switched in together.
        util::write_json_file(&staged.path().join("analysis.json"), &doc)?;
        let html = staged.path().join("analysis.html");
        engram_ckpt::write_atomic(
            &html,
            render_html(ctx, &model, &a, &an.rows, &an.skipped).as_bytes(),
        )
        .with_context(|| format!("writing {}", dir.join("analysis.html").display()))?;
    }
    // Every output is complete before the first is committed.
    an.finish_masks(&opts)?;
    if let Some(staged) = staged {
        staged.commit(&|n| n == "analysis.json" || n == "analysis.html")?;
    }
    if a.json {
        util::print_json(&doc)?;
    } else {
        let text = text_report(&model, &a, &an.rows, &an.skipped, an.params, an.seconds);
        util::emit(&text)?;
    }
    Ok(())
}

/// The analysed tensors of lowest and highest κ (exact spectra only).
fn kappa_extremes(rows: &[Row]) -> Option<(&Row, &Row)> {
    let with: Vec<&Row> = rows.iter().filter(|r| r.spectrum.kappa.is_some()).collect();
    let k = |r: &&Row| r.spectrum.kappa.unwrap_or(f64::NAN);
    let lo = with.iter().min_by(|x, y| k(x).total_cmp(&k(y)))?;
    let hi = with.iter().max_by(|x, y| k(x).total_cmp(&k(y)))?;
    Some((lo, hi))
}

fn sci(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.3e}"))
}

/// The table cells of one row: shape, σ_max, σ_min, κ, effective rank, stable rank,
/// Frobenius norm, spectrum kind.
fn cells(r: &Row) -> [String; 8] {
    let s = &r.spectrum;
    [
        format!("{}×{}", s.rows, s.cols),
        util::num(Some(s.spectral_norm)),
        util::num(s.sigma_min),
        sci(s.kappa),
        s.effective_rank
            .map_or_else(|| "-".into(), |e| format!("{e:.1}")),
        format!("{:.2}", s.stable_rank),
        util::num(Some(s.frobenius_norm)),
        if s.exact { "exact" } else { "top-k" }.into(),
    ]
}

const HEADER: [&str; 9] = [
    "tensor",
    "shape",
    "σ_max",
    "σ_min",
    "κ",
    "eff. rank",
    "stable rank",
    "Frobenius",
    "spectrum",
];

fn text_report(
    model: &Model,
    a: &Args,
    rows: &[Row],
    skipped: &[Skipped],
    params: u64,
    seconds: f64,
) -> String {
    let mut o = String::new();
    let all: Vec<[String; 8]> = rows.iter().map(cells).collect();
    let w0 = util::column(
        rows.iter().map(|r| util::esc(&r.name).chars().count()),
        HEADER[0].len(),
    );
    let mut widths = [0usize; 8];
    for (j, w) in widths.iter_mut().enumerate() {
        *w = util::column(
            all.iter().map(|c| c[j].chars().count()),
            HEADER[j + 1].chars().count(),
        );
    }
    let line = |name: &str, c: &[&str]| {
        let mut s = format!("{name:<w0$}");
        for (j, v) in c.iter().enumerate() {
            let w = widths[j];
            if j == 0 || j == 7 {
                s.push_str(&format!("  {v:<w$}"));
            } else {
                s.push_str(&format!("  {v:>w$}"));
            }
        }
        s.trim_end().to_string()
    };
    outln!(o, "{}", line(HEADER[0], &HEADER[1..]));
    for (r, c) in rows.iter().zip(&all) {
        let c: Vec<&str> = c.iter().map(String::as_str).collect();
        outln!(o, "{}", line(&util::esc(&r.name), &c));
    }
    outln!(o);
    outln!(
        o,
        "{} matrices analysed ({} parameters) in {}, {} tensors skipped",
        rows.len(),
        util::count(params),
        model.source().display(),
        skipped.len()
    );
    if let Some((lo, hi)) = kappa_extremes(rows) {
        outln!(
            o,
            "lowest κ  {} ({})\nhighest κ {} ({})",
            sci(lo.spectrum.kappa),
            util::esc(&lo.name),
            sci(hi.spectrum.kappa),
            util::esc(&hi.name)
        );
    }
    if let Some(p) = &a.lift_masks {
        let masks = rows.iter().filter(|r| r.lift_k.is_some()).count();
        let ones: u64 = rows.iter().filter_map(|r| r.lift_k).map(|k| k as u64).sum();
        outln!(
            o,
            "LIFT masks {} ({masks} tensors, {} principal weights, filter rank {}, r_lora {})",
            p.display(),
            util::count(ones),
            a.filter_rank,
            a.lift_rank
        );
    }
    outln!(
        o,
        "{seconds:.2} s, {}/s parameters on {} threads",
        util::count((params as f64 / seconds.max(1e-9)) as u64),
        rayon::current_num_threads()
    );
    o
}

/// Charts take bars up to this many tensors; above it a line over the tensor number.
const MAX_BARS: usize = 48;

/// A per-tensor chart in tensor order; `None` values draw no bar (no point).
fn per_tensor_chart(title: &str, y_label: &str, values: &[Option<f64>]) -> String {
    if values.len() <= MAX_BARS {
        let labels: Vec<String> = (0..values.len()).map(|i| i.to_string()).collect();
        let v: Vec<f64> = values
            .iter()
            .map(|v| v.filter(|x| x.is_finite()).unwrap_or(0.0).max(0.0))
            .collect();
        bar_chart(title, &labels, &v, y_label)
    } else {
        let points = values
            .iter()
            .enumerate()
            .map(|(i, v)| (i as f64, v.unwrap_or(f64::NAN)))
            .collect();
        line_chart(
            &LineChart {
                title: title.into(),
                x_label: "tensor #".into(),
                y_label: y_label.into(),
                integer_x: true,
                ..LineChart::default()
            },
            &[Series {
                label: y_label.into(),
                points,
            }],
        )
    }
}

fn render_html(ctx: &Ctx, model: &Model, a: &Args, rows: &[Row], skipped: &[Skipped]) -> String {
    let mut page = Page::new(&format!("engram analyze: {}", model.source().display()));
    page.para(&format!(
        "Spectra of {} weight matrices (a tensor with more than two dimensions is read as out × rest). κ = σ_max / (σ_min + 1e-8) as KappaTune defines it; effective rank = exp(entropy of σ_i / Σσ); stable rank = ‖W‖_F² / σ_max². Matrices whose smaller side exceeds {} or with more than {} entries get only their top {} singular values (randomized SVD), and no σ_min, κ or effective rank.",
        rows.len(),
        a.max_dim,
        a.max_values,
        a.top_k
    ));
    let log_kappa: Vec<Option<f64>> = rows
        .iter()
        .map(|r| r.spectrum.kappa.filter(|k| *k > 0.0).map(f64::log10))
        .collect();
    let erank: Vec<Option<f64>> = rows.iter().map(|r| r.spectrum.effective_rank).collect();
    page.heading("Per tensor").svg_row(&[
        per_tensor_chart("log10 κ per tensor", "log10 κ", &log_kappa),
        per_tensor_chart("Effective rank per tensor", "effective rank", &erank),
    ]);
    page.note("Tensors in model order, numbered as in the table below; a tensor with a randomized (top-k) spectrum has no bar (no point).");
    if let Some((lo, hi)) = kappa_extremes(rows) {
        page.para(&format!(
            "Lowest κ: {} ({}); highest κ: {} ({}). KappaTune tunes the lowest-κ tensors and freezes the rest.",
            sci(lo.spectrum.kappa),
            lo.name,
            sci(hi.spectrum.kappa),
            hi.name
        ));
    }
    if let Some(p) = &a.lift_masks {
        page.para(&format!(
            "LIFT masks written to {} (filter rank {}, r_lora {}).",
            p.display(),
            a.filter_rank,
            a.lift_rank
        ));
    }
    let mut header = vec!["#"];
    header.extend(HEADER);
    if a.lift_masks.is_some() {
        header.push("LIFT K");
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut v = vec![i.to_string(), r.name.clone()];
            v.extend(cells(r));
            if a.lift_masks.is_some() {
                v.push(r.lift_k.map_or_else(|| "-".into(), |k| k.to_string()));
            }
            v
        })
        .collect();
    page.heading("Matrices").table_text_cols(&header, &table, 3);
    if !skipped.is_empty() {
        let sk: Vec<Vec<String>> = skipped
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    s.dtype.name().to_string(),
                    util::shape(&s.shape),
                    s.reason.to_string(),
                ]
            })
            .collect();
        page.heading("Skipped")
            .table_text_cols(&["tensor", "dtype", "shape", "reason"], &sk, 4);
    }
    page.note(&format!(
        "engram {}: {}",
        env!("CARGO_PKG_VERSION"),
        ctx.command_line
    ));
    page.render()
}
