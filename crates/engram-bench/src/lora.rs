//! `engram bench lora`: LoRA extraction (`engram lora extract`) against mergekit's
//! `mergekit-extract-lora` on the same model, at the same ranks, in the same run.
//!
//! The model is made here, without Python: a Llama-shaped bf16 base (`engram_weights::synth`,
//! seed 0, with its config.json) and one fine-tune whose task vector has a decaying spectrum, so
//! that every rank gives a different error. Recipe, per projection matrix W (m × n) of every
//! layer (q, k, v, o, gate, up, down; embeddings, norms and the head are not changed), with
//! K = min(m, n, 256) and d_k = 1/(k+1):
//!
//!   ΔW = c · (Σ_{k<K} d_k · p_k q_kᵀ + ν · E),
//!
//! p_k, q_k with i.i.d. bell-shaped entries of variance 1/m and 1/n (so ‖p_k‖ ≈ ‖q_k‖ ≈ 1), E
//! i.i.d. of variance Σd_k²/(m·n) (isotropic noise at ν² = 1% of the low-rank energy), c such
//! that the entries of ΔW have RMS 0.002 (a tenth of the base's 0.02); streams keyed by
//! (seed, tensor name). The fine-tune is base + ΔW rounded to bf16.
//!
//! Both tools run as child processes, timed from start to exit the same way (engram: median of
//! `runs`; mergekit once per rank). Both adapters are then read by the same code
//! ([`adapter_error`]) and scored by ‖ΔW − s·B·A‖_F / ‖ΔW‖_F over all changed matrices, ΔW
//! taken from the files in f32.

use crate::Progress;
use crate::machine::{self, median, remove};
use crate::units::{bytes, count, parse_count};
use anyhow::{Context, Result, bail};
use engram_ckpt::peft::Adapter;
use engram_ckpt::{Model, ModelWriter, TensorSpec, WriteOptions};
use engram_weights::lora::module_delta;
use engram_weights::rng::Rng;
use engram_weights::synth::ArchConfig;
use rayon::prelude::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Settings of `engram bench lora`.
#[derive(Clone, Debug)]
pub struct Options {
    /// A ~10M-parameter model: a smoke check, not the benchmark's numbers.
    pub quick: bool,
    /// Parameter count of the model (default 200M; 10M with `quick`).
    pub params: Option<String>,
    pub ranks: Vec<usize>,
    /// Runs of each engram extraction (the median is reported); mergekit runs once per rank.
    pub runs: usize,
    /// Output folder (default bench-out/lora, or bench-out/lora-quick): model/, adapters/,
    /// results.json.
    pub out: Option<PathBuf>,
    /// Seed of the fine-tune's task vectors.
    pub seed: u64,
    /// The `mergekit-extract-lora` executable; default:
    /// bench-out/mergekit-venv/bin/mergekit-extract-lora.
    pub mergekit: Option<PathBuf>,
    /// Create bench-out/mergekit-venv and pip-install mergekit into it first.
    pub install_mergekit: bool,
    /// engram only.
    pub no_mergekit: bool,
    /// The `engram` binary measured (default: this process's executable).
    pub engram: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            quick: false,
            params: None,
            ranks: vec![8, 32, 128],
            runs: 3,
            out: None,
            seed: 0,
            mergekit: None,
            install_mergekit: false,
            no_mergekit: false,
            engram: None,
        }
    }
}

/// The projections the fine-tune changes (module name endings).
const PROJECTIONS: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];
/// Longest spectrum of a task vector, the energy ν² of its noise relative to the low-rank part,
/// and its entries' RMS.
const SPECTRUM: usize = 256;
const NOISE_ENERGY: f64 = 0.01;
const DELTA_RMS: f64 = 0.002;

fn is_projection(name: &str) -> bool {
    name.strip_suffix(".weight")
        .and_then(|m| m.rsplit('.').next())
        .is_some_and(|p| PROJECTIONS.contains(&p))
}

