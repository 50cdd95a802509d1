//! Continual-learning run results → `index.html`, `results.csv` (one row per run) and
//! `results.json` (the inputs). The page reads like a paper's results section: a summary
//! written from the numbers, per scenario the strategies ranked by final accuracy (mean ±
//! spread over seeds, the best of each column marked) with their settings, then the accuracy
//! matrices and curves of every run. A sweep's settings of one strategy (EWC at lambda 10 and
//! 100) are separate rows, labelled by what differs ([`group_runs`]). Every file is written to a temporary name in the
//! destination folder and renamed into place, so a killed run leaves the previous report whole.

mod figures;
pub mod rank;
pub mod settings;
pub mod summary;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::html::{Cell, Page};
use crate::results::RunResults;
use rank::Section;

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

/// The runs of one (scenario, strategy, evaluation mode, settings): the seeds of one setting.
#[derive(Debug, Clone, PartialEq)]
pub struct RunGroup {
    pub scenario: String,
    pub strategy: String,
    pub eval_mode: String,
    /// The settings its runs share ([`group_settings`], flattened): a sweep's point.
    pub settings: Vec<(String, String)>,
    /// The settings that tell it apart in its section, under their shortest distinguishing
    /// keys: what its label shows after the strategy's name (see [`group_runs`]).
    pub distinct: Vec<(String, String)>,
    /// Indices into the results slice, in input order.
    pub runs: Vec<usize>,
}

