// Binary-weight variational continual learning (Phys. Rev. E 108, 014309 (2023)) in deep
// networks, against Laborieux et al. (2021). Card: shared/methods/theory.md.

//! The `deep` part of `engram bench binary`: 784-512-512-10 binary networks learn five
//! Permuted Fashion-MNIST tasks in sequence (task 0 permuted too), four ways
//! ([`engram_learn::binary::deep`]): the field-space algorithm as the paper's code runs it
//! (local reparametrisation, the per-step term, β annealed over the sequence), its
//! task-anchor variant (KL to the previous task's fields), a straight-through-estimator binary
//! network, and the metaplastic binary network of Laborieux et al. (2021), the published
//! baseline the paper beats. After each task every network is measured on every task's test
//! images: the field-space networks in the noisy mean-field pass (the paper's evaluation) and
//! as true binary networks with the exported weights sign(h); the straight-through and
//! metaplastic networks are binary in both. The card's claim: after the last task, mean
//! accuracy ranks field space ≥ metaplastic > straight-through.

use super::{Ctx, PartOut, Verdict};
use crate::Progress;
use crate::machine::{cached, spread, store};
use anyhow::{Context, Result, bail};
use engram_learn::binary::deep::{Arm, DeepConfig, DeepOut, META_M};
use engram_learn::binary::tasks::permuted_tasks;
use engram_report::html::Page;
use engram_report::svg::{LineChart, Series, line_chart};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Instant;

/// Bumped when a change to this file changes the numbers a cached unit holds.
const UNIT: u32 = 2;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    pub config: DeepConfig,
    pub tasks: usize,
    /// Training images per task (the first of Fashion-MNIST's training set, card).
    pub train_rows: usize,
    /// Test images per task.
    pub test_rows: usize,
    pub arms: Vec<Arm>,
}

impl Settings {
    pub fn new(quick: bool) -> Settings {
        let mut config = DeepConfig::default();
        if quick {
            config.epochs = 1;
            config.hidden = vec![128, 128];
        }
        Settings {
            config,
            tasks: if quick { 3 } else { 5 },
            train_rows: if quick { 2000 } else { 32_000 },
            test_rows: if quick { 1000 } else { 5000 },
            arms: vec![
                Arm::FieldPerStep,
                Arm::FieldAnchor,
                Arm::Ste,
                Arm::Meta { m: META_M },
            ],
        }
    }
}

/// One arm of one seed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ArmRun {
    pub seed: u64,
    pub arm: String,
    /// Row i: accuracy (percent) on tasks 0..T after task i, in the arm's own forward pass
    /// (mean field for the field-space networks).
    pub acc: Vec<Vec<f64>>,
    /// The same with binary weights (sign of the fields or latent weights).
    pub acc_binary: Vec<Vec<f64>>,
    pub seconds: f64,
}

impl ArmRun {
    /// Mean accuracy over every task after the last one.
    pub fn final_mean(m: &[Vec<f64>]) -> f64 {
        m.last()
            .map_or(f64::NAN, |r| r.iter().sum::<f64>() / r.len().max(1) as f64)
    }
}

/// Fractions as percentages.
fn percent(m: &[Vec<f64>]) -> Vec<Vec<f64>> {
    m.iter()
        .map(|r| r.iter().map(|v| 100.0 * v).collect())
        .collect()
}

/// Mean and sd over seeds of one arm's final mean accuracy.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ArmSummary {
    pub arm: String,
    pub acc: f64,
    pub acc_sd: f64,
    pub acc_binary: f64,
    pub acc_binary_sd: f64,
    /// Mean accuracy on the tasks learned so far, after each task (mean over seeds).
    pub seen: Vec<f64>,
    pub seen_binary: Vec<f64>,
}

/// Mean accuracy on tasks 0..=i after task i (an empty or short row: its tasks only).
fn seen_curve(m: &[Vec<f64>]) -> Vec<f64> {
    m.iter()
        .enumerate()
        .map(|(i, r)| {
            let seen = &r[..(i + 1).min(r.len())];
            seen.iter().sum::<f64>() / seen.len().max(1) as f64
        })
        .collect()
}

