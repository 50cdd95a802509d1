//! `engram bench compress`: B6 of BENCHMARKS.md and the merge-8 issue's scale check. On a
//! synthetic bf16 family (default 1B parameters, 4 fine-tunes) it runs, each as a measured
//! child process (wall time, peak resident set): a Task Arithmetic merge, `engram compress`
//! with packed masks and with entropy-coded masks (TALL over Σ τ, λ = 0.4), and `engram
//! extract` of one task from each bundle; it checks that both rebuilds are byte-identical and
//! reports bytes against base + fine-tuned checkpoints and against the TALL formula
//! 2·P·s + T·⌈P/8⌉ (metrics.md). The family is kept for reruns; outputs are deleted after
//! each step (disk).

use crate::Progress;
use crate::machine::{self, arg, dir_bytes, measure, remove};
use crate::units::parse_count;
use anyhow::{Result, bail};
use engram_ckpt::Model;
use engram_weights::synth::ArchConfig;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// Settings of `engram bench compress`.
#[derive(Clone, Debug)]
pub struct Options {
    /// Model sizes (parameter counts).
    pub sizes: Vec<String>,
    /// Number of fine-tuned models (tasks).
    pub tasks: usize,
    /// TALL λ of every task.
    pub lambda: f32,
    /// Working folder for the synthetic families (reused) and the outputs.
    pub dir: PathBuf,
    pub json_out: PathBuf,
    /// Delete the synthetic families afterwards.
    pub clean: bool,
    /// The `engram` binary measured (default: this process's executable).
    pub engram: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sizes: vec!["1B".into()],
            tasks: 4,
            lambda: 0.4,
            dir: "bench-out/compress".into(),
            json_out: "bench-out/compress.json".into(),
            clean: false,
            engram: None,
        }
    }
}

/// Runs the benchmark; writes and returns its JSON. Each size's lines go to `Output` when it
/// is done, and the JSON is rewritten after each size.
pub fn run(o: &Options, progress: &mut dyn FnMut(Progress)) -> Result<Value> {
    if o.tasks == 0 {
        bail!("--tasks must be at least 1");
    }
    machine::check_json_out(&o.json_out, "--json-out")?;
    machine::check_out_dir(&o.dir, "--dir")?;
    // `--clean` removes each size's family after it; after a failure, all of them.
    machine::with_clean(
        o.clean,
        || measure_all(o, progress),
        || {
            for size in &o.sizes {
                remove(&o.dir.join(size.to_ascii_lowercase()))?;
            }
            Ok(())
        },
    )
}