impl RunGroup {
    /// `key = value` of the distinguishing settings, `; `-separated (values may hold commas);
    /// empty when the strategy's name alone identifies the group.
    pub fn settings_text(&self) -> String {
        self.distinct
            .iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The group's name in tables and charts: `ewc (lambda = 100)`, or `ewc`.
    pub fn label(&self) -> String {
        if self.distinct.is_empty() {
            self.strategy.clone()
        } else {
            format!("{} ({})", self.strategy, self.settings_text())
        }
    }

    /// ` with lambda = 100 and lr = 0.1` for prose after the strategy's name; empty when the
    /// name alone identifies the group.
    pub fn with_settings(&self) -> String {
        if self.distinct.is_empty() {
            return String::new();
        }
        let pairs: Vec<String> = self
            .distinct
            .iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect();
        format!(" with {}", summary::join_and(&pairs))
    }

    /// The group's name in a sentence: `ewc with lambda = 100`, or `ewc`.
    pub fn prose(&self) -> String {
        format!("{}{}", self.strategy, self.with_settings())
    }

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

/// A run's settings as its group compares them: `params.config` when there is one (the run
/// file engram-learn records; the rest of `params` is output, such as the model's parameter
/// count or a curve, which differs by seed), else the whole of `params`; without the keys that
/// differ between the seeds of one setting: `name` (a sweep names each run by its id), `seed`
/// and `scenario.seed`.
pub fn group_settings(params: &serde_json::Value) -> serde_json::Value {
    let mut v = match params.get("config") {
        Some(c) if c.is_object() => c.clone(),
        _ => params.clone(),
    };
    if let serde_json::Value::Object(m) = &mut v {
        m.remove("name");
        m.remove("seed");
        if let Some(serde_json::Value::Object(s)) = m.get_mut("scenario") {
            s.remove("seed");
            // A scenario that held only its seed is no setting.
            if s.is_empty() {
                m.remove("scenario");
            }
        }
    }
    v
}

/// Orders two flattened values: numerically when both are numbers (lambda 10 before 100),
/// else as text.
fn cmp_value(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.total_cmp(&y).then_with(|| a.cmp(b)),
        _ => a.cmp(b),
    }
}

/// Orders two groups of a section by strategy, then settings (key by key, values as
/// [`cmp_value`]): the tie-break of the ranking and the order of [`group_runs`].
pub fn cmp_groups(a: &RunGroup, b: &RunGroup) -> std::cmp::Ordering {
    let settings = a
        .settings
        .iter()
        .zip(&b.settings)
        .map(|((ka, va), (kb, vb))| ka.cmp(kb).then_with(|| cmp_value(va, vb)))
        .find(|o| o.is_ne())
        .unwrap_or_else(|| a.settings.len().cmp(&b.settings.len()));
    a.strategy
        .cmp(&b.strategy)
        .then(settings)
        .then_with(|| a.label().cmp(&b.label()))
}

/// Groups runs by (scenario, strategy, evaluation mode, [`group_settings`]): the seeds of one
/// setting of a sweep form a group, two settings two groups. Sorted by scenario, evaluation
/// mode, then [`cmp_groups`], whatever the input order.
///
/// Labels ([`RunGroup::distinct`]), per section (scenario, evaluation mode): a group shows
/// the settings in which it differs from another group of its own strategy, and the settings
/// outside the strategy's own table (`strategy.*`) that differ anywhere in the section (a
/// learning-rate grid across strategies); each under the shortest dotted suffix of its key
/// that no other key of the section ends with, a key a group lacks as `unset`.
pub fn group_runs(results: &[RunResults]) -> Vec<RunGroup> {
    // serde_json's objects are sorted maps here, so the text is a canonical key.
    let mut map: BTreeMap<[String; 4], RunGroup> = BTreeMap::new();
    for (i, r) in results.iter().enumerate() {
        let s = group_settings(&r.params);
        let key = [
            r.scenario.clone(),
            r.strategy.clone(),
            r.eval_mode.clone(),
            s.to_string(),
        ];
        map.entry(key)
            .or_insert_with(|| RunGroup {
                scenario: r.scenario.clone(),
                strategy: r.strategy.clone(),
                eval_mode: r.eval_mode.clone(),
                settings: settings::flatten(&s),
                distinct: Vec::new(),
                runs: Vec::new(),
            })
            .runs
            .push(i);
    }
    let mut groups: Vec<RunGroup> = map.into_values().collect();
    groups.sort_by(|a, b| {
        (&a.scenario, &a.eval_mode)
            .cmp(&(&b.scenario, &b.eval_mode))
            .then_with(|| cmp_groups(a, b))
    });
    let mut sections: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
    for (i, g) in groups.iter().enumerate() {
        sections
            .entry((g.scenario.as_str(), g.eval_mode.as_str()))
            .or_default()
            .push(i);
    }
    let distinct: Vec<(usize, Vec<(String, String)>)> = sections
        .values()
        .flat_map(|idx| {
            let members: Vec<&RunGroup> = idx.iter().map(|&i| &groups[i]).collect();
            idx.iter()
                .copied()
                .zip(distinct_settings(&members))
                .collect::<Vec<_>>()
        })
        .collect();
    for (i, d) in distinct {
        groups[i].distinct = d;
    }
    groups
}

/// The distinguishing settings of each group of one section (see [`group_runs`]).
fn distinct_settings(members: &[&RunGroup]) -> Vec<Vec<(String, String)>> {
    let maps: Vec<BTreeMap<&str, &str>> = members
        .iter()
        .map(|g| {
            g.settings
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect()
        })
        .collect();
    let keys: std::collections::BTreeSet<&str> =
        maps.iter().flat_map(|m| m.keys().copied()).collect();
    let differs = |among: &[usize], k: &str| {
        let first = maps[among[0]].get(k);
        among.iter().any(|&j| maps[j].get(k) != first)
    };
    let everyone: Vec<usize> = (0..members.len()).collect();
    let across: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|k| *k != "strategy" && !k.starts_with("strategy."))
        .filter(|k| differs(&everyone, k))
        .collect();
    members
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let same: Vec<usize> = (0..members.len())
                .filter(|&j| members[j].strategy == g.strategy)
                .collect();
            keys.iter()
                .copied()
                .filter(|k| across.contains(k) || (same.len() > 1 && differs(&same, k)))
                .map(|k| {
                    (
                        short_key(k, &keys),
                        maps[i].get(k).map_or("unset", |v| v).to_string(),
                    )
                })
                .collect()
        })
        .collect()
}

