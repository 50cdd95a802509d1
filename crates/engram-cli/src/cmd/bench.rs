//! `engram bench ...`: benchmarks that print ratios against baselines measured in the same run.
//!
//! `engram bench io` synthesizes (or reuses, `--dir`) a bf16 model of `--size` parameters and
//! measures, against two baselines taken in the same run, the read bound (every byte of the
//! model's files read once from a warm page cache, in large blocks on all threads) and the copy
//! bound (those bytes read and written to a new file in the output folder, then synced):
//!
//! - `inspect`: open and validate the model, print its JSON summary (headers only);
//! - `decode`: `inspect --check-finite`, every tensor decoded to f32;
//! - `convert-f32`: `convert --dtype f32` (bf16 -> f32, twice the bytes out);
//! - `reshard-bf16`: `convert --shard-size` (bf16 kept: a byte copy into shards).
//!
//! Each measured step runs as a child process: the very `engram` binary (`current_exe`) with
//! the plain command a user would type, timed by the parent from spawn to exit. Peak memory is
//! the child's own peak resident set (`VmHWM` in `/proc/self/status`, kept by the kernel for
//! the process's whole life), which the child writes, just before it exits, to the file named
//! by the environment variable `ENGRAM_PEAK_RSS_FILE` (see [`report_peak_rss`]). This needs no
//! polling (which can miss the peak or read a process that is gone) and no libc call, and it
//! measures one command alone rather than the benchmark process. Each step is repeated
//! `--repeat` times; the table shows medians and the largest peak.

use super::synth::{parse_bytes, parse_count};
use super::util;
use crate::Ctx;
use anyhow::{Context, Result, bail};
use engram_ckpt::{DType, Model};
use engram_weights::synth::{ArchConfig, SynthOptions, write_family};
use rayon::prelude::*;
use serde_json::json;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(clap::Subcommand)]
pub enum Bench {
    /// Read and convert throughput against the raw read bound.
    Io(IoArgs),
    /// Merge speed and memory (TA, TIES, TALL, Consensus) against the read-and-write bound and
    /// mergekit, on synthetic models (B1 in BENCHMARKS.md).
    Merge(super::bench_merge::MergeArgs),
    /// Training speed: one epoch of Fashion-MNIST (MLP and CNN) against PyTorch on CPU with
    /// the same threads (B4 in BENCHMARKS.md).
    Train(super::bench_train::TrainArgs),
    /// Compression and the scale check (B6 in BENCHMARKS.md): merge, TALL masks and bundles
    /// with packed and entropy-coded masks on large synthetic families; bytes, time, memory.
    Compress(super::bench_compress::CompressArgs),
    /// The continual-learning suite (B3 in BENCHMARKS.md): every strategy on Split, Permuted,
    /// Rotated and SCoLe Fashion-MNIST and Split MNIST, MLP and CNN, three seeds, tuned on
    /// validation; JSON and an HTML report. `--quick` for a smoke check.
    Cl(super::bench_cl::ClArgs),
    /// Selective fine-tuning: pre-train on Fashion-MNIST, fine-tune on MNIST and permuted
    /// MNIST with full fine-tuning, LoRA, LIFT (and its controls), KappaTune and block
    /// expansion; target accuracy, source accuracy kept, parameters, optimizer memory, time;
    /// three seeds. `--quick` for a smoke check.
    Finetune(super::bench_finetune::FinetuneArgs),
}

#[derive(clap::Args)]
pub struct IoArgs {
    /// Model size: a preset (tiny, small, medium, 1b, 3b, 7b) or a parameter count (250M).
    #[arg(long, default_value = "1b")]
    pub size: String,
    /// Folder for the synthetic model (reused when it already holds one of this size) and for
    /// the converted outputs.
    #[arg(long, default_value = "bench-out/io-model")]
    pub dir: PathBuf,
    /// Runs of each step; the table shows medians.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "bench-out/io.json", value_name = "FILE")]
    pub json_out: PathBuf,
    /// Shard size of the resharding step.
    #[arg(long, default_value = "500MB", value_name = "SIZE")]
    pub shard_size: String,
    /// Delete the model and the outputs afterwards.
    #[arg(long)]
    pub clean: bool,
}

