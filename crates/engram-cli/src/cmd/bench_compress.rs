//! `engram bench compress`: B6 of BENCHMARKS.md and the merge-8 issue's scale check. On a
//! synthetic bf16 family (default 1B parameters, 4 fine-tunes) it runs, each as a measured
//! child process (wall time, peak resident set): a Task Arithmetic merge, `engram compress`
//! with packed masks and with entropy-coded masks (TALL over Σ τ, λ = 0.4), and `engram
//! extract` of one task from each bundle; it checks that both rebuilds are byte-identical and
//! reports bytes against base + fine-tuned checkpoints and against the TALL formula
//! 2·P·s + T·⌈P/8⌉ (metrics.md). The family is kept for reruns; outputs are deleted after
//! each step (disk).

use super::bench::remove;
use super::bench_merge::{ensure_family, machine, measure};
use super::util;
use crate::Ctx;
use anyhow::{Context, Result, bail};
use engram_ckpt::Model;
use engram_weights::synth::ArchConfig;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct CompressArgs {
    /// Model sizes (parameter counts), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1B")]
    pub sizes: Vec<String>,
    /// Number of fine-tuned models (tasks).
    #[arg(short = 'n', long, default_value_t = 4)]
    pub tasks: usize,
    /// TALL λ of every task.
    #[arg(long, default_value_t = 0.4)]
    pub lambda: f32,
    /// Working folder for the synthetic families (reused) and the outputs.
    #[arg(long, default_value = "bench-out/compress")]
    pub dir: PathBuf,
    #[arg(long, default_value = "bench-out/compress.json", value_name = "FILE")]
    pub json_out: PathBuf,
    /// Delete the synthetic families afterwards.
    #[arg(long)]
    pub clean: bool,
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn dir_bytes(p: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(p).with_context(|| format!("reading {}", p.display()))? {
        let e = e?;
        if e.file_type()?.is_file() {
            total += e.metadata()?.len();
        }
    }
    Ok(total)
}

pub fn run(ctx: &Ctx, a: CompressArgs) -> Result<()> {
    if a.tasks == 0 {
        bail!("--tasks must be at least 1");
    }
    let exe = s(&std::env::current_exe().context("locating the engram binary")?);
    let threads = rayon::current_num_threads();
    let mut cases = Vec::new();
    let mut o = String::new();
    util::outln!(
        o,
        "engram bench compress: bf16 synthetic families, {} tasks, TALL λ = {}, {threads} threads",
        a.tasks,
        a.lambda
    );
    util::emit(&o)?;
    o.clear();
    for size in &a.sizes {
        let arch = ArchConfig::for_params(super::synth::parse_count(size)?);
        let params = arch.param_count();
        let fam = a.dir.join(size.to_ascii_lowercase());
        ensure_family(ctx, &fam, size, &arch, a.tasks, "engram bench compress")?;
        let base = fam.join("base");
        let models: Vec<String> = (1..=a.tasks)
            .map(|i| s(&fam.join(format!("ft-{i}"))))
            .collect();
        let checkpoints = dir_bytes(&base)?
            + (1..=a.tasks)
                .map(|i| dir_bytes(&fam.join(format!("ft-{i}"))))
                .sum::<Result<u64>>()?;
        let out = a.dir.join("out");
        remove(&out)?;
        std::fs::create_dir_all(&out)?;
        let q = |mut v: Vec<String>| {
            v.insert(0, exe.clone());
            v.insert(1, "--quiet".into());
            v
        };
        // Task Arithmetic: the plain merge path at this size.
        let merged = out.join("ta");
        let mut cmd = vec![
            "merge".into(),
            "--method".into(),
            "task_arithmetic".into(),
            "--base".into(),
            s(&base),
        ];
        cmd.extend(models.iter().cloned());
        cmd.extend(["-o".into(), s(&merged)]);
        let ta = measure(&q(cmd))?;
        remove(&merged)?;
        let mut row = json!({
            "params": params, "tasks": a.tasks, "checkpoints_bytes": checkpoints,
            "merge_ta": {"seconds": ta.seconds, "peak_rss_bytes": ta.peak},
        });
        let mut outputs = Vec::new();
        for coding in ["packed", "arith"] {
            let bundle = out.join(format!("bundle-{coding}"));
            let mut cmd = vec![
                "compress".into(),
                "--base".into(),
                s(&base),
                "--lambda".into(),
                a.lambda.to_string(),
                "--mask-coding".into(),
                coding.into(),
                "-o".into(),
                s(&bundle),
            ];
            cmd.extend(models.iter().cloned());
            let c = measure(&q(cmd))?;
            let report = bundle.join("bundle.safetensors");
            let bundle_bytes = dir_bytes(&bundle)?;
            let mask_bytes = if coding == "arith" {
                std::fs::metadata(bundle.join("masks.safetensors"))?.len()
            } else {
                let m = Model::open(&report)?;
                m.tensors()
                    .filter(|t| t.name().starts_with("tall.mask."))
                    .map(|t| t.numel() as u64)
                    .sum()
            };
            let ex = out.join(format!("extract-{coding}"));
            let e = measure(&q(vec![
                "extract".into(),
                s(&bundle),
                "--task".into(),
                "ft-1".into(),
                "-o".into(),
                s(&ex),
            ]))?;
            outputs.push(ex.join("model.safetensors"));
            row[coding] = json!({
                "compress_seconds": c.seconds, "compress_peak_rss_bytes": c.peak,
                "bundle_bytes": bundle_bytes, "mask_bytes": mask_bytes,
                "extract_seconds": e.seconds, "extract_peak_rss_bytes": e.peak,
            });
            remove(&bundle)?;
        }
        let same = same_tensors(&outputs[0], &outputs[1])?;
        remove(&out)?;
        let float_params = params as f64;
        let formula = 2.0 * float_params * 2.0 + a.tasks as f64 * (float_params / 8.0).ceil();
        row["rebuilds_identical"] = json!(same);
        row["tall_formula_bytes"] = json!(formula);
        let pk = &row["packed"];
        let ac = &row["arith"];
        let (mp, ma) = (
            pk["mask_bytes"].as_f64().unwrap_or(0.0),
            ac["mask_bytes"].as_f64().unwrap_or(0.0),
        );
        util::outln!(
            o,
            "{size}: {params} params; checkpoints {:.2} GB; TA merge {:.1} s ({:.0} MiB peak)",
            checkpoints as f64 / 1e9,
            ta.seconds,
            ta.peak as f64 / 1048576.0
        );
        for (name, r) in [("packed", pk), ("coded", ac)] {
            util::outln!(
                o,
                "  {name:<6}: bundle {:.2} GB ({:.2}x smaller than the checkpoints), masks {:.1} MB; compress {:.1} s ({:.0} MiB peak), rebuild one task {:.1} s ({:.0} MiB peak)",
                r["bundle_bytes"].as_f64().unwrap_or(0.0) / 1e9,
                checkpoints as f64 / r["bundle_bytes"].as_f64().unwrap_or(1.0),
                r["mask_bytes"].as_f64().unwrap_or(0.0) / 1e6,
                r["compress_seconds"].as_f64().unwrap_or(0.0),
                r["compress_peak_rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
                r["extract_seconds"].as_f64().unwrap_or(0.0),
                r["extract_peak_rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
            );
        }
        util::outln!(
            o,
            "  coded masks {:.2}x smaller than packed bits ({:.3} bit/weight/task); rebuilds identical: {same}; TALL formula {:.2} GB",
            mp / ma.max(1.0),
            ma * 8.0 / (float_params * a.tasks as f64),
            formula / 1e9
        );
        util::emit(&o)?;
        o.clear();
        cases.push(row);
        write_json(&a.json_out, threads, &cases)?;
        if a.clean {
            remove(&fam)?;
        }
    }
    if !same_all(&cases) {
        bail!("a rebuilt task differed between the packed and the coded bundle");
    }
    Ok(())
}

/// Whether two checkpoints hold the same tensors with the same bytes (their metadata, which
/// records the command line, may differ).
fn same_tensors(a: &Path, b: &Path) -> Result<bool> {
    let (ma, mb) = (Model::open(a)?, Model::open(b)?);
    if ma.tensors().count() != mb.tensors().count() {
        return Ok(false);
    }
    for t in ma.tensors() {
        match mb.get(t.name()) {
            Some(u) if u.dtype() == t.dtype() && u.shape() == t.shape() && u.bytes == t.bytes => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

fn same_all(cases: &[Value]) -> bool {
    cases
        .iter()
        .all(|c| c["rebuilds_identical"].as_bool() == Some(true))
}

fn write_json(path: &Path, threads: usize, cases: &[Value]) -> Result<()> {
    let doc = json!({"engram_bench_compress": 1, "threads": threads, "machine": machine(), "cases": cases});
    util::write_json_file(path, &doc)
}