/// The shortest dotted suffix of `key` that no other of `keys` equals or ends with.
fn short_key(key: &str, keys: &std::collections::BTreeSet<&str>) -> String {
    let parts: Vec<&str> = key.split('.').collect();
    (1..parts.len())
        .map(|n| parts[parts.len() - n..].join("."))
        .find(|suffix| {
            keys.iter().all(|&other| {
                other == key || (other != suffix && !other.ends_with(&format!(".{suffix}")))
            })
        })
        .unwrap_or_else(|| key.to_string())
}

/// Which way a metric improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Percent,
    Seconds,
    Bytes,
}

/// A summary metric of the tables and the CSV.
pub struct Metric {
    /// CSV column.
    pub column: &'static str,
    /// Table header.
    pub header: &'static str,
    pub get: fn(&RunResults) -> Option<f64>,
    pub better: Better,
    pub unit: Unit,
}

impl Metric {
    /// One value as the tables print it (percent and seconds with two decimals, bytes in
    /// KiB/MiB/GiB). Ties for best are judged on this text.
    pub fn format(&self, v: f64) -> String {
        match self.unit {
            Unit::Percent | Unit::Seconds => fixed(v, 2),
            Unit::Bytes => bytes_h(v),
        }
    }

    /// `mean ± spread`, or `–` when no run reports the metric.
    pub fn cell(&self, s: Option<MeanSpread>) -> String {
        s.map_or_else(|| "–".into(), |s| s.format_with(|v| self.format(v)))
    }
}

/// `v` with `d` decimals, without the sign of a negative zero (`-0.00` reads as a value).
fn fixed(v: f64, d: usize) -> String {
    let s = format!("{v:.d$}");
    match s.strip_prefix('-') {
        Some(rest) if rest.chars().all(|c| c == '0' || c == '.') => rest.to_string(),
        _ => s,
    }
}

pub const ACC: usize = 0;
pub const AIA: usize = 1;
pub const FORGETTING: usize = 2;
pub const BWT: usize = 3;
pub const FWT: usize = 4;
pub const MIN_ACC: usize = 5;
pub const ECE: usize = 6;
pub const TIME: usize = 7;
pub const PEAK_MEMORY: usize = 8;
pub const STATE: usize = 9;

/// The summary metrics, in CSV column order.
pub const METRICS: [Metric; 10] = [
    Metric {
        column: "acc",
        header: "ACC",
        get: |r| r.summary.acc,
        better: Better::Higher,
        unit: Unit::Percent,
    },
    Metric {
        column: "aia",
        header: "AIA",
        get: |r| r.summary.aia,
        better: Better::Higher,
        unit: Unit::Percent,
    },
    Metric {
        column: "forgetting",
        header: "Forgetting",
        get: |r| r.summary.forgetting,
        better: Better::Lower,
        unit: Unit::Percent,
    },
    Metric {
        column: "bwt",
        header: "BWT",
        get: |r| r.summary.bwt,
        better: Better::Higher,
        unit: Unit::Percent,
    },
    Metric {
        column: "fwt",
        header: "FWT",
        get: |r| r.summary.fwt,
        better: Better::Higher,
        unit: Unit::Percent,
    },
    Metric {
        column: "min_accuracy",
        header: "Min acc.",
        get: |r| r.summary.min_accuracy,
        better: Better::Higher,
        unit: Unit::Percent,
    },
    Metric {
        column: "ece",
        header: "ECE",
        get: |r| r.summary.ece,
        better: Better::Lower,
        unit: Unit::Percent,
    },
    Metric {
        column: "time_total_s",
        header: "Time (s)",
        get: |r| r.summary.total_time_s(),
        better: Better::Lower,
        unit: Unit::Seconds,
    },
    Metric {
        column: "peak_memory_bytes",
        header: "Peak memory",
        get: |r| r.summary.peak_memory_bytes.map(|b| b as f64),
        better: Better::Lower,
        unit: Unit::Bytes,
    },
    Metric {
        column: "state_bytes",
        header: "Strategy state",
        get: |r| r.summary.state_bytes.map(|b| b as f64),
        better: Better::Lower,
        unit: Unit::Bytes,
    },
];