/// The fine-tune's task vector of tensor `name` (m × n, row-major), as the module doc says.
pub fn task_vector(seed: u64, name: &str, m: usize, n: usize) -> Vec<f32> {
    let k = m.min(n).min(SPECTRUM);
    let d: Vec<f32> = (0..k).map(|i| 1.0 / (i + 1) as f32).collect();
    let energy: f32 = d.iter().map(|x| x * x).sum();
    let mut r = Rng::keyed(seed, name, 0);
    let (sm, sn) = ((m as f32).sqrt(), (n as f32).sqrt());
    let p: Vec<f32> = (0..m * k).map(|i| r.bell() * d[i % k] / sm).collect();
    let q: Vec<f32> = (0..k * n).map(|_| r.bell() / sn).collect();
    let nu = NOISE_ENERGY.sqrt() as f32;
    let noise = nu * (energy / (m * n) as f32).sqrt();
    let c = DELTA_RMS as f32 * ((m * n) as f32 / (energy * (1.0 + nu * nu))).sqrt();
    let mut out = vec![0f32; m * n];
    out.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        let mut e = Rng::keyed(seed ^ 0x7015e, name, i as u64);
        for x in row.iter_mut() {
            *x = noise * e.bell();
        }
        for (a, qj) in p[i * k..(i + 1) * k].iter().zip(q.chunks_exact(n)) {
            for (x, y) in row.iter_mut().zip(qj) {
                *x += a * y;
            }
        }
        for x in row.iter_mut() {
            *x *= c;
        }
    });
    out
}

/// The recipe recorded beside the model, to reuse a model made with the same settings.
fn recipe(arch: &ArchConfig, seed: u64) -> Value {
    json!({
        "arch": arch, "dtype": "BF16", "base_seed": 0, "delta_seed": seed,
        "spectrum": format!("d_k = 1/(k+1), k < min(m, n, {SPECTRUM})"),
        "noise_energy": NOISE_ENERGY, "delta_rms": DELTA_RMS, "changed": PROJECTIONS,
    })
}

/// Makes `dir`/base and `dir`/ft unless `dir`/recipe.json says they are there with these
/// settings.
fn ensure_model(
    dir: &Path,
    arch: &ArchConfig,
    seed: u64,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    let stamp = dir.join("recipe.json");
    let want = recipe(arch, seed);
    let (base_dir, ft_dir) = (dir.join("base"), dir.join("ft"));
    if machine::read_json(&stamp).is_ok_and(|v| v == want)
        && Model::open(&ft_dir).is_ok_and(|m| m.param_count() == arch.param_count())
        && Model::open(&base_dir).is_ok()
    {
        return Ok(());
    }
    remove(&stamp)?;
    let base = crate::synthetic::ensure_base(&base_dir, arch, "engram bench lora", progress)?;
    let specs: Vec<TensorSpec> = base
        .tensors()
        .map(|t| TensorSpec::new(t.name(), t.dtype(), t.shape()))
        .collect();
    let opts = WriteOptions {
        max_shard_bytes: None,
        metadata: engram_ckpt::provenance("engram bench lora", &want),
    };
    let writer = ModelWriter::create(&ft_dir, specs, &opts)?;
    let names: Vec<&str> = base.names().collect();
    crate::counted(progress, "fine-tune", base.param_count(), |tick| {
        names.par_iter().try_for_each(|&name| -> Result<()> {
            let t = base.require(name)?;
            if is_projection(name) && t.shape().len() == 2 {
                let mut w = t.to_f32()?;
                let d = task_vector(seed, name, t.shape()[0], t.shape()[1]);
                for (x, y) in w.iter_mut().zip(d) {
                    *x += y;
                }
                writer.write_f32(name, &w)?;
            } else {
                writer.write_bytes(name, t.bytes)?;
            }
            tick(t.numel() as u64);
            Ok(())
        })
    })?;
    writer.finish(base.side_files())?;
    machine::write_json(&stamp, &want)
}

