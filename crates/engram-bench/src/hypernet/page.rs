//! The hypernetwork study's report (card: shared/methods/hypernetworks.md): the claims, then
//! one section per part that ran, each written by its part.

use anyhow::Result;
use serde_json::Value;

pub fn render(doc: &Value) -> Result<String> {
    let mut p = crate::parts::page(
        "Networks that write networks: hypernetworks, HY-WU, KNOW",
        super::CARD,
        doc,
    )?;
    if doc.get("tasks").is_some() {
        super::tasks::section(&mut p, &doc["tasks"])?;
    }
    if doc.get("hywu").is_some() {
        super::hywu::section(&mut p, &doc["hywu"])?;
    }
    if doc.get("know").is_some() {
        super::know::section(&mut p, &doc["know"])?;
    }
    Ok(p.render())
}
