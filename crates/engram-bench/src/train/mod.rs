//! `engram bench train`: B4 of BENCHMARKS.md. One epoch of Fashion-MNIST (batch 128, Adam,
//! lr 1e-3) for the MLP 784-400-400-10 and the CNN (conv 1→32 3×3, pool 2, conv 32→64 3×3,
//! pool 2, fc 1600→128, fc 128→10), engram against PyTorch on CPU with the same number of
//! threads, in the same run.
//!
//! engram side: engram's own `Trainer` on a one-task joint scenario (the loop every `engram
//! train` run uses: shuffled minibatches built by `gather`, cross-entropy, backward, Adam).
//! The time of one epoch runs from the trainer's `TaskStart` event to its last `Step` event,
//! so loading the data set, the evaluations before and after, and building the network are
//! not in it; building the minibatches is, as it is for PyTorch (`x[idx]`), and is also
//! timed alone and reported as `batch_s`.
//!
//! PyTorch side: `torch_epoch.py`, written to a temporary folder and run with `python` (a venv
//! with torch and numpy; `install_torch` makes bench-out/torch-venv) as one long-lived process
//! that runs an epoch each time it is asked (one JSON line in, one out). It reads the very same
//! examples, which engram writes as raw little-endian arrays next to the script, and calls
//! `torch.set_num_threads(n)` with n = engram's rayon threads (`--threads`, default: all
//! cores). Same architecture, and the same initialisation scheme (both draw weights and biases
//! from U(±1/√fan_in)); not the same data order.
//!
//! Order: the PyTorch process starts (torch imported, data loaded), each side runs one warm-up
//! epoch, then `repeat` pairs, each an engram epoch followed at once by a PyTorch epoch on the
//! same seed (engram, PyTorch, engram, PyTorch, ...), so that a burst of load on a shared
//! machine falls on both sides rather than on one. Every epoch starts from a freshly
//! initialised network (seeds seed+1, seed+2, ...) and is evaluated on the 10,000 test images
//! afterwards (a check that both learn). Reported per network: `ratio`, the median over the
//! pairs of engram/PyTorch seconds within each pair ([`paired_ratios`]), with every pair's
//! ratio (`pair_ratios`) and the ratio of the two sides' medians (`ratio_of_medians`); the
//! median seconds per epoch and test accuracy of each side; and how many threads each side
//! really kept busy: CPU time over wall time during the timed epochs, from every thread's
//! `/proc/self/task/*/schedstat`, and the number of threads that were on a CPU for at least a
//! tenth of the epoch.

use crate::Progress;
use crate::machine;
use anyhow::{Context, Result, bail};
use engram_learn::backend::Compute;
use engram_learn::model::ModelConfig;
use engram_learn::optim::{OptimConfig, OptimKind, Schedule};
use engram_learn::scenario::{Common, Part, Scenario, joint};
use engram_learn::train::{Event, TrainConfig, Trainer};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

/// Settings of `engram bench train`.
#[derive(Clone, Debug)]
pub struct Options {
    /// Networks to measure: mlp, cnn.
    pub models: Vec<String>,
    /// Timed pairs of epochs per network (engram, then PyTorch), after a warm-up epoch each.
    pub repeat: usize,
    pub batch_size: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// Train on the first N examples only (default: all 60,000).
    pub train_examples: Option<usize>,
    pub seed: u64,
    /// Where Fashion-MNIST is (default: the system package's location).
    pub data_dir: Option<PathBuf>,
    /// Python with torch and numpy (default: bench-out/torch-venv/bin/python).
    pub python: Option<PathBuf>,
    /// Create bench-out/torch-venv and pip-install torch (CPU build) and numpy into it first.
    pub install_torch: bool,
    /// engram only.
    pub no_torch: bool,
    /// Where both sides train: the CPU (default), or the GPU (engram through Vulkan, a build
    /// with the `gpu` feature; PyTorch on CUDA), or Vulkan's CPU device (engram only).
    pub device: Compute,
    pub json_out: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            models: vec!["mlp".into(), "cnn".into()],
            repeat: 3,
            batch_size: 128,
            lr: 1e-3,
            train_examples: None,
            seed: 0,
            data_dir: None,
            python: None,
            install_torch: false,
            no_torch: false,
            device: Compute::Cpu,
            json_out: "bench-out/train.json".into(),
        }
    }
}

