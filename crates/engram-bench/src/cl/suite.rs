//! The suite's design: which scenario runs with which model and budget, what each strategy
//! is given (replay memory, Fisher samples), which pairs are left out and why, the tuning
//! grids, and the run file of one run.

use anyhow::Result;
use engram_learn::config::RunConfig;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// One scenario with one model: everything a run needs but the strategy and the seed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Spec {
    pub key: &'static str,
    pub model: &'static str,
    /// The `[scenario]` table (TOML lines, without `seed`).
    pub scenario: String,
    pub epochs: usize,
    pub batch: usize,
    /// Predicted seconds of a naive run (for the ETA).
    pub cost_s: f64,
}

impl Spec {
    /// "key model", the column of the table and the report's group.
    pub fn label(&self) -> String {
        format!("{} {}", self.key, self.model)
    }
}

/// Every scenario/model pair of the suite, with tiny budgets when `quick`.
pub fn specs(quick: bool) -> Vec<Spec> {
    let split = |kind: &str, data: &str, tpt: Option<usize>, tpc: Option<usize>| {
        let mut s =
            format!("kind = \"{kind}\"\ndataset = \"{data}\"\ntasks = 5\nclasses-per-task = 2\n");
        if let Some(n) = tpt {
            s += &format!("train-per-task = {n}\n");
        }
        if let Some(n) = tpc {
            s += &format!("test-per-class = {n}\n");
        }
        s
    };
    let domain = |kind: &str, tasks: usize, tpt: usize, tpc: usize| {
        format!(
            "kind = \"{kind}\"\ndataset = \"fashion-mnist\"\ntasks = {tasks}\ntrain-per-task = {tpt}\ntest-per-class = {tpc}\n"
        )
    };
    let scole = |tasks: usize, tpt: usize, tpc: usize| {
        format!(
            "kind = \"scole\"\ndataset = \"fashion-mnist\"\ntasks = {tasks}\nclasses-per-task = 2\ntrain-per-task = {tpt}\ntest-per-class = {tpc}\n"
        )
    };
    let spec = |key, model, scenario, epochs, batch, cost_s| Spec {
        key,
        model,
        scenario,
        epochs,
        batch,
        cost_s,
    };
    if quick {
        return vec![
            spec(
                "split-fmnist-cil",
                "mlp",
                split("class-incremental", "fashion-mnist", Some(300), Some(50)),
                1,
                64,
                0.5,
            ),
            spec(
                "split-fmnist-cil",
                "cnn",
                split("class-incremental", "fashion-mnist", Some(150), Some(20)),
                1,
                64,
                1.5,
            ),
            spec(
                "split-fmnist-til",
                "mlp",
                split("task-incremental", "fashion-mnist", Some(300), Some(50)),
                1,
                64,
                0.5,
            ),
            spec(
                "split-fmnist-til",
                "cnn",
                split("task-incremental", "fashion-mnist", Some(150), Some(20)),
                1,
                64,
                1.5,
            ),
            spec(
                "permuted-fmnist",
                "mlp",
                domain("permuted", 3, 300, 30),
                1,
                64,
                0.5,
            ),
            spec(
                "rotated-fmnist",
                "mlp",
                domain("rotated", 3, 300, 30),
                1,
                64,
                0.5,
            ),
            spec(
                "split-fmnist-til",
                "resmlp",
                split("task-incremental", "fashion-mnist", Some(300), Some(50)),
                1,
                64,
                1.0,
            ),
            spec("scole-fmnist", "mlp", scole(20, 64, 20), 1, 32, 1.0),
            spec(
                "split-mnist-cil",
                "mlp",
                split("class-incremental", "mnist", Some(300), Some(50)),
                1,
                64,
                0.5,
            ),
        ];
    }
    vec![
        spec(
            "split-fmnist-cil",
            "mlp",
            split("class-incremental", "fashion-mnist", Some(3000), Some(500)),
            2,
            128,
            3.0,
        ),
        spec(
            "split-fmnist-cil",
            "cnn",
            split("class-incremental", "fashion-mnist", Some(1500), Some(200)),
            1,
            32,
            9.0,
        ),
        spec(
            "split-fmnist-til",
            "mlp",
            split("task-incremental", "fashion-mnist", Some(3000), Some(500)),
            2,
            128,
            3.0,
        ),
        spec(
            "split-fmnist-til",
            "cnn",
            split("task-incremental", "fashion-mnist", Some(1500), Some(200)),
            1,
            32,
            9.0,
        ),
        spec(
            "permuted-fmnist",
            "mlp",
            domain("permuted", 10, 2000, 200),
            1,
            128,
            5.2,
        ),
        spec(
            "rotated-fmnist",
            "mlp",
            domain("rotated", 5, 3000, 200),
            1,
            128,
            3.0,
        ),
        spec(
            "split-fmnist-til",
            "resmlp",
            split("task-incremental", "fashion-mnist", Some(3000), Some(500)),
            2,
            128,
            6.0,
        ),
        spec("scole-fmnist", "mlp", scole(200, 256, 100), 1, 64, 14.0),
        spec(
            "split-mnist-cil",
            "mlp",
            split("class-incremental", "mnist", None, None),
            2,
            128,
            1.5,
        ),
    ]
}

