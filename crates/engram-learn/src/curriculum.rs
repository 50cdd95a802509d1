//! Curricula: one model trained through phases in order, each on its own data with its own
//! frozen tensors, learning rate, epochs and an optional anchor (L2 or EWC) to the weights at
//! the end of the phase before. Issue 22; card: shared/methods/robustness_safety.md,
//! "Ker-VLJEPA parts", step 3 (phase A trains, phase B freezes part of the network and
//! anchors the rest with loss = task + λ·‖θ − θ^A‖²); an engram design around the paper's
//! description, which has no reference code.
//!
//! A phase is a training stage (`train/stage.rs`, [`run_stage_with`]): the trainer through
//! every task of the phase's scenario from the weights the phase before ended with, its
//! frozen tensors bit-identical at its end (checked here), a fresh optimizer. The anchor's
//! penalty and Fisher are the l2 and ewc strategies' shared parts
//! (`strategy/parts/penalty.rs`, `strategy/parts/fisher.rs`). After each phase the network
//! is evaluated on every phase's test data, so a phases × phases matrix says what each phase
//! kept of the others: `accuracy[1][0]` is phase 0's accuracy after phase 1.
//!
//! Every phase trains with the run's seed (its batch order is that of its scenario in a run
//! of that seed), so phase k run from given weights ([`run_phases_from`] with a
//! [`PhaseStart`]) gives exactly the weights it gives in the whole curriculum from the same
//! weights: a benchmark trains phase A once and varies phase B.

use crate::config::{AnchorConfig, CurriculumConfig, EwcAnchor};
use crate::data::{DataFile, DataSource, Split};
use crate::model::ModelConfig;
use crate::model::params::{name_matches, param_infos, untracked_names};
use crate::scenario::Scenario;
use crate::strategy::parts::fisher::{PerExample, fisher};
use crate::train::Event;
use crate::train::stage::{
    Anchor, StageOptions, anchorable, fresh_values, no_anchorable, run_stage_with,
};
use crate::{Result, err};
use burn::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

pub use crate::train::stage::Values;

/// Where a curriculum begins when it does not begin at its first phase with a fresh network:
/// at phase `phase` (the phases before it taken as trained) with `weights` (every parameter
/// by name), which are also the anchor of that phase.
#[derive(Clone, Debug)]
pub struct PhaseStart {
    pub phase: usize,
    pub weights: Values,
}

/// What one phase did.
#[derive(Clone, Debug)]
pub struct PhaseOut {
    pub name: String,
    /// The phase's scenario (its name, e.g. `joint fashion-mnist`).
    pub scenario: String,
    /// Wall time of the phase's training (with its Fisher, for an EWC anchor), without the
    /// evaluation on every phase's data.
    pub seconds: f64,
    /// Accuracy (percent) on each phase's test data after this phase, one entry per phase of
    /// the curriculum ([`phase_accuracy`]).
    pub accuracy: Vec<f64>,
    /// The weights at the end of the phase, every parameter by name.
    pub weights: Values,
    /// The tensors the phase held fixed.
    pub frozen: Vec<String>,
    /// The values the optimizer could change.
    pub trainable: usize,
}

/// What a curriculum run measured.
#[derive(Clone, Debug)]
pub struct CurriculumOut {
    /// The first phase run (0 unless started later, [`PhaseStart`]).
    pub first: usize,
    /// The phases run, `first` onwards, in order.
    pub phases: Vec<PhaseOut>,
    /// The accuracy of the starting network on each phase's test data.
    pub baseline: Vec<f64>,
    /// Every parameter's shape, by name (to save the weights).
    pub shapes: BTreeMap<String, Vec<usize>>,
    /// Parameters of the model (values).
    pub params: usize,
}

impl CurriculumOut {
    /// The accuracy matrix: row r is after phase `first + r`, column j phase j's test data.
    pub fn accuracy(&self) -> Vec<Vec<f64>> {
        self.phases.iter().map(|p| p.accuracy.clone()).collect()
    }

