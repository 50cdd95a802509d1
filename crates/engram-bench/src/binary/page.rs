//! The binary / Ker-VLJEPA study's report: the claims, then one section per part that ran,
//! each written by its part.

use anyhow::Result;
use serde_json::Value;

pub fn render(doc: &Value) -> Result<String> {
    let mut p = crate::parts::page(
        "Binary weights in field space, and the Ker-VLJEPA parts",
        super::CARD,
        doc,
    )?;
    type Section = fn(&mut engram_report::html::Page, &Value) -> Result<()>;
    let sections: [(&str, Section); 5] = [
        ("perceptron", super::perceptron::section),
        ("deep", super::deep::section),
        ("whiten", super::whiten::section),
        ("curriculum", super::curriculum::section),
        ("thresholds", super::thresholds::section),
    ];
    for (name, section) in sections {
        if doc.get(name).is_some() {
            section(&mut p, &doc[name])?;
        }
    }
    Ok(p.render())
}