/// Relative cost of a strategy against naive (calibrated on the MLP split runs).
pub fn strategy_factor(s: &str) -> f64 {
    match s {
        "joint" => 2.5,
        "ewc" | "online-ewc" => 2.0,
        "si" | "l2" | "classp" | "lwf" => 1.2,
        "er" | "der" | "der++" | "kd-wa" | "er-ace" | "icarl" => 1.7,
        "a-gem" => 2.0,
        "gem" => 3.0,
        "gdumb" => 0.5,
        "napa-vq" | "pass" => 5.0,
        "ider" => 2.5,
        "lift" | "lora" | "block-expansion" => 1.5,
        _ => 1.0,
    }
}

/// Predicted seconds of the runs of `specs` × `strategies` × `seeds` (the ETA's model).
pub fn predicted_seconds(specs: &[Spec], strategies: &[String], seeds: usize) -> f64 {
    specs
        .iter()
        .map(|s| s.cost_s * strategies.iter().map(|t| strategy_factor(t)).sum::<f64>())
        .sum::<f64>()
        * seeds as f64
}

/// Why a strategy is left out of a scenario, if it is.
pub fn skip_reason(spec: &Spec, strategy: &str) -> Option<&'static str> {
    // Separate-mode EWC keeps one Fisher and one anchor per task and adds one penalty term per
    // task to every step: memory and per-step time grow with the length of the stream, and a
    // few hundred tasks make each seed a long run. Online EWC (one running Fisher) is the EWC
    // of long streams.
    // Joint (cumulative) trains at task k on the union of tasks 1..k: Σ_k k·n examples, about
    // T/2 = 100 times a naive run on a 200-task stream.
    match (spec.key, strategy) {
        ("scole-fmnist", "ewc") => Some(
            "separate-mode EWC's memory and per-step time grow with the number of tasks; \
             online-ewc covers EWC on the long stream",
        ),
        ("scole-fmnist", "joint") => Some(
            "cumulative joint retrains on every earlier task at each task: about T/2 = 100 \
             times a naive run on the long stream",
        ),
        (_, "block-expansion") if spec.model != "resmlp" => {
            Some("block expansion copies residual blocks: it runs on the resmlp model")
        }
        ("scole-fmnist", "gem") => Some(
            "GEM computes one gradient per earlier task at every step: on the 200-task stream \
             a step is up to 200 backward passes; a-gem (one reference gradient) covers it",
        ),
        (k, "napa-vq" | "pass") if !k.ends_with("-cil") => Some(
            "exemplar-free class-incremental methods (rotations as classes, a nearest code \
             vector or rotation head): they run on the class-incremental splits",
        ),
        (_, "ider") if spec.model == "resmlp" => {
            Some("IDER needs a feedback input, which the resmlp model does not have")
        }
        _ => None,
    }
}

/// Replay memory of every method that keeps one.
pub const BUFFER: usize = 200;

