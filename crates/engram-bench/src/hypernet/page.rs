//! The hypernetwork study's report (card: shared/methods/hypernetworks.md): the claims, then
//! one section per part that ran, each written by its part.

use anyhow::Result;
use engram_report::html::Page;
use serde_json::Value;

pub fn render(doc: &Value) -> Result<String> {
    let mut p = Page::new("Networks that write networks: hypernetworks, HY-WU, KNOW");
    let quick = doc["quick"].as_bool().unwrap_or(false);
    p.para(&format!(
        "Card: shared/methods/hypernetworks.md. Command: {}. {:.0} s.{}",
        doc["command"].as_str().unwrap_or(""),
        doc["wall_s"].as_f64().unwrap_or(0.0),
        if quick {
            " Quick mode: a smoke check, not the benchmark's numbers."
        } else {
            ""
        }
    ));
    crate::parts::claims(&mut p, doc)?;
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
