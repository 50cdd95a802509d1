//! The class-incremental study's report (card: /work/shared/methods/replay_distillation.md,
//! "NAPA-VQ"): the claim's verdicts, one table and two charts per data set (accuracy over the
//! classes seen after each stage; AIA and forgetting per arm).

use super::CilResults;
use crate::machine::Spread;
use engram_report::html::Page;
use engram_report::svg::{LineChart, Series, grouped_bar_chart, line_chart};

fn f(m: &Spread) -> String {
    format!("{:.2} ± {:.2}", m.mean, m.sd)
}

pub fn render(r: &CilResults) -> String {
    let st = &r.settings;
    let mut p = Page::new("Exemplar-free class-incremental learning (half-base protocol)");
    p.para(&format!(
        "Card: shared/methods/replay_distillation.md (NAPA-VQ). {} base classes, then {} \
         increments of {}; {}; Adam lr {} with weight decay {}, batch {}, {} epochs on the base \
         task and {} per increment; {} training images per task; seeds {:?}. Accuracies in \
         percent over the classes seen, each task weighted by its test images; mean ± sd over \
         seeds. Memory: the bytes each strategy states (buffers as their f32 inputs, \
         prototypes, code vectors, graph). {:.0} s.",
        st.base_classes,
        st.increments,
        st.classes_per_increment,
        st.model,
        st.lr,
        st.weight_decay,
        st.batch,
        st.first_task_epochs,
        st.epochs,
        st.train_per_task,
        r.seeds,
        r.wall_s
    ));
    if r.quick {
        p.note("--quick: a smoke check of the pipeline, not the study's numbers.");
    }
    p.heading("The card's claim");
    let rows: Vec<Vec<String>> = r
        .verdicts
        .iter()
        .map(|v| {
            vec![
                v.data.clone(),
                v.claim.clone(),
                v.measured.clone(),
                if v.holds { "holds" } else { "does not hold" }.into(),
            ]
        })
        .collect();
    p.table(&["data", "claim", "measured", "verdict"], &rows);
    if let Some(points) = r.tuning["points"].as_array() {
        p.heading("Chosen on validation");
        p.para(&format!(
            "{} (seed {}, {}), scored by {}; chosen: {}.",
            r.tuning["data"].as_str().unwrap_or(""),
            r.tuning["seed"],
            r.tuning["validation"].as_str().unwrap_or(""),
            r.tuning["score"].as_str().unwrap_or(""),
            r.tuning["chosen"]
        ));
        let rows: Vec<Vec<String>> = points
            .iter()
            .map(|x| {
                let num =
                    |v: &serde_json::Value| v.as_f64().map_or("-".into(), |a| format!("{a:.2}"));
                vec![
                    x["strategy"].as_str().unwrap_or("").to_string(),
                    x["point"].to_string(),
                    num(&x["valid_aia"]),
                    num(&x["valid_forgetting"]),
                ]
            })
            .collect();
        p.table(
            &[
                "strategy",
                "point",
                "validation AIA",
                "validation forgetting",
            ],
            &rows,
        );
    }
    let mut datasets: Vec<&str> = r.summary.iter().map(|a| a.data.as_str()).collect();
    datasets.dedup();
    for d in datasets {
        let arms: Vec<_> = r.summary.iter().filter(|a| a.data == d).collect();
        p.heading(d);
        let rows: Vec<Vec<String>> = arms
            .iter()
            .map(|a| {
                vec![
                    a.arm.clone(),
                    a.what.clone(),
                    f(&a.aia),
                    f(&a.last),
                    f(&a.forgetting),
                    a.state_bytes.to_string(),
                ]
            })
            .collect();
        p.table(
            &["arm", "what", "AIA", "last", "forgetting", "memory (B)"],
            &rows,
        );
        let series: Vec<Series> = arms
            .iter()
            .map(|a| Series {
                label: a.arm.clone(),
                points: a
                    .stages
                    .iter()
                    .enumerate()
                    .map(|(k, m)| ((k + 1) as f64, m.mean))
                    .collect(),
            })
            .collect();
        let curve = line_chart(
            &LineChart {
                title: format!("{d}: accuracy over the classes seen"),
                x_label: "stage".into(),
                y_label: "accuracy (%)".into(),
                y_range: Some((0.0, 100.0)),
                integer_x: true,
                ..Default::default()
            },
            &series,
        );
        let groups: Vec<String> = arms.iter().map(|a| a.arm.clone()).collect();
        let values: Vec<Vec<Option<f64>>> = arms
            .iter()
            .map(|a| vec![Some(a.aia.mean), Some(a.forgetting.mean)])
            .collect();
        let errors: Vec<Vec<Option<f64>>> = arms
            .iter()
            .map(|a| vec![Some(a.aia.sd), Some(a.forgetting.sd)])
            .collect();
        let bars = grouped_bar_chart(
            &format!("{d}: AIA and forgetting"),
            &groups,
            &["AIA".into(), "forgetting".into()],
            &values,
            Some(&errors),
            "percent",
        );
        p.svg_row(&[curve, bars]);
    }
    p.render()
}
