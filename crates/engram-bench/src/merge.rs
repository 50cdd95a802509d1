//! `engram bench merge`: B1 of BENCHMARKS.md. On synthetic bf16 families of several sizes and
//! N fine-tunes, times Task Arithmetic, TIES (density 0.2), TALL masks (statistics) and
//! Consensus with engram (and, each beside its `_select_first` twin that finds the thresholds
//! by two selection passes first: TIES over the whole model, breadcrumbs, Consensus over
//! TIES), and TA and TIES with mergekit (`mergekit-pytorch`, CPU) on the same
//! files, in the same run; plus the read-and-write bound (input bytes read once from a warm
//! page cache, output bytes written once and synced, as engram's outputs are; the median of
//! `repeat` measurements).
//!
//! Order within a case (a family and N): the bound, every engram step, then mergekit's TA and
//! TIES. mergekit holds gigabytes resident, which evicts the page cache: an engram step run
//! right after it would read its inputs partly from disk, and its time would depend on that.
//!
//! Every measured command runs as a child of the same wrapper ([`machine::measure`]), so that
//! engram and mergekit are measured the same way. Where both compute the same thing (TA; TIES
//! with per-tensor trimming), the outputs are compared element by element.

use crate::Progress;
use crate::machine::{self, arg, measure, median, read_all, remove};
use crate::units::{bytes, count, parse_count};
use anyhow::{Context, Result, bail};
use engram_ckpt::Model;
use engram_weights::synth::ArchConfig;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Settings of `engram bench merge`.
#[derive(Clone, Debug)]
pub struct Options {
    /// Model sizes (parameter counts).
    pub sizes: Vec<String>,
    /// Numbers of fine-tuned models.
    pub n: Vec<usize>,
    /// Working folder for the synthetic families (reused) and the outputs.
    pub dir: PathBuf,
    /// Runs of each engram step (medians are reported). mergekit runs once per case.
    pub repeat: usize,
    /// The `mergekit-pytorch` executable; default: bench-out/mergekit-venv/bin/mergekit-pytorch.
    pub mergekit: Option<PathBuf>,
    /// Create bench-out/mergekit-venv and pip-install mergekit into it first.
    pub install_mergekit: bool,
    /// Skip mergekit (engram and the bound only).
    pub no_mergekit: bool,
    /// Skip mergekit above this many parameters.
    pub mergekit_max: String,
    pub json_out: PathBuf,
    /// Delete the synthetic families afterwards.
    pub clean: bool,
    /// The `engram` binary measured (default: this process's executable).
    pub engram: Option<PathBuf>,
    /// Families made elsewhere (FOLDER/base, FOLDER/ft-1 ..; e.g. by
    /// scripts/make-family.py), measured after the synthetic sizes and never deleted.
    pub families: Vec<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sizes: ["100M", "500M", "1B"].map(String::from).to_vec(),
            n: vec![2, 4, 8],
            dir: "bench-out/merge".into(),
            repeat: 3,
            mergekit: None,
            install_mergekit: false,
            no_mergekit: false,
            mergekit_max: "2B".into(),
            json_out: "bench-out/merge.json".into(),
            clean: false,
            engram: None,
            families: Vec::new(),
        }
    }
}

