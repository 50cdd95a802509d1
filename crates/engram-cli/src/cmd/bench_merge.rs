//! `engram bench merge`: B1 of BENCHMARKS.md. On synthetic bf16 families of several sizes and
//! N fine-tunes, times Task Arithmetic, TIES (density 0.2), TALL masks (statistics) and
//! Consensus with engram, and TA and TIES with mergekit (`mergekit-pytorch`, CPU) on the same
//! files, in the same run; plus the read-and-write bound (input bytes read once from a warm
//! page cache, output bytes written once).
//!
//! Every measured command runs as a child of a small Python wrapper that reports the child's
//! wall time and peak resident set (`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`), so
//! engram and mergekit are measured the same way. Where both compute the same thing (TA; TIES
//! with per-tensor trimming), the outputs are compared element by element.

use super::bench::{median, read_all, remove};
use super::util;
use crate::Ctx;
use anyhow::{Context, Result, bail};
use engram_ckpt::{DType, Model};
use engram_weights::synth::{ArchConfig, SynthOptions, write_family};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[derive(clap::Args)]
pub struct MergeArgs {
    /// Model sizes (parameter counts), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100M,500M,1B")]
    pub sizes: Vec<String>,
    /// Numbers of fine-tuned models, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "2,4,8")]
    pub n: Vec<usize>,
    /// Working folder for the synthetic families (reused) and the outputs.
    #[arg(long, default_value = "bench-out/merge")]
    pub dir: PathBuf,
    /// Runs of each engram step (medians are reported). mergekit runs once per case.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// The `mergekit-pytorch` executable; default: bench-out/mergekit-venv/bin/mergekit-pytorch.
    #[arg(long)]
    pub mergekit: Option<PathBuf>,
    /// Create bench-out/mergekit-venv and pip-install mergekit into it first.
    #[arg(long)]
    pub install_mergekit: bool,
    /// Skip mergekit (engram and the bound only).
    #[arg(long)]
    pub no_mergekit: bool,
    /// Skip mergekit above this many parameters (its TIES takes minutes per case).
    #[arg(long, default_value = "2B")]
    pub mergekit_max: String,
    #[arg(long, default_value = "bench-out/merge.json", value_name = "FILE")]
    pub json_out: PathBuf,
    /// Delete the synthetic families afterwards.
    #[arg(long)]
    pub clean: bool,
}

const WRAPPER: &str = "import resource, subprocess, sys, time, json\n\
t = time.perf_counter()\n\
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n\
dt = time.perf_counter() - t\n\
print(json.dumps({'rc': r.returncode, 'seconds': dt, 'peak_rss_bytes': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, 'stderr': r.stderr.decode(errors='replace')[-2000:]}))\n";

pub(crate) struct Measured {
    pub seconds: f64,
    pub peak: u64,
}

pub(crate) fn measure(cmd: &[String]) -> Result<Measured> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(WRAPPER)
        .args(cmd)
        .output()
        .context("running python3 (needed to measure child processes)")?;
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "measuring {cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if v["rc"].as_i64() != Some(0) {
        bail!(
            "{} failed: {}",
            cmd.join(" "),
            v["stderr"].as_str().unwrap_or("")
        );
    }
    Ok(Measured {
        seconds: v["seconds"].as_f64().unwrap_or(f64::NAN),
        peak: v["peak_rss_bytes"].as_u64().unwrap_or(0),
    })
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn file_of(dir: &Path) -> PathBuf {
    dir.join("model.safetensors")
}

/// Element-wise comparison of two models: max |a − b| and the number of elements that differ
/// by more than one bf16 step of the larger value.
fn agreement(a: &Path, b: &Path) -> Result<Value> {
    let (ma, mb) = (Model::open(a)?, Model::open(b)?);
    let (mut max_abs, mut beyond, mut total) = (0f32, 0u64, 0u64);
    for t in ma.tensors() {
        let u = t.to_f32()?;
        let v = mb.require(t.name())?.to_f32()?;
        for (x, y) in u.iter().zip(&v) {
            let d = (x - y).abs();
            max_abs = max_abs.max(d);
            if d > x.abs().max(y.abs()) * 2f32.powi(-7) {
                beyond += 1;
            }
            total += 1;
        }
    }
    Ok(json!({"max_abs_diff": max_abs, "elements_beyond_one_bf16_step": beyond, "elements": total}))
}

fn mergekit_config(method: &str, base: &Path, models: &[PathBuf]) -> String {
    let mut y = format!(
        "merge_method: {method}\nbase_model: {}\nmodels:\n",
        s(&file_of(base))
    );
    for m in models {
        y.push_str(&format!(
            "  - model: {}\n    parameters:\n      weight: 1.0\n",
            s(&file_of(m))
        ));
        if method == "ties" {
            y.push_str("      density: 0.2\n");
        }
    }
    y.push_str("parameters:\n  lambda: 1.0\n");
    if method == "ties" {
        y.push_str("  normalize: true\n");
    }
    y.push_str("dtype: float32\nout_dtype: bfloat16\n");
    y
}

