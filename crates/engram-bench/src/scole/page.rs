//! The SCoLe study's report (card: /work/shared/methods/theory.md, "SCoLe"): the all-class
//! accuracy against t (log-x) per arm, per-class accuracy against draws, tables, verdicts.

use super::{ScoleResults, fmt_spread};
use engram_report::html::Page;
use engram_report::svg::{LineChart, Series, line_chart};

fn header() -> [&'static str; 6] {
    [
        "data set",
        "arm",
        "early (T/10..T/5)",
        "final (last T/10)",
        "slope / decade",
        "not-yet-drawn classes",
    ]
}

fn rows(r: &ScoleResults) -> Vec<Vec<String>> {
    r.summary
        .iter()
        .map(|s| {
            vec![
                s.dataset.clone(),
                s.arm.clone(),
                fmt_spread(&s.early),
                fmt_spread(&s.final_acc),
                fmt_spread(&s.slope_per_decade),
                s.not_yet_drawn_acc
                    .as_ref()
                    .map_or("-".into(), |v| format!("{:.1} ± {:.1}", v.mean, v.sd)),
            ]
        })
        .collect()
}

/// The HTML page.
pub fn render(r: &ScoleResults) -> String {
    let st = &r.settings;
    let mut p = Page::new("SCoLe: knowledge accumulation over a long stream");
    p.para(&format!(
        "Card: shared/methods/theory.md, SCoLe. Stream of T = {} tasks of K = {} classes drawn \
         uniformly (classes recur), {} training examples per task, 1 epoch per task, batch {}, \
         SGD lr {}, gradient-norm clipping {}, MLP {:?}; all-class test accuracy over \
         {} test examples per class after every task (classes not drawn yet included). \
         Seeds {:?}. Accuracies in percent: mean ± sd over seeds [min, max]. {:.0} s.",
        st.tasks,
        st.classes_per_task,
        st.train_per_task,
        st.batch_size,
        st.lr,
        st.clip_grad_norm,
        st.hidden,
        st.test_per_class,
        st.seeds,
        r.seconds
    ));
    p.heading("Verdicts");
    let vrows: Vec<Vec<String>> = r
        .verdicts
        .iter()
        .map(|v| {
            vec![
                v.dataset.clone(),
                v.claim.clone(),
                v.verdict.clone(),
                v.evidence.clone(),
            ]
        })
        .collect();
    p.table(&["data set", "claim", "verdict", "evidence"], &vrows);
    p.heading("Summary");
    p.table(&header(), &rows(r));
    for d in &st.datasets {
        p.heading(&format!("{d}: all-class accuracy against t"));
        let series: Vec<Series> = r
            .summary
            .iter()
            .filter(|s| &s.dataset == d)
            .map(|s| Series {
                label: s.arm.clone(),
                points: s
                    .mean_curve
                    .iter()
                    .enumerate()
                    .map(|(i, &y)| ((i + 1) as f64, y))
                    .collect(),
            })
            .collect();
        let by_draws: Vec<Series> = r
            .summary
            .iter()
            .filter(|s| &s.dataset == d)
            .map(|s| Series {
                label: s.arm.clone(),
                points: s.by_draws.iter().map(|b| (b.0 as f64, b.1)).collect(),
            })
            .collect();
        p.svg_row(&[
            line_chart(
                &LineChart {
                    title: format!("{d}: all-class accuracy (mean over seeds)"),
                    x_label: "task t".into(),
                    y_label: "accuracy on all classes (%)".into(),
                    log_x: true,
                    y_range: Some((0.0, 100.0)),
                    integer_x: true,
                },
                &series,
            ),
            line_chart(
                &LineChart {
                    title: format!("{d}: per-class accuracy by times drawn"),
                    x_label: "times the class was drawn (bin start)".into(),
                    y_label: "class accuracy (%)".into(),
                    log_x: true,
                    y_range: Some((0.0, 100.0)),
                    integer_x: true,
                },
                &by_draws,
            ),
        ]);
    }
    p.note(
        "Early and final are means of the all-class accuracy over tasks (T/10, T/5] and the \
         last T/10 tasks; the slope is the least-squares slope of the all-class accuracy \
         against log10 t for t ≥ 10. Per-class accuracies are pooled over log-spaced tasks, \
         classes and seeds.",
    );
    p.render()
}

/// The summary as text, for the terminal.
pub fn text(r: &ScoleResults) -> String {
    let mut s = String::new();
    for row in rows(r) {
        s.push_str(&format!(
            "{:<14} {:<38} early {:<28} final {:<28} slope {:<26} not-yet {}\n",
            row[0], row[1], row[2], row[3], row[4], row[5]
        ));
    }
    for v in &r.verdicts {
        s.push_str(&format!(
            "{}: {} — {}\n  {}\n",
            v.dataset, v.claim, v.verdict, v.evidence
        ));
    }
    s
}
