//! The report's figures: per section, bars of the strategies' accuracies and forgetting; per
//! run, its accuracy matrices (heatmaps) and curves along the task sequence.

use super::rank::Section;
use super::{ACC, AIA, BWT, FORGETTING, MAX_DRAWN_TASKS, MeanSpread};
use crate::html::Page;
use crate::results::RunResults;
use crate::svg::{LineChart, Series, accuracy_heatmap, grouped_bar_chart, line_chart};

/// Per-task accuracy curves from an accuracy matrix: task i from the step it was trained on.
fn task_series(r: &RunResults) -> Vec<Series> {
    let labels = r.task_labels();
    (0..r.num_tasks())
        .map(|i| Series {
            label: format!("task {}", labels[i]),
            points: (i..r.num_tasks())
                .filter_map(|k| r.accuracy.get(k)?.get(i).map(|&v| ((k + 1) as f64, v)))
                .collect(),
        })
        .collect()
}

/// The section's grouped bar charts (rows in table order): forgetting and BWT, ACC and AIA.
/// Empty when no strategy reports them.
pub fn section_bars(s: &Section) -> Vec<String> {
    let names: Vec<String> = s.rows().map(|r| r.group.label()).collect();
    let chart = |metrics: [usize; 2]| {
        let stats: Vec<[Option<MeanSpread>; 2]> =
            s.rows().map(|r| metrics.map(|m| r.stat(m))).collect();
        let values: Vec<Vec<Option<f64>>> = stats
            .iter()
            .map(|s| s.iter().map(|x| x.map(|x| x.mean)).collect())
            .collect();
        let errors: Vec<Vec<Option<f64>>> = stats
            .iter()
            .map(|s| s.iter().map(|x| x.and_then(|x| x.spread)).collect())
            .collect();
        let any = values.iter().flatten().any(|v| v.is_some());
        (values, errors, any)
    };
    let mut figs = Vec::new();
    let (av, ae, any_a) = chart([ACC, AIA]);
    if any_a {
        figs.push(grouped_bar_chart(
            "Final and average incremental accuracy",
            &names,
            &["ACC".to_string(), "AIA".to_string()],
            &av,
            Some(&ae),
            "accuracy (%)",
        ));
    }
    let (fv, fe, any_f) = chart([FORGETTING, BWT]);
    if any_f {
        figs.push(grouped_bar_chart(
            "Forgetting and backward transfer per strategy",
            &names,
            &["Forgetting F".to_string(), "BWT".to_string()],
            &fv,
            Some(&fe),
            "percentage points",
        ));
    }
    figs
}

fn dash(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "–".into())
}

/// One run's heading, metrics line, and figures: the accuracy matrix (and the Task-IL and
/// ECE matrices when measured), per-task curves, the all-class and calibration curves.
/// `label` names the run's group (`ewc (lambda = 100)`).
pub fn run_figures(page: &mut Page, r: &RunResults, label: &str) {
    page.minor_heading(&format!("{label}, seed {}", r.seed));
    let s = &r.summary;
    page.note(&format!(
        "{}: ACC {} · AIA {} · forgetting {} · BWT {} · FWT {} · min {} · ECE {} · {} tasks",
        r.display_name(),
        dash(s.acc),
        dash(s.aia),
        dash(s.forgetting),
        dash(s.bwt),
        dash(s.fwt),
        dash(s.min_accuracy),
        dash(s.ece),
        r.sequence_len()
    ));
    let labels = r.task_labels();
    let mut figs = Vec::new();
    let drawn = r.num_tasks() <= MAX_DRAWN_TASKS;
    if !drawn {
        page.note(&format!(
            "{} tasks: the accuracy matrices ({} cells) and per-task curves are not drawn (at most {MAX_DRAWN_TASKS} tasks); they are in results.json",
            r.num_tasks(),
            r.num_tasks() * r.num_tasks()
        ));
    }
    if r.num_tasks() > 0 && drawn {
        figs.push(accuracy_heatmap(
            &format!("Accuracy matrix ({})", r.eval_mode),
            &labels,
            &r.accuracy,
        ));
        figs.push(line_chart(
            &LineChart {
                title: "Accuracy of each task along the sequence".into(),
                x_label: "tasks trained".into(),
                y_label: "accuracy (%)".into(),
                y_range: Some((0.0, 100.0)),
                integer_x: true,
                log_x: false,
            },
            &task_series(r),
        ));
    }
    if let Some(m) = r
        .task_il_accuracy
        .as_ref()
        .filter(|m| !m.is_empty() && drawn)
    {
        let til_labels = if m.len() == labels.len() {
            labels.clone()
        } else {
            (1..=m.len()).map(|i| i.to_string()).collect()
        };
        figs.push(accuracy_heatmap(
            "Accuracy matrix (task-il)",
            &til_labels,
            m,
        ));
    }
    if let Some(c) = &r.all_class_curve {
        figs.push(line_chart(
            &LineChart {
                title: "Accuracy on all classes along the stream".into(),
                x_label: "evaluation".into(),
                y_label: "accuracy (%)".into(),
                y_range: Some((0.0, 100.0)),
                integer_x: true,
                log_x: false,
            },
            &[Series {
                label: "all classes".into(),
                points: c
                    .iter()
                    .enumerate()
                    .map(|(j, &v)| ((j + 1) as f64, v))
                    .collect(),
            }],
        ));
    }
    if let Some(m) = r
        .ece_matrix
        .as_ref()
        .filter(|m| !m.is_empty() && m.len() == labels.len() && drawn)
    {
        figs.push(accuracy_heatmap(
            "ECE matrix (%, task after which × task scored)",
            &labels,
            m,
        ));
    }
    if let Some(c) = r.ece_curve.as_ref().filter(|c| c.len() > 1) {
        figs.push(line_chart(
            &LineChart {
                title: "Calibration after each task (ECE over the tasks seen)".into(),
                x_label: "tasks trained".into(),
                y_label: "ECE (%)".into(),
                y_range: None,
                integer_x: true,
                log_x: c.len() > MAX_DRAWN_TASKS,
            },
            &[Series {
                label: "ECE".into(),
                points: c
                    .iter()
                    .enumerate()
                    .map(|(j, &v)| ((j + 1) as f64, v))
                    .collect(),
            }],
        ));
    }
    page.svg_row(&figs);
}