/// Environment variable naming the file to which `engram` writes its peak RSS at exit.
pub const PEAK_RSS_ENV: &str = "ENGRAM_PEAK_RSS_FILE";

/// Called by `main` just before the process exits: if `ENGRAM_PEAK_RSS_FILE` is set, writes
/// this process's peak resident set size in bytes (`VmHWM`) to that file.
pub fn report_peak_rss() {
    if let Some(path) = std::env::var_os(PEAK_RSS_ENV)
        && let Some(kb) = peak_rss_kb()
    {
        let _ = std::fs::write(path, (kb * 1024).to_string());
    }
}

fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub fn run(ctx: &Ctx, b: Bench) -> Result<()> {
    match b {
        Bench::Io(a) => io(ctx, a),
        Bench::Merge(a) => super::bench_merge::run(ctx, a),
        Bench::Train(a) => super::bench_train::run(ctx, a),
        Bench::Compress(a) => super::bench_compress::run(ctx, a),
        Bench::Cl(a) => super::bench_cl::run(ctx, a),
        Bench::Finetune(a) => super::bench_finetune::run(ctx, a),
    }
}

struct Step {
    name: &'static str,
    args: Vec<String>,
    bytes_in: u64,
    bytes_out: u64,
    /// Output removed before each run.
    out: Option<PathBuf>,
}

