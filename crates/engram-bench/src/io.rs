//! `engram bench io`: read and convert throughput against two bounds taken in the same run.
//!
//! A bf16 model of `size` parameters is synthesized (or reused from `dir`). The read bound is
//! every byte of the model's files read once from a warm page cache, in large blocks on all
//! threads; the copy bound is those bytes read and written to a new file in the output folder,
//! then synced (what any conversion has to do at the least). Measured against them:
//!
//! - `inspect`: open and validate the model, print its JSON summary (headers only);
//! - `decode`: `inspect --check-finite`, every tensor decoded to f32;
//! - `convert-f32`: `convert --dtype f32` (bf16 -> f32, twice the bytes out);
//! - `reshard-bf16`: `convert --shard-size` (bf16 kept: a byte copy into shards).
//!
//! Each measured step runs as a child process: the `engram` binary with the plain command a
//! user would type, timed from spawn to exit. Peak memory is the child's own peak resident set,
//! which it writes at exit to the file named by [`PEAK_RSS_ENV`](crate::machine::PEAK_RSS_ENV)
//! ([`report_peak_rss`](crate::machine::report_peak_rss)): one command alone rather than the
//! benchmark process. Each step is repeated `repeat` times; the table shows medians and the
//! largest peak.

use crate::Progress;
use crate::machine::{self, PEAK_RSS_ENV, arg, median, read_all, remove};
use crate::units::{bytes, count, parse_bytes, parse_count};
use anyhow::{Context, Result, bail};
use engram_weights::synth::ArchConfig;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Settings of `engram bench io`.
#[derive(Clone, Debug)]
pub struct Options {
    /// Model size: a preset (tiny, small, medium, 1b, 3b, 7b) or a parameter count (250M).
    pub size: String,
    /// Folder for the synthetic model (reused when it already holds one of this size) and
    /// for the converted outputs.
    pub dir: PathBuf,
    /// Runs of each step.
    pub repeat: usize,
    /// Where the results go as JSON.
    pub json_out: PathBuf,
    /// Shard size of the resharding step.
    pub shard_size: String,
    /// Delete the model and the outputs afterwards.
    pub clean: bool,
    /// The `engram` binary measured (default: this process's executable).
    pub engram: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            size: "1b".into(),
            dir: "bench-out/io-model".into(),
            repeat: 3,
            json_out: "bench-out/io.json".into(),
            shard_size: "500MB".into(),
            clean: false,
            engram: None,
        }
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

/// The entries the benchmark writes in its folder: what `--clean` removes.
const OWNED: [&str; 5] = [
    "base",
    "out-f32",
    "out-bf16-sharded",
    ".copy-bound.tmp",
    ".peak-rss",
];

/// Runs the benchmark; writes and returns its JSON (the table goes to `Output`). Every
/// output path is checked before any work; `--clean` cleans also after a failed run.
pub fn run(o: &Options, progress: &mut dyn FnMut(Progress)) -> Result<Value> {
    if o.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    machine::check_json_out(&o.json_out, "--json-out")?;
    machine::check_out_dir(&o.dir, "--dir")?;
    machine::with_clean(
        o.clean,
        || measure_all(o, progress),
        || machine::remove_owned(&o.dir, &OWNED.map(String::from)),
    )
}

