//! The report's results tables: runs cut into sections (one per scenario and evaluation
//! mode), strategies ranked by final accuracy, and the best value of each column marked.

use super::{ACC, Better, METRICS, MeanSpread, RunGroup, cmp_groups, group_runs};
use crate::results::RunResults;

/// What a strategy is to the comparison: a contender, the fine-tuning baseline (the lower
/// bound every method should beat) or joint training (the upper bound, which sees every
/// task's data and so is not a continual learner: listed, not ranked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Strategy,
    Baseline,
    UpperBound,
}

impl Role {
    pub fn of(strategy: &str) -> Role {
        match strategy.to_ascii_lowercase().as_str() {
            "naive" | "finetune" | "fine-tune" | "fine_tune" => Role::Baseline,
            "joint" => Role::UpperBound,
            _ => Role::Strategy,
        }
    }
}

/// One group of a section (a strategy with one setting): its runs (seeds) and the mean ± spread of every metric.
#[derive(Debug, Clone)]
pub struct Row {
    pub group: RunGroup,
    pub role: Role,
    /// Distinct seeds.
    pub seeds: usize,
    /// One entry per [`METRICS`] metric; `None` where no run reports it.
    pub stats: Vec<Option<MeanSpread>>,
    /// Rank by final accuracy from 1 (equal accuracies at the shown precision share one);
    /// `None` for the upper bound and for a strategy without a final accuracy.
    pub rank: Option<usize>,
}

impl Row {
    /// The strategy's name, with its role when it is a bound.
    pub fn label(&self) -> String {
        match self.role {
            Role::Strategy => self.group.label(),
            Role::Baseline => self.with_role("baseline"),
            Role::UpperBound => self.with_role("upper bound"),
        }
    }

    /// `naive (baseline)`, or `naive (baseline; lr = 0.1)` when settings tell it apart.
    fn with_role(&self, role: &str) -> String {
        let settings = self.group.settings_text();
        if settings.is_empty() {
            format!("{} ({role})", self.group.strategy)
        } else {
            format!("{} ({role}; {settings})", self.group.strategy)
        }
    }

    pub fn stat(&self, metric: usize) -> Option<MeanSpread> {
        self.stats.get(metric).copied().flatten()
    }
}

/// The strategies run on one scenario in one evaluation mode (accuracies in different modes
/// do not compare).
#[derive(Debug, Clone)]
pub struct Section {
    pub scenario: String,
    pub eval_mode: String,
    /// Ranked by final accuracy, highest first; strategies without one last, by name.
    pub ranked: Vec<Row>,
    /// The upper bound (joint training), outside the ranking.
    pub references: Vec<Row>,
}

impl Section {
    pub fn title(&self) -> String {
        let scenario = if self.scenario.is_empty() {
            "–"
        } else {
            &self.scenario
        };
        if self.eval_mode.is_empty() {
            scenario.to_string()
        } else {
            format!("{scenario}, {}", self.eval_mode)
        }
    }

    /// Every row: the ranking, then the references.
    pub fn rows(&self) -> impl Iterator<Item = &Row> {
        self.ranked.iter().chain(&self.references)
    }

    /// Whether any row reports `metric`.
    pub fn has(&self, metric: usize) -> bool {
        self.rows().any(|r| r.stat(metric).is_some())
    }

    /// The seed counts of the rows, smallest and largest.
    pub fn seed_range(&self) -> (usize, usize) {
        let s: Vec<usize> = self.rows().map(|r| r.seeds).collect();
        let (lo, hi) = (s.iter().min(), s.iter().max());
        (lo.copied().unwrap_or(0), hi.copied().unwrap_or(0))
    }

    /// Which ranked rows hold the best value of `metric` (see [`best_of`]).
    pub fn best(&self, metric: usize) -> Vec<bool> {
        let m = &METRICS[metric];
        let means: Vec<Option<f64>> = self
            .ranked
            .iter()
            .map(|r| r.stat(metric).map(|s| s.mean))
            .collect();
        best_of(&means, m.better, |v| m.format(v))
    }
}

