//! The Deep Ignorance study's report (card: shared/methods/robustness_safety.md): the claims,
//! then one section per part that ran, each written by its part.

use anyhow::Result;
use engram_report::html::Page;
use serde_json::Value;

pub fn render(doc: &Value) -> Result<String> {
    let mut p = Page::new("Knowledge that never enters the weights: Deep Ignorance");
    let quick = doc["quick"].as_bool().unwrap_or(false);
    p.para(&format!(
        "Card: {}. Command: {}. {:.0} s.{}",
        super::CARD,
        doc["command"].as_str().unwrap_or(""),
        doc["wall_s"].as_f64().unwrap_or(0.0),
        if quick {
            " Quick mode: a smoke check, not the benchmark's numbers."
        } else {
            ""
        }
    ));
    crate::parts::claims(&mut p, doc)?;
    if doc.get("text").is_some() {
        super::text::section(&mut p, &doc["text"])?;
    }
    if doc.get("image").is_some() {
        super::image::section(&mut p, &doc["image"])?;
    }
    Ok(p.render())
}