fn measure_all(o: &Options, progress: &mut dyn FnMut(Progress)) -> Result<Value> {
    let arch = match ArchConfig::preset(&o.size) {
        Some(arch) => arch,
        None => ArchConfig::for_params(parse_count(&o.size)?)?,
    };
    let shard = parse_bytes(&o.shard_size)?;
    let exe = machine::engram_exe(o.engram.as_deref())?;
    let base = o.dir.join("base");
    let model = crate::synthetic::ensure_base(&base, &arch, "engram bench io", progress)?;
    let (data_bytes, file_bytes) = (model.data_bytes(), model.file_bytes());
    let files: Vec<PathBuf> = model
        .files()
        .iter()
        .map(|f| f.path().to_path_buf())
        .collect();
    let params = model.param_count();
    drop(model);
    let (out_f32, out_bf16) = (o.dir.join("out-f32"), o.dir.join("out-bf16-sharded"));
    let steps = [
        Step {
            name: "inspect",
            args: vec!["inspect".into(), arg(&base), "--json".into()],
            bytes_in: 0,
            bytes_out: 0,
            out: None,
        },
        Step {
            name: "decode",
            args: vec!["inspect".into(), arg(&base), "--check-finite".into()],
            bytes_in: data_bytes,
            bytes_out: 0,
            out: None,
        },
        Step {
            name: "convert-f32",
            args: vec![
                "convert".into(),
                arg(&base),
                "-o".into(),
                arg(&out_f32),
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
                arg(&base),
                "-o".into(),
                arg(&out_bf16),
                "--shard-size".into(),
                o.shard_size.clone(),
            ],
            bytes_in: data_bytes,
            bytes_out: data_bytes,
            out: Some(out_bf16.clone()),
        },
    ];

    // Warm the page cache, then the read bound.
    read_all(&files)?;
    let mut read_times = Vec::new();
    for _ in 0..o.repeat {
        let t = Instant::now();
        let n = read_all(&files)?;
        read_times.push(t.elapsed().as_secs_f64());
        if n != file_bytes {
            bail!("read {n} bytes of {file_bytes}");
        }
    }
    let read_med = median(&read_times);
    let read_gbps = file_bytes as f64 / read_med / 1e9;
    let mut copy_times = Vec::new();
    for _ in 0..o.repeat {
        copy_times.push(copy_all(&files, &o.dir.join(".copy-bound.tmp"))?);
    }
    let copy_med = median(&copy_times);
    let copy_gbps = file_bytes as f64 / copy_med / 1e9;

    let rss_file = o.dir.join(".peak-rss");
    let mut results = Vec::new();
    for st in &steps {
        let mut times = Vec::new();
        let mut peak = 0u64;
        for _ in 0..o.repeat {
            if let Some(out) = &st.out {
                remove(out)?;
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

    let doc = json!({
        "engram_bench_io": 1,
        "model": {
            "dir": arg(&base),
            "params": params,
            "dtype": "BF16",
            "files": files.len(),
            "data_bytes": data_bytes,
            "file_bytes": file_bytes,
        },
        "threads": rayon::current_num_threads(),
        "repeat": o.repeat,
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
    machine::write_json(&o.json_out, &doc)?;
    progress(Progress::Output(render_text(&doc, &o.json_out)));
    Ok(doc)
}

/// The table of a run's JSON: each step's median time, throughput, ratios to the bounds and
/// peak memory.
pub fn render_text(doc: &Value, json_out: &Path) -> String {
    let mut o = String::new();
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let u = |v: &Value| v.as_u64().unwrap_or(0);
    let (read_med, read_gbps) = (
        f(&doc["read_bound"]["median_s"]),
        f(&doc["read_bound"]["gbps"]),
    );
    let (copy_med, copy_gbps) = (
        f(&doc["copy_bound"]["median_s"]),
        f(&doc["copy_bound"]["gbps"]),
    );
    o += &format!(
        "engram bench io: {} parameters bf16 ({} of data, {} files), {} threads, median of {}\n",
        count(u(&doc["model"]["params"])),
        bytes(u(&doc["model"]["data_bytes"])),
        u(&doc["model"]["files"]),
        u(&doc["threads"]),
        u(&doc["repeat"])
    );
    o += &format!(
        "{:<14} {:>9} {:>9} {:>12} {:>12} {:>11}\n",
        "step", "seconds", "GB/s", "x read bound", "x copy bound", "peak RSS"
    );
    for (name, med, gbps) in [
        ("read bound", read_med, read_gbps),
        ("copy bound", copy_med, copy_gbps),
    ] {
        o += &format!(
            "{:<14} {:>9.3} {:>9.2} {:>12.2} {:>12} {:>11}\n",
            name,
            med,
            gbps,
            gbps / read_gbps,
            if name == "copy bound" { "1.00" } else { "-" },
            "-"
        );
    }
    for r in doc["steps"].as_array().into_iter().flatten() {
        let g = |k: &str| r[k].as_f64();
        let writes = u(&r["bytes_out"]) > 0;
        o += &format!(
            "{:<14} {:>9.3} {:>9} {:>12} {:>12} {:>11}\n",
            r["name"].as_str().unwrap_or_default(),
            g("median_s").unwrap_or(0.0),
            g("gbps").map_or("-".into(), |g| format!("{g:.2}")),
            g("ratio_to_read_bound").map_or("-".into(), |g| format!("{g:.2}")),
            g("ratio_to_copy_bound")
                .filter(|_| writes)
                .map_or("-".into(), |g| format!("{g:.2}")),
            bytes(u(&r["peak_rss_bytes"]))
        );
    }
    o += &format!("results: {}\n", json_out.display());
    o
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `--json-out` naming a folder is refused before the benchmark runs: nothing is built in
    /// `--dir`, and `--clean` has nothing to leave behind.
    #[test]
    fn a_bad_json_out_is_refused_before_any_work() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("io-model");
        let json_out = d.path().join("existing");
        std::fs::create_dir_all(&json_out).unwrap();
        let o = Options {
            size: "tiny".into(),
            dir: dir.clone(),
            json_out,
            clean: true,
            engram: Some(d.path().join("no-such-engram")),
            ..Options::default()
        };
        let e = format!("{:#}", run(&o, &mut |_| {}).unwrap_err());
        assert!(e.contains("--json-out") && e.contains("folder"), "{e}");
        assert!(!dir.exists(), "no work was done: {e}");
    }

    #[test]
    fn table_shows_every_step_and_the_bounds() {
        let doc = json!({
            "model": {"params": 1_000_000_000u64, "data_bytes": 2_000_000_000u64, "files": 1},
            "threads": 2, "repeat": 3,
            "read_bound": {"median_s": 0.5, "gbps": 4.0},
            "copy_bound": {"median_s": 1.0, "gbps": 2.0},
            "steps": [
                {"name": "inspect", "median_s": 0.01, "gbps": null, "ratio_to_read_bound": null,
                 "ratio_to_copy_bound": null, "bytes_out": 0, "peak_rss_bytes": 5_000_000},
                {"name": "convert-f32", "median_s": 2.0, "gbps": 1.0, "ratio_to_read_bound": 0.25,
                 "ratio_to_copy_bound": 0.5, "bytes_out": 4_000_000_000u64, "peak_rss_bytes": 50_000_000},
            ],
        });
        let t = render_text(&doc, Path::new("x.json"));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "engram bench io: 1.00B parameters bf16 (2.00 GB of data, 1 files), 2 threads, median of 3"
        );
        assert!(lines[3].starts_with("copy bound") && lines[3].contains("1.00"));
        assert!(lines[4].starts_with("inspect") && lines[4].trim_end().ends_with("5.0 MB"));
        assert!(lines[5].contains("0.25") && lines[5].contains("0.50"));
        assert_eq!(lines[6], "results: x.json");
    }
}