const VENV: &str = "bench-out/mergekit-venv";

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
        arg(&file_of(base))
    );
    for m in models {
        y.push_str(&format!(
            "  - model: {}\n    parameters:\n      weight: 1.0\n",
            arg(&file_of(m))
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

/// The mergekit executable to measure, installing it first if asked; `None` without mergekit.
fn mergekit(o: &Options) -> Result<Option<PathBuf>> {
    mergekit_tool(
        "mergekit-pytorch",
        o.mergekit.as_ref(),
        o.install_mergekit,
        o.no_mergekit,
    )
}

/// The mergekit release `--install-mergekit` installs.
pub const MERGEKIT: &str = "mergekit==0.1.5";

/// A mergekit executable (`tool`, e.g. `mergekit-extract-lora`) of the benchmarks: `given`, or
/// the one in bench-out/mergekit-venv, which `install` makes first; `None` with `skip`. An
/// executable that is not there is an error saying how to get one.
pub fn mergekit_tool(
    tool: &str,
    given: Option<&PathBuf>,
    install: bool,
    skip: bool,
) -> Result<Option<PathBuf>> {
    if skip {
        return Ok(None);
    }
    let venv = PathBuf::from(VENV);
    if install {
        let ok = Command::new("python3")
            .args(["-m", "venv", &arg(&venv)])
            .status()
            .context("running python3 -m venv")?
            .success()
            && Command::new(venv.join("bin/pip"))
                .args(["install", "-q", MERGEKIT])
                .status()?
                .success();
        if !ok {
            bail!("installing {MERGEKIT} into {} failed", venv.display());
        }
    }
    let mk = given.cloned().unwrap_or(venv.join("bin").join(tool));
    if !mk.exists() {
        bail!(
            "{} not found: pass --install-mergekit, --mergekit PATH or --no-mergekit",
            mk.display()
        );
    }
    Ok(Some(mk))
}

/// The engram commands measured on one case: (name, arguments).
fn engram_steps(base: &Path, models: &[PathBuf], out: &Path) -> Vec<(&'static str, Vec<String>)> {
    let models: Vec<String> = models.iter().map(|m| arg(m)).collect();
    let with_models = |head: &[&str]| {
        let mut v: Vec<String> = head.iter().map(|s| s.to_string()).collect();
        v.extend(models.iter().cloned());
        v
    };
    let (b, ta, ties, cons) = (
        arg(base),
        arg(&out.join("ta")),
        arg(&out.join("ties")),
        arg(&out.join("consensus")),
    );
    let mut steps = vec![
        (
            "task_arithmetic",
            with_models(&[
                "merge",
                "-q",
                "--method",
                "task_arithmetic",
                "--base",
                &b,
                "-o",
                &ta,
            ]),
        ),
        (
            "ties",
            with_models(&[
                "merge",
                "-q",
                "--method",
                "ties",
                "--density",
                "0.2",
                "--base",
                &b,
                "-o",
                &ties,
            ]),
        ),
        // TIES as engram ran it before it finished the thresholds during the merge pass.
        (
            "ties_select_first",
            with_models(&[
                "merge",
                "-q",
                "--method",
                "ties",
                "--density",
                "0.2",
                "--select-first",
                "--base",
                &b,
                "-o",
                &arg(&out.join("ties-select-first")),
            ]),
        ),
        ("tall_masks", with_models(&["tall", "-q", "--base", &b])),
        (
            "consensus",
            with_models(&["consensus", "-q", "--base", &b, "-o", &cons]),
        ),
    ];
    // Selections finished during the pass (issue #25) against two selection passes first:
    // TIES over the whole model, breadcrumbs' band (two cuts per model), Consensus over TIES.
    let scratch = arg(&out.join("scratch"));
    // (label, label with --select-first, command, flags)
    let variants: [(&str, &str, &str, &[&str]); 3] = [
        (
            "ties_model",
            "ties_model_select_first",
            "merge",
            &[
                "--method",
                "ties",
                "--density",
                "0.2",
                "--trim-scope",
                "model",
            ],
        ),
        (
            "breadcrumbs",
            "breadcrumbs_select_first",
            "merge",
            &["--method", "breadcrumbs", "--density", "0.2"],
        ),
        (
            "consensus_ties",
            "consensus_ties_select_first",
            "consensus",
            &["--tau", "ties", "--density", "0.2"],
        ),
    ];
    for (label, label_first, cmd, flags) in variants {
        for (label, first) in [(label, false), (label_first, true)] {
            let mut head = vec![cmd, "-q", "--base", &b];
            head.extend(flags);
            if first {
                head.push("--select-first");
            }
            head.extend(["-o", &scratch]);
            steps.push((label, with_models(&head)));
        }
    }
    steps
}

/// The mergekit run an engram step is compared with: Task Arithmetic, or TIES (per-tensor
/// TIES, and TALL and Consensus, which the card compares with TIES); none for the others.
fn mergekit_peer(step: &str) -> Option<&'static str> {
    match step {
        "task_arithmetic" => Some("task_arithmetic"),
        "ties" | "ties_select_first" | "tall_masks" | "consensus" => Some("ties"),
        _ => None,
    }
}

/// The read-and-write bound of a case: `inputs` read once (warm cache, after one untimed
/// read), `out_bytes` written once and synced; (read seconds, write seconds).
pub fn bound(inputs: &[PathBuf], out_bytes: u64, sink: &Path) -> Result<(f64, f64)> {
    read_all(inputs)?;
    let t = Instant::now();
    read_all(inputs)?;
    let read = t.elapsed().as_secs_f64();
    let t = Instant::now();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(sink)?;
        let block = vec![1u8; 8 << 20];
        let mut left = out_bytes;
        while left > 0 {
            let k = left.min(block.len() as u64) as usize;
            f.write_all(&block[..k])?;
            left -= k as u64;
        }
        f.sync_data()?;
    }
    let write = t.elapsed().as_secs_f64();
    remove(sink)?;
    Ok((read, write))
}

/// Runs the benchmark; writes and returns its JSON. The table's rows go to `Output` as they
/// are measured, and the JSON is rewritten after each, so an interrupted run keeps them.
pub fn run(o: &Options, progress: &mut dyn FnMut(Progress)) -> Result<Value> {
    if o.repeat == 0 || o.n.contains(&0) {
        bail!("--repeat and every --n must be at least 1");
    }
    machine::check_json_out(&o.json_out, "--json-out")?;
    machine::check_out_dir(&o.dir, "--dir")?;
    machine::with_clean(
        o.clean,
        || measure_all(o, progress),
        || {
            let mut owned: Vec<String> = o.sizes.iter().map(|s| s.to_ascii_lowercase()).collect();
            owned.extend(
                ["out", "bound.tmp", "mk-task_arithmetic.yml", "mk-ties.yml"].map(String::from),
            );
            machine::remove_owned(&o.dir, &owned)
        },
    )
}

fn measure_all(o: &Options, progress: &mut dyn FnMut(Progress)) -> Result<Value> {
    let exe = machine::engram_exe(o.engram.as_deref())?;
    let mergekit = mergekit(o)?;
    let mk_max = parse_count(&o.mergekit_max)?;
    let nmax = o.n.iter().copied().max().unwrap_or(1);
    let threads = rayon::current_num_threads();
    let mut cases = Vec::new();
    progress(Progress::Output(header(threads, o.repeat)));
    // (label, family folder, generator): the synthetic sizes, then the given families.
    let mut fams: Vec<(String, PathBuf, String)> = Vec::new();
    for size in o.sizes.iter().filter(|s| !s.is_empty()) {
        let arch = ArchConfig::for_params(parse_count(size)?)?;
        let fam = o.dir.join(size.to_ascii_lowercase());
        crate::synthetic::ensure_family(&fam, size, &arch, nmax, "engram bench merge", progress)?;
        fams.push((size.clone(), fam, "engram synth".into()));
    }
    for fam in &o.families {
        for m in std::iter::once("base".to_string()).chain((1..=nmax).map(|i| format!("ft-{i}"))) {
            if !file_of(&fam.join(&m)).is_file() {
                bail!(
                    "{}: no {m}/model.safetensors (a family for --family has base/ and ft-1 .. ft-{nmax}, \
                     e.g. from scripts/make-family.py)",
                    fam.display()
                );
            }
        }
        let label = fam
            .file_name()
            .map_or("family".into(), |n| n.to_string_lossy().to_string());
        fams.push((label, fam.clone(), fam.display().to_string()));
    }
    for (size, fam, generator) in &fams {
        let base = fam.join("base");
        let params = engram_ckpt::Model::open(&base)?.param_count();
        for &n in &o.n {
            let models: Vec<PathBuf> = (1..=n).map(|i| fam.join(format!("ft-{i}"))).collect();
            let mut inputs = vec![file_of(&base)];
            inputs.extend(models.iter().map(|m| file_of(m)));
            let in_bytes: u64 = inputs
                .iter()
                .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
                .sum();
            let out_bytes = std::fs::metadata(file_of(&base))?.len();
            // The bound's median over `repeat` measurements (its synced write varies with the
            // disk's state, run to run).
            let mut reads = Vec::new();
            let mut writes = Vec::new();
            for _ in 0..o.repeat {
                let (r, w) = bound(&inputs, out_bytes, &o.dir.join("bound.tmp"))?;
                reads.push(r);
                writes.push(w);
            }
            let (bound_read, bound_write) = (median(&reads), median(&writes));
            let bound = bound_read + bound_write;
            let out = o.dir.join("out");
            // Every engram step of the case first, then mergekit: mergekit's resident
            // gigabytes evict the page cache, and an engram step run after it would read its
            // inputs partly from disk.
            let mut rows = Vec::new();
            for (name, args) in engram_steps(&base, &models, &out) {
                let mut times = Vec::new();
                let mut peak = 0;
                for _ in 0..o.repeat {
                    let mut cmd = vec![arg(&exe)];
                    cmd.extend(args.iter().cloned());
                    let m = measure(&cmd)?;
                    times.push(m.seconds);
                    peak = peak.max(m.peak);
                }
                let med = median(&times);
                rows.push(json!({
                    "params": params, "n": n, "method": name, "family": generator, "input_bytes": in_bytes, "output_bytes": out_bytes,
                    "engram": {"seconds": times, "median_s": med, "peak_rss_bytes": peak, "gbps_read": in_bytes as f64 / med / 1e9},
                    "bound": {"read_s": bound_read, "write_s": bound_write, "total_s": bound, "share_of_bound": bound / med,
                              "read_runs_s": reads, "write_runs_s": writes},
                }));
            }
            // mergekit once per (family, N, method), after engram's steps; its output is compared
            // with engram's of the same method.
            let mut mk_runs: BTreeMap<&str, Value> = BTreeMap::new();
            if let Some(mk) = &mergekit
                && params <= mk_max
            {
                for mk_name in ["task_arithmetic", "ties"] {
                    let key = format!("{size}-{n}-{mk_name}");
                    let cfg = o.dir.join(format!("mk-{mk_name}.yml"));
                    std::fs::write(&cfg, mergekit_config(mk_name, &base, &models))?;
                    let mk_out = out.join(format!("mk-{mk_name}"));
                    remove(&mk_out)?;
                    let m = measure(&[
                        arg(mk),
                        arg(&cfg),
                        arg(&mk_out),
                        "--quiet".into(),
                        "--no-cuda".into(),
                    ])?;
                    let engram_out = out.join(if mk_name == "ties" { "ties" } else { "ta" });
                    let agree = agreement(&engram_out, &mk_out)?;
                    remove(&mk_out)?;
                    mk_runs.insert(
                        mk_name,
                        json!({"key": key, "method": mk_name, "seconds": m.seconds, "peak_rss_bytes": m.peak, "agreement": agree}),
                    );
                }
            }
            for mut case in rows {
                let peer = case["method"].as_str().and_then(mergekit_peer);
                if let Some(mkres) = peer.and_then(|p| mk_runs.get(p)) {
                    let secs = mkres["seconds"].as_f64().unwrap_or(f64::NAN);
                    let med = case["engram"]["median_s"].as_f64().unwrap_or(f64::NAN);
                    case["mergekit"] = mkres.clone();
                    case["speedup_vs_mergekit"] = json!(secs / med);
                }
                progress(Progress::Output(row(&case)));
                cases.push(case);
            }
            write_json(&o.json_out, threads, o.repeat, &cases)?;
            remove(&out)?;
        }
    }
    let doc = write_json(&o.json_out, threads, o.repeat, &cases)?;
    progress(Progress::Output(format!(
        "\"x bound\" = (read inputs + write output, warm cache) / engram time; results: {}\n",
        o.json_out.display()
    )));
    Ok(doc)
}

fn header(threads: usize, repeat: usize) -> String {
    format!(
        "engram bench merge: bf16 synthetic families, {threads} threads; engram medians of {repeat}, mergekit once\n{:<7} {:>2} {:<12} {:>9} {:>9} {:>10} {:>9} {:>10} {:>9} {:>10}\n",
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
    )
}

/// One case's line of the table.
fn row(case: &Value) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let med = f(&case["engram"]["median_s"]);
    let mk = &case["mergekit"];
    let (mk_s, mk_peak, speedup) = if mk.is_null() {
        ("-".to_string(), "-".to_string(), "-".to_string())
    } else {
        let secs = f(&mk["seconds"]);
        (
            format!("{secs:.2}"),
            bytes(mk["peak_rss_bytes"].as_u64().unwrap_or(0)),
            format!("{:.1}x", secs / med),
        )
    };
    format!(
        "{:<7} {:>2} {:<12} {:>9.3} {:>9.2} {:>10.2} {:>9} {:>10} {:>9} {:>10}\n",
        count(case["params"].as_u64().unwrap_or(0)),
        case["n"].as_u64().unwrap_or(0),
        case["method"].as_str().unwrap_or_default(),
        med,
        f(&case["input_bytes"]) / med / 1e9,
        f(&case["bound"]["total_s"]) / med,
        bytes(case["engram"]["peak_rss_bytes"].as_u64().unwrap_or(0)),
        mk_s,
        mk_peak,
        speedup
    )
}

