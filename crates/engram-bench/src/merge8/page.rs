//! The merge-8 study's results (`results.json`) and their HTML page (`report/index.html`):
//! per-task and mean absolute and normalized accuracy of every method, the chosen λ/α/k with
//! their validation curves, mask statistics and storage.

use engram_report::html::Page;
use engram_report::svg;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StudyTask {
    pub name: String,
    pub dataset: String,
    pub transform: String,
    pub train: usize,
    pub valid: usize,
    pub test: usize,
}

/// One evaluated model family (base, fine-tuned, a merge) on every task.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MethodResult {
    pub method: String,
    /// The chosen hyperparameters, in words ("λ = 0.3", "k = 2, α = 0.6").
    pub chosen: String,
    /// Test accuracy per task, percent.
    pub test_accuracy: Vec<f64>,
    /// Test accuracy / the fine-tuned model's test accuracy, per task (percent).
    pub normalized: Vec<f64>,
    pub mean_accuracy: f64,
    /// Mean of the per-task ratios (metrics.md), percent.
    pub normalized_accuracy: f64,
    /// The validation curve the choice was made on: (value, mean normalized validation
    /// accuracy in percent); per-task choices (TALL λ_t) list every task's curve in turn.
    pub validation_curve: Vec<(f64, f64)>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MaskSummary {
    /// "sum" (TA) or "ties".
    pub recipe: String,
    pub lambdas: Vec<f32>,
    pub params: u64,
    pub untouched: u64,
    pub catastrophic: u64,
    pub selfish: u64,
    pub shared: u64,
    /// Σ_t m_t histogram, 0..=T.
    pub histogram: Vec<u64>,
    pub mask_density: Vec<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StorageResult {
    /// Which family: "merge-8" or a synthetic model.
    pub family: String,
    pub params: u64,
    pub tasks: usize,
    /// Base plus every fine-tuned checkpoint.
    pub checkpoints_bytes: u64,
    pub bundle_packed_bytes: u64,
    pub bundle_coded_bytes: u64,
    pub masks_packed_bytes: u64,
    pub masks_coded_bytes: u64,
    /// Seconds to rebuild one task's checkpoint from the coded bundle (median).
    pub rebuild_seconds: f64,
    /// Every task rebuilt from both bundles equals its in-memory reconstruction byte for byte.
    pub bit_exact: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Merge8Results {
    pub seed: u64,
    /// The study's settings (model, epochs, learning rates, grids).
    pub config: serde_json::Value,
    /// Where every TIES step (the TIES row, TALL and Consensus over TIES) takes its top-k:
    /// "model" (over the whole model, merging.md) or "tensor".
    #[serde(default)]
    pub ties_trim_scope: String,
    pub tasks: Vec<StudyTask>,
    pub methods: Vec<MethodResult>,
    pub masks: Vec<MaskSummary>,
    pub storage: Vec<StorageResult>,
    /// Steps taken from an earlier run's files instead of recomputed.
    pub reused_steps: Vec<String>,
    pub seconds: f64,
}

/// The TIES trim scope in words ("model" → "over the whole model").
pub fn scope_words(scope: &str) -> String {
    match scope {
        "model" => "top-k over the whole model".into(),
        "tensor" => "top-k per tensor".into(),
        other => format!("'{other}'"),
    }
}

fn pct(v: f64) -> String {
    format!("{v:.1}")
}

fn mb(b: u64) -> String {
    format!("{:.2} MB", b as f64 / 1e6)
}

/// A chart label for a method name ("Consensus TIES (k = 2)" → "Cons TIES k2").
fn short(name: &str) -> String {
    name.replace("Base + probe head", "base")
        .replace("Fine-tuned", "fine-tuned")
        .replace("Task Arithmetic", "TA")
        .replace("TALL masks", "TALL")
        .replace("Consensus", "Cons")
        .replace(" (k = ", " k")
        .replace(['(', ')'], "")
}

fn method<'a>(r: &'a Merge8Results, name: &str) -> Option<&'a MethodResult> {
    r.methods.iter().find(|m| m.method == name)
}

