// Binary-weight variational continual learning (Phys. Rev. E 108, 014309 (2023)): the
// teacher–student perceptron. Card: shared/methods/theory.md, "Binary-weight variational CL".

//! The `perceptron` part of `engram bench binary`: a field-space student
//! ([`engram_learn::binary::perceptron`]) learns teacher 1 (P₁ = α₁N patterns), then teacher 2,
//! whose overlap with teacher 1 is r₀ ∈ {−0.5, 0, 0.5}, from P₂ = α₂N patterns, α₂ ∈ {0.5, 1,
//! …, 4.5}, three ways: Adam with the KL to task 1's fields (the card's variant (a)), Adam
//! without it, and plain SGD on the fields. After task 2: the generalization error
//! ε = arccos(R)/π against both teachers, R the overlap of sign(h) with the teacher. Each
//! repetition (a seed) draws its own teachers and patterns and trains task 1 once; every
//! (r₀, α₂, variant) continues from it. Simulation only: the paper's mean-field theory is not
//! implemented, so no theory curve is overlaid.

use super::{Ctx, PartOut, Verdict};
use crate::Progress;
use crate::machine::{cached, spread, store};
use anyhow::{Result, bail};
use engram_learn::binary::perceptron::{PerceptronConfig, Task2, train_task1, train_task2};
use engram_report::html::Page;
use engram_report::svg::{LineChart, Series, line_chart};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Instant;

/// Bumped when a change to this file changes the numbers a cached unit holds.
const UNIT: u32 = 1;
pub const OVERLAPS: [f64; 3] = [-0.5, 0.0, 0.5];
pub const VARIANTS: [Task2; 3] = [Task2::Kl, Task2::NoKl, Task2::Sgd];
/// The α₂ at which the KL claim is judged (card).
const ALPHA_KL: f64 = 4.0;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    pub config: PerceptronConfig,
    pub alphas: Vec<f64>,
    /// Task-2 curves (ε against epoch) are kept at this α₂.
    pub curve_alpha: f64,
}

impl Settings {
    pub fn new(quick: bool) -> Settings {
        Settings {
            config: match quick {
                true => PerceptronConfig::quick(),
                false => PerceptronConfig::default(),
            },
            alphas: match quick {
                true => vec![0.5, 2.0, 4.0],
                false => (1..=9).map(|i| 0.5 * i as f64).collect(),
            },
            curve_alpha: 4.0,
        }
    }
}

/// One task-2 run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Run {
    pub r0: f64,
    pub alpha2: f64,
    pub variant: String,
    pub eps1: f64,
    pub eps2: f64,
    pub epochs: usize,
    /// (epoch, ε₁, ε₂) during task 2, kept at the settings' `curve_alpha` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub curve: Vec<(usize, f64, f64)>,
}

/// One repetition (seed).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Rep {
    pub seed: u64,
    /// ε against teacher 1 after task 1.
    pub task1_eps: f64,
    pub runs: Vec<Run>,
    pub seconds: f64,
}

/// Mean and standard deviation over repetitions of one (r₀, α₂, variant).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Point {
    pub r0: f64,
    pub alpha2: f64,
    pub variant: String,
    pub eps1: f64,
    pub eps1_sd: f64,
    pub eps2: f64,
    pub eps2_sd: f64,
}