/// ‖ΔW − s·B·A‖_F / ‖ΔW‖_F of the adapter in `adapter` over the `modules` (ΔW = ft − base,
/// f32): the one measure applied to every tool's adapter. A module the adapter lacks counts
/// with its whole ΔW.
pub fn adapter_error(
    base: &Model,
    ft: &Model,
    modules: &[String],
    adapter: &Path,
) -> Result<Value> {
    let a = Adapter::open(adapter)?;
    let sums = modules
        .par_iter()
        .map(|m| -> Result<(f64, f64, usize)> {
            let name = format!("{m}.weight");
            let t = ft.require(&name)?;
            let mut d = t.to_f32()?;
            for (x, y) in d.iter_mut().zip(base.require(&name)?.to_f32()?) {
                *x -= y;
            }
            let total: f64 = d.iter().map(|&x| x as f64 * x as f64).sum();
            let Some(module) = a.module(m) else {
                return Ok((total, total, 0));
            };
            if module.weight_shape[..] != *t.shape() {
                bail!(
                    "{}: module '{m}' gives shape {:?}, but {name} is {:?}",
                    adapter.display(),
                    module.weight_shape,
                    t.shape()
                );
            }
            let approx = module_delta(&a, module)?;
            let err: f64 = d
                .iter()
                .zip(&approx)
                .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
                .sum();
            Ok((err, total, 1))
        })
        .collect::<Result<Vec<_>>>()?;
    let (err, total, found) = sums
        .iter()
        .fold((0.0, 0.0, 0), |(e, t, n), x| (e + x.0, t + x.1, n + x.2));
    let adapter_bytes = std::fs::metadata(adapter.join(engram_ckpt::peft::WEIGHTS_NAME))
        .map(|m| m.len())
        .unwrap_or(0);
    Ok(json!({
        "rel_error": (err / total).sqrt(), "modules": found, "modules_expected": modules.len(),
        "adapter_bytes": adapter_bytes,
    }))
}

/// The mergekit executable, installing it first if asked; `None` without mergekit.
fn mergekit(o: &Options) -> Result<Option<PathBuf>> {
    crate::merge::mergekit_tool(
        "mergekit-extract-lora",
        o.mergekit.as_ref(),
        o.install_mergekit,
        o.no_mergekit,
    )
}

