//! The quantization benchmark's report: verdicts, accuracy per network × method × width,
//! per-layer relative error, the error against a per layer, then the OFQ and speed parts.

use super::QuantResults;
use super::verdicts::arm;
use super::weights::{ARMS, NetResult};
use engram_report::html::Page;
use engram_report::svg::{LineChart, Series, line_chart};

fn accuracy_rows(n: &NetResult, bits: &[u32]) -> Vec<Vec<String>> {
    ARMS.iter()
        .filter_map(|a| {
            let cells: Vec<String> = bits
                .iter()
                .map(|&b| {
                    arm(n, a.method, &a.scope.name(), b)
                        .map_or("-".into(), |r| format!("{:.2}", r.accuracy))
                })
                .collect();
            (cells.iter().any(|c| c != "-")).then(|| {
                let mut row = vec![a.label()];
                row.extend(cells);
                row
            })
        })
        .collect()
}

fn bits_header(bits: &[u32]) -> Vec<String> {
    let mut h = vec!["method / scope".to_string()];
    h.extend(bits.iter().map(|b| format!("W{b} acc. %")));
    h
}

pub fn render(r: &QuantResults) -> String {
    let mut p = Page::new("Quantization (B5)");
    p.para(&format!(
        "Card: shared/methods/quantization.md. {}{:.0} s in all.",
        if r.quick {
            "--quick run (small data, few steps): the pipeline, not the benchmark's numbers. "
        } else {
            ""
        },
        r.seconds
    ));
    p.heading("Verdicts");
    let v: Vec<Vec<String>> = r
        .verdicts
        .iter()
        .map(|v| vec![v.claim.clone(), v.verdict.clone(), v.evidence.clone()])
        .collect();
    p.table(&["claim", "verdict", "evidence"], &v);
    if let Some(w) = &r.weights {
        let st = &w.settings;
        p.heading("Weight quantization of trained Fashion-MNIST networks");
        p.para(&format!(
            "Adam lr {}, batch {}, seed {}{}; test accuracy on the 10 000 test images. Quantized: \
             every weight matrix and kernel but embeddings (Linear weights as [out, in]); biases \
             and norms in float. NUPES: {} calibration training images, {} steps per layer.",
            st.lr,
            st.batch,
            st.seed,
            st.train_limit
                .map_or(String::new(), |n| format!(", {n} training images")),
            st.calib,
            st.nupes_steps
        ));
        for n in &w.nets {
            p.subheading(&format!(
                "{} ({} epochs): float accuracy {:.2} %",
                n.name, n.epochs, n.fp_accuracy
            ));
            let h = bits_header(&st.bits);
            let hr: Vec<&str> = h.iter().map(String::as_str).collect();
            p.table(&hr, &accuracy_rows(n, &st.bits));
            if let Some(why) = &n.nupes_skipped {
                p.note(&format!("NUPES not run: {why}"));
            }
            for b in [3u32, 4] {
                let arms: Vec<_> = n.arms.iter().filter(|a| a.bits == b).collect();
                if arms.is_empty() {
                    continue;
                }
                let mut h = vec!["layer".to_string(), "shape".into()];
                h.extend(arms.iter().map(|a| a.arm.clone()));
                let rows: Vec<Vec<String>> = n
                    .layers
                    .iter()
                    .enumerate()
                    .map(|(i, l)| {
                        let mut row = vec![l.name.clone(), format!("{:?}", l.shape)];
                        row.extend(arms.iter().map(|a| {
                            let e = a.rel_error.get(i).copied().unwrap_or(f64::NAN);
                            if a.method == "power" || a.method == "nupes" {
                                format!(
                                    "{e:.2e} (a {:.2})",
                                    a.a.get(i).copied().unwrap_or(f32::NAN)
                                )
                            } else {
                                format!("{e:.2e}")
                            }
                        }));
                        row
                    })
                    .collect();
                p.para(&format!(
                    "Relative error ‖W − Ŵ‖²/‖W‖² per layer at {b} bits:"
                ));
                let hr: Vec<&str> = h.iter().map(String::as_str).collect();
                p.table(&hr, &rows);
            }
            let charts: Vec<String> = [4u32, 3]
                .iter()
                .filter_map(|&b| {
                    let series: Vec<Series> = n
                        .curves
                        .iter()
                        .filter(|c| c.bits == b)
                        .map(|c| Series {
                            label: format!("{} (a* {:.2})", c.layer, c.a_star),
                            points: c
                                .a
                                .iter()
                                .zip(&c.rel_error)
                                .map(|(&a, &e)| (a as f64, e.max(1e-12).log10()))
                                .collect(),
                        })
                        .collect();
                    (!series.is_empty()).then(|| {
                        line_chart(
                            &LineChart {
                                title: format!("{}: error against a, W{b} per tensor", n.name),
                                x_label: "exponent a".into(),
                                y_label: "log10 relative error".into(),
                                ..LineChart::default()
                            },
                            &series,
                        )
                    })
                })
                .collect();
            p.svg_row(&charts);
        }
    }
    if let Some(o) = &r.ofq {
        super::ofq::page(&mut p, o);
    }
    if let Some(s) = &r.speed {
        super::speed::page(&mut p, s);
    }
    p.render()
}

/// The result as text for the terminal.
pub fn text(r: &QuantResults) -> String {
    let mut s = String::new();
    if let Some(w) = &r.weights {
        for n in &w.nets {
            s.push_str(&format!(
                "{} (float {:.2} %)\n{:<18}{}\n",
                n.name,
                n.fp_accuracy,
                "method / scope",
                w.settings
                    .bits
                    .iter()
                    .map(|b| format!("{:>9}", format!("W{b}")))
                    .collect::<String>()
            ));
            for row in accuracy_rows(n, &w.settings.bits) {
                s.push_str(&format!(
                    "{:<18}{}\n",
                    row[0],
                    row[1..]
                        .iter()
                        .map(|c| format!("{c:>9}"))
                        .collect::<String>()
                ));
            }
        }
    }
    if let Some(o) = &r.ofq {
        s.push_str(&super::ofq::text(o));
    }
    if let Some(sp) = &r.speed {
        s.push_str(&super::speed::text(sp));
    }
    for v in &r.verdicts {
        s.push_str(&format!("{} — {}\n  {}\n", v.claim, v.verdict, v.evidence));
    }
    s
}
