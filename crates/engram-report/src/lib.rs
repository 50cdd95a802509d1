//! engram-report: turns results (JSON) into tables and self-contained HTML pages with SVG charts.

pub mod table;
