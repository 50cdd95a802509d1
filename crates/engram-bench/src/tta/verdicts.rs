//! The card's "Reproduced if" criteria for continual test-time adaptation
//! (/work/shared/methods/test_time.md, CoTTA), judged from the runs.
//!
//! A claim **holds** when it holds in every seed *and* its paired difference lies outside the
//! seeds' spread (the mean difference exceeds the sample sd of the per-seed differences; with
//! one seed there is no spread to compare, which the evidence says). It **does not hold**
//! when no seed shows it, is **mixed** when seeds disagree, **within the spread** when every
//! seed shows it but the difference does not clear its sd, and **not run** when an arm or
//! enough rounds are missing (TENT's rise and CoTTA's stability need 2 rounds, the late
//! rounds of the restore ablation 4).

use super::{RunResult, Spread, Verdict, fmt, spread};

fn judge(ok: usize, n: usize, outside: bool) -> &'static str {
    if n == 0 {
        "not run"
    } else if ok == 0 {
        "does not hold"
    } else if ok < n {
        "mixed"
    } else if !outside {
        "within the spread"
    } else {
        "holds"
    }
}

/// Whether the paired differences `d` lie outside their spread, and the words for it.
fn outside(d: &Spread, n: usize) -> (bool, String) {
    if n < 2 {
        return (true, "one seed: no spread to compare".into());
    }
    let out = d.mean.abs() > d.sd;
    (
        out,
        format!(
            "paired difference {:+.2} against its sd {:.2}: {}",
            d.mean,
            d.sd,
            if out {
                "outside the spread"
            } else {
                "within the spread"
            }
        ),
    )
}

fn not_run(claim: &str, why: &str) -> Verdict {
    Verdict {
        claim: claim.into(),
        verdict: "not run".into(),
        evidence: why.into(),
    }
}