/// The columns of a section's first table (accuracy, forgetting, transfer, calibration, time)
/// and of its second (the worst task and memory), each shown when some run reports it.
const MAIN_COLUMNS: [usize; 7] = [ACC, AIA, FORGETTING, BWT, FWT, ECE, TIME];
const COST_COLUMNS: [usize; 3] = [MIN_ACC, PEAK_MEMORY, STATE];

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

/// Longest task sequence whose accuracy matrices and per-task curves a page draws: the
/// matrix grows with the square of the tasks (a 1000-task run would make a page of hundreds
/// of megabytes).
pub const MAX_DRAWN_TASKS: usize = 100;

/// The HTML page of [`write_report`] (validated input assumed: see [`RunResults::validate`]):
/// the summary, a section per scenario (and evaluation mode) with its ranked tables, bars and
/// settings, then the accuracy matrices and curves of every run, grouped the same way.
pub fn render_index(results: &[RunResults]) -> String {
    let mut page = Page::new("engram: continual-learning results");
    let sections = rank::sections(results);
    page.lead(&summary::summary(&sections));
    let strategies: std::collections::BTreeSet<&str> =
        results.iter().map(|r| r.strategy.as_str()).collect();
    page.note(&format!(
        "{} run(s): {} section(s) of (scenario, evaluation mode), {} strateg{}. Accuracies, forgetting, BWT, FWT and ECE are in percent; several seeds give mean ± sample standard deviation. {} Formulas: methods/metrics.md. Data: results.json, results.csv.",
        results.len(),
        sections.len(),
        strategies.len(),
        if strategies.len() == 1 { "y" } else { "ies" },
        summary::RULE
    ));
    let mut contents: Vec<(String, String)> = sections
        .iter()
        .enumerate()
        .map(|(i, s)| (s.title(), format!("scenario-{}", i + 1)))
        .collect();
    contents.push(("Accuracy matrices and curves".into(), "figures".into()));
    page.contents(&contents);
    for (i, s) in sections.iter().enumerate() {
        section(&mut page, results, s, i + 1);
    }
    page.heading_id(2, "Accuracy matrices and curves", "figures");
    for (i, s) in sections.iter().enumerate() {
        page.heading_id(3, &s.title(), &format!("figures-{}", i + 1));
        for row in s.rows() {
            for &j in &row.group.runs {
                if let Some(r) = results.get(j) {
                    figures::run_figures(&mut page, r, &row.group.label());
                }
            }
        }
    }
    page.render()
}

/// What a table caption says of its cells: the statistic, over how many seeds.
fn spread_caption(s: &Section) -> String {
    let seeds = match s.seed_range() {
        (1, 1) => return "Each cell is one run (one seed): no spread.".into(),
        (a, b) if a == b => format!("{a} seeds"),
        (a, b) => format!("{a} to {b} seeds (column Seeds)"),
    };
    format!("Each cell: mean ± sample standard deviation (n − 1) over {seeds}.")
}

