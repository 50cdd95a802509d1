//! The selective fine-tuning benchmark's results and their HTML page (`report.html`):
//! per target and method, target accuracy, source accuracy kept, trainable values, optimizer
//! memory and time over seeds; a retention-against-plasticity chart; the papers' claims with
//! whether they hold here.

use engram_report::html::Page;
use engram_report::report::MeanSpread;
use engram_report::svg::scatter;
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
    fn page_holds_claims_targets_and_one_scatter_per_target() {
        let one = |v: f64| MeanSpread::of(&[v]).expect("value");
        let row = |target: &str, method: &str| MethodSummary {
            target: target.into(),
            method: method.into(),
            trainable: 10,
            trainable_max: 12,
            optimizer_bytes: 2048,
            target_accuracy: one(90.0),
            source_accuracy: one(60.0),
            merged_target_accuracy: None,
            merged_source_accuracy: None,
            seconds: one(1.5),
            selected: Vec::new(),
        };
        let r = FinetuneResults {
            settings: serde_json::json!({"source": {"data": "fashion-mnist"}, "seeds": 1}),
            source_before: vec![85.0],
            kappas: vec![vec![("body.0".into(), 1234.5)]],
            summary: vec![row("mnist", "full"), row("mnist-permuted", "lift r8")],
            claims: vec![Claim {
                target: "mnist".into(),
                claim: "LIFT keeps <more>".into(),
                holds: true,
                clear: false,
                evidence: "full: target 90.0".into(),
            }],
            runs: serde_json::json!([]),
        };
        let html = render_finetune(&r);
        for needle in [
            "Target: mnist-permuted",
            "LIFT keeps &lt;more&gt;",
            "holds (within seed noise)",
            "10–12",
            "2.0 KiB",
            "1.234e3",
        ] {
            assert!(html.contains(needle), "{needle}");
        }
        assert_eq!(html.matches("<svg").count(), 2);
        let back: FinetuneResults =
            serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