    /// The weights at the end of the last phase run.
    pub fn final_weights(&self) -> Option<&Values> {
        self.phases.last().map(|p| &p.weights)
    }
}

/// Loads each phase's data (each data set once) and builds its scenario; returns the
/// scenarios in phase order with the data files read.
pub fn load_scenarios(
    cfg: &CurriculumConfig,
    data_dir: Option<&Path>,
) -> Result<(Vec<Scenario>, Vec<DataFile>)> {
    cfg.validate()?;
    let mut loaded: Vec<(DataSource, Split)> = Vec::new();
    let mut files: Vec<DataFile> = Vec::new();
    let mut scenarios = Vec::with_capacity(cfg.phases.len());
    for (k, p) in cfg.phases.iter().enumerate() {
        let at = |e: crate::Error| err!("phase[{k}] '{}': {e}", p.name);
        let src = p.scenario.source().map_err(|e| at(e.into()))?;
        let data = match loaded.iter().find(|(s, _)| *s == src) {
            Some((_, d)) => d.clone(),
            None => {
                let d = src.load(data_dir).map_err(|e| at(e.into()))?;
                for f in &d.files {
                    if !files.contains(f) {
                        files.push(f.clone());
                    }
                }
                loaded.push((src, d.clone()));
                d
            }
        };
        scenarios.push(p.scenario.build_with(data).map_err(|e| at(e.into()))?);
    }
    Ok((scenarios, files))
}

/// Runs every phase of `cfg` from a fresh seeded network, on the data found in `data_dir`
/// (default: the system packages' locations). `on` hears each phase's index and the
/// trainer's events.
pub fn run_phases(
    cfg: &CurriculumConfig,
    data_dir: Option<&Path>,
    on: &mut dyn FnMut(usize, Event),
) -> Result<CurriculumOut> {
    let (scenarios, _) = load_scenarios(cfg, data_dir)?;
    run_phases_from(cfg, &scenarios, None, on)
}