fn measure_all(o: &Options, progress: &mut dyn FnMut(Progress)) -> Result<Value> {
    let exe = arg(&machine::engram_exe(o.engram.as_deref())?);
    let threads = rayon::current_num_threads();
    let mut cases = Vec::new();
    let mut doc = Value::Null;
    progress(Progress::Output(format!(
        "engram bench compress: bf16 synthetic families, {} tasks, TALL λ = {}, {threads} threads\n",
        o.tasks, o.lambda
    )));
    for size in &o.sizes {
        let arch = ArchConfig::for_params(parse_count(size)?)?;
        let params = arch.param_count();
        let fam = o.dir.join(size.to_ascii_lowercase());
        crate::synthetic::ensure_family(
            &fam,
            size,
            &arch,
            o.tasks,
            "engram bench compress",
            progress,
        )?;
        let base = fam.join("base");
        let models: Vec<String> = (1..=o.tasks)
            .map(|i| arg(&fam.join(format!("ft-{i}"))))
            .collect();
        let checkpoints = dir_bytes(&base)?
            + (1..=o.tasks)
                .map(|i| dir_bytes(&fam.join(format!("ft-{i}"))))
                .sum::<Result<u64>>()?;
        let out = o.dir.join("out");
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
            arg(&base),
        ];
        cmd.extend(models.iter().cloned());
        cmd.extend(["-o".into(), arg(&merged)]);
        let ta = measure(&q(cmd))?;
        remove(&merged)?;
        let mut row = json!({
            "params": params, "tasks": o.tasks, "checkpoints_bytes": checkpoints,
            "merge_ta": {"seconds": ta.seconds, "peak_rss_bytes": ta.peak},
        });
        let mut outputs = Vec::new();
        for coding in ["packed", "arith"] {
            let bundle = out.join(format!("bundle-{coding}"));
            let mut cmd = vec![
                "compress".into(),
                "--base".into(),
                arg(&base),
                "--lambda".into(),
                o.lambda.to_string(),
                "--mask-coding".into(),
                coding.into(),
                "-o".into(),
                arg(&bundle),
            ];
            cmd.extend(models.iter().cloned());
            let c = measure(&q(cmd))?;
            let bundle_bytes = dir_bytes(&bundle)?;
            let mask_bytes = if coding == "arith" {
                std::fs::metadata(bundle.join("masks.safetensors"))?.len()
            } else {
                let m = Model::open(&bundle.join("bundle.safetensors"))?;
                m.tensors()
                    .filter(|t| t.name().starts_with("tall.mask."))
                    .map(|t| t.numel() as u64)
                    .sum()
            };
            let ex = out.join(format!("extract-{coding}"));
            let e = measure(&q(vec![
                "extract".into(),
                arg(&bundle),
                "--task".into(),
                "ft-1".into(),
                "-o".into(),
                arg(&ex),
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
        let formula = 2.0 * float_params * 2.0 + o.tasks as f64 * (float_params / 8.0).ceil();
        row["rebuilds_identical"] = json!(same);
        row["tall_formula_bytes"] = json!(formula);
        progress(Progress::Output(render_case(size, &row)));
        cases.push(row);
        doc = json!({"engram_bench_compress": 1, "threads": threads, "machine": machine::describe(), "cases": cases});
        machine::write_json(&o.json_out, &doc)?;
        if o.clean {
            remove(&fam)?;
        }
    }
    if !cases
        .iter()
        .all(|c| c["rebuilds_identical"].as_bool() == Some(true))
    {
        bail!("a rebuilt task differed between the packed and the coded bundle");
    }
    Ok(doc)
}

/// The lines of one size (`size` as given on the command line).
pub fn render_case(size: &str, row: &Value) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let params = row["params"].as_u64().unwrap_or(0);
    let tasks = row["tasks"].as_u64().unwrap_or(0);
    let checkpoints = f(&row["checkpoints_bytes"]);
    let (pk, ac) = (&row["packed"], &row["arith"]);
    let (mp, ma) = (f(&pk["mask_bytes"]), f(&ac["mask_bytes"]));
    let mut o = format!(
        "{size}: {params} params; checkpoints {:.2} GB; TA merge {:.1} s ({:.0} MiB peak)\n",
        checkpoints / 1e9,
        f(&row["merge_ta"]["seconds"]),
        f(&row["merge_ta"]["peak_rss_bytes"]) / 1048576.0
    );
    for (name, r) in [("packed", pk), ("coded", ac)] {
        o += &format!(
            "  {name:<6}: bundle {:.2} GB ({:.2}x smaller than the checkpoints), masks {:.1} MB; compress {:.1} s ({:.0} MiB peak), rebuild one task {:.1} s ({:.0} MiB peak)\n",
            f(&r["bundle_bytes"]) / 1e9,
            checkpoints / r["bundle_bytes"].as_f64().unwrap_or(1.0),
            f(&r["mask_bytes"]) / 1e6,
            f(&r["compress_seconds"]),
            f(&r["compress_peak_rss_bytes"]) / 1048576.0,
            f(&r["extract_seconds"]),
            f(&r["extract_peak_rss_bytes"]) / 1048576.0
        );
    }
    o += &format!(
        "  coded masks {:.2}x smaller than packed bits ({:.3} bit/weight/task); rebuilds identical: {}; TALL formula {:.2} GB\n",
        mp / ma.max(1.0),
        ma * 8.0 / (params as f64 * tasks as f64),
        row["rebuilds_identical"].as_bool().unwrap_or(false),
        f(&row["tall_formula_bytes"]) / 1e9
    );
    o
}

/// Whether two checkpoints hold the same tensors with the same bytes (their metadata, which
/// records the command line, may differ).
fn same_tensors(a: &Path, b: &Path) -> Result<bool> {
    Ok(Model::open(a)?.same_tensors(&Model::open(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_lines_compare_both_codings() {
        let side = |bundle: u64, masks: u64| {
            json!({"bundle_bytes": bundle, "mask_bytes": masks, "compress_seconds": 2.0,
                   "compress_peak_rss_bytes": 1048576.0 * 300.0, "extract_seconds": 1.0,
                   "extract_peak_rss_bytes": 1048576.0 * 100.0})
        };
        let row = json!({
            "params": 1000, "tasks": 4, "checkpoints_bytes": 10_000_000_000u64,
            "merge_ta": {"seconds": 3.0, "peak_rss_bytes": 1048576.0 * 200.0},
            "packed": side(4_000_000_000, 500), "arith": side(3_000_000_000, 100),
            "rebuilds_identical": true, "tall_formula_bytes": 4.5e9,
        });
        let t = render_case("1B", &row);
        let l: Vec<&str> = t.lines().collect();
        assert_eq!(
            l[0],
            "1B: 1000 params; checkpoints 10.00 GB; TA merge 3.0 s (200 MiB peak)"
        );
        assert!(l[1].starts_with("  packed: bundle 4.00 GB (2.50x smaller"));
        assert!(l[2].starts_with("  coded : bundle 3.00 GB (3.33x smaller"));
        assert_eq!(
            l[3],
            "  coded masks 5.00x smaller than packed bits (0.200 bit/weight/task); rebuilds identical: true; TALL formula 4.50 GB"
        );
    }
}