pub fn run(ctx: &Ctx, a: MergeArgs) -> Result<()> {
    if a.repeat == 0 || a.n.contains(&0) {
        bail!("--repeat and every --n must be at least 1");
    }
    let exe = std::env::current_exe().context("locating the engram binary")?;
    let venv = PathBuf::from("bench-out/mergekit-venv");
    if a.install_mergekit && !a.no_mergekit {
        let ok = Command::new("python3")
            .args(["-m", "venv", &s(&venv)])
            .status()?
            .success()
            && Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "mergekit==0.1.5"])
                .status()?
                .success();
        if !ok {
            bail!("installing mergekit into {} failed", venv.display());
        }
    }
    let mergekit = (!a.no_mergekit).then(|| {
        a.mergekit
            .clone()
            .unwrap_or(venv.join("bin/mergekit-pytorch"))
    });
    if let Some(mk) = &mergekit
        && !mk.exists()
    {
        bail!(
            "{} not found: pass --install-mergekit, --mergekit PATH or --no-mergekit",
            mk.display()
        );
    }
    let mk_max = super::synth::parse_count(&a.mergekit_max)?;
    let nmax = a.n.iter().copied().max().unwrap_or(1);
    let threads = rayon::current_num_threads();
    let mut cases = Vec::new();
    let mut o = String::new();
    util::outln!(
        o,
        "engram bench merge: bf16 synthetic families, {threads} threads; engram medians of {}, mergekit once",
        a.repeat
    );
    util::outln!(
        o,
        "{:<7} {:>2} {:<12} {:>9} {:>9} {:>10} {:>9} {:>10} {:>9} {:>10}",
        "params",
        "N",
        "method",
        "engram s",
        "GB/s",
        "x bound",
        "peak",
        "mergekit s",
        "mk peak",
        "speed-up"
    );
    util::emit(&o)?;
    o.clear();
    for size in &a.sizes {
        let arch = ArchConfig::for_params(super::synth::parse_count(size)?);
        let params = arch.param_count();
        let fam = a.dir.join(size.to_ascii_lowercase());
        ensure_family(ctx, &fam, size, &arch, nmax, "engram bench merge")?;
        let base = fam.join("base");
        for &n in &a.n {
            let models: Vec<PathBuf> = (1..=n).map(|i| fam.join(format!("ft-{i}"))).collect();
            let mut inputs = vec![file_of(&base)];
            inputs.extend(models.iter().map(|m| file_of(m)));
            let in_bytes: u64 = inputs
                .iter()
                .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
                .sum();
            let out_bytes = std::fs::metadata(file_of(&base))?.len();
            // Read-and-write bound: inputs read once (warm cache, after one untimed read),
            // one output's bytes written once.
            read_all(&inputs)?;
            let t = Instant::now();
            read_all(&inputs)?;
            let bound_read = t.elapsed().as_secs_f64();
            let sink = a.dir.join("bound.tmp");
            let t = Instant::now();
            {
                use std::io::Write;
                let mut f = std::fs::File::create(&sink)?;
                let block = vec![1u8; 8 << 20];
                let mut left = out_bytes;
                while left > 0 {
                    let k = left.min(block.len() as u64) as usize;
                    f.write_all(&block[..k])?;
                    left -= k as u64;
                }
                f.sync_data()?;
            }
            let bound_write = t.elapsed().as_secs_f64();
            remove(&sink)?;
            let bound = bound_read + bound_write;
            let model_args: Vec<String> = models.iter().map(|m| s(m)).collect();
            let out = a.dir.join("out");
            let steps: Vec<(&str, Vec<String>)> = vec![
                (
                    "task_arithmetic",
                    [
                        vec![
                            "merge".into(),
                            "-q".into(),
                            "--method".into(),
                            "task_arithmetic".into(),
                            "--base".into(),
                            s(&base),
                            "-o".into(),
                            s(&out.join("ta")),
                        ],
                        model_args.clone(),
                    ]
                    .concat(),
                ),
                (
                    "ties",
                    [
                        vec![
                            "merge".into(),
                            "-q".into(),
                            "--method".into(),
                            "ties".into(),
                            "--density".into(),
                            "0.2".into(),
                            "--base".into(),
                            s(&base),
                            "-o".into(),
                            s(&out.join("ties")),
                        ],
                        model_args.clone(),
                    ]
                    .concat(),
                ),
                (
                    "tall_masks",
                    [
                        vec!["tall".into(), "-q".into(), "--base".into(), s(&base)],
                        model_args.clone(),
                    ]
                    .concat(),
                ),
                (
                    "consensus",
                    [
                        vec![
                            "consensus".into(),
                            "-q".into(),
                            "--base".into(),
                            s(&base),
                            "-o".into(),
                            s(&out.join("consensus")),
                        ],
                        model_args.clone(),
                    ]
                    .concat(),
                ),
            ];
            for (name, args) in steps {
                let mut times = Vec::new();
                let mut peak = 0;
                for _ in 0..a.repeat {
                    let mut cmd = vec![s(&exe)];
                    cmd.extend(args.iter().cloned());
                    let m = measure(&cmd)?;
                    times.push(m.seconds);
                    peak = peak.max(m.peak);
                }
                let med = median(&times);
                let mut case = json!({
                    "params": params, "n": n, "method": name, "input_bytes": in_bytes, "output_bytes": out_bytes,
                    "engram": {"seconds": times, "median_s": med, "peak_rss_bytes": peak, "gbps_read": in_bytes as f64 / med / 1e9},
                    "bound": {"read_s": bound_read, "write_s": bound_write, "total_s": bound, "share_of_bound": bound / med},
                });
                let mk_name = match name {
                    "task_arithmetic" => Some("task_arithmetic"),
                    "ties" | "tall_masks" | "consensus" => Some("ties"),
                    _ => None,
                };
                let mut mk_cell = ("-".to_string(), "-".to_string(), "-".to_string());
                if let (Some(mk), Some(mkm)) = (&mergekit, mk_name)
                    && params <= mk_max
                {
                    // mergekit runs once per (size, N, method); TALL and Consensus compare with its TIES.
                    let key = format!("{size}-{n}-{mkm}");
                    let prev = cases.iter().find_map(|c: &Value| {
                        (c["mergekit"]["key"] == key).then(|| c["mergekit"].clone())
                    });
                    let mkres = match prev {
                        Some(p) => p,
                        None => {
                            let cfg = a.dir.join(format!("mk-{mkm}.yml"));
                            std::fs::write(&cfg, mergekit_config(mkm, &base, &models))?;
                            let mk_out = out.join(format!("mk-{mkm}"));
                            remove(&mk_out)?;
                            let m = measure(&[
                                s(mk),
                                s(&cfg),
                                s(&mk_out),
                                "--quiet".into(),
                                "--no-cuda".into(),
                            ])?;
                            let engram_out = out.join(if mkm == "ties" { "ties" } else { "ta" });
                            let agree = agreement(&engram_out, &mk_out)?;
                            json!({"key": key, "method": mkm, "seconds": m.seconds, "peak_rss_bytes": m.peak, "agreement": agree})
                        }
                    };
                    let secs = mkres["seconds"].as_f64().unwrap_or(f64::NAN);
                    mk_cell = (
                        format!("{secs:.2}"),
                        util::bytes(mkres["peak_rss_bytes"].as_u64().unwrap_or(0)),
                        format!("{:.1}x", secs / med),
                    );
                    case["mergekit"] = mkres;
                    case["speedup_vs_mergekit"] = json!(secs / med);
                }
                let row = format!(
                    "{:<7} {:>2} {:<12} {:>9.3} {:>9.2} {:>10.2} {:>9} {:>10} {:>9} {:>10}",
                    util::count(params),
                    n,
                    name,
                    med,
                    in_bytes as f64 / med / 1e9,
                    bound / med,
                    util::bytes(peak),
                    mk_cell.0,
                    mk_cell.1,
                    mk_cell.2
                );
                // Rows and JSON as they come: an interrupted run keeps what it measured.
                util::emit(&format!("{row}\n"))?;
                cases.push(case);
                write_json(&a.json_out, threads, a.repeat, &cases)?;
            }
            remove(&out)?;
        }
    }
    write_json(&a.json_out, threads, a.repeat, &cases)?;
    util::outln!(
        o,
        "\"x bound\" = (read inputs + write output, warm cache) / engram time; results: {}",
        a.json_out.display()
    );
    util::emit(&o)?;
    if a.clean {
        remove(&a.dir)?;
    }
    Ok(())
}