/// Runs the phases of `cfg` on already built `scenarios` (one per phase, in order, as
/// [`load_scenarios`] builds them): from a fresh seeded network at phase 0 (`start` `None`),
/// or from `start.weights` at phase `start.phase`. Everything that can be checked before
/// training is (the scenarios fit one model, every freeze and anchor pattern matches a
/// parameter, every anchor with λ > 0 has a tensor to pull, the weights fit the model), so
/// that a bad phase at the end fails at once.
pub fn run_phases_from(
    cfg: &CurriculumConfig,
    scenarios: &[Scenario],
    start: Option<PhaseStart>,
    on: &mut dyn FnMut(usize, Event),
) -> Result<CurriculumOut> {
    cfg.validate()?;
    if scenarios.len() != cfg.phases.len() {
        return Err(err!(
            "{} scenarios for {} phases",
            scenarios.len(),
            cfg.phases.len()
        ));
    }
    let s0 = &scenarios[0];
    for (k, s) in scenarios.iter().enumerate() {
        let (a, b) = (shape_of(s0), shape_of(s));
        if a != b {
            return Err(err!(
                "phase[{k}] '{}': scenario {} has {b}, phase[0] '{}' has {a}: one model serves \
                 every phase",
                cfg.phases[k].name,
                s.name,
                cfg.phases[0].name
            ));
        }
    }
    // On an autodiff device, so that the tensors without a gradient show.
    let net = cfg.model.build(
        s0.train.dim,
        s0.train.image,
        s0.num_outputs,
        &Device::flex().autodiff(),
    )?;
    let shapes: BTreeMap<String, Vec<usize>> = param_infos(&net)
        .into_iter()
        .map(|p| (p.name, p.shape))
        .collect();
    check_patterns(cfg, &shapes, &untracked_names(&net))?;
    drop(net);
    let (first, mut current) = match start {
        None => (0, fresh_values(s0, &cfg.model, cfg.seed)?),
        Some(st) => {
            if st.phase >= cfg.phases.len() {
                return Err(err!(
                    "start at phase {} of a curriculum of {} phases",
                    st.phase,
                    cfg.phases.len()
                ));
            }
            check_weights(&st.weights, &shapes)?;
            (st.phase, st.weights)
        }
    };
    let eval = |v: &Values| -> Result<Vec<f64>> {
        scenarios
            .iter()
            .map(|s| phase_accuracy(&cfg.model, v, s, cfg.train.eval_batch))
            .collect()
    };
    let baseline = eval(&current)?;
    let mut phases = Vec::new();
    for (k, p) in cfg.phases.iter().enumerate().skip(first) {
        let at = |e: crate::Error| err!("phase[{k}] '{}': {e}", p.name);
        let t0 = Instant::now();
        let anchor = match &p.anchor {
            None => None,
            Some(a) => {
                let weights = match a {
                    AnchorConfig::L2(_) => None,
                    AnchorConfig::Ewc(e) => Some(
                        mean_fisher(&cfg.model, &current, &scenarios[k - 1], cfg.seed, e)
                            .map_err(at)?,
                    ),
                };
                Some(Anchor {
                    lambda: a.lambda(),
                    values: current.clone(),
                    weights,
                    params: a.params().to_vec(),
                })
            }
        };
        let opts = StageOptions {
            init: Some(current.clone()),
            frozen: p.freeze.clone(),
            anchor,
        };
        let train = cfg.phase_train(k)?;
        let out = run_stage_with(&scenarios[k], &cfg.model, train, cfg.seed, opts, &mut |e| {
            on(k, e)
        })
        .map_err(at)?;
        let seconds = t0.elapsed().as_secs_f64();
        // The guarantee the card's "freeze" rests on, checked rather than assumed.
        for n in &out.frozen {
            let same = match (current.get(n), out.values.get(n)) {
                (Some(a), Some(b)) => {
                    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
                }
                _ => false,
            };
            if !same {
                return Err(at(err!("frozen tensor {n} changed during the phase")));
            }
        }
        let accuracy = eval(&out.values)?;
        current = out.values;
        phases.push(PhaseOut {
            name: p.name.clone(),
            scenario: scenarios[k].name.clone(),
            seconds,
            accuracy,
            weights: current.clone(),
            frozen: out.frozen,
            trainable: out.trainable,
        });
    }
    Ok(CurriculumOut {
        first,
        phases,
        baseline,
        params: shapes.values().map(|s| s.iter().product::<usize>()).sum(),
        shapes,
    })
}

/// Accuracy (percent) of the network `model` holding `values` on a phase's test data: every
/// test example of the scenario, each scored as its task's column of the accuracy matrix
/// after the scenario's last task (so over every class a Class-IL scenario has, over its
/// task's classes in Task-IL), tasks weighted by their test examples.
pub fn phase_accuracy(
    model: &ModelConfig,
    values: &Values,
    s: &Scenario,
    batch: usize,
) -> Result<f64> {
    let device = Device::flex();
    let net = crate::eval::values_net(
        model,
        values,
        s.train.dim,
        s.train.image,
        s.num_outputs,
        &device,
    )?;
    let last = s.tasks.len().saturating_sub(1);
    let (row, _) = crate::eval::evaluate(&net, s, Some(last), &device, batch.max(1));
    let (mut sum, mut n) = (0.0, 0usize);
    for (t, a) in s.tasks.iter().zip(&row) {
        sum += a * t.test.len() as f64;
        n += t.test.len();
    }
    if n == 0 {
        return Err(err!("scenario {} has no test examples", s.name));
    }
    Ok(sum / n as f64)
}

/// What one model needs of a scenario: inputs, image shape, outputs.
fn shape_of(s: &Scenario) -> String {
    let image = match s.train.image {
        Some((c, h, w)) => format!(" ({c}×{h}×{w} images)"),
        None => String::new(),
    };
    format!(
        "{} inputs{image} and {} outputs",
        s.train.dim, s.num_outputs
    )
}

