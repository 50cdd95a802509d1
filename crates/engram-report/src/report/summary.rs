//! The paragraph at the top of a report, written from the numbers: per section, which
//! strategy wins on final accuracy, by how much, whether that beats the spread over seeds.

use super::rank::{Role, Row, Section};
use super::{ACC, FORGETTING, METRICS, MeanSpread};

/// The rule behind "larger than" and "within the spread", as the page states it.
pub const RULE: &str = "A margin is larger than the spread when the two mean ± s.d. intervals do not overlap (the margin exceeds the sum of the two standard deviations), within the spread when they do.";

fn pct(s: &MeanSpread) -> String {
    s.format_with(|v| METRICS[ACC].format(v))
}

fn points(d: f64) -> String {
    format!("{} points", METRICS[ACC].format(d.abs()))
}

/// How a margin of `a` over `b` compares with their spreads: larger when the mean ± s.d.
/// intervals do not overlap (the margin exceeds the sum of the two standard deviations),
/// "within the spread" when they do; no verdict without a spread on both sides. The page
/// states this rule under the summary ([`RULE`]).
pub fn margin_verdict(a: &MeanSpread, b: &MeanSpread) -> &'static str {
    match (a.spread, b.spread) {
        (Some(sa), Some(sb)) if a.mean - b.mean > sa + sb => "larger than the spread",
        (Some(_), Some(_)) => "within the spread",
        _ => "from single runs, with no spread over seeds to weigh it against",
    }
}

/// The whole paragraph: one passage per section.
pub fn summary(sections: &[Section]) -> String {
    if sections.is_empty() {
        return "No runs.".into();
    }
    sections
        .iter()
        .map(section_summary)
        .collect::<Vec<_>>()
        .join(" ")
}

fn seeds_text(s: &Section) -> String {
    match s.seed_range() {
        (1, 1) => "one seed".into(),
        (a, b) if a == b => format!("{a} seeds"),
        (a, b) => format!("{a} to {b} seeds"),
    }
}