/// One results table of a section: rank, strategy, seeds, then `columns` that some row
/// reports; the best of each column marked among the ranked rows.
fn table(page: &mut Page, s: &Section, columns: &[usize], caption: &str) {
    let columns: Vec<usize> = columns.iter().copied().filter(|&m| s.has(m)).collect();
    if columns.is_empty() {
        return;
    }
    let mut header = vec!["#", "Strategy", "Seeds"];
    header.extend(columns.iter().map(|&m| METRICS[m].header));
    let best: Vec<Vec<bool>> = columns.iter().map(|&m| s.best(m)).collect();
    let cells = |row: &rank::Row, marks: &dyn Fn(usize) -> bool| -> Vec<Cell> {
        let mut c = vec![
            Cell::text(row.rank.map_or("–".into(), |r| r.to_string())),
            Cell::text(row.label()),
            Cell::text(row.seeds.to_string()),
        ];
        c.extend(columns.iter().enumerate().map(|(k, &m)| {
            let metric = &METRICS[m];
            match row.stat(m) {
                None => Cell::text("–"),
                Some(st) => Cell {
                    text: metric.format(st.mean),
                    detail: st.spread.map(|sd| format!("± {}", metric.format(sd))),
                    best: marks(k),
                },
            }
        }));
        c
    };
    let body: Vec<Vec<Cell>> = s
        .ranked
        .iter()
        .enumerate()
        .map(|(i, row)| cells(row, &|k| best[k][i]))
        .collect();
    let foot: Vec<Vec<Cell>> = s.references.iter().map(|r| cells(r, &|_| false)).collect();
    page.marked_table(caption, &header, &body, &foot, 2);
}