fn write_json(path: &Path, threads: usize, repeat: usize, cases: &[Value]) -> Result<()> {
    let doc = json!({"engram_bench_merge": 1, "threads": threads, "repeat": repeat, "machine": machine(), "cases": cases});
    util::write_json_file(path, &doc)
}

/// Writes the synthetic bf16 family (base + `n` fine-tunes, seed 0) of `arch` into `fam`,
/// unless a complete one of that size is already there.
pub(crate) fn ensure_family(
    ctx: &Ctx,
    fam: &Path,
    size: &str,
    arch: &ArchConfig,
    n: usize,
    command: &str,
) -> Result<()> {
    let params = arch.param_count();
    let ready = (1..=n).all(|i| fam.join(format!("ft-{i}/model.safetensors")).is_file())
        && Model::open(&fam.join("base")).is_ok_and(|m| m.param_count() == params);
    if ready {
        return Ok(());
    }
    remove(fam)?;
    let pb = crate::progress::bar(ctx, params, &format!("synth {size}"));
    let opts = SynthOptions {
        arch: arch.clone(),
        finetunes: n,
        dtype: DType::BF16,
        seed: 0,
        delta_scale: 0.05,
        max_shard_bytes: None,
    };
    write_family(
        fam,
        &opts,
        &engram_ckpt::provenance(command, &json!({"arch": arch})),
        &|n| pb.inc(n),
    )?;
    pb.finish_and_clear();
    Ok(())
}

pub(crate) fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
        c.lines()
            .find(|l| l.starts_with("model name"))
            .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
    });
    json!({"cpu": cpu, "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)})
}