fn run_rep(z: &Settings, seed: u64) -> Result<Rep> {
    let t = Instant::now();
    let t1 = train_task1(&z.config, seed)?;
    let jobs: Vec<(f64, f64, Task2)> = OVERLAPS
        .iter()
        .flat_map(|&r0| {
            z.alphas
                .iter()
                .flat_map(move |&a| VARIANTS.iter().map(move |&v| (r0, a, v)))
        })
        .collect();
    let runs: Result<Vec<Run>> = jobs
        .par_iter()
        .map(|&(r0, alpha2, v)| {
            let o = train_task2(&z.config, &t1, r0, alpha2, v, seed)?;
            Ok(Run {
                r0,
                alpha2,
                variant: v.name().into(),
                eps1: o.eps1,
                eps2: o.eps2,
                epochs: o.epochs_run,
                curve: match (alpha2 - z.curve_alpha).abs() < 1e-9 {
                    true => o.curve,
                    false => Vec::new(),
                },
            })
        })
        .collect();
    Ok(Rep {
        seed,
        task1_eps: t1.eps1,
        runs: runs?,
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// Means over repetitions, in the order of the runs.
pub fn summary(reps: &[Rep]) -> Vec<Point> {
    let Some(first) = reps.first() else {
        return Vec::new();
    };
    first
        .runs
        .iter()
        .map(|k| {
            let same: Vec<&Run> = reps
                .iter()
                .flat_map(|r| &r.runs)
                .filter(|x| x.r0 == k.r0 && x.alpha2 == k.alpha2 && x.variant == k.variant)
                .collect();
            let e1 = spread(&same.iter().map(|x| x.eps1).collect::<Vec<_>>());
            let e2 = spread(&same.iter().map(|x| x.eps2).collect::<Vec<_>>());
            Point {
                r0: k.r0,
                alpha2: k.alpha2,
                variant: k.variant.clone(),
                eps1: e1.mean,
                eps1_sd: e1.sd,
                eps2: e2.mean,
                eps2_sd: e2.sd,
            }
        })
        .collect()
}

fn curve<'a>(s: &'a [Point], r0: f64, variant: &str) -> Vec<&'a Point> {
    let mut c: Vec<&Point> = s
        .iter()
        .filter(|p| p.r0 == r0 && p.variant == variant)
        .collect();
    c.sort_by(|a, b| a.alpha2.total_cmp(&b.alpha2));
    c
}

/// The card's three claims, on the KL variant (the paper's) where it names none.
pub fn verdicts(s: &[Point], reps: usize) -> Vec<Verdict> {
    let kl = Task2::Kl.name();
    let mut v = Vec::new();
    // (1) r₀ = 0.5: ε₁ rises only slowly while ε₂ falls with α₂.
    let c = curve(s, 0.5, kl);
    v.push(match (c.first(), c.last()) {
        (Some(a), Some(b)) if c.len() > 1 => {
            let (rise, fall) = (b.eps1 - a.eps1, a.eps2 - b.eps2);
            Verdict {
                part: "perceptron".into(),
                claim: "r₀ = 0.5: the error on teacher 1 rises only slowly while teacher 2's \
                        falls with α₂ (KL variant)"
                    .into(),
                holds: Some(fall > 0.0 && rise < fall),
                detail: format!(
                    "α₂ {} → {}: ε₁ {:.3} → {:.3} ({rise:+.3}), ε₂ {:.3} → {:.3} ({:+.3})",
                    a.alpha2, b.alpha2, a.eps1, b.eps1, a.eps2, b.eps2, -fall
                ),
            }
        }
        _ => not_judged("r₀ = 0.5 curves", "fewer than two α₂"),
    });
    // (2) r₀ = −0.5: the two curves cross.
    let c = curve(s, -0.5, kl);
    v.push(match (c.first(), c.last()) {
        (Some(a), Some(b)) if c.len() > 1 => {
            let (d0, d1) = (a.eps1 - a.eps2, b.eps1 - b.eps2);
            Verdict {
                part: "perceptron".into(),
                claim: "r₀ = −0.5: the errors on the two teachers cross as α₂ grows (KL variant)"
                    .into(),
                holds: Some(d0.signum() != d1.signum() && d0 != 0.0),
                detail: format!(
                    "ε₁ − ε₂ at α₂ {}: {d0:+.3}, at α₂ {}: {d1:+.3}",
                    a.alpha2, b.alpha2
                ),
            }
        }
        _ => not_judged("r₀ = −0.5 curves", "fewer than two α₂"),
    });
    // (3) The KL lowers ε₁ at α₂ = 4 by more than the repetitions' spread, at every r₀.
    let at = |r0: f64, var: &str| {
        s.iter()
            .find(|p| p.r0 == r0 && p.variant == var && (p.alpha2 - ALPHA_KL).abs() < 1e-9)
    };
    let mut parts = Vec::new();
    let mut all = true;
    let mut any = false;
    for r0 in OVERLAPS {
        if let (Some(a), Some(b)) = (at(r0, kl), at(r0, Task2::NoKl.name())) {
            any = true;
            let gain = b.eps1 - a.eps1;
            let sd = a.eps1_sd.max(b.eps1_sd);
            all &= gain > sd;
            parts.push(format!(
                "r₀ {r0}: ε₁ {:.3} with KL, {:.3} without (gain {gain:+.3}, spread {sd:.3})",
                a.eps1, b.eps1
            ));
        }
    }
    v.push(Verdict {
        part: "perceptron".into(),
        claim: format!(
            "with the KL, the error on teacher 1 at α₂ = {ALPHA_KL} is lower than without by \
             more than the repetitions' spread (every r₀)"
        ),
        holds: (any && reps > 1).then_some(all),
        detail: match (any, reps > 1) {
            (false, _) => format!("α₂ = {ALPHA_KL} not run"),
            (true, false) => format!("one repetition, no spread; {}", parts.join("; ")),
            (true, true) => format!("{reps} repetitions; {}", parts.join("; ")),
        },
    });
    v
}

fn not_judged(what: &str, why: &str) -> Verdict {
    Verdict {
        part: "perceptron".into(),
        claim: what.into(),
        holds: None,
        detail: why.into(),
    }
}

/// Runs the part: every repetition (cached), then the verdicts.
pub fn run(cx: &Ctx, progress: &mut dyn FnMut(Progress)) -> Result<PartOut> {
    let t0 = Instant::now();
    let z = Settings::new(cx.quick);
    z.config.validate()?;
    // Three repetitions (the card's small experiment has five: `--seeds 0,1,2,3,4`).
    let seeds = cx.seeds_or(&[0, 1, 2], 1);
    if seeds.is_empty() {
        bail!("perceptron: no seeds to run");
    }
    let mut reps = Vec::new();
    for (i, &seed) in seeds.iter().enumerate() {
        let path = cx.runs.join(format!("perceptron-rep{seed}.json"));
        let settings = json!({"unit": UNIT, "settings": z, "seed": seed});
        if let Some(r) = cached::<Rep>(&path, &settings) {
            reps.push(r);
            continue;
        }
        progress(Progress::Message(format!(
            "perceptron: repetition {} of {} (seed {seed}): task 1, then {} task-2 runs",
            i + 1,
            seeds.len(),
            OVERLAPS.len() * z.alphas.len() * VARIANTS.len()
        )));
        let r = run_rep(&z, seed)?;
        store(&path, &settings, &r)?;
        reps.push(r);
    }
    let s = summary(&reps);
    Ok(PartOut {
        verdicts: verdicts(&s, reps.len()),
        text: text(&s, &reps),
        results: json!({
            "settings": z,
            "quick": cx.quick,
            "theory": "simulation only",
            "reps": reps,
            "summary": s,
            "wall_s": t0.elapsed().as_secs_f64(),
        }),
    })
}

fn text(s: &[Point], reps: &[Rep]) -> String {
    let mut t = format!(
        "perceptron: ε₁ / ε₂ after task 2, mean of {} repetition(s) (task-1 ε₁ {:.3})\n",
        reps.len(),
        spread(&reps.iter().map(|r| r.task1_eps).collect::<Vec<_>>()).mean
    );
    for r0 in OVERLAPS {
        for var in VARIANTS {
            let c = curve(s, r0, var.name());
            let row: Vec<String> = c
                .iter()
                .map(|p| format!("{}:{:.2}/{:.2}", p.alpha2, p.eps1, p.eps2))
                .collect();
            t += &format!("  r₀ {r0:+.1} {:<6} {}\n", var.name(), row.join(" "));
        }
    }
    t
}

/// The report's perceptron section: ε(α₂) for both teachers per r₀, and ε over task 2's
/// epochs at one α₂.
pub fn section(p: &mut Page, v: &Value) -> Result<()> {
    let z: Settings = serde_json::from_value(v["settings"].clone())?;
    let reps: Vec<Rep> = serde_json::from_value(v["reps"].clone())?;
    let s: Vec<Point> = serde_json::from_value(v["summary"].clone())?;
    let c = &z.config;
    p.heading("Teacher–student perceptron in field space (simulation only)");
    p.para(&format!(
        "N = {n}, β = {beta}. Task 1: P₁ = {a1}N random ±1 patterns labelled by a binary \
         teacher, Adam lr {lr1}, weight decay {wd1}, batch {b}, {e1} epochs, KL to the \
         zero-field prior scaled by batch/P₁. Task 2: a teacher with overlap r₀ with the first, \
         P₂ = α₂N patterns, lr {lr2}, weight decay {wd2}, up to {e2} epochs (stopping once the \
         training error is 0), three ways: Adam with the KL to task 1's fields (scaled by \
         batch/P₂; the card's variant (a)), Adam without it, plain SGD on the fields. One lr and \
         batch for every (α₂, r₀) where the paper tuned a 3 × 9 table. ε = arccos(R)/π with R \
         the overlap of sign(h) with each teacher. Mean over {reps} repetition(s); error bars \
         are not drawn, the tables give the spread. The paper's mean-field theory is not \
         implemented: these are simulations only. With an even N a pattern can have \
         w·ξ = 0 (about 2.5 % at N = 1000); such ties are labelled +1.",
        n = c.n,
        beta = c.beta,
        a1 = c.alpha1,
        lr1 = c.lr1,
        wd1 = c.wd1,
        b = c.batch,
        e1 = c.epochs1,
        lr2 = c.lr2,
        wd2 = c.wd2,
        e2 = c.epochs2,
        reps = reps.len(),
    ));
    let mut svgs = Vec::new();
    for r0 in OVERLAPS {
        let mut series = Vec::new();
        for var in VARIANTS {
            let c = curve(&s, r0, var.name());
            series.push(Series {
                label: format!("{} teacher 1", var.name()),
                points: c.iter().map(|p| (p.alpha2, p.eps1)).collect(),
            });
            series.push(Series {
                label: format!("{} teacher 2", var.name()),
                points: c.iter().map(|p| (p.alpha2, p.eps2)).collect(),
            });
        }
        svgs.push(line_chart(
            &LineChart {
                title: format!("r₀ = {r0} (simulation only)"),
                x_label: "α₂".into(),
                y_label: "ε".into(),
                y_range: Some((0.0, 1.0)),
                ..Default::default()
            },
            &series,
        ));
    }
    p.svg_row(&svgs);
    let rows: Vec<Vec<String>> = s
        .iter()
        .map(|q| {
            vec![
                format!("{}", q.r0),
                format!("{}", q.alpha2),
                q.variant.clone(),
                format!("{:.3} ± {:.3}", q.eps1, q.eps1_sd),
                format!("{:.3} ± {:.3}", q.eps2, q.eps2_sd),
            ]
        })
        .collect();
    p.subheading("ε after task 2 (mean ± sd over repetitions)");
    p.table(&["r₀", "α₂", "task 2", "ε teacher 1", "ε teacher 2"], &rows);
    if let Some(rep) = reps.first() {
        let mut svgs = Vec::new();
        for r0 in OVERLAPS {
            let series: Vec<Series> = rep
                .runs
                .iter()
                .filter(|r| r.r0 == r0 && !r.curve.is_empty())
                .flat_map(|r| {
                    [
                        Series {
                            label: format!("{} teacher 1", r.variant),
                            points: r.curve.iter().map(|&(e, a, _)| (e as f64, a)).collect(),
                        },
                        Series {
                            label: format!("{} teacher 2", r.variant),
                            points: r.curve.iter().map(|&(e, _, b)| (e as f64, b)).collect(),
                        },
                    ]
                })
                .collect();
            if !series.is_empty() {
                svgs.push(line_chart(
                    &LineChart {
                        title: format!("during task 2, α₂ = {}, r₀ = {r0}", z.curve_alpha),
                        x_label: "epoch".into(),
                        y_label: "ε".into(),
                        y_range: Some((0.0, 1.0)),
                        ..Default::default()
                    },
                    &series,
                ));
            }
        }
        if !svgs.is_empty() {
            p.subheading(&format!("ε during task 2 (seed {})", rep.seed));
            p.svg_row(&svgs);
        }
    }
    p.note(
        "The paper's critical-value curve (T_c) is omitted: its definition is not in the \
         material held (card).",
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(r0: f64, alpha2: f64, variant: &str, eps1: f64, eps2: f64, sd: f64) -> Point {
        Point {
            r0,
            alpha2,
            variant: variant.into(),
            eps1,
            eps1_sd: sd,
            eps2,
            eps2_sd: sd,
        }
    }

    /// The verdicts read the curves the way the card words them, and could fail.
    #[test]
    fn verdicts_follow_the_card() {
        let (kl, no) = (Task2::Kl.name(), Task2::NoKl.name());
        let mut s = vec![
            point(0.5, 0.5, kl, 0.05, 0.30, 0.01),
            point(0.5, 4.0, kl, 0.10, 0.05, 0.01),
            point(-0.5, 0.5, kl, 0.10, 0.40, 0.01),
            point(-0.5, 4.0, kl, 0.35, 0.05, 0.01),
        ];
        for r0 in OVERLAPS {
            s.push(point(r0, 4.0, no, 0.30, 0.04, 0.02));
            if r0 == 0.0 {
                s.push(point(r0, 4.0, kl, 0.20, 0.05, 0.02));
            }
        }
        let v = verdicts(&s, 3);
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].holds, Some(true), "{}", v[0].detail);
        assert_eq!(v[1].holds, Some(true), "{}", v[1].detail);
        // KL at α₂ = 4: 0.10, 0.20, 0.35 against 0.30 → r₀ = −0.5 loses.
        assert_eq!(v[2].holds, Some(false), "{}", v[2].detail);
        // One repetition: the spread claim is not judged.
        assert_eq!(verdicts(&s, 1)[2].holds, None);
        // Teacher 1 forgotten faster than teacher 2 is learned: claim 1 fails.
        s[1].eps1 = 0.40;
        assert_eq!(verdicts(&s, 3)[0].holds, Some(false));
    }

    /// A small end-to-end repetition: every (r₀, α₂, variant) once, with its curve kept at
    /// the curve's α₂ only.
    #[test]
    fn a_quick_repetition_runs_every_combination() {
        let mut z = Settings::new(true);
        z.config.n = 41;
        z.config.epochs1 = 20;
        z.config.epochs2 = 20;
        z.alphas = vec![1.0, 4.0];
        let r = run_rep(&z, 3).unwrap();
        assert_eq!(r.runs.len(), 3 * 2 * 3);
        for x in &r.runs {
            assert!((0.0..=1.0).contains(&x.eps1) && (0.0..=1.0).contains(&x.eps2));
            assert_eq!(x.curve.is_empty(), x.alpha2 != 4.0);
        }
        assert_eq!(run_rep(&z, 3).unwrap().runs, r.runs);
        let s = summary(&[r]);
        assert_eq!(s.len(), 18);
    }
}
