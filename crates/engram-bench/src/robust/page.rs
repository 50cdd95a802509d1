//! The robustness study's report (cards: shared/methods/robustness_safety.md, patching.md):
//! the verdicts, the adversarial-training table and charts, RiFT's MRC table and α curves,
//! and the Robust Weight Signatures section.

use super::RobustResults;
use crate::machine::Spread;
use engram_report::html::Page;
use engram_report::svg::{LineChart, Series, grouped_bar_chart, line_chart};

fn f(m: &Spread) -> String {
    format!("{:.2} ± {:.2}", m.mean, m.sd)
}

pub fn render(r: &RobustResults) -> String {
    let z = &r.sizes;
    let mut p = Page::new("Adversarial robustness: PGD-AT, dro-softmax, GAIRAT, RiFT, RWS");
    p.para(&format!(
        "Cards: shared/methods/robustness_safety.md and patching.md. {} on Fashion-MNIST (inputs in \
         [0, 1]); threat model ℓ∞ ε = 0.1, step 0.025, PGD-5 for training, PGD-20 for \
         evaluation of the trained arms and PGD-10 for RiFT's curves (random start; an example \
         counts as robust only if no iterate breaks it); {} training images per class (long-tailed: ratio {}:1), \
         {} epochs, Adam lr {}, batch {}; validation and RiFT's adversarial set from held-out \
         training images; {} test images per class, FMNIST-C: the 15 corruptions at severity \
         5, {} images per class each. Seeds {:?}. {:.0} s.{}",
        r.model,
        z.train_per_class,
        z.imbalance,
        z.epochs,
        z.lr,
        z.batch,
        z.test_per_class,
        z.corrupt_per_class,
        r.seeds,
        r.wall_s,
        if r.quick {
            " Quick mode: a smoke check, not the benchmark's numbers."
        } else {
            ""
        }
    ));
    if !r.verdicts.is_empty() {
        p.heading("Claims");
        let rows: Vec<Vec<String>> = r
            .verdicts
            .iter()
            .map(|v| {
                vec![
                    v.part.clone(),
                    v.claim.clone(),
                    if v.holds { "holds" } else { "does not hold" }.into(),
                    v.detail.clone(),
                ]
            })
            .collect();
        p.table(&["part", "claim", "verdict", "measured"], &rows);
    }
    if !r.at_summary.is_empty() {
        p.heading("Adversarial training");
        p.para(
            "dro-softmax is the card's simplified variant of the doubly robust method (PGD inner \
             loop, per-minibatch KL-DRO weights softmax(ℓ/r) in log space, detached), not the \
             paper's solver; its r was chosen on validation with the first seed. RA-Tail-30: the \
             mean PGD-20 accuracy of the worst 3 of 10 classes. Test scores, mean ± sd over \
             seeds.",
        );
        let rows: Vec<Vec<String>> = r
            .at_summary
            .iter()
            .map(|a| {
                vec![
                    a.data.clone(),
                    match a.r {
                        Some(x) => format!("{} (r = {x})", a.arm),
                        None => a.arm.clone(),
                    },
                    f(&a.clean),
                    f(&a.robust),
                    f(&a.tail),
                    f(&a.corrupt),
                ]
            })
            .collect();
        p.table(
            &["data", "arm", "clean", "PGD-20", "RA-Tail-30", "FMNIST-C"],
            &rows,
        );
        let mut charts = Vec::new();
        for data in super::DATASETS {
            let rows: Vec<_> = r.at_summary.iter().filter(|a| a.data == data).collect();
            if rows.is_empty() {
                continue;
            }
            let groups = vec![
                "clean".to_string(),
                "PGD-20".into(),
                "RA-Tail-30".into(),
                "FMNIST-C".into(),
            ];
            let series: Vec<String> = rows.iter().map(|a| a.arm.clone()).collect();
            let vals: Vec<Vec<Option<f64>>> = [0, 1, 2, 3]
                .iter()
                .map(|&k| {
                    rows.iter()
                        .map(|a| Some([&a.clean, &a.robust, &a.tail, &a.corrupt][k].mean))
                        .collect()
                })
                .collect();
            let errs: Vec<Vec<Option<f64>>> = [0, 1, 2, 3]
                .iter()
                .map(|&k| {
                    rows.iter()
                        .map(|a| Some([&a.clean, &a.robust, &a.tail, &a.corrupt][k].sd))
                        .collect()
                })
                .collect();
            charts.push(grouped_bar_chart(
                &format!("{data}: test accuracy (%)"),
                &groups,
                &series,
                &vals,
                Some(&errs),
                "accuracy (%)",
            ));
        }
        p.svg_row(&charts);
        if !r.dro_choice.is_empty() {
            p.subheading("dro-softmax's r, chosen on validation (first seed)");
            let rows: Vec<Vec<String>> = r
                .dro_choice
                .iter()
                .flat_map(|c| {
                    let data = c["data"].as_str().unwrap_or("").to_string();
                    let chosen = c["chosen_r"].as_f64();
                    c["candidates"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .map(move |k| {
                            vec![
                                data.clone(),
                                format!("{}", k["r"]),
                                format!("{:.2}", k["valid_robust"].as_f64().unwrap_or(f64::NAN)),
                                format!("{:.2}", k["valid_tail"].as_f64().unwrap_or(f64::NAN)),
                                if k["r"].as_f64() == chosen {
                                    "chosen"
                                } else {
                                    ""
                                }
                                .into(),
                            ]
                        })
                })
                .collect();
            p.table(
                &[
                    "data",
                    "r",
                    "validation PGD-20",
                    "validation RA-Tail-30",
                    "",
                ],
                &rows,
            );
        }
        let masks: Vec<_> = r
            .at_runs
            .iter()
            .filter_map(|a| a.masking.as_ref().map(|m| (a, m)))
            .collect();
        if !masks.is_empty() {
            p.subheading("Gradient-masking checks (PGD-AT models)");
            p.para(
                "Final-point robust accuracy (the usual count), each attack with random starts \
                 of its own: stronger attacks should not score higher, and accuracy should \
                 fall towards 0 as ε grows (η = ε/4, 20 steps).",
            );
            let rows: Vec<Vec<String>> = masks
                .iter()
                .map(|(a, m)| {
                    let mut row = vec![
                        a.data.clone(),
                        a.seed.to_string(),
                        m.images.to_string(),
                        format!("{:.2}", m.pgd10),
                        format!("{:.2}", m.pgd20),
                        format!("{:.2}", m.pgd20_restarts5),
                    ];
                    row.extend(m.by_epsilon.iter().map(|(_, v)| format!("{v:.2}")));
                    row.push(if m.passes { "pass" } else { "FAIL" }.into());
                    row
                })
                .collect();
            p.table(
                &[
                    "data",
                    "seed",
                    "images",
                    "PGD-10",
                    "PGD-20",
                    "PGD-20 ×5",
                    "ε 0.05",
                    "ε 0.1",
                    "ε 0.15",
                    "ε 0.3",
                    "checks",
                ],
                &rows,
            );
        }
    }
    if !r.rift.is_empty() {
        p.heading("RiFT: module robust criticality and critical fine-tuning");
        p.para(
            "MRC: the largest rise of the mean cross-entropy on a fixed adversarial set (PGD-10 \
             against the AT model, from held-out training images) when one weight moves by at \
             most 10 % of its Frobenius norm (10 epochs of gradient ascent, SGD lr 1). Each curve \
             fine-tunes its modules on clean data (SGD momentum 0.9, lr 1e-3, weight decay 5e-4, \
             lr ×0.1 from the middle epoch), then interpolates θ(α) = α·θ_FT + (1 − α)·θ_AT. α is \
             chosen on validation (the largest clean gain with robust accuracy ≥ AT − 0.5).",
        );
        let rows: Vec<Vec<String>> = r
            .rift
            .iter()
            .flat_map(|run| {
                run.mrc.iter().map(move |m| {
                    vec![
                        run.seed.to_string(),
                        m.module.clone(),
                        format!("{:.4}", m.loss),
                        format!("{:.4}", m.mrc),
                        format!("{:.3}", m.relative_norm),
                    ]
                })
            })
            .collect();
        p.table(
            &["seed", "module", "adversarial loss", "MRC", "‖Δ‖/‖W‖"],
            &rows,
        );
        let rows: Vec<Vec<String>> = r
            .rift
            .iter()
            .flat_map(|run| {
                run.curves.iter().map(move |c| {
                    let at = &c.points[0].test;
                    let q = c.chosen();
                    vec![
                        run.seed.to_string(),
                        c.arm.clone(),
                        c.modules.join(", "),
                        format!("{:.1}", c.chosen_alpha),
                        format!("{:.2} ({:+.2})", q.test.clean, q.test.clean - at.clean),
                        format!("{:.2} ({:+.2})", q.test.robust, q.test.robust - at.robust),
                        format!(
                            "{:.2} ({:+.2})",
                            q.test.corrupt,
                            q.test.corrupt - at.corrupt
                        ),
                    ]
                })
            })
            .collect();
        p.table(
            &[
                "seed", "curve", "modules", "α", "clean", "PGD-10", "FMNIST-C",
            ],
            &rows,
        );
        for run in &r.rift {
            let mut charts = Vec::new();
            for (title, key) in [("clean", 0), ("PGD-10", 1), ("FMNIST-C", 2)] {
                let series: Vec<Series> = run
                    .curves
                    .iter()
                    .map(|c| Series {
                        label: c.arm.clone(),
                        points: c
                            .points
                            .iter()
                            .map(|p| {
                                let s = &p.test;
                                (p.alpha as f64, [s.clean, s.robust, s.corrupt][key])
                            })
                            .collect(),
                    })
                    .collect();
                charts.push(line_chart(
                    &LineChart {
                        title: format!("seed {}: test {title} over α", run.seed),
                        x_label: "α".into(),
                        y_label: "accuracy (%)".into(),
                        ..Default::default()
                    },
                    &series,
                ));
            }
            p.svg_row(&charts);
        }
    }
    if let Some(rws) = &r.rws {
        super::rws_page::section(rws, &mut p);
    }
    p.render()
}
