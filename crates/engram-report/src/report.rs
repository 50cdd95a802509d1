//! Continual-learning run results → `index.html` (comparison table, forgetting charts,
//! accuracy heatmaps, per-task curves), `results.csv` (one row per run) and `results.json`
//! (the inputs). Every file is written to a temporary name in the destination folder and
//! renamed into place, so a killed run leaves the previous report whole.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::html::Page;
use crate::results::RunResults;
use crate::svg::{LineChart, Series, accuracy_heatmap, grouped_bar_chart, line_chart};

/// Mean and spread of one metric over the seeds of a group.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MeanSpread {
    pub mean: f64,
    /// Sample standard deviation (n − 1 in the denominator); `None` for a single value.
    pub spread: Option<f64>,
    /// How many values (runs that report the metric).
    pub n: usize,
}

impl MeanSpread {
    /// Mean ± sample standard deviation of the finite `values`; `None` if there are none.
    pub fn of(values: &[f64]) -> Option<MeanSpread> {
        let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        let n = v.len();
        if n == 0 {
            return None;
        }
        let mean = v.iter().sum::<f64>() / n as f64;
        let spread = (n > 1).then(|| {
            (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64).sqrt()
        });
        Some(MeanSpread { mean, spread, n })
    }

    /// `mean ± spread`, each formatted by `f`.
    pub fn format_with(&self, f: impl Fn(f64) -> String) -> String {
        match self.spread {
            Some(s) => format!("{} ± {}", f(self.mean), f(s)),
            None => f(self.mean),
        }
    }
}

/// The runs of one (scenario, strategy, evaluation mode): its seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct RunGroup {
    pub scenario: String,
    pub strategy: String,
    pub eval_mode: String,
    /// Indices into the results slice, in input order.
    pub runs: Vec<usize>,
}

impl RunGroup {
    /// Mean ± spread of `metric` over the group's runs that report it.
    pub fn stat(
        &self,
        results: &[RunResults],
        metric: impl Fn(&RunResults) -> Option<f64>,
    ) -> Option<MeanSpread> {
        let v: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|&i| results.get(i).and_then(&metric))
            .collect();
        MeanSpread::of(&v)
    }

    /// Distinct seeds in the group.
    pub fn seeds(&self, results: &[RunResults]) -> usize {
        let mut s: Vec<u64> = self
            .runs
            .iter()
            .filter_map(|&i| results.get(i).map(|r| r.seed))
            .collect();
        s.sort_unstable();
        s.dedup();
        s.len()
    }
}

/// Groups runs by (scenario, strategy, evaluation mode), sorted by that key.
pub fn group_runs(results: &[RunResults]) -> Vec<RunGroup> {
    let mut map: BTreeMap<(String, String, String), Vec<usize>> = BTreeMap::new();
    for (i, r) in results.iter().enumerate() {
        map.entry((r.scenario.clone(), r.strategy.clone(), r.eval_mode.clone()))
            .or_default()
            .push(i);
    }
    map.into_iter()
        .map(|((scenario, strategy, eval_mode), runs)| RunGroup {
            scenario,
            strategy,
            eval_mode,
            runs,
        })
        .collect()
}

type Metric = fn(&RunResults) -> Option<f64>;

/// The summary metrics shown in the table and the CSV: (CSV column, table header, getter).
const METRICS: [(&str, &str, Metric); 10] = [
    ("acc", "ACC", |r| r.summary.acc),
    ("aia", "AIA", |r| r.summary.aia),
    ("forgetting", "Forgetting", |r| r.summary.forgetting),
    ("bwt", "BWT", |r| r.summary.bwt),
    ("fwt", "FWT", |r| r.summary.fwt),
    ("min_accuracy", "Min acc.", |r| r.summary.min_accuracy),
    ("ece", "ECE", |r| r.summary.ece),
    ("time_total_s", "Time (s)", |r| r.summary.total_time_s()),
    ("peak_memory_bytes", "Peak memory", |r| {
        r.summary.peak_memory_bytes.map(|b| b as f64)
    }),
    ("state_bytes", "Strategy state", |r| {
        r.summary.state_bytes.map(|b| b as f64)
    }),
];