/// The study's answers to the paper's claims, in words, from the numbers.
pub fn findings(r: &Merge8Results) -> Vec<String> {
    let mut out = Vec::new();
    for tall in ["TALL masks (TA)", "TALL masks (TIES)"] {
        if let Some(m) = method(r, tall) {
            let below = m.normalized.iter().filter(|&&v| v < 99.0).count();
            out.push(format!(
                "{tall}: {:.1} % of the fine-tuned accuracy on average (the paper: over 99 %); {} of {} tasks below 99 %, the lowest {:.1} %.",
                m.normalized_accuracy,
                below,
                m.normalized.len(),
                m.normalized.iter().copied().fold(f64::INFINITY, f64::min)
            ));
        }
    }
    for (base, cons) in [
        ("Task Arithmetic", "Consensus TA (k = 2)"),
        ("TIES", "Consensus TIES (k = 2)"),
    ] {
        if let (Some(b), Some(c)) = (method(r, base), method(r, cons)) {
            let d = c.normalized_accuracy - b.normalized_accuracy;
            out.push(format!(
                "{cons} against {base}: {:.1} % vs {:.1} % normalized ({}{:.1} points; the paper: Consensus improves both).",
                c.normalized_accuracy,
                b.normalized_accuracy,
                if d >= 0.0 { "+" } else { "" },
                d
            ));
        }
    }
    for s in &r.storage {
        out.push(format!(
            "Storage ({}): {} tasks' checkpoints {:.2} MB → bundle {:.2} MB with coded masks ({:.2}× smaller; the paper: 57 GB → 8.2 GB, 6.95×, for 20 ViT-L tasks; with T tasks the bound is about (T+1)/2 = {:.1}×). Coded masks take {:.3} bit per weight per task, {:.2}× less than packed bits; every task rebuilt bit for bit: {}.",
            s.family,
            s.tasks,
            s.checkpoints_bytes as f64 / 1e6,
            s.bundle_coded_bytes as f64 / 1e6,
            s.checkpoints_bytes as f64 / s.bundle_coded_bytes.max(1) as f64,
            (s.tasks as f64 + 1.0) / 2.0,
            s.masks_coded_bytes as f64 * 8.0 / (s.params.max(1) * s.tasks.max(1) as u64) as f64,
            s.masks_packed_bytes as f64 / s.masks_coded_bytes.max(1) as f64,
            s.bit_exact
        ));
    }
    out
}