/// The passage of one section.
pub fn section_summary(s: &Section) -> String {
    let acc = |r: &Row| r.stat(ACC);
    let shown = |r: &Row| acc(r).map(|a| METRICS[ACC].format(a.mean));
    let with: Vec<&Row> = s.ranked.iter().filter(|r| acc(r).is_some()).collect();
    let n = s.ranked.len();
    let mut names: Vec<&str> = s.ranked.iter().map(|r| r.group.strategy.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let m = names.len();
    let strategies = |k: usize| if k == 1 { "strategy" } else { "strategies" };
    let count = if m == n {
        format!("{n} {}", strategies(n))
    } else {
        format!("{n} settings of {m} {}", strategies(m))
    };
    let head = format!("On {} ({count}, {})", s.title(), seeds_text(s));
    let Some(&w) = with.first() else {
        return format!("{head}, no run reports a final accuracy.");
    };
    let wa = acc(w).expect("filtered");
    let tied: Vec<&Row> = with
        .iter()
        .copied()
        .filter(|r| shown(r) == shown(w))
        .collect();
    let mut out = if tied.len() > 1 {
        let names: Vec<String> = tied.iter().map(|r| r.group.prose()).collect();
        format!(
            "{head}, {} tie for the highest final accuracy (ACC {})",
            join_and(&names),
            pct(&wa)
        )
    } else if n == 1 {
        format!("{head}, {} reaches ACC {}", w.group.prose(), pct(&wa))
    } else {
        format!(
            "{head}, {} has the highest final accuracy, ACC {}",
            w.group.prose(),
            pct(&wa)
        )
    };
    let top = |r: &Row| tied.iter().any(|t| t.group == r.group);
    let runner = with.iter().copied().find(|r| !top(r));
    // Strategies tied with the runner-up are named with it.
    let with_runner: Vec<&Row> = runner.map_or_else(Vec::new, |ru| {
        with.iter()
            .copied()
            .filter(|r| shown(r) == shown(ru))
            .collect()
    });
    if let Some(ru) = runner {
        let ra = acc(ru).expect("filtered");
        let mut who = match ru.role {
            Role::Baseline => baseline_name(ru),
            _ => format!("the runner-up {}", ru.group.prose()),
        };
        if with_runner.len() > 1 {
            let others: Vec<String> = with_runner[1..]
                .iter()
                .map(|r| match r.role {
                    Role::Baseline => baseline_name(r),
                    _ => r.group.prose(),
                })
                .collect();
            who.push_str(&format!(" (tied with {})", join_and(&others)));
        }
        out.push_str(&format!(
            ", {} above {who} ({}), a margin {}",
            points(wa.mean - ra.mean),
            pct(&ra),
            margin_verdict(&wa, &ra)
        ));
    }
    let baseline = with.iter().copied().find(|r| r.role == Role::Baseline);
    match baseline {
        Some(b) if top(b) && n > 1 => out.push_str(&format!(
            "; {} (plain fine-tuning) is itself at the top: no strategy improves on it here",
            baseline_name(b)
        )),
        Some(b) if runner.is_some() && !with_runner.iter().any(|r| r.group == b.group) => {
            let ba = acc(b).expect("filtered");
            out.push_str(&format!(
                "; it is {} above {} ({}), {}",
                points(wa.mean - ba.mean),
                baseline_name(b),
                pct(&ba),
                margin_verdict(&wa, &ba)
            ));
        }
        _ => {}
    }
    out.push('.');
    if let Some(f) = forgetting(s, &tied) {
        out.push(' ');
        out.push_str(&f);
    }
    for r in &s.references {
        if let Some(ra) = acc(r) {
            let d = ra.mean - wa.mean;
            out.push_str(&format!(
                " The {} upper bound{} (trained on every task's data) reaches ACC {}, {} {} the best strategy.",
                r.group.strategy,
                r.group.with_settings(),
                pct(&ra),
                points(d),
                if d >= 0.0 { "above" } else { "below" }
            ));
        }
    }
    out
}

/// Who forgets least, when it is not the accuracy winner (and the winner's own forgetting).
fn forgetting(s: &Section, top: &[&Row]) -> Option<String> {
    let marks = s.best(FORGETTING);
    let least: Vec<&Row> = s
        .ranked
        .iter()
        .zip(&marks)
        .filter(|(_, m)| **m)
        .map(|(r, _)| r)
        .collect();
    let f = |r: &Row| r.stat(FORGETTING).map(|m| pct(&m));
    let is_top = |r: &Row| top.iter().any(|t| t.group == r.group);
    let first = least.first()?;
    if least.iter().any(|r| is_top(r)) {
        let w = least.iter().find(|r| is_top(r))?;
        return Some(format!(
            "{} also forgets least (forgetting {}).",
            w.group.prose(),
            f(w)?
        ));
    }
    let names: Vec<String> = least.iter().map(|r| r.group.prose()).collect();
    let verb = if least.len() > 1 {
        "forget least"
    } else {
        "forgets least"
    };
    let winner = top.first()?;
    let against = f(winner)
        .map(|w| format!(", against {w} for {}", winner.group.prose()))
        .unwrap_or_default();
    // Another lambda of the winner's own strategy is another setting, not another strategy.
    let other = if least
        .iter()
        .all(|r| r.group.strategy == winner.group.strategy)
    {
        "setting"
    } else {
        "strategy"
    };
    Some(format!(
        "On forgetting another {other} wins: {} {verb} (forgetting {}{against}).",
        join_and(&names),
        f(first)?
    ))
}

/// `the naive baseline`, or `the naive baseline with lr = 0.1`.
fn baseline_name(r: &Row) -> String {
    format!(
        "the {} baseline{}",
        r.group.strategy,
        r.group.with_settings()
    )
}

pub(super) fn join_and(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [a] => a.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::rank::sections;
    use super::*;
    use crate::results::{RunResults, RunSummary};

    fn run(strategy: &str, seed: u64, acc: f64, forgetting: f64) -> RunResults {
        RunResults {
            name: String::new(),
            strategy: strategy.into(),
            scenario: "split".into(),
            eval_mode: "class-il".into(),
            seed,
            tasks: Vec::new(),
            accuracy: vec![vec![50.0]],
            task_il_accuracy: None,
            baseline: None,
            summary: RunSummary {
                acc: Some(acc),
                forgetting: Some(forgetting),
                ..Default::default()
            },
            all_class_curve: None,
            ece_curve: None,
            ece_matrix: None,
            notes: Vec::new(),
            params: serde_json::Value::Null,
        }
    }

    fn text(results: &[RunResults]) -> String {
        summary(&sections(results))
    }

    #[test]
    fn a_clear_winner_is_named_with_its_margins() {
        // er: 80, 82 (mean 81, s.d. 1.41); ewc: 60, 62 (61 ± 1.41); naive: 20, 22.
        let t = text(&[
            run("er", 0, 80.0, 10.0),
            run("er", 1, 82.0, 12.0),
            run("ewc", 0, 60.0, 5.0),
            run("ewc", 1, 62.0, 7.0),
            run("naive", 0, 20.0, 70.0),
            run("naive", 1, 22.0, 72.0),
        ]);
        assert!(
            t.starts_with(
                "On split, class-il (3 strategies, 2 seeds), er has the highest final accuracy, ACC 81.00 ± 1.41, 20.00 points above the runner-up ewc (61.00 ± 1.41), a margin larger than the spread;"
            ),
            "{t}"
        );
        assert!(
            t.contains("; it is 60.00 points above the naive baseline (21.00 ± 1.41), larger than the spread"),
            "{t}"
        );
        // ewc forgets less (6 against 11): a different winner on forgetting.
        assert!(
            t.contains(
                "On forgetting another strategy wins: ewc forgets least (forgetting 6.00 ± 1.41, against 11.00 ± 1.41 for er)."
            ),
            "{t}"
        );
    }

    #[test]
    fn a_win_within_the_spread_says_so() {
        // a: 70, 80 (75 ± 7.07); b: 72, 76 (74 ± 2.83): 1 point apart, intervals overlap.
        let t = text(&[
            run("a", 0, 70.0, 5.0),
            run("a", 1, 80.0, 5.0),
            run("b", 0, 72.0, 9.0),
            run("b", 1, 76.0, 9.0),
        ]);
        assert!(
            t.contains("a has the highest final accuracy, ACC 75.00 ± 7.07, 1.00 points above the runner-up b (74.00 ± 2.83), a margin within the spread"),
            "{t}"
        );
        assert!(
            t.contains("a also forgets least (forgetting 5.00 ± 0.00)."),
            "{t}"
        );
        assert!(!t.contains("larger than"), "{t}");
    }

    #[test]
    fn single_seeds_ties_bounds_and_a_winning_baseline() {
        let t = text(&[
            run("naive", 0, 50.0, 40.0),
            run("ewc", 0, 40.0, 20.0),
            run("joint", 0, 90.0, 0.0),
        ]);
        assert!(
            t.contains("(2 strategies, one seed), naive has the highest"),
            "{t}"
        );
        assert!(
            t.contains("10.00 points above the runner-up ewc (40.00), a margin from single runs"),
            "{t}"
        );
        assert!(
            t.contains("the naive baseline (plain fine-tuning) is itself at the top"),
            "{t}"
        );
        assert!(
            t.contains("The joint upper bound (trained on every task's data) reaches ACC 90.00, 40.00 points above the best strategy."),
            "{t}"
        );
        let tie = text(&[run("x", 0, 50.0, 1.0), run("y", 0, 50.001, 1.0)]);
        assert!(
            tie.contains("y and x tie for the highest final accuracy (ACC 50.00)"),
            "{tie}"
        );
        // The baseline as runner-up is named as the baseline, once.
        let t = text(&[run("er", 0, 60.0, 1.0), run("naive", 0, 30.0, 2.0)]);
        assert!(
            t.contains("30.00 points above the naive baseline (30.00)"),
            "{t}"
        );
        assert_eq!(t.matches("baseline").count(), 1, "{t}");
        // Runners-up tied at the shown precision are named together; the baseline among
        // them gets no second margin.
        let t = text(&[
            run("ewc", 0, 26.0, 1.0),
            run("naive", 0, 16.667, 2.0),
            run("er", 0, 16.669, 2.0),
            run("lwf", 0, 16.668, 2.0),
        ]);
        assert!(
            t.contains("9.33 points above the runner-up er (tied with lwf and the naive baseline) (16.67), a margin from single runs"),
            "{t}"
        );
        assert!(!t.contains("it is"), "{t}");
    }
}