pub fn summary(runs: &[ArmRun], arms: &[String]) -> Vec<ArmSummary> {
    arms.iter()
        .map(|a| {
            let rs: Vec<&ArmRun> = runs.iter().filter(|r| &r.arm == a).collect();
            let f = spread(
                &rs.iter()
                    .map(|r| ArmRun::final_mean(&r.acc))
                    .collect::<Vec<_>>(),
            );
            let b = spread(
                &rs.iter()
                    .map(|r| ArmRun::final_mean(&r.acc_binary))
                    .collect::<Vec<_>>(),
            );
            let mean_curve = |get: fn(&ArmRun) -> &Vec<Vec<f64>>| -> Vec<f64> {
                let curves: Vec<Vec<f64>> = rs.iter().map(|r| seen_curve(get(r))).collect();
                let n = curves.iter().map(Vec::len).min().unwrap_or(0);
                (0..n)
                    .map(|i| curves.iter().map(|c| c[i]).sum::<f64>() / curves.len() as f64)
                    .collect()
            };
            ArmSummary {
                arm: a.clone(),
                acc: f.mean,
                acc_sd: f.sd,
                acc_binary: b.mean,
                acc_binary_sd: b.sd,
                seen: mean_curve(|r| &r.acc),
                seen_binary: mean_curve(|r| &r.acc_binary),
            }
        })
        .collect()
}

/// The card's ranking, in the paper's evaluation (mean field) and with binary weights.
pub fn verdicts(s: &[ArmSummary]) -> Vec<Verdict> {
    let get = |name: &str| s.iter().find(|a| a.arm == name);
    let (f, m, t) = (
        get(Arm::FieldPerStep.name()),
        get(Arm::Meta { m: META_M }.name()),
        get(Arm::Ste.name()),
    );
    let mut v = Vec::new();
    for (how, pick) in [
        (
            "mean-field pass",
            (|a: &ArmSummary| a.acc) as fn(&ArmSummary) -> f64,
        ),
        ("exported binary weights", |a: &ArmSummary| a.acc_binary),
    ] {
        v.push(match (f, m, t) {
            (Some(f), Some(m), Some(t)) => Verdict {
                part: "deep".into(),
                claim: format!(
                    "mean accuracy after the last task ranks field space (per-step) ≥ \
                     metaplastic > straight-through (field space: {how})"
                ),
                holds: Some(pick(f) >= pick(m) && pick(m) > pick(t)),
                detail: format!(
                    "field space {:.1} %, metaplastic {:.1} %, straight-through {:.1} %",
                    pick(f),
                    pick(m),
                    pick(t)
                ),
            },
            _ => Verdict {
                part: "deep".into(),
                claim: format!("ranking ({how})"),
                holds: None,
                detail: "an arm did not run".into(),
            },
        });
    }
    v
}

