//! engram-report: turns results (JSON) into tables and self-contained HTML pages with SVG
//! charts. Pages embed everything (no scripts, no network), so they open anywhere.
//!
//! Continual-learning runs: [`results::RunResults`] (the JSON engram-learn writes) →
//! [`report::write_report`] (`index.html`, `results.csv`, `results.json`). Generic parts for
//! other pages: [`html::Page`] and the charts in [`svg`]; a study builds its own page from
//! them (engram-bench), this crate knows no study.

pub mod html;
pub mod report;
pub mod results;
pub mod svg;
pub mod tensorboard;

pub use report::write_report;
pub use results::{RunResults, RunSummary, parse_results};
