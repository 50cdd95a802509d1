//! engram-report: turns results (JSON) into tables and self-contained HTML pages with SVG
//! charts. Pages embed everything (no scripts, no network), so they open anywhere.

pub mod html;
pub mod svg;
