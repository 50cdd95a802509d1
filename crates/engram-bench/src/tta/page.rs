//! The test-time adaptation benchmark's report (card: /work/shared/methods/test_time.md):
//! verdicts, round-1 / last-round tables, error over the stream per arm, error per round, the
//! class-sorted control, and the source's corruption × severity grid.

use super::{TtaResults, fmt};
use engram_report::html::Page;
use engram_report::svg::{LineChart, Series, line_chart};

fn rows(r: &TtaResults) -> Vec<Vec<String>> {
    r.summary
        .iter()
        .map(|s| {
            let gate = r
                .runs
                .iter()
                .filter(|x| x.stream == s.stream && x.arm == s.arm)
                .filter_map(|x| {
                    let steps = x.stats.get("steps")?.as_f64()?;
                    let gated = x.stats.get("gated")?.as_f64()?;
                    (steps > 0.0).then_some(100.0 * gated / steps)
                })
                .collect::<Vec<_>>();
            vec![
                s.stream.clone(),
                s.arm.clone(),
                fmt(&s.round1),
                fmt(&s.last_round),
                format!("{:+.1} ± {:.1}", s.rise.mean, s.rise.sd),
                fmt(&s.all_rounds),
                if gate.is_empty() {
                    "-".into()
                } else {
                    format!("{:.0} %", gate.iter().sum::<f64>() / gate.len() as f64)
                },
            ]
        })
        .collect()
}

const HEADER: [&str; 7] = [
    "stream",
    "arm",
    "round 1",
    "last round",
    "last − first",
    "all rounds",
    "gate open",
];

pub fn render(r: &TtaResults) -> String {
    let st = &r.settings;
    let mut p = Page::new("Continual test-time adaptation on FMNIST-C");
    p.para(&format!(
        "Card: shared/methods/test_time.md (CoTTA). Source: {:?}, {} epochs on clean {} \
         (clean test accuracy {:.1} %, {:.0} s); CoTTA's AP = 5 % confidence quantile on \
         held-out clean data − 0.05 = {:.3}. Stream: {} corruptions at severity {}, {} test \
         images per class per domain, batch {}, {} rounds; class-sorted control: {} round(s), \
         Dirichlet δ = {}. Seeds {:?} (test subsample, corruption draws, image order). Errors \
         in percent, mean ± sd over seeds. {:.0} s.",
        st.model,
        st.source.epochs,
        st.dataset,
        r.source_clean_accuracy.unwrap_or(f64::NAN),
        r.source_seconds,
        r.ap.unwrap_or(f64::NAN),
        st.corruptions.len(),
        st.severity,
        st.test_per_class,
        st.batch,
        st.rounds,
        st.control_rounds,
        st.dirichlet,
        st.seeds,
        r.seconds
    ));
    p.heading("Verdicts (the card's criteria, seed by seed)");
    let v: Vec<Vec<String>> = r
        .verdicts
        .iter()
        .map(|v| vec![v.claim.clone(), v.verdict.clone(), v.evidence.clone()])
        .collect();
    p.table(&["claim", "verdict", "evidence"], &v);
    p.heading("Summary");
    p.table(&HEADER, &rows(r));
    for stream in ["iid", "class-sorted"] {
        let of: Vec<_> = r.summary.iter().filter(|s| s.stream == stream).collect();
        if of.is_empty() {
            continue;
        }
        let per_domain: Vec<Series> = of
            .iter()
            .map(|s| Series {
                label: s.arm.clone(),
                points: s
                    .domain_curve
                    .iter()
                    .enumerate()
                    .map(|(i, &y)| ((i + 1) as f64, y))
                    .collect(),
            })
            .collect();
        let per_round: Vec<Series> = of
            .iter()
            .map(|s| Series {
                label: s.arm.clone(),
                points: s
                    .round_curve
                    .iter()
                    .enumerate()
                    .map(|(i, &y)| ((i + 1) as f64, y))
                    .collect(),
            })
            .collect();
        p.heading(&format!("{stream} stream: error over the stream"));
        p.svg_row(&[
            line_chart(
                &LineChart {
                    title: format!("{stream}: error per domain (mean over seeds)"),
                    x_label: "domain in stream order".into(),
                    y_label: "error (%)".into(),
                    log_x: false,
                    y_range: Some((0.0, 100.0)),
                    integer_x: true,
                },
                &per_domain,
            ),
            line_chart(
                &LineChart {
                    title: format!("{stream}: mean error per round"),
                    x_label: "round".into(),
                    y_label: "error (%)".into(),
                    log_x: false,
                    y_range: None,
                    integer_x: true,
                },
                &per_round,
            ),
        ]);
    }
    p.heading("Source error per corruption and severity");
    let g = &r.grid;
    let grows: Vec<Vec<String>> = g
        .corruptions
        .iter()
        .zip(&g.errors)
        .map(|(n, e)| {
            let mut row = vec![n.clone()];
            row.extend(e.iter().map(|v| format!("{v:.1}")));
            row.push(if g.non_monotone.contains(n) {
                "not monotone".into()
            } else {
                String::new()
            });
            row
        })
        .collect();
    p.table(&["corruption", "1", "2", "3", "4", "5", "flag"], &grows);
    p.note(&format!(
        "Clean test error {:.1} %. The grid is the source (running statistics) on seed {}'s \
         test subsample; a flagged corruption's error falls somewhere between consecutive \
         severities (flagged, not failed, as the card says).",
        g.clean_error,
        st.seeds.first().copied().unwrap_or(0)
    ));
    p.note(
        "Round 1 is the first pass over the 15 corruptions; \"last − first\" is the last \
         round's mean error minus round 1's, per seed. Gate open: the share of CoTTA's steps \
         whose anchor confidence was below AP (augmentation-averaged pseudo-labels).",
    );
    p.render()
}

/// The summary as text for the terminal.
pub fn text(r: &TtaResults) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{:<13} {:<34} {:<13} {:<13} {:<13} {:<13} {}\n",
        HEADER[0], HEADER[1], HEADER[2], HEADER[3], HEADER[4], HEADER[5], HEADER[6]
    ));
    for row in rows(r) {
        s.push_str(&format!(
            "{:<13} {:<34} {:<13} {:<13} {:<13} {:<13} {}\n",
            row[0], row[1], row[2], row[3], row[4], row[5], row[6]
        ));
    }
    for v in &r.verdicts {
        s.push_str(&format!("{} — {}\n  {}\n", v.claim, v.verdict, v.evidence));
    }
    s
}