const VENV: &str = "bench-out/torch-venv";

/// The PyTorch side. argv[1]: a JSON object of settings; prints one JSON object.
const SCRIPT: &str = include_str!("torch_epoch.py");

/// CPU time (ns) of each of this process's threads.
fn cpu_ns() -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            let ns = std::fs::read_to_string(e.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()));
            if let Some(ns) = ns {
                out.insert(e.file_name().to_string_lossy().into_owned(), ns);
            }
        }
    }
    out
}

/// (total CPU seconds, threads busy at least a tenth of `wall`) between two snapshots.
fn cpu_use(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>, wall: f64) -> (f64, usize) {
    let per: Vec<u64> = b
        .iter()
        .map(|(t, &ns)| ns.saturating_sub(a.get(t).copied().unwrap_or(0)))
        .collect();
    let busy = per
        .iter()
        .filter(|&&ns| ns as f64 >= 0.1 * wall * 1e9)
        .count();
    (per.iter().sum::<u64>() as f64 / 1e9, busy)
}

struct Net {
    name: &'static str,
    config: ModelConfig,
    /// The same network for the PyTorch script.
    torch: Value,
}

fn net(name: &str) -> Result<Net> {
    Ok(match name {
        "mlp" => Net {
            name: "mlp",
            config: ModelConfig::Mlp {
                hidden: vec![400, 400],
            },
            torch: json!({"kind": "mlp", "hidden": [400, 400]}),
        },
        "cnn" => Net {
            name: "cnn",
            config: ModelConfig::Cnn {
                channels: [32, 64],
                hidden: 128,
            },
            torch: json!({"kind": "cnn", "channels": [32, 64], "hidden": 128}),
        },
        other => bail!("unknown network `{other}` (known: mlp, cnn)"),
    })
}

/// One epoch of engram's trainer on a fresh network: the run's JSON record.
fn engram_epoch(s: &Scenario, model: &ModelConfig, o: &Options, seed: u64) -> Result<Value> {
    let strategy =
        engram_learn::strategy::build("naive", &Value::Null).map_err(anyhow::Error::msg)?;
    let mut trainer = Trainer {
        scenario: s,
        model: model.clone(),
        train: TrainConfig {
            epochs: 1,
            iterations: None,
            batch_size: o.batch_size,
            eval_batch: 1000,
            optimizer: OptimConfig {
                kind: OptimKind::Adam,
                lr: o.lr,
                schedule: Schedule::Constant,
                // torch.optim.Adam's default, so that both sides run the same algorithm.
                eps: 1e-8,
                ..OptimConfig::default()
            },
            device: o.device,
            ..TrainConfig::default()
        },
        seed,
        strategy,
        checkpoint_dir: None,
        stop_after: None,
        start: None,
        settings: Value::Null,
    };
    let mut start: Option<(Instant, BTreeMap<String, u64>)> = None;
    let mut end: Option<(f64, BTreeMap<String, u64>)> = None;
    let mut steps = 0;
    let out = trainer
        .run(&mut |e| match e {
            Event::TaskStart { steps: n, .. } => {
                steps = n;
                start = Some((Instant::now(), cpu_ns()));
            }
            Event::Step { step, .. } if step == steps => {
                if let Some((t, _)) = &start {
                    end = Some((t.elapsed().as_secs_f64(), cpu_ns()));
                }
            }
            _ => {}
        })
        .map_err(anyhow::Error::msg)?;
    let (Some((_, c0)), Some((wall, c1))) = (start, end) else {
        bail!("the trainer reported no complete epoch");
    };
    let (cpu, busy) = cpu_use(&c0, &c1, wall);
    let accuracy = out
        .accuracy
        .first()
        .and_then(|r| r.first())
        .copied()
        .unwrap_or(0.0);
    Ok(json!({
        "seconds": wall,
        "trainer_seconds": out.seconds_per_task.first(),
        "cpu_s": cpu,
        "busy_threads": busy,
        "accuracy": accuracy,
    }))
}