fn io(ctx: &Ctx, a: IoArgs) -> Result<()> {
    if a.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    let arch = match ArchConfig::preset(&a.size) {
        Some(arch) => arch,
        None => ArchConfig::for_params(parse_count(&a.size)?),
    };
    let shard = parse_bytes(&a.shard_size)?;
    let base = a.dir.join("base");
    let model = ensure_model(ctx, &base, &arch)?;
    let (data_bytes, file_bytes) = (model.data_bytes(), model.file_bytes());
    let files: Vec<PathBuf> = model
        .files()
        .iter()
        .map(|f| f.path().to_path_buf())
        .collect();
    let params = model.param_count();
    drop(model);
    let exe = std::env::current_exe().context("locating the engram binary")?;
    let s = |p: &Path| p.display().to_string();
    let (out_f32, out_bf16) = (a.dir.join("out-f32"), a.dir.join("out-bf16-sharded"));
    let steps = [
        Step {
            name: "inspect",
            args: vec!["inspect".into(), s(&base), "--json".into()],
            bytes_in: 0,
            bytes_out: 0,
            out: None,
        },
        Step {
            name: "decode",
            args: vec!["inspect".into(), s(&base), "--check-finite".into()],
            bytes_in: data_bytes,
            bytes_out: 0,
            out: None,
        },
        Step {
            name: "convert-f32",
            args: vec![
                "convert".into(),
                s(&base),
                "-o".into(),
                s(&out_f32),
                "--dtype".into(),
                "f32".into(),
            ],
            bytes_in: data_bytes,
            bytes_out: data_bytes * 2,
            out: Some(out_f32.clone()),
        },
        Step {
            name: "reshard-bf16",
            args: vec![
                "convert".into(),
                s(&base),
                "-o".into(),
                s(&out_bf16),
                "--shard-size".into(),
                a.shard_size.clone(),
            ],
            bytes_in: data_bytes,
            bytes_out: data_bytes,
            out: Some(out_bf16.clone()),
        },
    ];

    // Warm the page cache, then the read bound.
    read_all(&files)?;
    let mut read_times = Vec::new();
    for _ in 0..a.repeat {
        let t = Instant::now();
        let n = read_all(&files)?;
        read_times.push(t.elapsed().as_secs_f64());
        if n != file_bytes {
            bail!("read {n} bytes of {file_bytes}");
        }
    }
    let read_med = median(&read_times);
    let read_gbps = file_bytes as f64 / read_med / 1e9;
    // The copy bound: the same bytes read and written to a new file in the output folder,
    // synced to disk (what any conversion has to do at the least).
    let mut copy_times = Vec::new();
    for _ in 0..a.repeat {
        copy_times.push(copy_all(&files, &a.dir.join(".copy-bound.tmp"))?);
    }
    let copy_med = median(&copy_times);
    let copy_gbps = file_bytes as f64 / copy_med / 1e9;

    let rss_file = a.dir.join(".peak-rss");
    let mut results = Vec::new();
    for st in &steps {
        let mut times = Vec::new();
        let mut peak = 0u64;
        for _ in 0..a.repeat {
            if let Some(o) = &st.out {
                remove(o)?;
            }
            let _ = std::fs::remove_file(&rss_file);
            let t = Instant::now();
            let out = Command::new(&exe)
                .args(&st.args)
                .arg("--quiet")
                .env(PEAK_RSS_ENV, &rss_file)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .with_context(|| format!("running {}", exe.display()))?;
            times.push(t.elapsed().as_secs_f64());
            if !out.status.success() {
                bail!(
                    "step {} failed ({}): {}",
                    st.name,
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let rss: u64 = std::fs::read_to_string(&rss_file)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0);
            peak = peak.max(rss);
        }
        let med = median(&times);
        let gbps = (st.bytes_in > 0).then(|| st.bytes_in as f64 / med / 1e9);
        results.push(json!({
            "name": st.name,
            "command": format!("engram {}", st.args.join(" ")),
            "seconds": times,
            "median_s": med,
            "bytes_in": st.bytes_in,
            "bytes_out": st.bytes_out,
            "gbps": gbps,
            "ratio_to_read_bound": gbps.map(|g| g / read_gbps),
            "ratio_to_copy_bound": gbps.map(|g| g / copy_gbps),
            "peak_rss_bytes": peak,
        }));
    }
    let _ = std::fs::remove_file(&rss_file);

    let threads = rayon::current_num_threads();
    let doc = json!({
        "engram_bench_io": 1,
        "model": {
            "dir": s(&base),
            "params": params,
            "dtype": "BF16",
            "files": files.len(),
            "data_bytes": data_bytes,
            "file_bytes": file_bytes,
        },
        "threads": threads,
        "repeat": a.repeat,
        "shard_size": shard,
        "read_bound": {
            "seconds": read_times,
            "median_s": read_med,
            "gbps": read_gbps,
        },
        "copy_bound": {
            "seconds": copy_times,
            "median_s": copy_med,
            "gbps": copy_gbps,
        },
        "steps": results,
    });
    util::write_json_file(&a.json_out, &doc)?;

    let mut o = String::new();
    util::outln!(
        o,
        "engram bench io: {} parameters bf16 ({} of data, {} files), {} threads, median of {}",
        util::count(params),
        util::bytes(data_bytes),
        files.len(),
        threads,
        a.repeat
    );
    util::outln!(
        o,
        "{:<14} {:>9} {:>9} {:>12} {:>12} {:>11}",
        "step",
        "seconds",
        "GB/s",
        "x read bound",
        "x copy bound",
        "peak RSS"
    );
    for (name, med, gbps) in [
        ("read bound", read_med, read_gbps),
        ("copy bound", copy_med, copy_gbps),
    ] {
        util::outln!(
            o,
            "{:<14} {:>9.3} {:>9.2} {:>12.2} {:>12} {:>11}",
            name,
            med,
            gbps,
            gbps / read_gbps,
            if name == "copy bound" { "1.00" } else { "-" },
            "-"
        );
    }
    for r in doc["steps"].as_array().into_iter().flatten() {
        let f = |k: &str| r[k].as_f64();
        let writes = r["bytes_out"].as_u64().unwrap_or(0) > 0;
        util::outln!(
            o,
            "{:<14} {:>9.3} {:>9} {:>12} {:>12} {:>11}",
            r["name"].as_str().unwrap_or_default(),
            f("median_s").unwrap_or(0.0),
            f("gbps").map_or("-".into(), |g| format!("{g:.2}")),
            f("ratio_to_read_bound").map_or("-".into(), |g| format!("{g:.2}")),
            f("ratio_to_copy_bound")
                .filter(|_| writes)
                .map_or("-".into(), |g| format!("{g:.2}")),
            util::bytes(r["peak_rss_bytes"].as_u64().unwrap_or(0))
        );
    }
    util::outln!(o, "results: {}", a.json_out.display());
    util::emit(&o)?;

    if a.clean {
        remove(&a.dir)?;
    }
    Ok(())
}

/// Opens the model at `base` if it is a bf16 model of `arch`'s size; synthesizes it otherwise.
fn ensure_model(ctx: &Ctx, base: &Path, arch: &ArchConfig) -> Result<Model> {
    let want = arch.param_count();
    if let Ok(m) = Model::open(base)
        && m.param_count() == want
        && m.tensors().all(|t| t.dtype() == DType::BF16)
    {
        return Ok(m);
    }
    let dir = base.parent().unwrap_or(Path::new("."));
    remove(base)?;
    let opts = SynthOptions {
        arch: arch.clone(),
        finetunes: 0,
        dtype: DType::BF16,
        seed: 0,
        delta_scale: 0.05,
        max_shard_bytes: None,
    };
    let md = engram_ckpt::provenance(
        "engram bench io",
        &json!({"arch": arch, "dtype": "BF16", "seed": 0}),
    );
    let pb = crate::progress::bar(ctx, want, "synth");
    write_family(dir, &opts, &md, &|n| pb.inc(n))?;
    pb.finish_and_clear();
    Ok(Model::open(base)?)
}

/// Reads every byte of `files` once, in 8 MiB blocks, in parallel; returns the bytes read.
pub(crate) fn read_all(files: &[PathBuf]) -> Result<u64> {
    const BLOCK: u64 = 8 << 20;
    let mut items = Vec::new();
    let mut handles = Vec::new();
    for (i, p) in files.iter().enumerate() {
        let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
        let len = f.metadata()?.len();
        handles.push(f);
        let mut at = 0;
        while at < len {
            items.push((i, at, BLOCK.min(len - at)));
            at += BLOCK;
        }
    }
    items
        .par_iter()
        .map_init(
            || vec![0u8; BLOCK as usize],
            |buf, &(i, at, n)| -> Result<u64> {
                let b = &mut buf[..n as usize];
                handles[i]
                    .read_exact_at(b, at)
                    .with_context(|| format!("reading {}", files[i].display()))?;
                // The data is used, so the read cannot be skipped.
                std::hint::black_box(&*b);
                Ok(n)
            },
        )
        .sum()
}

/// Copies every byte of `files` into one new file `tmp` (8 MiB blocks, then fsync), removes
/// it, and returns the seconds taken.
fn copy_all(files: &[PathBuf], tmp: &Path) -> Result<f64> {
    use std::io::{Read, Write};
    let t = Instant::now();
    let mut out =
        std::fs::File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut buf = vec![0u8; 8 << 20];
    for p in files {
        let mut f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
        loop {
            let n = f
                .read(&mut buf)
                .with_context(|| format!("reading {}", p.display()))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .with_context(|| format!("writing {}", tmp.display()))?;
        }
    }
    out.sync_all()
        .with_context(|| format!("syncing {}", tmp.display()))?;
    let secs = t.elapsed().as_secs_f64();
    drop(out);
    remove(tmp)?;
    Ok(secs)
}

pub(crate) fn remove(p: &Path) -> Result<()> {
    if p.is_dir() {
        std::fs::remove_dir_all(p).with_context(|| format!("removing {}", p.display()))?;
    } else if p.exists() {
        std::fs::remove_file(p).with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(())
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}