/// The whole table of a run's JSON (what `run` writes to `Output` piece by piece).
pub fn render_text(doc: &Value, json_out: &Path) -> String {
    let mut t = header(
        doc["threads"].as_u64().unwrap_or(0) as usize,
        doc["repeat"].as_u64().unwrap_or(0) as usize,
    );
    for c in doc["cases"].as_array().into_iter().flatten() {
        t += &row(c);
    }
    t += &format!(
        "\"x bound\" = (read inputs + write output, warm cache) / engram time; results: {}\n",
        json_out.display()
    );
    t
}

fn write_json(path: &Path, threads: usize, repeat: usize, cases: &[Value]) -> Result<Value> {
    let doc = json!({"engram_bench_merge": 1, "threads": threads, "repeat": repeat, "machine": machine::describe(), "cases": cases});
    machine::write_json(path, &doc)?;
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_show_mergekit_only_where_it_ran() {
        let case = json!({
            "params": 100_000_000u64, "n": 2, "method": "ties", "input_bytes": 600_000_000u64,
            "engram": {"median_s": 0.5, "peak_rss_bytes": 40_000_000},
            "bound": {"total_s": 0.25},
        });
        let r = row(&case);
        assert!(r.starts_with("100.0M   2 ties"), "{r}");
        assert!(
            r.contains("1.20") && r.contains("0.50") && r.contains("40.0 MB"),
            "{r}"
        );
        assert_eq!(r.matches(" -").count(), 3, "{r}");
        let mut with = case.clone();
        with["mergekit"] = json!({"seconds": 5.0, "peak_rss_bytes": 2_000_000_000u64});
        let r = row(&with);
        assert!(
            r.contains("5.00") && r.contains("2.00 GB") && r.contains("10.0x"),
            "{r}"
        );
        let doc = json!({"threads": 2, "repeat": 3, "cases": [case, with]});
        let t = render_text(&doc, Path::new("m.json"));
        assert_eq!(t.lines().count(), 5);
        assert!(t.ends_with("results: m.json\n"));
    }

    #[test]
    fn mergekit_configs_weight_every_model() {
        let y = mergekit_config(
            "ties",
            Path::new("/b"),
            &[PathBuf::from("/m1"), PathBuf::from("/m2")],
        );
        assert!(y.starts_with("merge_method: ties\nbase_model: /b/model.safetensors\n"));
        assert_eq!(y.matches("density: 0.2").count(), 2);
        assert!(y.contains("normalize: true"));
        assert!(!mergekit_config("task_arithmetic", Path::new("/b"), &[]).contains("density"));
    }
}