/// The sections of a report, in the order their scenarios (then modes) first appear in
/// `results`: the order the caller ran them in (the demo: class-incremental, then permuted),
/// stable for the same input.
pub fn sections(results: &[RunResults]) -> Vec<Section> {
    let mut order: Vec<(&str, &str)> = Vec::new();
    for r in results {
        let key = (r.scenario.as_str(), r.eval_mode.as_str());
        if !order.contains(&key) {
            order.push(key);
        }
    }
    // Scenarios together, each scenario's modes in order of appearance.
    let first = |s: &str| order.iter().position(|k| k.0 == s).unwrap_or(0);
    let mut keyed: Vec<(usize, usize, (&str, &str))> = order
        .iter()
        .enumerate()
        .map(|(i, k)| (first(k.0), i, *k))
        .collect();
    keyed.sort();
    let groups = group_runs(results);
    keyed
        .into_iter()
        .map(|(_, _, (scenario, mode))| {
            let rows: Vec<Row> = groups
                .iter()
                .filter(|g| g.scenario == scenario && g.eval_mode == mode)
                .map(|g| row(g.clone(), results))
                .collect();
            let (references, contenders): (Vec<Row>, Vec<Row>) =
                rows.into_iter().partition(|r| r.role == Role::UpperBound);
            Section {
                scenario: scenario.to_string(),
                eval_mode: mode.to_string(),
                ranked: rank(contenders),
                references,
            }
        })
        .collect()
}

fn row(group: RunGroup, results: &[RunResults]) -> Row {
    Row {
        role: Role::of(&group.strategy),
        seeds: group.seeds(results),
        stats: METRICS.iter().map(|m| group.stat(results, m.get)).collect(),
        rank: None,
        group,
    }
}