/// mergekit's version, asked of the python beside its executable.
fn mergekit_version(mk: &Path) -> Option<String> {
    let py = mk.parent()?.join("python");
    let out = Command::new(py)
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('mergekit'))",
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs `cmd` to its end; wall seconds and stdout. Its stderr is in the error if it fails.
fn timed(cmd: &mut Command, what: &str) -> Result<(f64, String)> {
    let t = Instant::now();
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String = err
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        bail!("{what} failed ({}): {tail}", out.status);
    }
    Ok((secs, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
}

/// Runs the benchmark; writes `results.json` in the output folder and returns it.
pub fn run(o: &Options, progress: &mut dyn FnMut(Progress)) -> Result<Value> {
    if o.runs == 0 || o.ranks.is_empty() || o.ranks.contains(&0) {
        bail!("--runs must be at least 1, and every rank at least 1");
    }
    let out = o.out.clone().unwrap_or_else(|| {
        PathBuf::from(if o.quick {
            "bench-out/lora-quick"
        } else {
            "bench-out/lora"
        })
    });
    machine::check_out_dir(&out, "--out")?;
    let params = o
        .params
        .clone()
        .unwrap_or_else(|| if o.quick { "10M" } else { "200M" }.into());
    let arch = ArchConfig::for_params(parse_count(&params)?)?;
    let exe = machine::engram_exe(o.engram.as_deref())?;
    let mk = mergekit(o)?;
    let mk_version = mk.as_deref().and_then(mergekit_version);
    let model_dir = out.join("model");
    ensure_model(&model_dir, &arch, o.seed, progress)?;
    let (base_dir, ft_dir) = (
        absolute(&model_dir.join("base"))?,
        absolute(&model_dir.join("ft"))?,
    );
    let base = Model::open(&base_dir)?;
    let ft = Model::open(&ft_dir)?;
    let modules: Vec<String> = ft
        .names()
        .filter(|n| is_projection(n))
        .filter_map(|n| n.strip_suffix(".weight").map(String::from))
        .collect();
    let threads = rayon::current_num_threads();
    progress(Progress::Output(header(
        arch.param_count(),
        modules.len(),
        threads,
        o.runs,
    )));
    let adapters = absolute(&out.join("adapters"))?;
    let peak_file = out.join("peak-rss.tmp");
    let mut rows = Vec::new();
    for &rank in &o.ranks {
        let ad = adapters.join(format!("engram-r{rank}"));
        let mut times = Vec::new();
        let mut inner = Vec::new();
        let mut peak = 0u64;
        let mut report = Value::Null;
        for i in 0..o.runs {
            progress(Progress::Message(format!(
                "engram lora extract -r {rank} (run {}/{})",
                i + 1,
                o.runs
            )));
            let (secs, stdout) = timed(
                Command::new(&exe)
                    .args(["lora", "extract", "-q", "--json", "--base"])
                    .arg(&base_dir)
                    .arg("--model")
                    .arg(&ft_dir)
                    .args(["-r", &rank.to_string(), "--exclude", "lm_head", "-o"])
                    .arg(&ad)
                    .env(machine::PEAK_RSS_ENV, &peak_file),
                "engram lora extract",
            )?;
            times.push(secs);
            let mut v: Value =
                serde_json::from_str(&stdout).context("reading the JSON of engram lora extract")?;
            inner.push(v["seconds"].as_f64().unwrap_or(f64::NAN));
            peak = peak.max(
                std::fs::read_to_string(&peak_file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0),
            );
            report = v["report"].take();
        }
        remove(&peak_file)?;
        let energy = report["energy"].as_f64().unwrap_or(f64::NAN);
        let med = median(&times);
        let mut row = json!({
            "rank": rank,
            "engram": {
                "seconds": times, "median_s": med, "in_process_median_s": median(&inner),
                "peak_rss_bytes": peak, "energy": energy,
                "reported_rel_error": (1.0 - energy).max(0.0).sqrt(),
                "exact_svd_modules": report["modules"].as_array().map(|m| m.iter().filter(|x| x["exact"] == true).count()),
                "measured": adapter_error(&base, &ft, &modules, &ad)?,
            },
        });
        if let Some(mk) = &mk {
            let ad = adapters.join(format!("mergekit-r{rank}"));
            remove(&ad)?;
            progress(Progress::Message(format!(
                "mergekit-extract-lora --max-rank {rank}"
            )));
            let (secs, _) = timed(
                Command::new(mk)
                    .arg("--model")
                    .arg(&ft_dir)
                    .arg("--base-model")
                    .arg(&base_dir)
                    .arg("--out-path")
                    .arg(&ad)
                    .args(["--max-rank", &rank.to_string()])
                    // What engram leaves out: embeddings, the (unchanged) head, the norms
                    // (which mergekit would otherwise copy whole into modules_to_save).
                    .args(["-e", "embed_tokens", "-e", "lm_head", "-e", "norm"])
                    .args(["--no-copy-tokenizer", "--quiet"]),
                "mergekit-extract-lora",
            )?;
            row["mergekit"] = json!({
                "seconds": secs, "measured": adapter_error(&base, &ft, &modules, &ad)?,
            });
            row["speedup_vs_mergekit"] = json!(secs / med);
        }
        progress(Progress::Output(table_row(&row)));
        rows.push(row);
    }
    let doc = json!({
        "engram_bench_lora": 1,
        "machine": machine::describe(),
        "threads": threads,
        "runs": o.runs,
        "model": {
            "params": arch.param_count(), "modules": modules.len(), "recipe": recipe(&arch, o.seed),
            "base": base_dir, "ft": ft_dir,
        },
        "mergekit": mk.as_ref().map(|m| json!({
            "executable": m, "version": mk_version,
            "args": "--max-rank R -e embed_tokens -e lm_head -e norm --no-copy-tokenizer --quiet",
        })),
        "engram_args": "lora extract -r R --exclude lm_head",
        "ranks": rows,
    });
    let path = out.join("results.json");
    machine::write_json(&path, &doc)?;
    progress(Progress::Output(format!(
        "error = ‖ΔW − s·B·A‖_F / ‖ΔW‖_F over the changed matrices, both adapters read by the same code; results: {}\n",
        path.display()
    )));
    Ok(doc)
}

fn header(params: u64, modules: usize, threads: usize, runs: usize) -> String {
    format!(
        "engram bench lora: {} parameters (bf16), {modules} changed matrices, {threads} threads; engram median of {runs}, mergekit once\n{:>5} {:>9} {:>11} {:>9} {:>12} {:>12} {:>9}\n",
        count(params),
        "rank",
        "engram s",
        "engram err",
        "peak",
        "mergekit s",
        "mergekit err",
        "speed-up"
    )
}

fn table_row(r: &Value) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let e = &r["engram"];
    let mk = &r["mergekit"];
    let (mk_s, mk_err, speedup) = if mk.is_null() {
        ("-".into(), "-".into(), "-".into())
    } else {
        (
            format!("{:.2}", f(&mk["seconds"])),
            format!("{:.4}", f(&mk["measured"]["rel_error"])),
            format!("{:.1}x", f(&r["speedup_vs_mergekit"])),
        )
    };
    format!(
        "{:>5} {:>9.3} {:>11.4} {:>9} {:>12} {:>12} {:>9}\n",
        r["rank"].as_u64().unwrap_or(0),
        f(&e["median_s"]),
        f(&e["measured"]["rel_error"]),
        bytes(e["peak_rss_bytes"].as_u64().unwrap_or(0)),
        mk_s,
        mk_err,
        speedup
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Energy of the best rank-r approximation, from the exact spectrum.
    fn captured(d: &[f32], m: usize, n: usize, r: usize) -> f64 {
        let sp = engram_weights::spectral::spectrum(d, m, n, &Default::default()).unwrap();
        let tot: f64 = sp.singular_values.iter().map(|s| s * s).sum();
        sp.singular_values[..r].iter().map(|s| s * s).sum::<f64>() / tot
    }

    #[test]
    fn task_vectors_have_the_stated_size_and_a_decaying_spectrum() {
        let (m, n) = (96, 64);
        let d = task_vector(0, "model.layers.0.mlp.up_proj.weight", m, n);
        assert_eq!(d, task_vector(0, "model.layers.0.mlp.up_proj.weight", m, n));
        assert_ne!(d, task_vector(1, "model.layers.0.mlp.up_proj.weight", m, n));
        let rms = (d.iter().map(|x| x * x).sum::<f32>() / d.len() as f32).sqrt();
        assert!((rms / DELTA_RMS as f32 - 1.0).abs() < 0.1, "{rms}");
        // The error √(1 − energy) at ranks 1, 4, 16, 32 (measured: 0.60, 0.32, 0.13, 0.064):
        // falling at every rank, and not zero at the last (the noise).
        let err: Vec<f64> = [1, 4, 16, 32]
            .map(|r| (1.0 - captured(&d, m, n, r)).sqrt())
            .to_vec();
        assert!(
            err[0] < 0.8 && err.windows(2).all(|w| w[1] < 0.7 * w[0]),
            "{err:?}"
        );
        assert!(err[3] > 0.03, "{err:?}");
    }

    #[test]
    fn projections_are_recognised_by_their_module_name() {
        assert!(is_projection("model.layers.3.self_attn.k_proj.weight"));
        assert!(is_projection("model.layers.0.mlp.down_proj.weight"));
        assert!(!is_projection("model.layers.0.input_layernorm.weight"));
        assert!(!is_projection("lm_head.weight"));
        assert!(!is_projection("model.layers.0.mlp.down_proj.bias"));
    }

    #[test]
    fn rows_show_mergekit_only_where_it_ran() {
        let mut r = json!({"rank": 8, "engram": {"median_s": 0.5, "peak_rss_bytes": 40_000_000u64,
            "measured": {"rel_error": 0.25}}});
        let t = table_row(&r);
        assert!(
            t.contains("0.500") && t.contains("0.2500") && t.contains("40.0 MB"),
            "{t}"
        );
        assert_eq!(t.matches(" -").count(), 3, "{t}");
        r["mergekit"] = json!({"seconds": 5.0, "measured": {"rel_error": 0.2501}});
        r["speedup_vs_mergekit"] = json!(10.0);
        let t = table_row(&r);
        assert!(
            t.contains("5.00") && t.contains("0.2501") && t.contains("10.0x"),
            "{t}"
        );
    }
}