/// Runs the part: every seed and arm (cached), then the verdicts.
pub fn run(cx: &Ctx, progress: &mut dyn FnMut(Progress)) -> Result<PartOut> {
    let t0 = Instant::now();
    let z = Settings::new(cx.quick);
    z.config.validate()?;
    // One seed by default (about 20 minutes on 2 cores); `--seeds` for more.
    let seeds = cx.seeds_or(&[0], 1);
    if seeds.is_empty() {
        bail!("deep: no seeds to run");
    }
    let mut split = None;
    let mut runs = Vec::new();
    for &seed in &seeds {
        let mut tasks = None;
        for arm in &z.arms {
            let path = cx.runs.join(format!("deep-{}-seed{seed}.json", arm.name()));
            let settings = json!({"unit": UNIT, "settings": z, "seed": seed, "arm": arm});
            if let Some(r) = cached::<ArmRun>(&path, &settings) {
                runs.push(r);
                continue;
            }
            if split.is_none() {
                split = Some(
                    engram_learn::data::load("fashion-mnist", cx.data_dir)
                        .context("deep: loading Fashion-MNIST")?,
                );
            }
            let Some(sp) = split.as_ref() else {
                bail!("deep: no data");
            };
            if tasks.is_none() {
                let (n, m) = (
                    z.train_rows.min(sp.train.len()),
                    z.test_rows.min(sp.test.len()),
                );
                let d = sp.train.dim;
                tasks = Some(permuted_tasks(
                    &sp.train.x[..n * d],
                    &sp.train.y[..n],
                    &sp.test.x[..m * d],
                    &sp.test.y[..m],
                    z.tasks,
                    seed,
                )?);
            }
            let Some(ts) = tasks.as_ref() else {
                bail!("deep: no tasks");
            };
            let cfg = DeepConfig {
                seed,
                ..z.config.clone()
            };
            let total = (z.tasks * cfg.epochs) as u64;
            progress(Progress::Start {
                label: format!("deep {} (seed {seed})", arm.name()),
                total,
            });
            let t = Instant::now();
            let o: DeepOut = engram_learn::binary::deep::run(*arm, &cfg, ts, &mut |d| {
                progress(Progress::Advance {
                    pos: (d.task * d.epochs + d.epoch + 1) as u64,
                    total,
                })
            })?;
            progress(Progress::Finish);
            let r = ArmRun {
                seed,
                arm: arm.name().into(),
                acc: percent(&o.acc_mean_field),
                acc_binary: percent(&o.acc_binary),
                seconds: t.elapsed().as_secs_f64(),
            };
            store(&path, &settings, &r)?;
            runs.push(r);
        }
    }
    let names: Vec<String> = z.arms.iter().map(|a| a.name().to_string()).collect();
    let s = summary(&runs, &names);
    Ok(PartOut {
        verdicts: verdicts(&s),
        text: text(&s),
        results: json!({
            "settings": z,
            "quick": cx.quick,
            "runs": runs,
            "summary": s,
            "wall_s": t0.elapsed().as_secs_f64(),
        }),
    })
}

fn text(s: &[ArmSummary]) -> String {
    let mut t = String::from(
        "deep: mean accuracy over all tasks after the last (own pass / binary weights)\n",
    );
    for a in s {
        t += &format!(
            "  {:<16} {:5.1} ± {:.1} %   {:5.1} ± {:.1} %\n",
            a.arm, a.acc, a.acc_sd, a.acc_binary, a.acc_binary_sd
        );
    }
    t
}

