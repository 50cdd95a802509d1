//! The Deep Ignorance study's report (card: shared/methods/robustness_safety.md): the claims,
//! then one section per part that ran, each written by its part.

use anyhow::Result;
use serde_json::Value;

pub fn render(doc: &Value) -> Result<String> {
    let mut p = crate::parts::page(
        "Knowledge that never enters the weights: Deep Ignorance",
        super::CARD,
        doc,
    )?;
    if doc.get("text").is_some() {
        super::text::section(&mut p, &doc["text"])?;
    }
    if doc.get("image").is_some() {
        super::image::section(&mut p, &doc["image"])?;
    }
    Ok(p.render())
}