/// The study's page.
pub fn render_merge8(r: &Merge8Results) -> String {
    let mut p = Page::new("engram merge-8 study");
    p.para(&format!(
        "Eight image tasks derived from Fashion-MNIST and MNIST digits, one shared base \
         pre-trained on both, one fine-tune per task with its own head (frozen linear probe), \
         merged in weight space. Seed {}. λ, α and k were chosen on validation splits \
         carved from the training data; test accuracy is shown at the chosen values only. \
         Normalized accuracy = mean over tasks of merged / fine-tuned accuracy. Every TIES \
         step (the TIES row, TALL and Consensus over TIES) trims in one scope: {}.",
        r.seed,
        scope_words(&r.ties_trim_scope)
    ));
    p.heading("Findings");
    for f in findings(r) {
        p.para(&f);
    }
    p.heading("Accuracy");
    let mut header: Vec<String> = vec!["method".into(), "chosen".into()];
    header.extend(r.tasks.iter().map(|t| t.name.clone()));
    header.push("mean".into());
    header.push("normalized".into());
    let hdr: Vec<&str> = header.iter().map(String::as_str).collect();
    let rows: Vec<Vec<String>> = r
        .methods
        .iter()
        .map(|m| {
            let mut row = vec![m.method.clone(), m.chosen.clone()];
            row.extend(m.test_accuracy.iter().map(|&a| pct(a)));
            row.push(pct(m.mean_accuracy));
            row.push(pct(m.normalized_accuracy));
            row
        })
        .collect();
    p.table_text_cols(&hdr, &rows, 2);
    let labels: Vec<String> = r.methods.iter().map(|m| short(&m.method)).collect();
    let norm: Vec<f64> = r.methods.iter().map(|m| m.normalized_accuracy).collect();
    let abs: Vec<f64> = r.methods.iter().map(|m| m.mean_accuracy).collect();
    p.svg_row(&[
        svg::bar_chart("Normalized accuracy", &labels, &norm, "% of fine-tuned"),
        svg::bar_chart("Mean test accuracy", &labels, &abs, "accuracy %"),
    ]);
    let groups: Vec<String> = r.tasks.iter().map(|t| t.name.clone()).collect();
    let values: Vec<Vec<Option<f64>>> = r
        .tasks
        .iter()
        .enumerate()
        .map(|(i, _)| {
            r.methods
                .iter()
                .map(|m| m.test_accuracy.get(i).copied())
                .collect()
        })
        .collect();
    p.svg(&svg::grouped_bar_chart(
        "Test accuracy per task",
        &groups,
        &labels,
        &values,
        None,
        "accuracy %",
    ));
    let curves: Vec<svg::Series> = r
        .methods
        .iter()
        .filter(|m| !m.validation_curve.is_empty() && !m.method.starts_with("TALL"))
        .map(|m| svg::Series {
            label: short(&m.method),
            points: m.validation_curve.clone(),
        })
        .collect();
    if !curves.is_empty() {
        p.svg(&svg::line_chart(
            &svg::LineChart {
                title: "Validation: mean normalized accuracy against λ or α".into(),
                x_label: "λ or α".into(),
                y_label: "% of fine-tuned".into(),
                ..Default::default()
            },
            &curves,
        ));
    }
    p.heading("Masks");
    let rows: Vec<Vec<String>> = r
        .masks
        .iter()
        .map(|m| {
            vec![
                m.recipe.clone(),
                m.lambdas
                    .iter()
                    .map(|l| format!("{l}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                m.params.to_string(),
                m.catastrophic.to_string(),
                m.selfish.to_string(),
                m.shared.to_string(),
                m.untouched.to_string(),
                m.mask_density
                    .iter()
                    .map(|d| format!("{:.2}", d))
                    .collect::<Vec<_>>()
                    .join(" "),
            ]
        })
        .collect();
    p.table_text_cols(
        &[
            "τ_MTL",
            "λ_t",
            "params",
            "catastrophic (in no mask)",
            "selfish (in one)",
            "shared (2+)",
            "untouched (τ_MTL = 0)",
            "mask density per task",
        ],
        &rows,
        2,
    );
    let hists: Vec<String> = r
        .masks
        .iter()
        .map(|m| {
            let labels: Vec<String> = (0..m.histogram.len()).map(|k| k.to_string()).collect();
            let vals: Vec<f64> = m.histogram.iter().map(|&c| c as f64).collect();
            svg::bar_chart(
                &format!("Σ_t m_t histogram (τ_MTL = {})", m.recipe),
                &labels,
                &vals,
                "weights",
            )
        })
        .collect();
    p.svg_row(&hists);
    p.heading("Storage");
    let rows: Vec<Vec<String>> = r
        .storage
        .iter()
        .map(|s| {
            vec![
                s.family.clone(),
                s.params.to_string(),
                s.tasks.to_string(),
                mb(s.checkpoints_bytes),
                mb(s.bundle_packed_bytes),
                mb(s.bundle_coded_bytes),
                format!(
                    "{} → {} ({:.2}× smaller; {:.3} bit/weight/task)",
                    mb(s.masks_packed_bytes),
                    mb(s.masks_coded_bytes),
                    s.masks_packed_bytes as f64 / s.masks_coded_bytes.max(1) as f64,
                    s.masks_coded_bytes as f64 * 8.0
                        / (s.params.max(1) * s.tasks.max(1) as u64) as f64
                ),
                format!("{:.3}", s.rebuild_seconds),
                s.bit_exact.to_string(),
            ]
        })
        .collect();
    p.table_text_cols(
        &[
            "family",
            "params",
            "tasks",
            "base + fine-tuned",
            "bundle (packed masks)",
            "bundle (coded masks)",
            "masks packed → coded",
            "rebuild one task (s)",
            "bit-exact",
        ],
        &rows,
        1,
    );
    p.heading("Tasks");
    let rows: Vec<Vec<String>> = r
        .tasks
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.dataset.clone(),
                t.transform.clone(),
                t.train.to_string(),
                t.valid.to_string(),
                t.test.to_string(),
            ]
        })
        .collect();
    p.table_text_cols(
        &["task", "data", "transform", "train", "valid", "test"],
        &rows,
        3,
    );
    p.note(&format!(
        "Settings: {}. Reused from an earlier run: {}. Total {:.1} s.",
        r.config,
        if r.reused_steps.is_empty() {
            "nothing".to_string()
        } else {
            r.reused_steps.join(", ")
        },
        r.seconds
    ));
    p.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_holds_every_method_task_and_chart() {
        let r = Merge8Results {
            seed: 1,
            config: serde_json::json!({"epochs": 1}),
            ties_trim_scope: "model".into(),
            tasks: vec![StudyTask {
                name: "fashion".into(),
                dataset: "fashion-mnist".into(),
                transform: "none".into(),
                train: 9,
                valid: 1,
                test: 5,
            }],
            methods: vec![MethodResult {
                method: "Task Arithmetic".into(),
                chosen: "λ = 0.3".into(),
                test_accuracy: vec![81.25],
                normalized: vec![90.0],
                mean_accuracy: 81.25,
                normalized_accuracy: 90.0,
                validation_curve: vec![(0.1, 50.0), (0.2, 70.0)],
            }],
            masks: vec![MaskSummary {
                recipe: "sum".into(),
                lambdas: vec![0.4],
                params: 10,
                untouched: 1,
                catastrophic: 2,
                selfish: 3,
                shared: 4,
                histogram: vec![3, 7],
                mask_density: vec![0.7],
            }],
            storage: vec![],
            reused_steps: vec![],
            seconds: 1.0,
        };
        assert_eq!(short("Consensus TIES (k = 2)"), "Cons TIES k2");
        assert_eq!(short("TALL masks (TA)"), "TALL TA");
        let html = render_merge8(&r);
        for needle in [
            "Task Arithmetic",
            "81.2",
            "fashion",
            "<svg",
            "catastrophic",
            "top-k over the whole model",
        ] {
            assert!(html.contains(needle), "{needle}");
        }
        let back: Merge8Results =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
