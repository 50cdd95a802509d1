//! The OFQ part of `engram bench quant` (card `shared/methods/quantization.md`, OFQ): 2-bit
//! weight quantization-aware training of engram's tiny transformer with LSQ (learned scale),
//! StatsQ, StatsQ + confidence-guided annealing and StatsQ + CGA + query-key
//! reparametrization, from one float model per seed (engram-learn's `qat::ofq` runs it).
//! Measured: 2-bit test accuracy after QAT and at the end, and the oscillation frequency
//! (EMA of integer-code flips) over training per layer type.

use super::Options;
use super::verdicts::{Verdict, verdict};
use crate::machine::{Spread, spread};
use anyhow::{Result, anyhow};
use engram_learn::data::Split;
use engram_learn::qat::ofq::{OfqArm, OfqConfig, OfqResult, pretrain, run_arm};
use engram_report::html::Page;
use engram_report::svg::{LineChart, Series, line_chart};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct FpRun {
    pub seed: u64,
    pub accuracy: f64,
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ArmSummary {
    pub arm: String,
    pub qat_accuracy: Spread,
    pub accuracy: Spread,
    /// Mean oscillation frequency of every quantized weight: averaged over the QAT phase's
    /// records, and after the last step.
    pub osc_qat: Spread,
    pub osc_final: Spread,
    /// Share of weights oscillating (frequency > 0.005) after the last step.
    pub share_final: Spread,
    /// Mean frequency of the query and key quantizers (`q`, `k`; `qk` under QKR) over the
    /// QAT phase.
    pub osc_qk_qat: Spread,
}

#[derive(Clone, Debug, Serialize)]
pub struct OfqPart {
    pub config: OfqConfig,
    pub seeds: Vec<u64>,
    pub fp: Vec<FpRun>,
    pub runs: Vec<OfqResult>,
    pub summary: Vec<ArmSummary>,
    pub seconds: f64,
}

fn qat_mean(r: &OfqResult) -> f64 {
    let v: Vec<f64> = r
        .oscillation
        .iter()
        .filter(|p| p.phase == "qat")
        .filter_map(|p| p.layers.get("all").map(|s| s.mean_frequency))
        .collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Mean oscillation frequency of the query and key quantizers (`q`, `k`; `qk` under QKR) over
/// the QAT phase's records. (The QAT phase is where they compare: in the CGA epochs CGA
/// freezes q and k without QKR but leaves the Q·K product training with it.)
fn qk_qat(r: &OfqResult) -> f64 {
    let v: Vec<f64> = r
        .oscillation
        .iter()
        .filter(|p| p.phase == "qat")
        .flat_map(|p| {
            ["q", "k", "qk"]
                .iter()
                .filter_map(|k| p.layers.get(*k).map(|s| s.mean_frequency))
        })
        .collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn final_all(r: &OfqResult) -> (f64, f64) {
    r.final_oscillation
        .get("all")
        .map_or((f64::NAN, f64::NAN), |s| {
            (s.mean_frequency, s.share_oscillating)
        })
}

fn summarize(runs: &[OfqResult], arm: &str) -> Option<ArmSummary> {
    let rs: Vec<&OfqResult> = runs.iter().filter(|r| r.arm == arm).collect();
    if rs.is_empty() {
        return None;
    }
    let f = |g: &dyn Fn(&OfqResult) -> f64| spread(&rs.iter().map(|r| g(r)).collect::<Vec<_>>());
    Some(ArmSummary {
        arm: arm.into(),
        qat_accuracy: f(&|r| r.qat_accuracy),
        accuracy: f(&|r| r.accuracy),
        osc_qat: f(&qat_mean),
        osc_final: f(&|r| final_all(r).0),
        share_final: f(&|r| final_all(r).1),
        osc_qk_qat: f(&qk_qat),
    })
}

pub fn run(o: &Options, data: &Split, msg: &mut dyn FnMut(String)) -> Result<OfqPart> {
    let t0 = std::time::Instant::now();
    let base = if o.quick {
        OfqConfig::quick()
    } else {
        OfqConfig::default_full()
    };
    let n = o.ofq_seeds.unwrap_or(if o.quick { 1 } else { 2 });
    if n == 0 {
        return Err(anyhow!("--ofq-seeds must be at least 1"));
    }
    let seeds: Vec<u64> = (0..n as u64).map(|i| o.seed + i).collect();
    let (mut fp, mut runs) = (Vec::new(), Vec::new());
    for &seed in &seeds {
        let cfg = OfqConfig {
            seed,
            ..base.clone()
        };
        let m = pretrain(&cfg, &data.train, &data.test, &|_| {}).map_err(|e| anyhow!("{e}"))?;
        msg(format!(
            "ofq seed {seed}: float tiny transformer {:.2} % ({:.0} s)",
            m.accuracy, m.seconds
        ));
        fp.push(FpRun {
            seed,
            accuracy: m.accuracy,
            seconds: m.seconds,
        });
        for arm in OfqArm::ALL {
            let r = run_arm(&m, arm, &cfg, &data.train, &data.test, &|_| {})
                .map_err(|e| anyhow!("{e}"))?;
            msg(format!(
                "ofq seed {seed}, {}: W{} accuracy {:.2} % (after QAT {:.2} %), oscillation {:.4} ({:.0} s)",
                r.arm,
                r.bits,
                r.accuracy,
                r.qat_accuracy,
                final_all(&r).0,
                r.seconds
            ));
            runs.push(r);
        }
    }
    let summary = OfqArm::ALL
        .iter()
        .filter_map(|a| summarize(&runs, a.name()))
        .collect();
    Ok(OfqPart {
        config: base,
        seeds,
        fp,
        runs,
        summary,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Per seed, arm `b` minus arm `a` of `g`.
fn paired(o: &OfqPart, a: &str, b: &str, g: &dyn Fn(&OfqResult) -> f64) -> Vec<f64> {
    o.seeds
        .iter()
        .filter_map(|&s| {
            let x = o.runs.iter().find(|r| r.seed == s && r.arm == a)?;
            let y = o.runs.iter().find(|r| r.seed == s && r.arm == b)?;
            Some(g(y) - g(x))
        })
        .collect()
}

pub fn verdicts(o: &OfqPart) -> Vec<Verdict> {
    let seeds = o.seeds.len();
    let fmt = |v: &[f64], d: usize| {
        v.iter()
            .map(|x| {
                if d > 3 {
                    format!("{x:+.2e}")
                } else {
                    format!("{x:+.d$}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = Vec::new();
    let d = paired(o, "statsq", "lsq", &qat_mean);
    out.push(verdict(
        "LSQ (learned scale) oscillates more than StatsQ during QAT",
        (d.len() == seeds).then(|| d.iter().all(|x| *x > 0.0)),
        format!(
            "LSQ − StatsQ mean QAT oscillation frequency per seed: {}",
            fmt(&d, 4)
        ),
    ));
    let s = o.summary.iter().find(|s| s.arm == "statsq");
    let c = o.summary.iter().find(|s| s.arm == "statsq+cga");
    let d = paired(o, "statsq", "statsq+cga", &|r| final_all(r).0);
    let toward0 = paired(o, "statsq", "statsq+cga", &|r| final_all(r).0)
        .iter()
        .zip(o.seeds.iter().filter_map(|&s| {
            o.runs
                .iter()
                .find(|r| r.seed == s && r.arm == "statsq")
                .map(|r| final_all(r).0)
        }))
        .all(|(diff, base)| base + diff <= 0.1 * base);
    out.push(verdict(
        "CGA drives oscillation toward 0 (final frequency ≤ 10 % of StatsQ's, every seed)",
        (d.len() == seeds).then_some(toward0),
        format!(
            "final mean frequency StatsQ {}, StatsQ + CGA {}; share oscillating {} vs {}",
            s.map_or("-".into(), |s| fmt_sci(&s.osc_final)),
            c.map_or("-".into(), |s| fmt_sci(&s.osc_final)),
            s.map_or("-".into(), |s| fmt_sci(&s.share_final)),
            c.map_or("-".into(), |s| fmt_sci(&s.share_final)),
        ),
    ));
    let d = paired(o, "statsq", "statsq+cga", &|r| r.accuracy);
    let sd = s.map_or(f64::NAN, |s| {
        s.accuracy.sd.max(c.map_or(0.0, |c| c.accuracy.sd))
    });
    let mean = d.iter().sum::<f64>() / d.len().max(1) as f64;
    out.push(verdict(
        "CGA raises 2-bit accuracy beyond the seed spread",
        (d.len() == seeds && seeds > 1).then(|| d.iter().all(|x| *x > 0.0) && mean > sd),
        format!(
            "StatsQ + CGA − StatsQ per seed: {} points (mean {mean:+.2}, seed sd {sd:.2}){}",
            fmt(&d, 2),
            if seeds < 2 {
                "; one seed: no spread"
            } else {
                ""
            }
        ),
    ));
    let dq = paired(o, "statsq+cga", "statsq+cga+qkr", &qk_qat);
    let da = paired(o, "statsq+cga", "statsq+cga+qkr", &|r| r.accuracy);
    let q = o.summary.iter().find(|s| s.arm == "statsq+cga+qkr");
    let sd = c.map_or(f64::NAN, |c| {
        c.accuracy.sd.max(q.map_or(0.0, |q| q.accuracy.sd))
    });
    out.push(verdict(
        "QKR lowers Q/K oscillation without lowering accuracy",
        (dq.len() == seeds).then(|| {
            dq.iter().all(|x| *x < 0.0) && da.iter().sum::<f64>() / da.len().max(1) as f64 >= -sd
        }),
        format!(
            "QKR − no QKR, Q/K oscillation over QAT per seed: {}; final accuracy {} points (seed sd {sd:.2})",
            fmt(&dq, 4),
            fmt(&da, 2)
        ),
    ));
    out
}

fn fmt_spread(s: &Spread, d: usize) -> String {
    format!("{:.d$} ± {:.d$}", s.mean, s.sd)
}

/// Oscillation frequencies are small (1e-4): two significant digits.
fn fmt_sci(s: &Spread) -> String {
    format!("{:.2e} ± {:.1e}", s.mean, s.sd)
}

const HEADER: [&str; 7] = [
    "arm",
    "after QAT %",
    "final %",
    "osc. (QAT mean)",
    "osc. final",
    "share osc. final",
    "Q/K osc. (QAT mean)",
];

fn rows(o: &OfqPart) -> Vec<Vec<String>> {
    o.summary
        .iter()
        .map(|s| {
            vec![
                s.arm.clone(),
                fmt_spread(&s.qat_accuracy, 2),
                fmt_spread(&s.accuracy, 2),
                fmt_sci(&s.osc_qat),
                fmt_sci(&s.osc_final),
                fmt_sci(&s.share_final),
                fmt_sci(&s.osc_qk_qat),
            ]
        })
        .collect()
}

pub fn page(p: &mut Page, o: &OfqPart) {
    let c = &o.config;
    p.heading("OFQ: 2-bit quantization-aware training of the tiny transformer");
    p.para(&format!(
        "engram's tiny transformer ({:?}); float pretraining {} epochs, QAT {} epochs (W{}, \
         float activations, KD {}), then {} epochs at the final learning rate {} (CGA in the CGA \
         arms, BR {}). {} training images{}; seeds {:?}; float accuracy {}. Mean ± sd over \
         seeds. {:.0} s.",
        c.model,
        c.pretrain_epochs,
        c.qat_epochs,
        c.bits,
        if c.kd { "on" } else { "off" },
        c.cga_epochs,
        c.min_lr,
        c.boundary_range,
        c.train_limit.map_or("all".into(), |n| n.to_string()),
        c.test_limit
            .map_or(String::new(), |n| format!(", first {n} test images")),
        o.seeds,
        o.fp.iter()
            .map(|f| format!("{:.2} %", f.accuracy))
            .collect::<Vec<_>>()
            .join(", "),
        o.seconds
    ));
    p.table(&HEADER, &rows(o));
    if let Some(&seed) = o.seeds.first() {
        let series: Vec<Series> = o
            .runs
            .iter()
            .filter(|r| r.seed == seed)
            .map(|r| Series {
                label: r.arm.clone(),
                points: r
                    .oscillation
                    .iter()
                    .filter_map(|pt| Some((pt.step as f64, pt.layers.get("all")?.mean_frequency)))
                    .collect(),
            })
            .collect();
        p.svg(&line_chart(
            &LineChart {
                title: format!("oscillation frequency over training (seed {seed}, all layers)"),
                x_label: "step".into(),
                y_label: "mean frequency".into(),
                ..LineChart::default()
            },
            &series,
        ));
        let types = ["q", "k", "qk", "v", "proj", "fc1", "fc2"];
        let mut h = vec!["arm".to_string()];
        h.extend(types.iter().map(|t| t.to_string()));
        let rows: Vec<Vec<String>> = o
            .runs
            .iter()
            .filter(|r| r.seed == seed)
            .map(|r| {
                let mut row = vec![r.arm.clone()];
                row.extend(types.iter().map(|t| {
                    r.final_oscillation
                        .get(*t)
                        .map_or("-".into(), |s| format!("{:.2e}", s.mean_frequency))
                }));
                row
            })
            .collect();
        p.para(&format!(
            "Final oscillation frequency per layer type (seed {seed}):"
        ));
        let hr: Vec<&str> = h.iter().map(String::as_str).collect();
        p.table(&hr, &rows);
    }
}

pub fn text(o: &OfqPart) -> String {
    let mut s = format!(
        "OFQ, W{} (seeds {:?})\n{:<16}{:>16}{:>16}{:>18}{:>18}\n",
        o.config.bits, o.seeds, HEADER[0], HEADER[1], HEADER[2], HEADER[3], HEADER[4]
    );
    for r in rows(o) {
        s.push_str(&format!(
            "{:<16}{:>16}{:>16}{:>18}{:>18}\n",
            r[0], r[1], r[2], r[3], r[4]
        ));
    }
    s
}
