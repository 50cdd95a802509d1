//! Small helpers shared by the checkpoint commands: human-readable numbers, tensor groups,
//! and splitting tensors into chunks for parallel streaming.

use engram_ckpt::CHUNK;

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

/// Writes a composed report to stdout. A closed pipe (`engram inspect ... | head`) is not an
/// error: the reader has what it wanted.
pub fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|_| o.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// An error and its causes on one line, leaving out a cause whose text the message before it
/// already includes (`path: No such file` caused by `No such file`).
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut s = String::new();
    for c in e.chain() {
        let t = c.to_string();
        if !s.contains(&t) {
            if !s.is_empty() {
                s.push_str(": ");
            }
            s.push_str(&t);
        }
    }
    s
}

/// `1234567` -> `1.23M`; exact below ten thousand.
pub fn count(n: u64) -> String {
    let f = n as f64;
    match n {
        0..10_000 => n.to_string(),
        10_000..1_000_000 => format!("{:.1}K", f / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", f / 1e6),
        _ => format!("{:.2}B", f / 1e9),
    }
}

/// Bytes in decimal units: `2.47 GB`.
pub fn bytes(n: u64) -> String {
    let f = n as f64;
    match n {
        0..1000 => format!("{n} B"),
        1000..1_000_000 => format!("{:.1} KB", f / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", f / 1e6),
        _ => format!("{:.2} GB", f / 1e9),
    }
}

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

/// The group a tensor belongs to for summaries: the name up to and including its first
/// numeric component (`model.layers.12.mlp.up_proj.weight` -> `model.layers.12`), else the
/// name without its last component (`model.embed_tokens.weight` -> `model.embed_tokens`).
pub fn group_of(name: &str) -> &str {
    let mut end = 0;
    for part in name.split('.') {
        end += part.len();
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            return &name[..end];
        }
        end += 1;
    }
    match name.rfind('.') {
        Some(i) if i > 0 => &name[..i],
        _ => name,
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

/// Work items `(tensor index, first element, element count)` covering every tensor in chunks
/// of at most [`CHUNK`] elements, so that large tensors are split across threads.
/// Empty tensors get one empty item, so every tensor is visited.
pub fn chunks(numels: impl Iterator<Item = usize>) -> Vec<(usize, usize, usize)> {
    let mut v = Vec::new();
    for (i, n) in numels.enumerate() {
        if n == 0 {
            v.push((i, 0, 0));
        }
        let mut at = 0;
        while at < n {
            let k = CHUNK.min(n - at);
            v.push((i, at, k));
            at += k;
        }
    }
    v
}

/// Writes `v` as pretty JSON (with a final newline) to `path`, creating its folder; atomic.
pub fn write_json_file(path: &std::path::Path, v: &impl serde::Serialize) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(v).context("serializing JSON")? + "\n";
    engram_ckpt::write_atomic(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups() {
        assert_eq!(
            group_of("model.layers.12.mlp.up_proj.weight"),
            "model.layers.12"
        );
        assert_eq!(group_of("model.embed_tokens.weight"), "model.embed_tokens");
        assert_eq!(group_of("lm_head.weight"), "lm_head");
        assert_eq!(group_of("bias"), "bias");
        assert_eq!(group_of("h.0.attn"), "h.0");
        assert_eq!(group_of(".x"), ".x");
        assert_eq!(numbered("model.layers.12"), Some(("model.layers", 12)));
        assert_eq!(numbered("lm_head"), None);
    }

    #[test]
    fn formats() {
        assert_eq!(count(1234), "1234");
        assert_eq!(count(1_240_000_000), "1.24B");
        assert_eq!(bytes(2_470_000_000), "2.47 GB");
        assert_eq!(shape(&[2, 3]), "[2, 3]");
        assert_eq!(num(Some(0.5)), "0.5000");
        assert_eq!(num(None), "-");
    }

    #[test]
    fn chunking_covers_everything() {
        let c = chunks([0, CHUNK + 5, 3].into_iter());
        assert_eq!(c, vec![(0, 0, 0), (1, 0, CHUNK), (1, CHUNK, 5), (2, 0, 3)]);
    }
}