fn direction_note(columns: &[usize]) -> String {
    let names = |b: Better| {
        columns
            .iter()
            .filter(|&&m| METRICS[m].better == b)
            .map(|&m| METRICS[m].header)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (hi, lo) = (names(Better::Higher), names(Better::Lower));
    match (hi.is_empty(), lo.is_empty()) {
        (false, false) => format!("higher is better for {hi}, lower for {lo}"),
        (false, true) => format!("higher is better for {hi}"),
        (true, false) => format!("lower is better for {lo}"),
        (true, true) => String::new(),
    }
}

/// A section of the page: heading, ranked tables, notes, bar charts, settings.
fn section(page: &mut Page, results: &[RunResults], s: &Section, number: usize) {
    page.heading_id(
        2,
        &format!("{number}. {}", s.title()),
        &format!("scenario-{number}"),
    );
    let upper = if s.references.is_empty() {
        String::new()
    } else {
        " The upper bound (joint training on every task's data) is listed under the rule, unranked and unmarked.".into()
    };
    let main: Vec<usize> = MAIN_COLUMNS.iter().copied().filter(|&m| s.has(m)).collect();
    table(
        page,
        s,
        &MAIN_COLUMNS,
        &format!(
            "Table {number}a. {}: strategies ranked by final accuracy (ACC). {} Percent, time in seconds. Bold with ★: best in its column ({}); values equal as printed share the mark.{upper}",
            s.title(),
            spread_caption(s),
            direction_note(&main)
        ),
    );
    let cost: Vec<usize> = COST_COLUMNS.iter().copied().filter(|&m| s.has(m)).collect();
    table(
        page,
        s,
        &COST_COLUMNS,
        &format!(
            "Table {number}b. {}: worst task and memory, same order. {} Bold with ★: best ({}).",
            s.title(),
            spread_caption(s),
            direction_note(&cost)
        ),
    );
    // Run notes, once per strategy and text.
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for row in s.rows() {
        for &i in &row.group.runs {
            for n in results.get(i).map_or(&[][..], |r| &r.notes[..]) {
                if !seen.contains(&(row.group.strategy.as_str(), n.as_str())) {
                    seen.push((row.group.strategy.as_str(), n.as_str()));
                    page.note(&format!("Note on {}: {n}", row.group.strategy));
                }
            }
        }
    }
    if !s.has(FORGETTING) && !s.has(BWT) {
        page.note("Forgetting and BWT are undefined here (one task, or not reported).");
    }
    if let Some(n) = fwt_note(results, s) {
        page.note(&n);
    }
    page.svg_row(&figures::section_bars(s));
    let rows: Vec<&rank::Row> = s.rows().collect();
    let st = settings::section_settings(results, &rows);
    if !st.common.is_empty() || !st.own.is_empty() {
        page.details("Settings (key = value; nested keys dotted)");
        page.key_values("Common to every run of this section", &st.common);
        for (label, pairs) in &st.own {
            page.key_values(label, pairs);
        }
        page.end_details();
    }
}

/// A note on FWT in class-incremental runs whose network never predicted a task's classes
/// before training on them (a[i−1][i] = 0 for every i of every run of the section): FWT then
/// equals −mean(b_i) and says nothing about the strategies (metrics card, "FWT in Class-IL").
fn fwt_note(results: &[RunResults], s: &Section) -> Option<String> {
    let runs: Vec<&RunResults> = s
        .rows()
        .flat_map(|g| g.group.runs.iter().filter_map(|&i| results.get(i)))
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

/// One row per run: identity columns, the summary metrics (empty when undefined), then the
/// run's group as the page labels it (`ewc (lambda = 100)`), to pivot a sweep on.
pub fn render_csv(results: &[RunResults]) -> String {
    let mut out = String::from("name,strategy,scenario,eval_mode,seed,tasks");
    for m in &METRICS {
        out.push(',');
        out.push_str(m.column);
    }
    out.push_str(",group\n");
    let mut label = vec![String::new(); results.len()];
    for g in group_runs(results) {
        for &i in &g.runs {
            if let Some(l) = label.get_mut(i) {
                *l = g.label();
            }
        }
    }
    for (r, group) in results.iter().zip(&label) {
        let mut fields = vec![
            csv_field(&r.name),
            csv_field(&r.strategy),
            csv_field(&r.scenario),
            csv_field(&r.eval_mode),
            r.seed.to_string(),
            r.sequence_len().to_string(),
        ];
        for m in &METRICS {
            fields.push((m.get)(r).map(|v| format!("{v}")).unwrap_or_default());
        }
        fields.push(csv_field(group));
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
        assert_eq!(METRICS[ACC].cell(Some(acc)), "72.00 ± 2.00");
        assert_eq!(METRICS[FWT].cell(None), "–");
        let mem = ewc.stat(&results, METRICS[PEAK_MEMORY].get);
        assert_eq!(METRICS[PEAK_MEMORY].cell(mem), "3.0 MiB ± 0 B");
        assert_eq!(fixed(-0.001, 2), "0.00");
        assert_eq!(fixed(-0.01, 2), "-0.01");

        // A different evaluation mode is its own group.
        results[4].eval_mode = "task-il".into();
        assert_eq!(group_runs(&results).len(), 4);
    }

    /// A run as `engram sweep plan` names it (a 16-hex-digit run id) with engram-learn's
    /// `params`: the run file under `config`, then outputs that differ by seed.
    fn swept(strategy: &str, seed: u64, lambda: f64, lr: f64, acc: f64) -> RunResults {
        let mut r = run(strategy, "split", seed, acc, Some(100.0 - acc));
        r.name = format!("{:016x}", 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(seed + 1));
        r.params = serde_json::json!({
            "config": {
                "name": r.name,
                "seed": seed,
                "scenario": {"kind": "class-incremental", "dataset": "mnist", "seed": seed + 7},
                "strategy": {"name": strategy, "lambda": lambda},
                "train": {"epochs": 1, "optimizer": {"kind": "sgd", "lr": lr}},
            },
            "model_params": 1000,
            "current_task_curve": [acc, acc + seed as f64],
        });
        r
    }

    fn labels(groups: &[RunGroup]) -> Vec<String> {
        groups.iter().map(RunGroup::label).collect()
    }

    #[test]
    fn a_sweep_groups_by_setting_and_labels_what_differs() {
        // ewc and si, each at lambda 20 and 100, each over 3 seeds: 4 groups.
        let mut results = Vec::new();
        for (strategy, lambda, base) in [
            ("ewc", 100.0, 70.0),
            ("si", 20.0, 50.0),
            ("ewc", 20.0, 60.0),
            ("si", 100.0, 40.0),
        ] {
            for seed in 0..3 {
                results.push(swept(strategy, seed, lambda, 0.1, base + 2.0 * seed as f64));
            }
        }
        let g = group_runs(&results);
        // Numeric order of values: lambda 20 before 100.
        assert_eq!(
            labels(&g),
            [
                "ewc (lambda = 20.0)",
                "ewc (lambda = 100.0)",
                "si (lambda = 20.0)",
                "si (lambda = 100.0)"
            ]
        );
        let means: Vec<(f64, Option<f64>, usize)> = g
            .iter()
            .map(|g| {
                let s = g.stat(&results, |r| r.summary.acc).unwrap();
                (s.mean, s.spread, g.seeds(&results))
            })
            .collect();
        assert_eq!(
            means,
            [
                (62.0, Some(2.0), 3),
                (72.0, Some(2.0), 3),
                (52.0, Some(2.0), 3),
                (42.0, Some(2.0), 3)
            ]
        );
        assert_eq!(g[1].runs, [0, 1, 2]);
        assert_eq!(g[1].prose(), "ewc with lambda = 100.0");
        // Stable: the same groups and labels whatever the input order.
        let mut reversed = results.clone();
        reversed.reverse();
        let back = group_runs(&reversed);
        assert_eq!(labels(&back), labels(&g));
        let names = |gs: &[RunGroup], rs: &[RunResults]| -> Vec<Vec<String>> {
            gs.iter()
                .map(|g| {
                    let mut n: Vec<String> = g.runs.iter().map(|&i| rs[i].name.clone()).collect();
                    n.sort();
                    n
                })
                .collect()
        };
        assert_eq!(names(&back, &reversed), names(&g, &results));

        // The page ranks the groups, and the summary names them in prose.
        let sections = rank::sections(&results);
        let ranked: Vec<String> = sections[0].ranked.iter().map(|r| r.label()).collect();
        assert_eq!(
            ranked,
            [
                "ewc (lambda = 100.0)",
                "ewc (lambda = 20.0)",
                "si (lambda = 20.0)",
                "si (lambda = 100.0)"
            ]
        );
        let text = summary::summary(&sections);
        assert!(
            text.starts_with(
                "On split, class-il (4 settings of 2 strategies, 3 seeds), ewc with lambda = 100.0 has the highest final accuracy, ACC 72.00 ± 2.00, 10.00 points above the runner-up ewc with lambda = 20.0 (62.00 ± 2.00), a margin larger than the spread."
            ),
            "{text}"
        );
        assert!(
            text.contains("ewc with lambda = 100.0 also forgets least"),
            "{text}"
        );
        let html = render_index(&results);
        assert!(html.contains("ewc (lambda = 20.0), seed 2"), "{html}");
        // One CSV row per run, its group last.
        let csv = render_csv(&results);
        assert_eq!(csv.lines().count(), 13);
        assert!(
            csv.lines()
                .nth(1)
                .unwrap()
                .ends_with(",ewc (lambda = 100.0)"),
            "{csv}"
        );
    }

    #[test]
    fn seeds_alone_make_one_group_and_common_settings_show_across_strategies() {
        // Runs that differ by seed, name, scenario seed and outputs only: one group per
        // strategy, labelled by the strategy alone.
        let mut results: Vec<RunResults> = (0..3)
            .flat_map(|seed| {
                [
                    swept("ewc", seed, 100.0, 0.1, 70.0),
                    swept("naive", seed, 0.0, 0.1, 40.0),
                ]
            })
            .collect();
        let g = group_runs(&results);
        assert_eq!(labels(&g), ["ewc", "naive"]);
        assert_eq!(g[0].runs, [0, 2, 4]);
        assert!(render_index(&results).contains("(2 strategies, 3 seeds), ewc has the highest"));
        // A learning-rate grid across strategies: each shows its rate; naive's lambda
        // differs from ewc's but is its own strategy's setting, so is not shown.
        for (i, r) in results.iter_mut().enumerate() {
            let lr = if i % 2 == 0 { 0.01 } else { 0.1 };
            r.params["config"]["train"]["optimizer"]["lr"] = serde_json::json!(lr);
        }
        results.push(swept("naive", 0, 0.0, 0.0001, 30.0));
        let g = group_runs(&results);
        assert_eq!(
            labels(&g),
            ["ewc (lr = 0.01)", "naive (lr = 0.0001)", "naive (lr = 0.1)"]
        );
        let s = rank::sections(&results);
        let ranked: Vec<String> = s[0].ranked.iter().map(|r| r.label()).collect();
        assert_eq!(
            ranked,
            [
                "ewc (lr = 0.01)",
                "naive (baseline; lr = 0.1)",
                "naive (baseline; lr = 0.0001)"
            ]
        );
        let text = summary::summary(&s);
        assert!(
            text.contains("(3 settings of 2 strategies, 1 to 3 seeds), ewc with lr = 0.01 has the highest final accuracy, ACC 70.00 ± 0.00, 30.00 points above the naive baseline with lr = 0.1 (40.00 ± 0.00)"),
            "{text}"
        );
    }

    #[test]
    fn keys_shorten_to_their_shortest_distinguishing_suffix() {
        let keys: std::collections::BTreeSet<&str> = [
            "train.optimizer.lr",
            "strategy.lr",
            "strategy.lambda",
            "b",
            "a.b",
        ]
        .into_iter()
        .collect();
        assert_eq!(short_key("train.optimizer.lr", &keys), "optimizer.lr");
        assert_eq!(short_key("strategy.lr", &keys), "strategy.lr");
        assert_eq!(short_key("strategy.lambda", &keys), "lambda");
        assert_eq!(short_key("a.b", &keys), "a.b");
        assert_eq!(short_key("b", &keys), "b");
        // The same grid under a clash keeps enough of the key.
        let mut results = vec![
            swept("ewc", 0, 10.0, 0.1, 50.0),
            swept("ewc", 0, 10.0, 0.2, 60.0),
        ];
        results[1].params["config"]["strategy"]["lr"] = serde_json::json!(1);
        assert_eq!(
            labels(&group_runs(&results)),
            [
                "ewc (strategy.lr = 1; optimizer.lr = 0.2)",
                "ewc (strategy.lr = unset; optimizer.lr = 0.1)"
            ]
        );
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
            html.contains("Note on ewc: ewc &lt;is&gt; a Task-IL method"),
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
        // ewc's ACC, mean ± sample s.d. of 70 and 74, is the best of its column.
        assert!(
            html.contains("<td class=\"best\" title=\"best in this column\"><strong><span class=\"m\">72.00</span></strong><span class=\"mk\">★</span><span class=\"sd\">± 2.83</span></td>"),
            "{html}"
        );
        // The page opens with the summary, then the sections in input order, then figures.
        let at = |needle: &str| {
            html.find(needle)
                .unwrap_or_else(|| panic!("{needle}: {html}"))
        };
        assert!(
            at(
                "<p class=\"summary\">On split, class-il (2 strategies, 1 to 2 seeds), ewc has the highest final accuracy, ACC 72.00 ± 2.83, 32.00 points above the runner-up naive, &quot;plain&quot; (40.00), a margin from single runs"
            ) < at("<table")
        );
        assert!(
            at("id=\"scenario-1\">1. split, class-il") < at("id=\"scenario-2\">2. scole, class-il")
        );
        assert!(html.rfind("<table").unwrap() < at("<h2 id=\"figures\">"));
        assert!(at("<li><code>lambda = 1.0</code></li>") < at("<h2 id=\"figures\">"));
        assert!(!html.contains("params:"));
        // 3 runs × 4 cells + one Task-IL matrix of 4 + one ECE matrix of 4.
        assert_eq!(html.matches("class=\"cell\"").count(), 20);
        assert!(html.contains("ECE matrix"));
        // Per-task curves: 2 per run, plus two all-class curves and one ECE curve.
        assert_eq!(html.matches("class=\"line\"").count(), 9);

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
            ) && lines[0].ends_with(",state_bytes,group")
        );
        assert_eq!(
            lines[1],
            "ewc-split-0,ewc,split,class-il,0,2,70,,20,,,,,3,3145728,,ewc"
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