/// The report's deep section: accuracy over tasks, final tables, accuracy matrices.
pub fn section(p: &mut Page, v: &Value) -> Result<()> {
    let z: Settings = serde_json::from_value(v["settings"].clone())?;
    let runs: Vec<ArmRun> = serde_json::from_value(v["runs"].clone())?;
    let s: Vec<ArmSummary> = serde_json::from_value(v["summary"].clone())?;
    let c = &z.config;
    p.heading("Deep binary networks on Permuted Fashion-MNIST");
    p.para(&format!(
        "784-{h}-10 without biases, ReLU, softmax cross-entropy; {t} tasks (every task's pixels \
         permuted, task 0 too), the first {n} training images and {m} test images of \
         Fashion-MNIST each; {e} epochs per task, batch {b}, Adam lr {lr}, β₂ {b2}. Field \
         space (per-step): fields h ~ N(0, 1), m = tanh(βh), the pre-activation sampled by \
         local reparametrisation, after every step the term β²σ⊙Δh added to the next gradient, \
         β = 10·tanh(0.1 + 2(tE + e + 1)/(TE)) annealed over the whole sequence (the paper's \
         code; no KL snapshot). Field space (task anchor): the same network and β, with the KL \
         to the previous task's fields scaled by batch/P instead of the per-step term. \
         Straight-through: latent weights, forward with sign(W)/√N, identity gradient where \
         |W| ≤ 1, latent weights clipped to [−1, 1]. Metaplastic (Laborieux et al. 2021): the \
         same binary forward, updates that move a latent weight toward zero scaled by \
         1 − tanh²(m·W), m = 1.3 (card: unverified for PMNIST), latent weights not clipped; \
         engram scales by 1/√N instead of their BatchNorm, one forward for every arm. Seeds: \
         {seeds}.",
        h = c
            .hidden
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join("-"),
        t = z.tasks,
        n = z.train_rows,
        m = z.test_rows,
        e = c.epochs,
        b = c.batch,
        lr = c.lr,
        b2 = c.beta2,
        seeds = {
            let mut v: Vec<u64> = runs.iter().map(|r| r.seed).collect();
            v.sort_unstable();
            v.dedup();
            format!("{v:?}")
        },
    ));
    let rows: Vec<Vec<String>> = s
        .iter()
        .map(|a| {
            vec![
                a.arm.clone(),
                format!("{:.1} ± {:.1}", a.acc, a.acc_sd),
                format!("{:.1} ± {:.1}", a.acc_binary, a.acc_binary_sd),
            ]
        })
        .collect();
    p.table(
        &[
            "network",
            "mean accuracy after the last task (%)",
            "with binary weights sign(h) (%)",
        ],
        &rows,
    );
    let chart = |title: &str, get: fn(&ArmSummary) -> &Vec<f64>| {
        line_chart(
            &LineChart {
                title: title.into(),
                x_label: "tasks learned".into(),
                y_label: "mean accuracy on tasks so far (%)".into(),
                y_range: Some((0.0, 100.0)),
                integer_x: true,
                ..Default::default()
            },
            &s.iter()
                .map(|a| Series {
                    label: a.arm.clone(),
                    points: get(a)
                        .iter()
                        .enumerate()
                        .map(|(i, &y)| ((i + 1) as f64, y))
                        .collect(),
                })
                .collect::<Vec<_>>(),
        )
    };
    p.svg_row(&[
        chart("own forward pass", |a| &a.seen),
        chart("binary weights", |a| &a.seen_binary),
    ]);
    if let Some(seed) = runs.first().map(|r| r.seed) {
        p.subheading(&format!(
            "Accuracy matrices, seed {seed} (row: after task i)"
        ));
        let tasks: Vec<String> = (0..z.tasks).map(|t| format!("task {t}")).collect();
        let svgs: Vec<String> = runs
            .iter()
            .filter(|r| r.seed == seed)
            .map(|r| engram_report::svg::accuracy_heatmap(&r.arm, &tasks, &r.acc))
            .collect();
        p.svg_row(&svgs);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_of(arm: &str, last: f64) -> ArmRun {
        ArmRun {
            seed: 0,
            arm: arm.into(),
            acc: vec![vec![90.0, 10.0], vec![last, last]],
            acc_binary: vec![vec![90.0, 10.0], vec![last - 1.0, last - 1.0]],
            seconds: 0.0,
        }
    }

    /// The ranking verdict reads the final mean accuracies, and could fail.
    #[test]
    fn ranking_follows_the_card() {
        let names: Vec<String> = [Arm::FieldPerStep, Arm::Ste, Arm::Meta { m: META_M }]
            .iter()
            .map(|a| a.name().to_string())
            .collect();
        let runs = vec![
            run_of(&names[0], 70.0),
            run_of(&names[1], 50.0),
            run_of(&names[2], 60.0),
        ];
        let s = summary(&runs, &names);
        assert_eq!(s[0].seen, vec![90.0, 70.0]);
        let v = verdicts(&s);
        assert_eq!(v[0].holds, Some(true), "{}", v[0].detail);
        let runs = vec![
            run_of(&names[0], 55.0),
            run_of(&names[1], 50.0),
            run_of(&names[2], 60.0),
        ];
        assert_eq!(verdicts(&summary(&runs, &names))[0].holds, Some(false));
    }
}
