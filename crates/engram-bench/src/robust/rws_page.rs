// Robust Weight Signatures (Cai et al., ICML 2023, arXiv 2302.12480): the study's report.
// Card: shared/methods/patching.md, "Robust Weight Signatures (RWS)", small-scale experiment.

//! The RWS section of `engram bench robust`'s page: verdicts, the α sweep, recovery,
//! composition, quantized patches and their sizes, removal, locality and transfer.

use super::rws::{RwsResults, SweepPoint, pct, share};
use engram_report::html::Page;
use engram_report::svg::{LineChart, Series, grouped_bar_chart, line_chart};

/// The study's section of a report page: tables and charts (its verdicts go to the page's
/// table of claims).
pub fn section(r: &RwsResults, p: &mut Page) {
    let st = &r.settings;
    p.heading("Robust Weight Signatures");
    p.para(&format!(
        "Card: shared/methods/patching.md (RWS). {}: θ_pre trained on {} MNIST digits ({:.1} % \
         on {} test digits); θ_clean fine-tuned on {} Fashion-MNIST images ({:.1} % on {} test \
         images), θ_c on the same images corrupted with c at severity {}; {} held out (corrupted \
         too) to choose the number of patched layers. Adam lr {}, batch {}, {} epochs per model, \
         seed {}. Accuracies in percent. {:.0} s ({:.0} s training).",
        st.model,
        st.digits_train_images,
        r.pre_digits,
        st.digits_test_images,
        st.train_images,
        r.clean,
        st.test_images,
        st.severity,
        st.validation_images,
        st.lr,
        st.batch,
        st.epochs,
        st.seed,
        r.seconds,
        r.train_seconds
    ));
    if st.quick {
        p.note("--quick: a smoke check of the pipeline, not the study's numbers.");
    }
    // The verdicts stand once, in the page's table of claims (part "rws").

    p.subheading("Recovered gain (α = 1, layers chosen on validation)");
    let rows: Vec<Vec<String>> = r
        .corruptions
        .iter()
        .map(|c| {
            vec![
                c.corruption.clone(),
                pct(c.clean_model),
                pct(c.target),
                c.best_keep.to_string(),
                pct(c.patched),
                share(c.recovered),
                format!("{} → {}", pct(r.clean), pct(c.patched_clean)),
            ]
        })
        .collect();
    p.table(
        &[
            "corruption",
            "θ_clean",
            "θ_c",
            "keep",
            "θ_clean + RWS_c",
            "recovered",
            "clean test",
        ],
        &rows,
    );
    let rows: Vec<Vec<String>> = r
        .corruptions
        .iter()
        .map(|c| {
            let mut row = vec![c.corruption.clone(), pct(c.clean_model_valid)];
            row.extend(c.valid.iter().map(|x| pct(*x)));
            row.push(pct(c.target_valid));
            row
        })
        .collect();
    let keeps: Vec<String> = st.keeps.iter().map(|k| format!("keep {k}")).collect();
    let mut header = vec!["validation", "θ_clean"];
    header.extend(keeps.iter().map(String::as_str));
    header.push("θ_c");
    p.table(&header, &rows);

    p.subheading("α sweep");
    let charts: Vec<String> = r
        .corruptions
        .iter()
        .map(|c| {
            let mut series = Vec::new();
            for &k in &st.keeps {
                let pts = |f: fn(&SweepPoint) -> f64| {
                    c.sweep
                        .iter()
                        .filter(|s| s.keep == k)
                        .map(|s| (s.alpha, f(s)))
                        .collect()
                };
                series.push(Series {
                    label: format!("keep {k}, {}", c.corruption),
                    points: pts(|s| s.corrupted),
                });
                series.push(Series {
                    label: format!("keep {k}, clean"),
                    points: pts(|s| s.clean),
                });
            }
            let spec = LineChart {
                title: format!("θ_clean + α·RWS ({})", c.corruption),
                x_label: "α".into(),
                y_label: "accuracy (%)".into(),
                ..LineChart::default()
            };
            line_chart(&spec, &series)
        })
        .collect();
    p.svg_row(&charts);

    p.subheading("Composition (noise + blur)");
    let comp = &r.composition;
    let mut rows = vec![{
        let mut row = vec!["each alone (α = 1)".to_string()];
        row.extend(comp.single.iter().map(|x| pct(*x)));
        row.push("-".into());
        row
    }];
    for a in &comp.arms {
        let mut row = vec![format!("together, α_c = {}", a.scale_each)];
        row.extend(a.corrupted.iter().map(|x| pct(*x)));
        row.push(pct(a.clean));
        rows.push(row);
    }
    let mut header = vec!["patches"];
    header.extend(comp.corruptions.iter().map(String::as_str));
    header.push("clean");
    p.table(&header, &rows);

    p.subheading("Quantization and size");
    let rows: Vec<Vec<String>> = r
        .sizes
        .iter()
        .map(|s| {
            vec![
                s.keep.to_string(),
                s.levels.map_or("f32".into(), |l| l.to_string()),
                s.params.to_string(),
                s.bytes.to_string(),
                format!("{:.1}×", s.model_bytes as f64 / s.bytes.max(1) as f64),
                s.packed_bytes.to_string(),
                format!(
                    "{:.1}×",
                    s.model_bytes as f64 / s.packed_bytes.max(1) as f64
                ),
            ]
        })
        .collect();
    p.para(&format!(
        "Patch sizes ({} patches) against the model file ({} bytes). The patch file stores a \
         quantized value as one byte whatever the levels; \"packed\" counts ⌈log2 L⌉ bits per \
         value plus each tensor's range, without a header.",
        r.corruptions.first().map_or("", |c| c.corruption.as_str()),
        r.sizes.first().map_or(0, |s| s.model_bytes)
    ));
    p.table(
        &[
            "keep",
            "levels",
            "params",
            "file bytes",
            "smaller",
            "packed bytes",
            "smaller",
        ],
        &rows,
    );
    let rows: Vec<Vec<String>> = r
        .corruptions
        .iter()
        .flat_map(|c| {
            c.quantized.iter().map(|q| {
                vec![
                    c.corruption.clone(),
                    q.keep.to_string(),
                    q.levels.to_string(),
                    pct(q.corrupted),
                    pct(q.clean),
                    share(q.gain_kept),
                ]
            })
        })
        .collect();
    p.table(
        &[
            "corruption",
            "keep",
            "levels",
            "corrupted",
            "clean",
            "gain kept",
        ],
        &rows,
    );

    p.subheading("Locality, removal and transfer");
    let values: Vec<Vec<Option<f64>>> = (0..r.layers.len())
        .map(|i| r.corruptions.iter().map(|c| Some(c.locality[i])).collect())
        .collect();
    let names: Vec<String> = r.corruptions.iter().map(|c| c.corruption.clone()).collect();
    p.svg(&grouped_bar_chart(
        "‖θ_c − θ_clean‖ / ‖θ_clean‖ per layer",
        &r.layers,
        &names,
        &values,
        None,
        "relative change",
    ));
    let rows: Vec<Vec<String>> = r
        .corruptions
        .iter()
        .map(|c| {
            vec![
                c.corruption.clone(),
                format!("{:.2e}", c.removal.max_abs_diff),
                if c.removal.bit_exact { "yes" } else { "no" }.into(),
                pct(c.transfer.digits_model),
                pct(c.transfer.patched),
                format!(
                    "{} → {}",
                    pct(c.transfer.digits_model_clean),
                    pct(c.transfer.patched_clean)
                ),
            ]
        })
        .collect();
    p.table(
        &[
            "corruption",
            "removal max |Δ|",
            "bit-exact",
            "digits model",
            "+ RWS_c",
            "clean digits",
        ],
        &rows,
    );
}
