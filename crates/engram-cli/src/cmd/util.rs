//! Small helpers shared by the commands: composing and printing reports (text and JSON),
//! human-readable numbers, numbered tensor groups. Tensors are split into chunks for parallel
//! streaming by `engram_ckpt::chunk`.

use anyhow::Context;

/// `println!` into a `String` (reports are composed first, then written by [`emit`]).
macro_rules! outln {
    ($o:expr) => { $o.push('\n') };
    ($o:expr, $($t:tt)*) => {{ $o.push_str(&format!($($t)*)); $o.push('\n'); }};
}
/// `print!` into a `String`.
macro_rules! out {
    ($o:expr, $($t:tt)*) => { $o.push_str(&format!($($t)*)) };
}
pub(crate) use {out, outln};

/// Writes a composed text report to stdout, with control characters escaped line by line
/// (tensor names and metadata come from files: [`esc`]). A closed pipe
/// (`engram inspect ... | head`) is not an error: the reader has what it wanted.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let lines: Vec<_> = text.split('\n').map(esc).collect();
    write_out(&lines.join("\n"))
}

fn write_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|_| o.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Writes a value to stdout as pretty JSON with a final newline (the `--json` of every command).
pub fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(v).context("serializing the report")?;
    // serde_json escapes C0 controls in strings (raw line breaks are its layout); the other
    // characters `esc` escapes become \uXXXX too (all are in the Basic Multilingual Plane).
    let unsafe_char = |c: char| c != '\n' && unsafe_char(c);
    if text.contains(unsafe_char) {
        let text: String = text
            .chars()
            .map(|c| match c {
                c if unsafe_char(c) => format!("\\u{:04x}", c as u32),
                c => c.to_string(),
            })
            .collect();
        return write_out(&(text + "\n"));
    }
    write_out(&(text + "\n"))
}

/// Text from files as printed to a terminal (one escape for every printer).
pub use engram_ckpt::names::{esc, unsafe_char};

/// Widest a table column grows: longer cells overflow it (a format width above 65535
/// panics, and a wider column helps no one).
pub const MAX_COLUMN: usize = 80;

/// The width of a column of cells `widths` wide (in characters): at least `min`, at most
/// [`MAX_COLUMN`].
pub fn column(widths: impl Iterator<Item = usize>, min: usize) -> usize {
    widths.max().unwrap_or(0).max(min).min(MAX_COLUMN)
}

/// Human-readable counts (`1.2M`) and bytes (`2.47 GB`), one definition for every table.
pub use engram_bench::units::{bytes, count};

pub fn shape(s: &[usize]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// A float for tables: fixed for ordinary magnitudes, scientific for tiny or huge ones.
pub fn num(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.is_nan() => "nan".into(),
        Some(0.0) => "0".into(),
        Some(v) if (1e-3..1e5).contains(&v.abs()) => format!("{v:.4}"),
        Some(v) => format!("{v:.3e}"),
    }
}

/// For a group name ending in a number (`model.layers.12`), its stem and the number.
pub fn numbered(group: &str) -> Option<(&str, u64)> {
    let (stem, n) = group.rsplit_once('.')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem, n.parse().ok()?))
}

/// The one atomic JSON writer (pretty, with a final newline; creates the folder).
pub use engram_bench::machine::write_json as write_json_file;

/// Largest run file read (`engram train`, `adapt`, `hypernet`).
pub const RUN_FILE_LIMIT: u64 = 1 << 20;

/// A run file's text and the guard that keeps it open: held for the whole run, so that no
/// output of the run may replace it. Errors name the file.
pub fn read_run_file(
    path: &std::path::Path,
) -> anyhow::Result<(String, engram_ckpt::commit::OpenInput)> {
    let (bytes, input) = engram_ckpt::commit::read_input(path, "a run file", RUN_FILE_LIMIT)?;
    let text = String::from_utf8(bytes).map_err(|_| {
        anyhow::anyhow!(
            "{}: not UTF-8 text",
            engram_ckpt::names::esc(&path.display().to_string())
        )
    })?;
    Ok((text, input))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups() {
        assert_eq!(numbered("model.layers.12"), Some(("model.layers", 12)));
        assert_eq!(numbered("lm_head"), None);
    }

    #[test]
    fn formats() {
        assert_eq!(shape(&[2, 3]), "[2, 3]");
        assert_eq!(num(Some(0.5)), "0.5000");
        assert_eq!(num(None), "-");
    }
}