fn bytes_h(b: f64) -> String {
    let a = b.abs();
    if a >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else if a >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else if a >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

fn cell(column: &str, s: Option<MeanSpread>) -> String {
    let Some(s) = s else {
        return "–".into();
    };
    match column {
        "peak_memory_bytes" | "state_bytes" => s.format_with(bytes_h),
        "time_total_s" => s.format_with(|v| format!("{v:.1}")),
        _ => s.format_with(|v| format!("{v:.2}")),
    }
}

fn dash(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "–".into())
}

/// Longest task sequence whose accuracy matrices and per-task curves a page draws: the
/// matrix grows with the square of the tasks (a 1000-task run would make a page of hundreds
/// of megabytes).
pub const MAX_DRAWN_TASKS: usize = 100;

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

/// The HTML page of [`write_report`] (validated input assumed: see [`RunResults::validate`]).
pub fn render_index(results: &[RunResults]) -> String {
    let mut page = Page::new("engram: continual-learning results");
    let groups = group_runs(results);
    page.para(&format!(
        "{} run(s) in {} group(s) of (scenario, strategy, evaluation mode). Accuracies, forgetting, BWT, FWT and ECE in percent; several seeds show mean ± sample standard deviation. Formulas: methods/metrics.md. Data: results.json, results.csv.",
        results.len(),
        groups.len()
    ));
    page.heading("Comparison");
    let mut header = vec!["Strategy", "Scenario", "Mode", "Seeds"];
    header.extend(METRICS.iter().map(|m| m.1));
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            let mut row = vec![
                g.strategy.clone(),
                g.scenario.clone(),
                g.eval_mode.clone(),
                g.seeds(results).to_string(),
            ];
            row.extend(
                METRICS
                    .iter()
                    .map(|(col, _, f)| cell(col, g.stat(results, f))),
            );
            row
        })
        .collect();
    page.table_text_cols(&header, &rows, 3);

    let mut scenarios: Vec<&str> = groups.iter().map(|g| g.scenario.as_str()).collect();
    scenarios.dedup();
    for scenario in scenarios {
        let sg: Vec<&RunGroup> = groups.iter().filter(|g| g.scenario == scenario).collect();
        let modes = sg
            .iter()
            .map(|g| g.eval_mode.as_str())
            .collect::<std::collections::BTreeSet<_>>();
        let names: Vec<String> = sg
            .iter()
            .map(|g| {
                if modes.len() > 1 {
                    format!("{} ({})", g.strategy, g.eval_mode)
                } else {
                    g.strategy.clone()
                }
            })
            .collect();
        page.heading(&format!(
            "Scenario: {}",
            if scenario.is_empty() { "–" } else { scenario }
        ));
        let chart = |metrics: [Metric; 2]| {
            let stats: Vec<[Option<MeanSpread>; 2]> = sg
                .iter()
                .map(|g| metrics.map(|m| g.stat(results, m)))
                .collect();
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
        let (fv, fe, any_f) = chart([METRICS[2].2, METRICS[3].2]);
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
        let (av, ae, any_a) = chart([METRICS[0].2, METRICS[1].2]);
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
        if !any_f {
            page.note("Forgetting and BWT are undefined here (one task, or not reported).");
        }
        if let Some(n) = fwt_note(results, &sg) {
            page.note(&n);
        }
        page.svg_row(&figs);

        for g in &sg {
            for &i in &g.runs {
                let Some(r) = results.get(i) else { continue };
                page.subheading(&format!(
                    "{}: {}, {}, seed {}",
                    r.display_name(),
                    r.strategy,
                    r.eval_mode,
                    r.seed
                ));
                let s = &r.summary;
                page.note(&format!(
                    "ACC {} · AIA {} · forgetting {} · BWT {} · FWT {} · min {} · ECE {} · {} tasks",
                    dash(s.acc),
                    dash(s.aia),
                    dash(s.forgetting),
                    dash(s.bwt),
                    dash(s.fwt),
                    dash(s.min_accuracy),
                    dash(s.ece),
                    r.sequence_len()
                ));
                for n in &r.notes {
                    page.note(&format!("Note: {n}"));
                }
                if !r.params.is_null() {
                    page.note(&format!("params: {}", r.params));
                }
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
        }
    }
    page.render()
}

/// A note on FWT in class-incremental runs whose network never predicted a task's classes
/// before training on them (a[i−1][i] = 0 for every i of every run of the scenario): FWT then
/// equals −mean(b_i) and says nothing about the strategies (metrics card, "FWT in Class-IL").
fn fwt_note(results: &[RunResults], groups: &[&RunGroup]) -> Option<String> {
    let runs: Vec<&RunResults> = groups
        .iter()
        .flat_map(|g| g.runs.iter().filter_map(|&i| results.get(i)))
        .filter(|r| r.eval_mode.eq_ignore_ascii_case("classil") || r.eval_mode == "class-il")
        .filter(|r| r.num_tasks() > 1 && r.summary.fwt.is_some())
        .collect();
    let zero = |r: &&RunResults| (1..r.num_tasks()).all(|i| r.accuracy[i - 1][i] == 0.0);
    (!runs.is_empty() && runs.iter().all(zero)).then(|| {
        "FWT in class-incremental learning: every run here scores 0 on each task before \
         training on it (a[i−1][i] = 0: a class's output never wins the argmax before its \
         task, even over the classes of tasks 1..i as Mammoth scores it), so FWT equals \
         −mean(b_i), the untrained network's accuracy, and does not compare the strategies."
            .to_string()
    })
}

/// A text cell of the CSV (every text cell goes through here). A cell starting with `=`,
/// `+`, `-`, `@`, tab or carriage return gets a leading `'` so that a spreadsheet shows it
/// as text instead of running it as a formula (OWASP's CSV injection advice); then RFC 4180
/// quoting when it holds a comma, quote or line break. Numeric cells are written as numbers
/// and not passed here: a negative value stays a number.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// One row per run: identity columns, then the summary metrics (empty when undefined).
pub fn render_csv(results: &[RunResults]) -> String {
    let mut out = String::from("name,strategy,scenario,eval_mode,seed,tasks");
    for (col, _, _) in METRICS {
        out.push(',');
        out.push_str(col);
    }
    out.push('\n');
    for r in results {
        let mut fields = vec![
            csv_field(&r.name),
            csv_field(&r.strategy),
            csv_field(&r.scenario),
            csv_field(&r.eval_mode),
            r.seed.to_string(),
            r.sequence_len().to_string(),
        ];
        for (_, _, f) in METRICS {
            fields.push(f(r).map(|v| format!("{v}")).unwrap_or_default());
        }
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// Writes one file of the report through the checkpoint layer's atomic writer (temporary file
/// in the same folder, synced, renamed into place), as an `io::Error` naming the file.
fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    engram_ckpt::write_atomic(path, bytes).map_err(|e| match e {
        engram_ckpt::Error::Io { source, .. } => io::Error::new(
            source.kind(),
            format!("writing {}: {source}", path.display()),
        ),
        e => io::Error::other(format!("writing {}: {e}", path.display())),
    })
}

/// Writes `index.html`, `results.csv` and `results.json` into `dir` (created if missing) and
/// returns their paths. Every run is validated first; a malformed one is an `InvalidData`
/// error naming it, and nothing is written.
pub fn write_report(results: &[RunResults], dir: &Path) -> io::Result<Vec<PathBuf>> {
    for r in results {
        r.validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
    let json = serde_json::to_string_pretty(results)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("results JSON: {e}")))?;
    let files = [
        ("index.html", render_index(results)),
        ("results.csv", render_csv(results)),
        ("results.json", json + "\n"),
    ];
    // The three files are built beside the folder and switched in together.
    let staged = engram_ckpt::Staged::new(dir).map_err(to_io)?;
    let mut paths = Vec::new();
    for (name, text) in &files {
        write_file(&staged.path().join(name), text.as_bytes())?;
        paths.push(staged.dest().join(name));
    }
    staged
        .commit(&|n| files.iter().any(|(f, _)| *f == n))
        .map_err(to_io)?;
    Ok(paths)
}

fn to_io(e: engram_ckpt::Error) -> io::Error {
    match e {
        engram_ckpt::Error::Io { path, source } => {
            io::Error::new(source.kind(), format!("{}: {source}", path.display()))
        }
        e => io::Error::other(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::RunSummary;
    use std::fs;

    fn run(
        strategy: &str,
        scenario: &str,
        seed: u64,
        acc: f64,
        forgetting: Option<f64>,
    ) -> RunResults {
        RunResults {
            name: format!("{strategy}-{scenario}-{seed}"),
            strategy: strategy.into(),
            scenario: scenario.into(),
            eval_mode: "class-il".into(),
            seed,
            tasks: vec!["a".into(), "b".into()],
            accuracy: vec![vec![90.0, 10.0], vec![acc, 95.0]],
            task_il_accuracy: None,
            baseline: None,
            summary: RunSummary {
                acc: Some(acc),
                forgetting,
                peak_memory_bytes: Some(3 * 1024 * 1024),
                time_per_task_s: vec![1.0, 2.0],
                ..Default::default()
            },
            all_class_curve: None,
            ece_curve: None,
            ece_matrix: None,
            notes: Vec::new(),
            params: serde_json::json!({"lambda": 1.0}),
        }
    }

    #[test]
    fn mean_and_sample_spread() {
        // 1, 2, 3, 4: mean 2.5; sample variance ((1.5² + 0.5²)·2)/3 = 5/3.
        let s = MeanSpread::of(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(s.n, 4);
        assert!((s.mean - 2.5).abs() < 1e-12);
        assert!((s.spread.unwrap() - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(s.format_with(|v| format!("{v:.2}")), "2.50 ± 1.29");
        let one = MeanSpread::of(&[7.0, f64::NAN]).unwrap();
        assert_eq!((one.mean, one.spread, one.n), (7.0, None, 1));
        assert_eq!(one.format_with(|v| format!("{v:.1}")), "7.0");
        assert_eq!(MeanSpread::of(&[]), None);
    }

    #[test]
    fn runs_group_by_scenario_strategy_and_mode() {
        let mut results = vec![
            run("ewc", "split", 0, 70.0, Some(20.0)),
            run("naive", "split", 0, 40.0, Some(50.0)),
            run("ewc", "split", 1, 74.0, Some(16.0)),
            run("ewc", "perm", 0, 80.0, None),
            run("ewc", "split", 2, 72.0, None),
        ];
        results[4].eval_mode = "class-il".into();
        let g = group_runs(&results);
        let keys: Vec<(&str, &str, usize)> = g
            .iter()
            .map(|g| (g.scenario.as_str(), g.strategy.as_str(), g.runs.len()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("perm", "ewc", 1),
                ("split", "ewc", 3),
                ("split", "naive", 1)
            ]
        );
        let ewc = &g[1];
        assert_eq!(ewc.runs, vec![0, 2, 4]);
        assert_eq!(ewc.seeds(&results), 3);
        let acc = ewc.stat(&results, |r| r.summary.acc).unwrap();
        assert_eq!((acc.mean, acc.spread, acc.n), (72.0, Some(2.0), 3));
        // Forgetting is reported by two of the three seeds: mean (20 + 16)/2 = 18.
        let f = ewc.stat(&results, |r| r.summary.forgetting).unwrap();
        assert_eq!((f.mean, f.n), (18.0, 2));
        assert_eq!(cell("acc", Some(acc)), "72.00 ± 2.00");
        assert_eq!(cell("fwt", None), "–");
        let mem = ewc.stat(&results, METRICS[8].2);
        assert_eq!(cell("peak_memory_bytes", mem), "3.0 MiB ± 0 B");

        // A different evaluation mode is its own group.
        results[4].eval_mode = "task-il".into();
        assert_eq!(group_runs(&results).len(), 4);
    }

    #[test]
    fn csv_text_cells_cannot_start_formulas() {
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        for (cell, want) in [
            ("+1", "'+1"),
            ("-2", "'-2"),
            ("@a", "'@a"),
            ("a,b", "\"a,b\""),
        ] {
            assert_eq!(csv_field(cell), want);
        }
        assert_eq!(csv_field("ewc"), "ewc");
    }

    #[test]
    fn index_and_csv_contents() {
        let mut results = vec![
            run("ewc", "split", 0, 70.0, Some(20.0)),
            run("ewc", "split", 1, 74.0, Some(16.0)),
            run("naive, \"plain\"", "split", 0, 40.0, Some(50.0)),
        ];
        results[2].all_class_curve = Some((0..300).map(|j| (j % 50) as f64).collect());
        results[2].task_il_accuracy = Some(vec![vec![99.0, 50.0], vec![90.0, 98.0]]);
        // A long stream with an all-class curve only: no heatmap, one line.
        let mut stream = run("er", "scole", 0, 60.0, None);
        stream.accuracy = vec![];
        stream.tasks = (0..500).map(|i| i.to_string()).collect();
        stream.all_class_curve = Some((0..500).map(|j| (j / 5) as f64).collect());
        stream.validate().unwrap();
        results.push(stream);
        // ECE after each task and a note (issue 15): one more line, the note shown.
        results[0].ece_curve = Some(vec![4.0, 11.0]);
        results[0].ece_matrix = Some(vec![vec![4.0, 30.0], vec![12.0, 9.0]]);
        results[0].notes = vec!["ewc <is> a Task-IL method".into()];
        let html = render_index(&results);
        assert!(
            html.contains("Note: ewc &lt;is&gt; a Task-IL method"),
            "{html}"
        );
        assert!(html.contains("Calibration after each task"));
        // No Class-IL run scores a coming task above 0 here: no FWT note without FWT values.
        assert!(!html.contains("FWT in class-incremental"));
        let mut cil = run("naive", "cil", 0, 40.0, Some(50.0));
        cil.eval_mode = "ClassIl".into();
        cil.accuracy = vec![vec![90.0, 0.0], vec![10.0, 95.0]];
        cil.summary.fwt = Some(-30.0);
        let note = "FWT in class-incremental";
        assert!(render_index(std::slice::from_ref(&cil)).contains(note));
        cil.accuracy[0][1] = 5.0;
        assert!(!render_index(&[cil]).contains(note));
        assert!(html.contains("<td>72.00 ± 2.83</td>"), "{html}");
        // 3 runs × 4 cells + one Task-IL matrix of 4 + one ECE matrix of 4.
        assert_eq!(html.matches("class=\"cell\"").count(), 20);
        assert!(html.contains("ECE matrix"));
        // Per-task curves: 2 per run, plus two all-class curves and one ECE curve.
        assert_eq!(html.matches("class=\"line\"").count(), 9);
        assert!(html.contains("<h2>Scenario: scole</h2>"));
        // Two grouped charts, two strategies; only forgetting and ACC are reported (no BWT,
        // no AIA), so one bar per strategy in each; the stream's scenario adds its ACC bar.
        assert_eq!(html.matches("class=\"bar\"").count(), 5);
        assert!(html.contains("naive, &quot;plain&quot;"));
        assert!(!html.contains("<script"));

        let csv = render_csv(&results);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(
            lines[4].starts_with("er-scole-0,er,scole,class-il,0,500,60,"),
            "{csv}"
        );
        assert!(
            lines[0].starts_with(
                "name,strategy,scenario,eval_mode,seed,tasks,acc,aia,forgetting,bwt,fwt"
            )
        );
        assert_eq!(
            lines[1],
            "ewc-split-0,ewc,split,class-il,0,2,70,,20,,,,,3,3145728,"
        );
        assert!(lines[3].starts_with("\"naive, \"\"plain\"\"-split-0\",\"naive, \"\"plain\"\"\","));
        assert_eq!(render_index(&results), html);
    }

    #[test]
    fn long_task_sequences_are_not_drawn_cell_by_cell() {
        let mut long = run("ewc", "permuted", 0, 50.0, None);
        for n in [MAX_DRAWN_TASKS, MAX_DRAWN_TASKS + 1] {
            long.tasks = (0..n).map(|i| i.to_string()).collect();
            long.accuracy = vec![vec![50.0; n]; n];
            long.validate().unwrap();
            let html = render_index(std::slice::from_ref(&long));
            let cells = html.matches("class=\"cell\"").count();
            if n == MAX_DRAWN_TASKS {
                assert!(cells > 0);
            } else {
                assert_eq!(cells, 0);
                assert!(html.contains("are not drawn"), "{n}");
                assert!(html.len() < 100_000, "{}", html.len());
            }
        }
    }

    #[test]
    fn report_files_are_written_and_bad_runs_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        let results = vec![run("ewc", "split", 0, 70.0, Some(20.0))];
        let paths = write_report(&results, &dir).unwrap();
        let names: Vec<String> = paths
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["index.html", "results.csv", "results.json"]);
        let json = fs::read_to_string(dir.join("results.json")).unwrap();
        let back = crate::results::parse_results(&json).unwrap();
        assert_eq!(back, results);
        // No temporaries left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 3);

        let mut bad = results.clone();
        bad[0].accuracy[1].pop();
        let err = write_report(&bad, &dir.join("sub")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("ewc-split-0"), "{err}");
        assert!(!dir.join("sub").exists());
    }
}
