//! The selective fine-tuning benchmark's results (`engram bench finetune`) and their HTML page:
//! per target and method, target accuracy, source accuracy kept, trainable values, optimizer
//! memory and time over seeds; a retention-against-plasticity chart; the papers' claims with
//! whether they hold here.

use crate::html::{Page, esc};
use crate::report::MeanSpread;
use serde::{Deserialize, Serialize};

/// One method on one target, over seeds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MethodSummary {
    pub target: String,
    pub method: String,
    /// Values the optimizer may change (the new head's included): the smallest and the
    /// largest over seeds (KappaTune's picks, and so its count, may differ by seed).
    pub trainable: usize,
    pub trainable_max: usize,
    /// Bytes of optimizer state, the largest over seeds.
    pub optimizer_bytes: usize,
    pub target_accuracy: MeanSpread,
    pub source_accuracy: MeanSpread,
    /// After folding adapters or expanded blocks back, when the method has that step.
    pub merged_target_accuracy: Option<MeanSpread>,
    pub merged_source_accuracy: Option<MeanSpread>,
    pub seconds: MeanSpread,
    /// Tensors a selection unfroze, per seed (KappaTune).
    pub selected: Vec<Vec<String>>,
}

/// A claim from the papers, tested on one target.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Claim {
    pub target: String,
    pub claim: String,
    pub holds: bool,
    /// Every comparison also exceeds the seeds' spread (combined sample sd).
    pub clear: bool,
    /// The numbers it was judged on, in words.
    pub evidence: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FinetuneResults {
    /// Architecture, data sizes, epochs, optimizer, seeds.
    pub settings: serde_json::Value,
    /// Source test accuracy of the pre-trained network, per seed.
    pub source_before: Vec<f64>,
    /// κ of every body weight of the pre-trained network, per seed (KappaTune's ranking).
    pub kappas: Vec<Vec<(String, f64)>>,
    pub summary: Vec<MethodSummary>,
    pub claims: Vec<Claim>,
    /// Every run (target, seed, method) with its full outcome.
    pub runs: serde_json::Value,
}

/// "holds", "holds (within seed noise)" or "does not hold".
pub fn verdict(c: &Claim) -> &'static str {
    match (c.holds, c.clear) {
        (true, true) => "holds",
        (true, false) => "holds (within seed noise)",
        _ => "does not hold",
    }
}

/// "n" or "min–max".
fn range(a: usize, b: usize) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}–{b}")
    }
}

fn ms(m: &MeanSpread) -> String {
    m.format_with(|x| format!("{x:.1}"))
}

/// A scatter of labelled points (x = target accuracy, y = source accuracy kept), one colour
/// per method family; every point carries `class="point"`.
pub fn scatter(title: &str, x_label: &str, y_label: &str, pts: &[(String, f64, f64)]) -> String {
    let (w, h, left, bottom, top, right) = (720.0, 420.0, 60.0, 46.0, 32.0, 200.0);
    let ok: Vec<&(String, f64, f64)> = pts
        .iter()
        .filter(|p| p.1.is_finite() && p.2.is_finite())
        .collect();
    let range = |f: &dyn Fn(&(String, f64, f64)) -> f64| {
        let (a, b) = ok
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
                (a.min(f(p)), b.max(f(p)))
            });
        if !a.is_finite() {
            (0.0, 1.0)
        } else {
            let pad = ((b - a) * 0.08).max(0.5);
            (a - pad, b + pad)
        }
    };
    let (x0, x1) = range(&|p| p.1);
    let (y0, y1) = range(&|p| p.2);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let sx = |x: f64| left + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| top + ph - (y - y0) / (y1 - y0) * ph;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\"><title>{t}</title><text x=\"{:.1}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">{t}</text>",
        left + pw / 2.0,
        t = esc(title)
    );
    s.push_str(&format!(
        "<rect x=\"{left}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#444\"/>"
    ));
    for i in 0..=4 {
        let fx = x0 + (x1 - x0) * i as f64 / 4.0;
        let fy = y0 + (y1 - y0) * i as f64 / 4.0;
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{fx:.1}</text><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{fy:.1}</text>",
            sx(fx),
            top + ph + 14.0,
            left - 4.0,
            sy(fy) + 3.0
        ));
    }
    s.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\">{}</text><text x=\"14\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\" transform=\"rotate(-90 14 {:.1})\">{}</text>",
        left + pw / 2.0,
        h - 8.0,
        esc(x_label),
        top + ph / 2.0,
        top + ph / 2.0,
        esc(y_label)
    ));
    const COLOURS: [&str; 8] = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
    ];
    let family = |l: &str| l.split(' ').next().unwrap_or("").to_string();
    let mut families: Vec<String> = ok.iter().map(|p| family(&p.0)).collect();
    families.dedup();
    let mut seen = Vec::new();
    for f in families {
        if !seen.contains(&f) {
            seen.push(f);
        }
    }
    for (i, p) in ok.iter().enumerate() {
        let c = seen.iter().position(|f| *f == family(&p.0)).unwrap_or(0);
        s.push_str(&format!(
            "<circle class=\"point\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{}\"><title>{}: {:.1}, {:.1}</title></circle>",
            sx(p.1),
            sy(p.2),
            COLOURS[c % COLOURS.len()],
            esc(&p.0),
            p.1,
            p.2
        ));
        s.push_str(&format!(
            "<text class=\"legend\" x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\">{}</text>",
            w - right + 14.0,
            top + 12.0 + 12.0 * i as f64,
            esc(&format!("{} ({:.1}, {:.1})", p.0, p.1, p.2))
        ));
        s.push_str(&format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"/>",
            w - right + 8.0,
            top + 9.0 + 12.0 * i as f64,
            COLOURS[c % COLOURS.len()]
        ));
    }
    s.push_str("</svg>");
    s
}