/// The strategies' fixed parameters in this suite (before tuning).
pub fn base_params(strategy: &str) -> serde_json::Map<String, Value> {
    let v = match strategy {
        "er" | "der" | "der++" | "ider" | "gem" | "a-gem" | "er-ace" => json!({"buffer": BUFFER}),
        "icarl" | "gdumb" => json!({"memory": BUFFER}),
        "kd-wa" => json!({"exemplars": BUFFER}),
        "ewc" | "online-ewc" => json!({"samples": 200}),
        // Selective fine-tuning restricts what changes after a first task learned by every
        // parameter (its pre-training); KappaTune unfreezes one weight matrix of the two or
        // three the suite's networks have.
        "lift" | "lora" | "block-expansion" => json!({"from-task": 1}),
        "kappatune" => json!({"from-task": 1, "n": 1}),
        _ => json!({}),
    };
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// A grid: (strategy, knobs, points (one value per knob), scenario key it is tuned on).
pub type Grid = (
    &'static str,
    &'static [&'static str],
    &'static [&'static [f64]],
    &'static str,
);

/// Strategy → the chosen (knob, value) pairs.
pub type Chosen = BTreeMap<String, Vec<(String, f64)>>;

pub const GRID: &[Grid] = &[
    (
        "ewc",
        &["lambda"],
        &[&[100.0], &[1000.0], &[10000.0]],
        "split-fmnist-til",
    ),
    (
        "online-ewc",
        &["lambda"],
        &[&[100.0], &[1000.0], &[10000.0]],
        "split-fmnist-til",
    ),
    ("si", &["c"], &[&[0.1], &[1.0], &[10.0]], "split-fmnist-til"),
    (
        "l2",
        &["lambda"],
        &[&[0.1], &[1.0], &[10.0]],
        "split-fmnist-til",
    ),
    (
        "classp",
        &["lr", "threshold"],
        &[
            &[0.01, 0.0],
            &[0.01, 1e-6],
            &[0.01, 1e-5],
            &[0.01, 1e-4],
            &[0.2, 0.0],
            &[0.2, 1e-6],
            &[0.2, 1e-5],
            &[0.2, 1e-4],
        ],
        "split-fmnist-til",
    ),
    (
        "lwf",
        &["alpha"],
        &[&[0.5], &[1.0], &[2.0]],
        "split-fmnist-til",
    ),
    (
        "der",
        &["alpha"],
        &[&[0.1], &[0.3], &[1.0]],
        "split-fmnist-cil",
    ),
    ("der++", &["alpha"], &[&[0.1], &[0.3]], "split-fmnist-cil"),
];

fn model_toml(model: &str) -> &'static str {
    match model {
        "cnn" => "kind = \"cnn\"\nchannels = [32, 64]\nhidden = 128",
        "resmlp" => "kind = \"resmlp\"\nwidth = 256\nhidden = 512\nblocks = 2",
        _ => "kind = \"mlp\"\nhidden = [400, 400]",
    }
}

/// The run file of one run of the suite: `spec` with `strategy` (and its `params`), `seed`,
/// named `name`; the strategy is built once here so that a bad parameter fails early.
pub fn make_config(
    spec: &Spec,
    strategy: &str,
    params: &serde_json::Map<String, Value>,
    seed: u64,
    name: &str,
) -> Result<RunConfig> {
    let text = format!(
        "name = \"{name}\"\nseed = {seed}\n[scenario]\n{}seed = {seed}\n[model]\n{}\n[strategy]\nname = \"{strategy}\"\n[train]\nepochs = {}\nbatch-size = {}\n[train.optimizer]\nkind = \"adam\"\nlr = 0.001\n",
        spec.scenario,
        model_toml(spec.model),
        spec.epochs,
        spec.batch
    );
    let mut cfg =
        RunConfig::parse_toml(&text).map_err(|e| anyhow::anyhow!("suite config of {name}: {e}"))?;
    cfg.strategy.params = params.clone();
    engram_learn::strategy::build(strategy, &Value::Object(params.clone()))
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    Ok(cfg)
}