/// The card's criteria, judged seed by seed; `rounds` is the iid stream's.
pub fn verdicts(runs: &[RunResult], seeds: &[u64], rounds: usize) -> Vec<Verdict> {
    let get = |stream: &str, arm: &str, seed: u64| {
        runs.iter()
            .find(|r| r.stream == stream && r.arm == arm && r.seed == seed)
    };
    let per_seed = |arms: &[&str], stream: &str| -> Vec<Vec<&RunResult>> {
        seeds
            .iter()
            .filter_map(|&s| arms.iter().map(|a| get(stream, a, s)).collect())
            .collect()
    };
    let first = |r: &RunResult| r.round_means.first().copied().unwrap_or(f64::NAN);
    let last = |r: &RunResult| r.round_means.last().copied().unwrap_or(f64::NAN);
    let late = |r: &RunResult| {
        let k = r.round_means.len().clamp(1, 3);
        let tail = &r.round_means[r.round_means.len().saturating_sub(k)..];
        tail.iter().sum::<f64>() / tail.len().max(1) as f64
    };
    let mut out = Vec::new();

    // 1. Round-1 ordering and CoTTA's margin over BN-adapt.
    let claim = "round 1: Source > BN-adapt ≥ TENT > CoTTA in mean error, CoTTA at least 10 % \
                 below BN-adapt (paper 16.2 vs 20.4 on CIFAR10-C)";
    let sets = per_seed(&["source", "bn-adapt", "tent", "cotta"], "iid");
    if sets.is_empty() {
        out.push(not_run(
            claim,
            "needs the source, bn-adapt, tent and cotta arms",
        ));
    } else {
        let ok = sets
            .iter()
            .filter(|v| {
                let [s, b, t, c] = [first(v[0]), first(v[1]), first(v[2]), first(v[3])];
                s > b && b >= t && t > c && (b - c) / b >= 0.10
            })
            .count();
        let m = |i: usize| spread(&sets.iter().map(|v| first(v[i])).collect::<Vec<_>>());
        let gap = spread(
            &sets
                .iter()
                .map(|v| first(v[1]) - first(v[3]))
                .collect::<Vec<_>>(),
        );
        let rel = spread(
            &sets
                .iter()
                .map(|v| 100.0 * (first(v[1]) - first(v[3])) / first(v[1]))
                .collect::<Vec<_>>(),
        );
        let (o, words) = outside(&gap, sets.len());
        out.push(Verdict {
            claim: claim.into(),
            verdict: judge(ok, sets.len(), o).into(),
            evidence: format!(
                "{ok}/{} seeds. Round-1 error: Source {}, BN-adapt {}, TENT {}, CoTTA {}; CoTTA \
                 below BN-adapt by {:.1} % (seeds {:.1} .. {:.1}); BN-adapt − CoTTA: {words}",
                sets.len(),
                fmt(&m(0)),
                fmt(&m(1)),
                fmt(&m(2)),
                fmt(&m(3)),
                rel.mean,
                rel.min,
                rel.max
            ),
        });
    }

    // 2. TENT rises by at least 2 points over the rounds.
    let claim = "TENT's per-round error rises by at least 2 points from round 1 to the last";
    let sets = per_seed(&["tent"], "iid");
    if rounds < 2 || sets.is_empty() {
        out.push(not_run(claim, "needs the tent arm and at least 2 rounds"));
    } else {
        let rise: Vec<f64> = sets.iter().map(|v| last(v[0]) - first(v[0])).collect();
        let ok = rise.iter().filter(|&&d| d >= 2.0).count();
        let sp = spread(&rise);
        let (o, words) = outside(&sp, sets.len());
        out.push(Verdict {
            claim: claim.into(),
            verdict: judge(ok, sets.len(), o).into(),
            evidence: format!(
                "{ok}/{} seeds; last − first round: {:+.1} ± {:.1} (seeds {:+.1} .. {:+.1}); {words}",
                sets.len(),
                sp.mean,
                sp.sd,
                sp.min,
                sp.max
            ),
        });
    }

    // 3. CoTTA stays within ±1 point of round 1 in every round.
    let claim = "CoTTA's per-round error stays within ±1 point of round 1";
    let sets = per_seed(&["cotta"], "iid");
    if rounds < 2 || sets.is_empty() {
        out.push(not_run(claim, "needs the cotta arm and at least 2 rounds"));
    } else {
        let dev: Vec<f64> = sets
            .iter()
            .map(|v| {
                let f = first(v[0]);
                v[0].round_means
                    .iter()
                    .map(|r| (r - f).abs())
                    .fold(0.0, f64::max)
            })
            .collect();
        let ok = dev.iter().filter(|&&d| d <= 1.0).count();
        let sp = spread(&dev);
        out.push(Verdict {
            claim: claim.into(),
            verdict: judge(ok, sets.len(), true).into(),
            evidence: format!(
                "{ok}/{} seeds; largest deviation from round 1: {:.1} ± {:.1} (max {:.1})",
                sets.len(),
                sp.mean,
                sp.sd,
                sp.max
            ),
        });
    }

    // 4. Without restore the late rounds are worse.
    let claim = "without restore the late rounds (last 3) are worse than full CoTTA";
    let sets = per_seed(&["cotta", "cotta, no restore"], "iid");
    if rounds < 4 || sets.is_empty() {
        out.push(not_run(
            claim,
            "needs the cotta and \"cotta, no restore\" arms and at least 4 rounds",
        ));
    } else {
        let diff: Vec<f64> = sets.iter().map(|v| late(v[1]) - late(v[0])).collect();
        let ok = diff.iter().filter(|&&d| d > 0.0).count();
        let sp = spread(&diff);
        let (o, words) = outside(&sp, sets.len());
        out.push(Verdict {
            claim: claim.into(),
            verdict: judge(ok, sets.len(), o).into(),
            evidence: format!(
                "{ok}/{} seeds; no restore − CoTTA, late rounds: {:+.2} ± {:.2} (seeds {:+.2} .. \
                 {:+.2}); {words}",
                sets.len(),
                sp.mean,
                sp.sd,
                sp.min,
                sp.max
            ),
        });
    }

    // 5. The class-sorted control: CoTTA is expected to collapse (a known limitation).
    let claim = "limitation: on the class-sorted stream CoTTA ends worse than the source \
                 (re-run on CIFAR10-C: 44.5 vs 32.7)";
    let sets = per_seed(&["source", "cotta"], "class-sorted");
    if sets.is_empty() {
        out.push(not_run(claim, "needs the class-sorted control"));
    } else {
        let mean_err = |r: &RunResult| r.errors.iter().sum::<f64>() / r.errors.len().max(1) as f64;
        let d: Vec<f64> = sets
            .iter()
            .map(|v| mean_err(v[1]) - mean_err(v[0]))
            .collect();
        let ok = d.iter().filter(|&&x| x > 0.0).count();
        let (s, c) = (
            spread(&sets.iter().map(|v| mean_err(v[0])).collect::<Vec<_>>()),
            spread(&sets.iter().map(|v| mean_err(v[1])).collect::<Vec<_>>()),
        );
        let (o, words) = outside(&spread(&d), sets.len());
        out.push(Verdict {
            claim: claim.into(),
            verdict: judge(ok, sets.len(), o).into(),
            evidence: format!(
                "{ok}/{} seeds; mean error Source {}, CoTTA {}; CoTTA − Source: {words}",
                sets.len(),
                fmt(&s),
                fmt(&c)
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn run(stream: &str, arm: &str, seed: u64, rounds: &[f64]) -> RunResult {
        RunResult {
            stream: stream.into(),
            arm: arm.into(),
            seed,
            errors: rounds.to_vec(),
            round_means: rounds.to_vec(),
            stats: Value::Null,
            seconds: 0.0,
        }
    }

    fn four(v: [f64; 2]) -> [f64; 4] {
        [v[0], v[0], v[1], v[1]]
    }

    #[test]
    fn verdicts_follow_the_numbers() {
        let mut runs = Vec::new();
        for seed in [0, 1, 2] {
            runs.push(run("iid", "source", seed, &four([40.0, 40.0])));
            runs.push(run("iid", "bn-adapt", seed, &four([20.0, 20.0])));
            runs.push(run("iid", "tent", seed, &four([19.0, 25.0 + seed as f64])));
            // Seed 1: CoTTA only 5 % below BN-adapt.
            let c = if seed == 1 { 19.0 } else { 16.0 };
            runs.push(run("iid", "cotta", seed, &four([c, c + 0.5])));
            // No restore: worse in every seed, by very different amounts.
            let w = if seed == 2 { 6.5 } else { 0.51 };
            runs.push(run("iid", "cotta, no restore", seed, &four([c, c + w])));
            runs.push(run("class-sorted", "source", seed, &[30.0]));
            runs.push(run("class-sorted", "cotta", seed, &[50.0 + seed as f64]));
        }
        let v = verdicts(&runs, &[0, 1, 2], 4);
        assert_eq!(v[0].verdict, "mixed", "{}", v[0].evidence);
        assert_eq!(v[1].verdict, "holds", "{}", v[1].evidence);
        assert_eq!(v[2].verdict, "holds");
        // Every seed worse without restore, by 0.007, 0.007 and 4: within the spread.
        assert_eq!(v[3].verdict, "within the spread", "{}", v[3].evidence);
        assert_eq!(v[4].verdict, "holds");
        // Too few rounds: TENT's rise, CoTTA's stability and the late rounds are not judged.
        let v = verdicts(&runs, &[0, 1, 2], 1);
        assert_eq!(
            [&v[1].verdict, &v[2].verdict, &v[3].verdict],
            ["not run"; 3]
        );
        let v = verdicts(&runs[..2], &[0, 1, 2], 4);
        assert_eq!(v[0].verdict, "not run");
    }
}