/// The benchmark's page.
pub fn render_finetune(r: &FinetuneResults) -> String {
    let mut p = Page::new("engram bench finetune: selective fine-tuning, source → target");
    let st = &r.settings;
    p.para(&format!(
        "Pre-trained on the source task ({}), then fine-tuned on each target with a new head; \
         the source task is evaluated with its old head after fine-tuning. Network: residual \
         MLP {}. Pre-training {}; fine-tuning {}; seeds: {}. Source accuracy before \
         fine-tuning: {}. Means ± sd over seeds; every run's configuration is in \
         results.json.",
        st["source"]["data"].as_str().unwrap_or("?"),
        st["network"],
        st["pretrain"],
        st["finetune"],
        st["seeds"],
        r.source_before
            .iter()
            .map(|a| format!("{a:.1}%"))
            .collect::<Vec<_>>()
            .join(", "),
    ));
    if let Some(k) = r.kappas.first() {
        p.heading("Condition numbers of the pre-trained body (seed 0)");
        let rows: Vec<Vec<String>> = k
            .iter()
            .map(|(n, v)| vec![n.clone(), format!("{v:.3e}"), format!("{:.2}", v.log10())])
            .collect();
        p.table(&["tensor", "κ", "log10 κ"], &rows);
    }
    p.heading("Claims");
    let rows: Vec<Vec<String>> = r
        .claims
        .iter()
        .map(|c| {
            vec![
                c.target.clone(),
                c.claim.clone(),
                verdict(c).into(),
                c.evidence.clone(),
            ]
        })
        .collect();
    p.table_text_cols(&["target", "claim", "here", "evidence"], &rows, 4);
    let mut targets: Vec<String> = r.summary.iter().map(|m| m.target.clone()).collect();
    targets.dedup();
    for t in &targets {
        p.heading(&format!("Target: {t}"));
        let ms_: Vec<&MethodSummary> = r.summary.iter().filter(|m| &m.target == t).collect();
        let rows: Vec<Vec<String>> = ms_
            .iter()
            .map(|m| {
                vec![
                    m.method.clone(),
                    range(m.trainable, m.trainable_max),
                    format!("{:.1} KiB", m.optimizer_bytes as f64 / 1024.0),
                    ms(&m.target_accuracy),
                    ms(&m.source_accuracy),
                    match (&m.merged_target_accuracy, &m.merged_source_accuracy) {
                        (Some(a), Some(b)) => format!("{} / {}", ms(a), ms(b)),
                        _ => "–".into(),
                    },
                    format!("{:.1}", m.seconds.mean),
                ]
            })
            .collect();
        p.table_text_cols(
            &[
                "method",
                "trainable",
                "optimizer state",
                "target acc %",
                "source acc kept %",
                "after merge (target / source)",
                "seconds",
            ],
            &rows,
            1,
        );
        let pts: Vec<(String, f64, f64)> = ms_
            .iter()
            .map(|m| {
                (
                    m.method.clone(),
                    m.target_accuracy.mean,
                    m.source_accuracy.mean,
                )
            })
            .collect();
        p.svg(&scatter(
            &format!("Retention against plasticity: {t}"),
            "target accuracy %",
            "source accuracy kept %",
            &pts,
        ));
    }
    p.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scatter_draws_every_finite_point_and_escapes_labels() {
        let s = scatter(
            "t",
            "x",
            "y",
            &[
                ("lift <r8>".into(), 90.0, 60.0),
                ("full".into(), 95.0, 20.0),
                ("bad".into(), f64::NAN, 1.0),
            ],
        );
        assert_eq!(s.matches("class=\"point\"").count(), 2);
        assert!(s.contains("lift &lt;r8&gt;") && !s.contains("<r8>"));
        assert_eq!(
            s,
            scatter(
                "t",
                "x",
                "y",
                &[
                    ("lift <r8>".into(), 90.0, 60.0),
                    ("full".into(), 95.0, 20.0),
                    ("bad".into(), f64::NAN, 1.0)
                ]
            )
        );
    }
}