/// Every freeze and anchor pattern matches a parameter of the model, and an anchor with
/// λ > 0 has a tensor to pull ([`anchorable`]: not frozen, with a gradient, not in
/// `untracked`).
fn check_patterns(
    cfg: &CurriculumConfig,
    shapes: &BTreeMap<String, Vec<usize>>,
    untracked: &BTreeSet<String>,
) -> Result<()> {
    let names = || shapes.keys().cloned().collect::<Vec<_>>().join(", ");
    for (k, p) in cfg.phases.iter().enumerate() {
        let anchored = p.anchor.as_ref().map_or(&[][..], |a| a.params());
        let lists = [("freeze", &p.freeze[..]), ("anchor.params", anchored)];
        for (key, pats) in lists {
            for pat in pats {
                if !shapes.keys().any(|n| name_matches(pat, n)) {
                    return Err(err!(
                        "phase[{k}] '{}': {key} pattern '{pat}' matches no parameter of the \
                         model; names: {}",
                        p.name,
                        names()
                    ));
                }
            }
        }
        if let Some(a) = &p.anchor
            && a.lambda() > 0.0
            && !shapes
                .keys()
                .any(|n| anchorable(n, untracked, &p.freeze, anchored))
        {
            let e = no_anchorable(a.lambda(), anchored, &p.freeze);
            return Err(err!("phase[{k}] '{}': {e}", p.name));
        }
    }
    Ok(())
}

/// Given weights hold every parameter of the model, each of its size, and no other.
fn check_weights(w: &Values, shapes: &BTreeMap<String, Vec<usize>>) -> Result<()> {
    let missing: Vec<&str> = shapes
        .keys()
        .filter(|n| !w.contains_key(*n))
        .map(String::as_str)
        .collect();
    let extra: Vec<&str> = w
        .keys()
        .filter(|n| !shapes.contains_key(*n))
        .map(String::as_str)
        .collect();
    let bad: Vec<String> = shapes
        .iter()
        .filter_map(|(n, s)| {
            let want: usize = s.iter().product();
            w.get(n)
                .filter(|v| v.len() != want)
                .map(|v| format!("{n}: {} values for shape {s:?}", v.len()))
        })
        .collect();
    if missing.is_empty() && extra.is_empty() && bad.is_empty() {
        return Ok(());
    }
    Err(err!(
        "the weights to start from do not fit the model: missing [{}]; not in the model [{}]; \
         wrong sizes [{}]",
        missing.join(", "),
        extra.join(", "),
        bad.join(", ")
    ))
}