/// Seconds to build one epoch's minibatches alone, as the trainer builds them.
fn engram_batches(s: &Scenario, bs: usize) -> f64 {
    let ids: Vec<(usize, usize)> = s.tasks[0].train.iter().map(|&i| (0, i)).collect();
    // A fixed stride permutation: scattered reads like a shuffle's, without the trainer's RNG.
    let n = ids.len();
    let step = (0..)
        .map(|k| n / 2 + 1 + k)
        .find(|&k| gcd(k, n) == 1)
        .unwrap_or(1);
    let order: Vec<(usize, usize)> = (0..n).map(|i| ids[(i * step) % n]).collect();
    let t = Instant::now();
    let mut sink = 0.0f32;
    for chunk in order.chunks(bs) {
        let (x, y) = s.gather(Part::Train, chunk);
        sink += x.first().copied().unwrap_or(0.0) + y.first().copied().unwrap_or(0) as f32;
    }
    std::hint::black_box(sink);
    t.elapsed().as_secs_f64()
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn write_raw(dir: &Path, name: &str, bytes: impl Iterator<Item = [u8; 4]>) -> Result<()> {
    let path = dir.join(name);
    let f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::new(f);
    for b in bytes {
        w.write_all(&b)?;
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes the scenario's training examples (in order) and test set for the PyTorch script.
fn write_data(dir: &Path, s: &Scenario) -> Result<()> {
    let train = &s.tasks[0].train;
    let dim = s.train.dim;
    write_raw(
        dir,
        "train_x.f32",
        train.iter().flat_map(|&i| {
            s.train.x[i * dim..(i + 1) * dim]
                .iter()
                .map(|v| v.to_le_bytes())
        }),
    )?;
    let i64s = |ys: Vec<u32>| -> Vec<[u8; 4]> {
        ys.into_iter()
            .flat_map(|y| {
                let b = i64::from(y).to_le_bytes();
                [[b[0], b[1], b[2], b[3]], [b[4], b[5], b[6], b[7]]]
            })
            .collect()
    };
    write_raw(
        dir,
        "train_y.i64",
        i64s(train.iter().map(|&i| s.train.y[i]).collect()).into_iter(),
    )?;
    write_raw(dir, "test_x.f32", s.test.x.iter().map(|v| v.to_le_bytes()))?;
    write_raw(dir, "test_y.i64", i64s(s.test.y.clone()).into_iter())
}

fn install_torch() -> Result<()> {
    let venv = PathBuf::from(VENV);
    if let Some(p) = venv.parent() {
        std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    }
    let pip = venv.join("bin/pip");
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .context("running python3 -m venv")?
        .success()
        && Command::new(&pip)
            .args([
                "install",
                "-q",
                "torch",
                "--index-url",
                "https://download.pytorch.org/whl/cpu",
            ])
            .status()
            .with_context(|| format!("running {}", pip.display()))?
            .success()
        && Command::new(&pip)
            .args(["install", "-q", "numpy"])
            .status()
            .with_context(|| format!("running {}", pip.display()))?
            .success();
    if !ok {
        bail!("installing torch and numpy into {VENV} failed");
    }
    Ok(())
}

/// The PyTorch side: one `torch_epoch.py` process that runs an epoch when asked.
struct Torch {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr: PathBuf,
    python: PathBuf,
    /// The script's first line: torch's version and threads.
    hello: Value,
}

impl Torch {
    /// Writes the script, starts it on `net` and waits until it has loaded the data.
    fn start(
        python: &Path,
        dir: &Path,
        net: &Net,
        s: &Scenario,
        o: &Options,
        threads: usize,
    ) -> Result<Torch> {
        let script = dir.join("bench_train.py");
        std::fs::write(&script, SCRIPT).with_context(|| format!("writing {}", script.display()))?;
        let (c, h, w) = s.train.image.unwrap_or((1, 28, 28));
        let cfg = json!({
            "data": dir,
            "n_train": s.tasks[0].train.len(),
            "n_test": s.test.len(),
            "dim": s.train.dim,
            "image": [c, h, w],
            "classes": s.num_outputs,
            "batch_size": o.batch_size,
            "lr": o.lr,
            "threads": threads,
            "model": net.torch,
            "device": if o.device == Compute::Gpu { "cuda" } else { "cpu" },
        });
        let n = threads.to_string();
        // stderr goes to a file (read on failure), so that a chatty script never blocks.
        let stderr = dir.join(format!("{}.stderr", net.name));
        let err_file = std::fs::File::create(&stderr)
            .with_context(|| format!("creating {}", stderr.display()))?;
        let mut child = Command::new(python)
            .arg(&script)
            .arg(cfg.to_string())
            .env("OMP_NUM_THREADS", &n)
            .env("MKL_NUM_THREADS", &n)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err_file)
            .spawn()
            .with_context(|| format!("running {}", python.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("no pipes to {}", python.display());
        };
        let mut t = Torch {
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
            stderr,
            python: python.to_path_buf(),
            hello: Value::Null,
        };
        t.hello = t.read()?;
        Ok(t)
    }

    /// The script's next JSON line, or its failure with what it wrote to stderr.
    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        let got = self.stdout.read_line(&mut line);
        if let (Ok(n), Ok(v)) = (&got, serde_json::from_str::<Value>(line.trim()))
            && *n > 0
        {
            return Ok(v);
        }
        // Closing stdin ends a script that is still waiting.
        self.stdin = None;
        let status = self.child.wait().ok();
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        bail!(
            "the PyTorch script ({}) failed{}: {}{}",
            self.python.display(),
            status.map(|s| format!(" ({s})")).unwrap_or_default(),
            err.trim(),
            if line.trim().is_empty() {
                String::new()
            } else {
                format!(" (it printed: {})", line.trim())
            }
        )
    }

    /// Sends one request and returns the answer.
    fn ask(&mut self, req: &Value) -> Result<Value> {
        let sent = match self.stdin.as_mut() {
            Some(w) => writeln!(w, "{req}").and_then(|_| w.flush()).is_ok(),
            None => false,
        };
        if !sent {
            // The script has ended: `read` reports why.
            return self.read();
        }
        self.read()
    }

    /// Closes the script's input and waits for it to end.
    fn finish(mut self) -> Result<()> {
        self.stdin = None;
        let status = self
            .child
            .wait()
            .context("waiting for the PyTorch script")?;
        if !status.success() {
            let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            bail!("the PyTorch script failed ({status}): {}", err.trim());
        }
        Ok(())
    }
}

impl Drop for Torch {
    /// A script left running by an error is ended (it is this process's own child).
    fn drop(&mut self) {
        self.stdin = None;
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Engram/PyTorch seconds of each adjacent pair of epochs and their median: pair i is
/// engram's epoch i and PyTorch's epoch i, run one right after the other. An error if the
/// sides ran different numbers of epochs, none, or a time is not a positive finite number.
pub fn paired_ratios(engram: &[f64], torch: &[f64]) -> Result<(Vec<f64>, f64)> {
    if engram.len() != torch.len() || engram.is_empty() {
        bail!(
            "{} engram and {} PyTorch epochs do not make pairs",
            engram.len(),
            torch.len()
        );
    }
    if let Some(t) = engram
        .iter()
        .chain(torch)
        .find(|t| !(t.is_finite() && **t > 0.0))
    {
        bail!("an epoch took {t} s: not a positive time");
    }
    let ratios: Vec<f64> = engram.iter().zip(torch).map(|(e, t)| e / t).collect();
    let median = machine::median(&ratios);
    Ok((ratios, median))
}

fn med(runs: &[Value], key: &str) -> f64 {
    machine::median(
        &runs
            .iter()
            .filter_map(|r| r[key].as_f64())
            .collect::<Vec<_>>(),
    )
}

/// Median seconds, accuracy, CPU use and busy threads of a side's timed runs.
fn summary(runs: &[Value]) -> Value {
    let secs = med(runs, "seconds");
    json!({
        "median_s": secs,
        "median_accuracy": med(runs, "accuracy"),
        "cores_used": if secs > 0.0 { med(runs, "cpu_s") / secs } else { 0.0 },
        "busy_threads": med(runs, "busy_threads"),
    })
}

/// Runs the benchmark; writes and returns its JSON (the table goes to `Output`).
pub fn run(o: &Options, progress: &mut dyn FnMut(Progress)) -> Result<Value> {
    if o.repeat == 0 || o.batch_size == 0 {
        bail!("--repeat and --batch-size must be at least 1");
    }
    if !(o.lr.is_finite() && o.lr > 0.0) {
        bail!("--lr must be positive");
    }
    if o.train_examples == Some(0) {
        bail!("--train-examples must be at least 1");
    }
    // Torch's settings mean nothing without the torch side: refused rather than ignored.
    if o.no_torch {
        let unused: Vec<&str> = [
            (o.install_torch, "--install-torch"),
            (o.python.is_some(), "--python"),
        ]
        .into_iter()
        .filter_map(|(set, flag)| set.then_some(flag))
        .collect();
        if !unused.is_empty() {
            bail!(
                "{} has no effect with --no-torch (the PyTorch side is not run): leave out {}",
                unused.join(" and "),
                if unused.len() > 1 { "them" } else { "it" }
            );
        }
    }
    if o.device == Compute::VulkanCpu && !o.no_torch {
        bail!(
            "--device vulkan-cpu checks engram's GPU path on Vulkan's CPU device, which PyTorch \
             has no counterpart of: add --no-torch"
        );
    }
    o.device
        .available()
        .map_err(|e| anyhow::anyhow!("--device: {e}"))?;
    machine::check_json_out(&o.json_out, "--json-out")?;
    let nets = o
        .models
        .iter()
        .map(|m| net(m.trim()))
        .collect::<Result<Vec<_>>>()?;
    if o.install_torch {
        install_torch()?;
    }
    let python = (!o.no_torch).then(|| {
        o.python
            .clone()
            .unwrap_or(PathBuf::from(VENV).join("bin/python"))
    });
    if let Some(p) = &python
        && !p.exists()
    {
        bail!(
            "{} not found: pass --install-torch, --python PATH (a python with torch and numpy) or --no-torch",
            p.display()
        );
    }
    let threads = rayon::current_num_threads();

    let split = engram_learn::data::load("fashion-mnist", o.data_dir.as_deref())?;
    let mut s = joint(
        split,
        &Common {
            seed: o.seed,
            train_per_task: None,
            test_per_class: None,
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(n) = o.train_examples {
        s.tasks[0].train.truncate(n);
    }
    let n_train = s.tasks[0].train.len();
    let tmp = std::env::temp_dir().join(format!("engram-bench-train-{}", std::process::id()));
    if python.is_some() {
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        write_data(&tmp, &s)?;
    }
    let batch_s = engram_batches(&s, o.batch_size);

    let mut results = Vec::new();
    let res = (|| -> Result<()> {
        for n in &nets {
            let mut torch = match &python {
                Some(p) => {
                    progress(Progress::Message(format!("{}: starting PyTorch", n.name)));
                    Some(Torch::start(p, &tmp, n, &s, o, threads)?)
                }
                None => None,
            };
            progress(Progress::Message(format!("{}: warm-up epochs", n.name)));
            let warm = engram_epoch(&s, &n.config, o, o.seed)?;
            let torch_warm = match torch.as_mut() {
                Some(t) => Some(t.ask(&json!({"epoch": o.seed}))?),
                None => None,
            };
            // engram, PyTorch, engram, PyTorch, ...: each pair on the same seed.
            let mut runs = Vec::new();
            let mut torch_runs = Vec::new();
            for r in 0..o.repeat {
                let seed = o.seed + 1 + r as u64;
                progress(Progress::Message(format!(
                    "{}: pair {} of {}",
                    n.name,
                    r + 1,
                    o.repeat
                )));
                runs.push(engram_epoch(&s, &n.config, o, seed)?);
                if let Some(t) = torch.as_mut() {
                    torch_runs.push(t.ask(&json!({"epoch": seed}))?);
                }
            }
            let engram = json!({
                "warmup": warm,
                "runs": runs,
                "threads": threads,
                "batch_s": batch_s,
                "summary": summary(&runs),
            });
            let (torch_doc, ratio, pair_ratios, ratio_of_medians) = match torch {
                Some(mut t) => {
                    let batches = t.ask(&json!({"batches": true}))?;
                    let mut doc = t.hello.clone();
                    t.finish()?;
                    doc["warmup"] = torch_warm.unwrap_or(Value::Null);
                    doc["batch_s"] = batches["batch_s"].clone();
                    doc["summary"] = summary(&torch_runs);
                    let secs = |v: &[Value]| -> Vec<f64> {
                        v.iter()
                            .map(|r| r["seconds"].as_f64().unwrap_or(f64::NAN))
                            .collect()
                    };
                    let (pairs, median) = paired_ratios(&secs(&runs), &secs(&torch_runs))
                        .with_context(|| format!("{}: pairing the epochs", n.name))?;
                    doc["runs"] = Value::Array(torch_runs);
                    let of_medians = med(&runs, "seconds")
                        / doc["summary"]["median_s"].as_f64().unwrap_or(f64::NAN);
                    (
                        doc,
                        Some(median),
                        Some(pairs),
                        of_medians.is_finite().then_some(of_medians),
                    )
                }
                None => (Value::Null, None, None, None),
            };
            results.push(json!({
                "model": n.name,
                "engram": engram,
                "torch": torch_doc,
                "ratio": ratio,
                "pair_ratios": pair_ratios,
                "ratio_of_medians": ratio_of_medians,
            }));
        }
        Ok(())
    })();
    if python.is_some() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    res?;

    let mut machine = machine::describe();
    machine["loadavg_at_end"] = json!(machine::loadavg());
    let doc = json!({
        "engram_bench_train": 1,
        "data": "fashion-mnist",
        "train_examples": n_train,
        "test_examples": s.test.len(),
        "batch_size": o.batch_size,
        "optimizer": {"kind": "adam", "lr": o.lr},
        "repeat": o.repeat,
        "order": if python.is_some() {
            "interleaved: a warm-up epoch each, then repeat pairs (engram, PyTorch)"
        } else {
            "engram only: a warm-up epoch, then repeat epochs"
        },
        "seed": o.seed,
        "threads": threads,
        "device": o.device.name(),
        "machine": machine,
        "results": results,
    });
    machine::write_json(&o.json_out, &doc)?;
    progress(Progress::Output(render_text(&doc, &o.json_out)));
    Ok(doc)
}

/// The table of a run's JSON: per network, seconds per epoch on each side, their ratio, test
/// accuracy and cores used.
pub fn render_text(doc: &Value, json_out: &Path) -> String {
    let mut o = String::new();
    let batch_s = doc["results"][0]["engram"]["batch_s"]
        .as_f64()
        .unwrap_or(0.0);
    let with_torch = doc["results"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| !r["torch"].is_null());
    let order = if with_torch {
        format!(
            "{} interleaved pairs of epochs (engram, PyTorch) after a warm-up each",
            doc["repeat"]
        )
    } else {
        format!(
            "median of {} epochs after a warm-up, engram only",
            doc["repeat"]
        )
    };
    o += &format!(
        "engram bench train: Fashion-MNIST, {} examples per epoch, batch {}, Adam lr {}, {} threads, {order}\n",
        doc["train_examples"],
        doc["batch_size"],
        doc["optimizer"]["lr"].as_f64().unwrap_or(0.0),
        doc["threads"],
    );
    o += &format!(
        "machine: {}{}\n",
        doc["machine"]["cpu"].as_str().unwrap_or("?"),
        match doc["device"].as_str() {
            Some(d) if d != "cpu" => format!("; device: {d}"),
            _ => String::new(),
        }
    );
    o += &format!(
        "{:<5} {:>10} {:>10} {:>7} {:>9} {:>9} {:>13} {:>13}\n",
        "model",
        "engram s",
        "torch s",
        "ratio",
        "engram %",
        "torch %",
        "engram cores",
        "torch cores"
    );
    for r in doc["results"].as_array().into_iter().flatten() {
        let f = |side: &str, k: &str| r[side]["summary"][k].as_f64();
        let opt = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
        o += &format!(
            "{:<5} {:>10.2} {:>10} {:>7} {:>9.2} {:>9} {:>13} {:>13}\n",
            r["model"].as_str().unwrap_or_default(),
            f("engram", "median_s").unwrap_or(0.0),
            opt(f("torch", "median_s"), 2),
            opt(r["ratio"].as_f64(), 2),
            f("engram", "median_accuracy").unwrap_or(0.0),
            opt(f("torch", "median_accuracy"), 2),
            opt(f("engram", "cores_used"), 2),
            opt(f("torch", "cores_used"), 2),
        );
    }
    for r in doc["results"].as_array().into_iter().flatten() {
        if let Some(p) = r["pair_ratios"].as_array() {
            let each: Vec<String> = p
                .iter()
                .map(|v| v.as_f64().map_or("-".into(), |v| format!("{v:.2}")))
                .collect();
            o += &format!(
                "{} ratio per pair: {}\n",
                r["model"].as_str().unwrap_or_default(),
                each.join(" ")
            );
        }
    }
    o += &format!(
        "(ratio: median over the pairs of engram/PyTorch seconds per epoch, each pair an engram epoch then a PyTorch one; s and %: medians of seconds per epoch and of test accuracy after the epoch; cores: CPU time / wall time; building the minibatches alone: {batch_s:.3} s per epoch for engram)\n"
    );
    o += &format!("results: {}\n", json_out.display());
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_threads_count_a_tenth_of_the_wall_time() {
        let a: BTreeMap<String, u64> = [("1".into(), 0), ("2".into(), 0)].into();
        let b: BTreeMap<String, u64> = [
            ("1".into(), 1_000_000_000),
            ("2".into(), 50_000_000),
            ("3".into(), 200_000_000),
        ]
        .into();
        let (cpu, busy) = cpu_use(&a, &b, 1.0);
        assert!((cpu - 1.25).abs() < 1e-12);
        assert_eq!(busy, 2);
        assert_eq!(gcd(12, 18), 6);
        assert!(net("rnn").is_err());
    }

    /// `--install-torch` and `--python` do nothing with `--no-torch`: refused, naming the
    /// flags, before anything is installed, loaded or written.
    #[test]
    fn torch_flags_with_no_torch_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let json_out = dir.path().join("t.json");
        let err = |install_torch, python: Option<&str>| {
            run(
                &Options {
                    no_torch: true,
                    install_torch,
                    python: python.map(PathBuf::from),
                    json_out: json_out.clone(),
                    ..Options::default()
                },
                &mut |_| {},
            )
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
        };
        let e = err(true, None);
        assert!(
            e.starts_with("--install-torch has no effect with --no-torch"),
            "{e}"
        );
        let e = err(false, Some("/usr/bin/python3"));
        assert!(
            e.starts_with("--python has no effect with --no-torch"),
            "{e}"
        );
        let e = err(true, Some("p"));
        assert!(e.contains("--install-torch and --python"), "{e}");
        assert!(!json_out.exists());
    }

    #[test]
    fn table_without_torch_shows_dashes() {
        let doc = json!({
            "train_examples": 600, "batch_size": 128, "optimizer": {"lr": 0.001},
            "threads": 2, "repeat": 3, "machine": {"cpu": "Some CPU"},
            "results": [{"model": "mlp", "ratio": null, "torch": null,
                "engram": {"batch_s": 0.0125, "summary": {"median_s": 1.5,
                    "median_accuracy": 80.0, "cores_used": 1.9}}}],
        });
        let t = render_text(&doc, Path::new("t.json"));
        let l: Vec<&str> = t.lines().collect();
        assert_eq!(
            l[0],
            "engram bench train: Fashion-MNIST, 600 examples per epoch, batch 128, Adam lr 0.001, 2 threads, median of 3 epochs after a warm-up, engram only"
        );
        assert_eq!(l[1], "machine: Some CPU");
        assert_eq!(
            l[3],
            "mlp         1.50          -       -     80.00         -          1.90             -"
        );
        assert!(l[4].ends_with("0.013 s per epoch for engram)"), "{}", l[4]);
    }

    /// Pair i is engram's epoch i against PyTorch's epoch i (not the ratio of medians); the
    /// median of an even count is the mean of the middle two.
    #[test]
    fn pairs_are_adjacent_epochs_and_their_median_is_reported() {
        // A burst of load in pair 2 slows both sides; the pair's ratio stays near the others.
        let e = [1.0, 3.0, 1.2];
        let t = [2.0, 5.0, 2.0];
        let (r, m) = paired_ratios(&e, &t).unwrap();
        assert_eq!(r, [0.5, 0.6, 0.6]);
        assert_eq!(m, 0.6);
        let (r, m) = paired_ratios(&[1.0, 2.0, 3.0, 8.0], &[4.0, 4.0, 4.0, 4.0]).unwrap();
        assert_eq!(r, [0.25, 0.5, 0.75, 2.0]);
        assert_eq!(m, 0.625);
        assert!(paired_ratios(&[1.0, 2.0], &[1.0]).is_err());
        assert!(paired_ratios(&[], &[]).is_err());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = paired_ratios(&[1.0], &[bad]).unwrap_err().to_string();
            assert!(e.contains("not a positive time"), "{e}");
            assert!(paired_ratios(&[bad], &[1.0]).is_err());
        }
    }

    #[test]
    fn table_with_torch_shows_the_median_pair_ratio_and_every_pair() {
        let side = |s: f64| {
            json!({"batch_s": 0.01, "summary": {"median_s": s,
            "median_accuracy": 80.0, "cores_used": 2.0}})
        };
        let doc = json!({
            "train_examples": 600, "batch_size": 128, "optimizer": {"lr": 0.001},
            "threads": 2, "repeat": 2, "machine": {"cpu": "Some CPU"},
            "results": [{"model": "mlp", "ratio": 0.55, "pair_ratios": [0.5, 0.6],
                "engram": side(1.1), "torch": side(2.0)}],
        });
        let t = render_text(&doc, Path::new("t.json"));
        let l: Vec<&str> = t.lines().collect();
        assert!(
            l[0].ends_with("2 interleaved pairs of epochs (engram, PyTorch) after a warm-up each"),
            "{}",
            l[0]
        );
        assert!(l[3].contains(" 0.55 "), "{}", l[3]);
        assert_eq!(l[4], "mlp ratio per pair: 0.50 0.60");
    }
}