/// Sorts rows by final accuracy (highest first; none last; equal ones by name) and numbers
/// them; rows whose accuracies print the same share a rank ("1, 2, 2, 4").
pub fn rank(mut rows: Vec<Row>) -> Vec<Row> {
    let acc = |r: &Row| r.stat(ACC).map(|s| s.mean);
    rows.sort_by(|a, b| match (acc(a), acc(b)) {
        (Some(x), Some(y)) => y.total_cmp(&x).then_with(|| cmp_groups(&a.group, &b.group)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => cmp_groups(&a.group, &b.group),
    });
    let shown = |r: &Row| acc(r).map(|v| METRICS[ACC].format(v));
    for i in 0..rows.len() {
        rows[i].rank = match shown(&rows[i]) {
            None => None,
            Some(s) if i > 0 && shown(&rows[i - 1]).as_ref() == Some(&s) => rows[i - 1].rank,
            Some(_) => Some(i + 1),
        };
    }
    rows
}

/// Which of `values` are the best: the highest (or lowest, by `better`), and every value that
/// prints the same under `format` (a tie as the reader sees it). Nothing is marked when fewer
/// than two values are present, or when every present value ties (no one is better).
pub fn best_of(
    values: &[Option<f64>],
    better: Better,
    format: impl Fn(f64) -> String,
) -> Vec<bool> {
    let present: Vec<f64> = values.iter().flatten().copied().collect();
    let none = vec![false; values.len()];
    if present.len() < 2 {
        return none;
    }
    let best = match better {
        Better::Higher => present.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        Better::Lower => present.iter().copied().fold(f64::INFINITY, f64::min),
    };
    let shown = format(best);
    let marks: Vec<bool> = values
        .iter()
        .map(|v| v.is_some_and(|v| format(v) == shown))
        .collect();
    if marks.iter().filter(|&&m| m).count() == present.len() {
        return none;
    }
    marks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{FORGETTING, TIME};
    use crate::results::RunSummary;

    fn run(strategy: &str, scenario: &str, seed: u64, acc: Option<f64>) -> RunResults {
        RunResults {
            name: String::new(),
            strategy: strategy.into(),
            scenario: scenario.into(),
            eval_mode: "class-il".into(),
            seed,
            tasks: Vec::new(),
            accuracy: vec![vec![50.0]],
            task_il_accuracy: None,
            baseline: None,
            summary: RunSummary {
                acc,
                ..Default::default()
            },
            all_class_curve: None,
            ece_curve: None,
            ece_matrix: None,
            notes: Vec::new(),
            params: serde_json::Value::Null,
        }
    }

    #[test]
    fn strategies_rank_by_final_accuracy_with_shared_ranks() {
        let results = vec![
            run("b", "split", 0, Some(60.0)),
            run("a", "split", 0, Some(70.0)),
            run("c", "split", 0, Some(60.001)),
            run("d", "split", 0, None),
            run("joint", "split", 0, Some(99.0)),
            run("naive", "split", 0, Some(20.0)),
            run("a", "split", 1, Some(80.0)),
        ];
        let s = sections(&results);
        assert_eq!(s.len(), 1);
        let order: Vec<(&str, Option<usize>)> = s[0]
            .ranked
            .iter()
            .map(|r| (r.group.strategy.as_str(), r.rank))
            .collect();
        // a: mean 75; c (60.001) and b print as 60.00: a shared rank 2; d has no ACC, last.
        assert_eq!(
            order,
            vec![
                ("a", Some(1)),
                ("c", Some(2)),
                ("b", Some(2)),
                ("naive", Some(4)),
                ("d", None)
            ]
        );
        assert_eq!(s[0].ranked[0].seeds, 2);
        // Joint training is the upper bound: listed apart, unranked, whatever its accuracy.
        assert_eq!(s[0].references.len(), 1);
        assert_eq!(s[0].references[0].label(), "joint (upper bound)");
        assert_eq!(s[0].ranked[3].label(), "naive (baseline)");
    }

    #[test]
    fn sections_follow_the_input_order_of_scenarios_and_modes() {
        let mut results = vec![
            run("a", "permuted", 0, Some(1.0)),
            run("a", "class-inc", 0, Some(1.0)),
            run("a", "permuted", 1, Some(1.0)),
        ];
        results[2].eval_mode = "task-il".into();
        results.push(run("b", "class-inc", 0, Some(2.0)));
        let titles: Vec<String> = sections(&results).iter().map(Section::title).collect();
        assert_eq!(
            titles,
            [
                "permuted, class-il",
                "permuted, task-il",
                "class-inc, class-il"
            ]
        );
    }

    #[test]
    fn best_respects_direction_and_marks_ties() {
        let f = |v: f64| format!("{v:.2}");
        let v = [Some(10.0), Some(30.0), None, Some(30.001), Some(5.0)];
        assert_eq!(
            best_of(&v, Better::Higher, f),
            [false, true, false, true, false]
        );
        assert_eq!(
            best_of(&v, Better::Lower, f),
            [false, false, false, false, true]
        );
        // Negative values: BWT −2 beats −10 (higher is better).
        assert_eq!(
            best_of(&[Some(-10.0), Some(-2.0)], Better::Higher, f),
            [false, true]
        );
        // One value, or all equal: no one is best.
        assert_eq!(
            best_of(&[Some(1.0), None], Better::Higher, f),
            [false, false]
        );
        assert_eq!(
            best_of(&[Some(1.0), Some(1.0)], Better::Lower, f),
            [false, false]
        );
    }

    #[test]
    fn sections_mark_by_each_metrics_direction() {
        let mut results = vec![
            run("a", "s", 0, Some(70.0)),
            run("b", "s", 0, Some(60.0)),
            run("joint", "s", 0, Some(90.0)),
        ];
        results[0].summary.forgetting = Some(30.0);
        results[1].summary.forgetting = Some(10.0);
        results[2].summary.forgetting = Some(0.0);
        results[0].summary.time_total_s = Some(2.0);
        results[1].summary.time_total_s = Some(1.0);
        let s = &sections(&results)[0];
        assert_eq!(s.best(ACC), [true, false]);
        // Lower is better; the upper bound's 0 takes no part.
        assert_eq!(s.best(FORGETTING), [false, true]);
        assert_eq!(s.best(TIME), [false, true]);
    }
}