/// The diagonal Fisher of the network `model` holding `values` on the training data of `s`:
/// the mean over its tasks of each task's Fisher (the ewc strategy's estimators).
fn mean_fisher(
    model: &ModelConfig,
    values: &Values,
    s: &Scenario,
    seed: u64,
    a: &EwcAnchor,
) -> Result<Values> {
    let ad = Device::flex().autodiff();
    let net = crate::eval::values_net(
        model,
        values,
        s.train.dim,
        s.train.image,
        s.num_outputs,
        &ad,
    )?;
    let mut sum: Values = BTreeMap::new();
    for t in 0..s.tasks.len() {
        let f = fisher(
            &net,
            s,
            t,
            &ad,
            seed,
            a.fisher,
            a.fisher_samples,
            a.fisher_batch,
            PerExample::Auto,
        )
        .map_err(|e| err!("the Fisher on the phase before's data: {e}"))?;
        for (info, v) in f {
            let acc = sum.entry(info.name).or_insert_with(|| vec![0.0; v.len()]);
            for (x, y) in acc.iter_mut().zip(v) {
                *x += y;
            }
        }
    }
    let n = s.tasks.len().max(1) as f32;
    for v in sum.values_mut() {
        v.iter_mut().for_each(|x| *x /= n);
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two phases on blobs drawn from different seeds (two tasks that conflict), an MLP, AdamW
    /// with weight decay (which must not reach a frozen tensor).
    const RUN: &str = r#"
name = "t"
seed = 3
[model]
kind = "mlp"
hidden = [16]
[train]
epochs = 4
batch-size = 32
[train.optimizer]
kind = "adamw"
lr = 0.01
weight-decay = 0.1
[[phase]]
name = "a"
scenario = { kind = "joint", dataset = "blobs", blobs = { seed = 1, classes = 4, dim = 16, train-per-class = 40, test-per-class = 20, separation = 2.0 } }
[[phase]]
name = "b"
scenario = { kind = "joint", dataset = "blobs", blobs = { seed = 2, classes = 4, dim = 16, train-per-class = 40, test-per-class = 20, separation = 2.0 } }
"#;

    fn cfg(text: &str) -> CurriculumConfig {
        CurriculumConfig::parse_toml(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    /// `RUN` with `extra` lines added to phase b.
    fn with_b(extra: &str) -> CurriculumConfig {
        cfg(&format!("{RUN}{extra}\n"))
    }

    fn run(c: &CurriculumConfig) -> CurriculumOut {
        run_phases(c, None, &mut |_, _| {}).unwrap_or_else(|e| panic!("{e}"))
    }

    fn error(text: &str) -> String {
        match CurriculumConfig::parse_toml(text) {
            Ok(c) => match run_phases(&c, None, &mut |_, _| {}) {
                Ok(_) => "ok".into(),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// ‖θ − θ*‖ over every tensor.
    fn distance(a: &Values, b: &Values) -> f64 {
        a.iter()
            .map(|(n, v)| {
                v.iter()
                    .zip(&b[n])
                    .map(|(x, y)| ((x - y) as f64).powi(2))
                    .sum::<f64>()
            })
            .sum::<f64>()
            .sqrt()
    }

    #[test]
    fn frozen_tensors_stay_bit_identical_and_the_others_move() {
        let out = run(&with_b("freeze = [\"fc.0.*\"]"));
        let (a, b) = (&out.phases[0].weights, &out.phases[1].weights);
        assert_eq!(out.phases[1].frozen, ["fc.0.weight", "fc.0.bias"]);
        for n in ["fc.0.weight", "fc.0.bias"] {
            assert_eq!(bits(&a[n]), bits(&b[n]), "{n}");
        }
        for n in ["fc.1.weight", "fc.1.bias"] {
            assert_ne!(bits(&a[n]), bits(&b[n]), "{n}");
        }
        let head = a["fc.1.weight"].len() + a["fc.1.bias"].len();
        assert_eq!(out.phases[1].trainable, head);
        assert_eq!(out.phases[0].trainable, out.params);
        // The matrix: phases × phases; phase a learned well above chance (25 %), phase b's
        // head learned b on a's features.
        let m = out.accuracy();
        assert_eq!((m.len(), m[0].len(), m[1].len()), (2, 2, 2));
        assert!(m[0][0] > 80.0 && m[1][1] > m[0][1] + 10.0, "{m:?}");
        assert_eq!(out.baseline.len(), 2);
    }

    /// BatchNorm's running statistics take no gradient; frozen, they keep their values too.
    #[test]
    fn frozen_batchnorm_statistics_stay_bit_identical() {
        let text = RUN
            .replace(
                "kind = \"mlp\"\nhidden = [16]",
                "kind = \"bn-cnn\"\nchannels = [4, 6]\nhidden = 8",
            )
            .replace("dim = 16", "dim = 144")
            .replace("epochs = 4", "epochs = 1");
        let out = run(&cfg(&format!("{text}freeze = [\"bn1.\", \"conv1.\"]\n")));
        let (a, b) = (&out.phases[0].weights, &out.phases[1].weights);
        for n in [
            "bn1.running_mean",
            "bn1.running_var",
            "bn1.weight",
            "conv1.weight",
        ] {
            assert_eq!(bits(&a[n]), bits(&b[n]), "{n}");
        }
        for n in ["bn2.running_mean", "bn2.weight", "conv2.weight"] {
            assert_ne!(bits(&a[n]), bits(&b[n]), "{n}");
        }
    }

    /// Phase b from phase a's weights, as a benchmark varies it: the same weights as in the
    /// whole curriculum, and a large L2 anchor keeps them nearer phase a's than λ = 0.
    #[test]
    fn the_l2_anchor_keeps_the_weights_near_the_phase_before() {
        let whole = run(&with_b("anchor = { kind = \"l2\", lambda = 0.0 }"));
        let a = whole.phases[0].weights.clone();
        let (scenarios, _) = load_scenarios(&cfg(RUN), None).unwrap();
        let from_a = |extra: &str| {
            let start = PhaseStart {
                phase: 1,
                weights: a.clone(),
            };
            run_phases_from(&with_b(extra), &scenarios, Some(start), &mut |_, _| {}).unwrap()
        };
        let zero = from_a("anchor = { kind = \"l2\", lambda = 0.0 }");
        assert_eq!(zero.first, 1);
        assert_eq!(zero.phases.len(), 1);
        assert_eq!(zero.phases[0].weights, whole.phases[1].weights);
        let plain = from_a("");
        assert_eq!(plain.phases[0].weights, zero.phases[0].weights);
        let strong = from_a("anchor = { kind = \"l2\", lambda = 100.0 }");
        let (d0, d1) = (
            distance(&zero.phases[0].weights, &a),
            distance(&strong.phases[0].weights, &a),
        );
        assert!(d1 < 0.5 * d0, "λ = 100: {d1}, λ = 0: {d0}");
        // Anchored to the tensors named: the others move as without an anchor.
        let head = from_a("anchor = { kind = \"l2\", lambda = 100.0, params = [\"fc.0.*\"] }");
        let w = &head.phases[0].weights;
        assert!(distance(w, &a) > d1);
        // Phase a's accuracy is kept better with the anchor.
        let retained = |o: &CurriculumOut| o.phases[0].accuracy[0];
        assert!(
            retained(&strong) >= retained(&zero),
            "{} {}",
            retained(&strong),
            retained(&zero)
        );
    }

    #[test]
    fn the_ewc_anchor_uses_the_fisher_of_the_phase_before() {
        let zero = run(&with_b(
            "anchor = { kind = \"ewc\", lambda = 0.0, fisher-samples = 100 }",
        ));
        let ewc = run(&with_b(
            "anchor = { kind = \"ewc\", lambda = 1000.0, fisher-samples = 100, fisher = \"empirical\" }",
        ));
        let a = &zero.phases[0].weights;
        assert_eq!(a, &ewc.phases[0].weights);
        let (d0, d1) = (
            distance(&zero.phases[1].weights, a),
            distance(&ewc.phases[1].weights, a),
        );
        assert!(d1 < d0, "EWC: {d1}, λ = 0: {d0}");
        assert!(ewc.phases[1].accuracy[0] >= zero.phases[1].accuracy[0]);
    }

    #[test]
    fn the_same_seed_gives_the_same_weights() {
        let c = with_b("freeze = [\"fc.1.bias\"]\nlr = 0.005\nepochs = 2");
        let (x, y) = (run(&c), run(&c));
        for (p, q) in x.phases.iter().zip(&y.phases) {
            for (n, v) in &p.weights {
                assert_eq!(bits(v), bits(&q.weights[n]), "{} {n}", p.name);
            }
            assert_eq!(p.accuracy, q.accuracy);
        }
        let mut other = c.clone();
        other.seed = 4;
        assert_ne!(run(&other).phases[1].weights, x.phases[1].weights);
    }

    /// Every key is checked, with messages naming the phase and the key.
    #[test]
    fn bad_phases_are_refused_naming_the_key() {
        let b = "name = \"b\"\n";
        for (from, to, needle) in [
            (
                "name = \"a\"\n",
                "name = \"a\"\nanchor = { kind = \"l2\", lambda = 1.0 }\n",
                "phase[0] 'a': anchor on the first phase",
            ),
            (
                b,
                "name = \"b\"\nfreeze = [\"nothing.*\"]\n",
                "freeze pattern 'nothing.*' matches no parameter",
            ),
            (
                b,
                "name = \"b\"\nanchor = { kind = \"l2\", lambda = 1.0, params = [\"fc.9\"] }\n",
                "anchor.params pattern 'fc.9'",
            ),
            (b, "name = \"b\"\nepoch = 2\n", "unknown field `epoch`"),
            (
                b,
                "name = \"b\"\nanchor = { kind = \"l2\", lamda = 1.0 }\n",
                "lamda",
            ),
            (
                b,
                "name = \"b\"\nanchor = { kind = \"l3\", lambda = 1.0 }\n",
                "l3",
            ),
            (
                b,
                "name = \"b\"\nanchor = { kind = \"l2\", lambda = nan }\n",
                "anchor.lambda = NaN",
            ),
            (
                b,
                "name = \"b\"\nanchor = { kind = \"l2\", lambda = -1.0 }\n",
                "anchor.lambda = -1",
            ),
            (
                b,
                "name = \"b\"\nanchor = { kind = \"ewc\", lambda = 1.0, fisher-samples = 0 }\n",
                "anchor.fisher-samples",
            ),
            (
                b,
                "name = \"b\"\nanchor = { kind = \"ewc\", lambda = 1.0, fisher = \"guess\" }\n",
                "guess",
            ),
            (b, "name = \"b\"\nlr = -1.0\n", "phase[1] 'b': lr = -1"),
            (b, "name = \"b\"\nlr = inf\n", "lr = inf"),
            (b, "name = \"b\"\nepochs = 0\n", "phase[1] 'b': epochs = 0"),
            (b, "name = \"b\"\nfreeze = [\"\"]\n", "freeze[0] is empty"),
            (
                b,
                "name = \"a\"\n",
                "phase[1].name 'a' is the name of an earlier phase",
            ),
            (b, "name = \"../x\"\n", "phase[1].name"),
            (
                "seed = 3",
                "seed = 3\n[scenario]\nkind = \"joint\"\ndataset = \"blobs\"",
                "no top-level `scenario`",
            ),
            (
                "seed = 3",
                "seed = 3\n[strategy]\nname = \"naive\"",
                "no top-level `strategy`",
            ),
            ("seed = 3", "seed = 3\nphases = 2", "unknown field `phases`"),
            (
                "batch-size = 32",
                "batch-size = 32\nfirst-task-epochs = 2",
                "first-task-epochs",
            ),
            (
                "kind = \"joint\", dataset = \"blobs\", blobs = { seed = 2",
                "kind = \"joint\", tasks = 2, dataset = \"blobs\", blobs = { seed = 2",
                "phase[1] 'b': scenario joint has 1 task",
            ),
            (
                "blobs = { seed = 2, classes = 4",
                "blobs = { seed = 2, classes = 5",
                "one model serves every phase",
            ),
        ] {
            let text = RUN.replacen(from, to, 1);
            assert_ne!(text, RUN, "{from}");
            let e = error(&text);
            assert!(e.contains(needle), "{to}: {e}");
        }
        let head = RUN.split("[[phase]]").next().unwrap_or_default();
        assert!(error(&format!("phase = []\n{head}")).contains("at least one"));
        // Weights that do not fit the model, and a start past the last phase.
        let c = cfg(RUN);
        let (s, _) = load_scenarios(&c, None).unwrap();
        let mut w = fresh_values(&s[0], &c.model, 0).unwrap();
        w.remove("fc.0.bias");
        let start = |phase, weights| Some(PhaseStart { phase, weights });
        let e = run_phases_from(&c, &s, start(1, w.clone()), &mut |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("missing [fc.0.bias]"), "{e}");
        let e = run_phases_from(&c, &s, start(2, w), &mut |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("start at phase 2"), "{e}");
        let e = run_phases_from(&c, &s[..1], None, &mut |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("1 scenarios for 2 phases"), "{e}");
    }

    /// An anchor with λ > 0 whose tensors are all frozen, or take no gradient, would pull
    /// nothing while the results call the phase anchored: refused before any phase trains,
    /// naming the phase and the patterns.
    #[test]
    fn an_anchor_with_nothing_to_anchor_is_refused_before_training() {
        let refused = |c: &CurriculumConfig| {
            let mut events = 0;
            let e = run_phases(c, None, &mut |_, _| events += 1).unwrap_err();
            assert_eq!(events, 0, "{e}");
            e.to_string()
        };
        let frozen = "freeze = [\"fc.0.*\"]\n";
        let e = refused(&with_b(&format!(
            "{frozen}anchor = {{ kind = \"l2\", lambda = 1.0, params = [\"fc.0.*\"] }}"
        )));
        assert!(
            e.contains(
                "phase[1] 'b': anchor.lambda = 1 anchors nothing: every tensor anchor.params \
                 ['fc.0.*'] match is frozen (freeze ['fc.0.*']) or takes no gradient"
            ),
            "{e}"
        );
        let e = refused(&with_b(
            "freeze = [\"fc.\"]\nanchor = { kind = \"ewc\", lambda = 2.0 }",
        ));
        assert!(
            e.contains("phase[1] 'b': anchor.lambda = 2 anchors nothing: every tensor is frozen"),
            "{e}"
        );
        // BatchNorm's running statistics take no gradient: anchoring them alone is refused.
        let text = RUN
            .replace(
                "kind = \"mlp\"\nhidden = [16]",
                "kind = \"bn-cnn\"\nchannels = [4, 6]\nhidden = 8",
            )
            .replace("dim = 16", "dim = 144");
        let e = refused(&cfg(&format!(
            "{text}anchor = {{ kind = \"l2\", lambda = 1.0, params = [\"bn1.running_*\"] }}\n"
        )));
        assert!(
            e.contains("['bn1.running_*'] match is frozen (freeze [])"),
            "{e}"
        );
        // With λ = 0 the anchor does nothing and says so: allowed.
        let c = with_b(&format!(
            "{frozen}anchor = {{ kind = \"l2\", lambda = 0.0, params = [\"fc.0.*\"] }}"
        ));
        assert_eq!(run(&c).phases.len(), 2);
    }

    /// A phase's epochs and learning rate override `[train]`'s, and the normalized form
    /// writes them out.
    #[test]
    fn phase_settings_override_the_run_and_normalize() {
        let c = with_b("epochs = 2\nlr = 0.002");
        assert_eq!(c.phase_train(0).unwrap().epochs, 4);
        let t = c.phase_train(1).unwrap();
        assert_eq!((t.epochs, t.optimizer.lr), (2, 0.002));
        let n = c.normalized().unwrap();
        assert_eq!(n.name.as_deref(), Some("t"));
        assert_eq!((n.phases[0].epochs, n.phases[0].lr), (Some(4), Some(0.01)));
        assert_eq!(n.phases[1].scenario.params["tasks"], 1);
        let mut unnamed = c.clone();
        unnamed.name = None;
        assert_eq!(unnamed.run_name(), "curriculum-a-b-seed3");
        let mut steps = Vec::new();
        run_phases(&c, None, &mut |k, e| {
            if let Event::TaskStart { steps: s, .. } = e {
                steps.push((k, s))
            }
        })
        .unwrap();
        // 160 examples in batches of 32: 5 steps an epoch.
        assert_eq!(steps, [(0, 20), (1, 10)]);
    }
}
