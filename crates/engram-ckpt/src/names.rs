//! Strings that come from outside (task names, tensor names, metadata) where they meet the
//! file system or a terminal: one check for a string used as a file or folder name, one
//! escape for text printed to a terminal; and the one matcher of tensor names against `*`
//! patterns.

use crate::error::{Error, Result};
use std::borrow::Cow;

/// Longest plain name in bytes (file systems allow 255; room is left for suffixes).
pub const MAX_NAME_BYTES: usize = 200;

/// Checks that `name` can be one component of a path: non-empty, at most
/// [`MAX_NAME_BYTES`] bytes, not `.` or `..`, and without `/`, `\`, NUL or other control
/// characters. `what` says what the name is (e.g. "task name") in the error.
pub fn plain_name(what: &str, name: &str) -> Result<()> {
    let why = if name.is_empty() {
        "is empty"
    } else if name.len() > MAX_NAME_BYTES {
        "is longer than 200 bytes"
    } else if name == "." || name == ".." {
        "is not a plain name"
    } else if name.contains(['/', '\\']) {
        "contains a path separator"
    } else if name.chars().any(char::is_control) {
        "contains a control character"
    } else if name.chars().any(invisible) {
        "contains an invisible or direction-changing character"
    } else if name.trim() != name || name.starts_with(['-', '.']) {
        "starts or ends with a space, or starts with '-' or '.'"
    } else {
        return Ok(());
    };
    Err(Error::Invalid(format!(
        "{what} '{}' {why}: use a plain file name",
        esc(&name.chars().take(MAX_NAME_BYTES).collect::<String>())
    )))
}

/// `s` as printed to a terminal: control characters (C0, DEL, C1) and the bidirectional
/// overrides that reorder what is shown become `\u{..}` escapes, so that a tensor name or a
/// metadata value cannot move the cursor, retitle the window or hide text.
pub fn esc(s: &str) -> Cow<'_, str> {
    let bad = unsafe_char;
    if !s.chars().any(bad) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| {
                if bad(c) {
                    format!("\\u{{{:x}}}", c as u32)
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// Whether the tensor or parameter name `name` matches the anchored glob `pattern`: `*`
/// matches any run of characters (dots included), every other character matches itself, and
/// the whole name must match (`enc.*` a prefix, `*.bias` a suffix, `*.lora_A.*` a part, a
/// pattern without `*` exactly that name). Callers that give a pattern without `*` another
/// meaning (a prefix, a substring) say so and decide it before calling.
pub fn glob(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(rest) = name.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = parts.collect();
    let Some(last) = parts.pop() else {
        return rest.is_empty();
    };
    let Some(mut rest) = rest.strip_suffix(last) else {
        return false;
    };
    // Each middle part at its leftmost place inside what the two ends leave: taking the
    // earliest match leaves the most room for the parts after it.
    for p in parts {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

/// The characters [`esc`] escapes (JSON writers escape them in their own syntax).
pub fn unsafe_char(c: char) -> bool {
    c.is_control() || invisible(c)
}

/// Characters that are invisible or reorder text: Unicode's default-ignorable code points
/// (soft hyphen, zero-width and joiner characters, bidirectional marks, embeddings, overrides
/// and isolates, invisible operators, variation selectors, Hangul fillers, tags, the
/// byte-order mark) and the line and paragraph separators.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{ad}'
            | '\u{34f}'
            | '\u{61c}'
            | '\u{115f}'..='\u{1160}'
            | '\u{17b4}'..='\u{17b5}'
            | '\u{180b}'..='\u{180f}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{3164}'
            | '\u{fe00}'..='\u{fe0f}'
            | '\u{feff}'
            | '\u{ffa0}'
            | '\u{fff0}'..='\u{fffb}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0000}'..='\u{e0fff}'
    )
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
    }

    #[test]
    fn plain_names_only() {
        for ok in ["ft-1", "task_a", "a.b", "é", &"x".repeat(200)] {
            plain_name("task name", ok).unwrap();
        }
        for (bad, why) in [
            ("", "empty"),
            (".", "plain"),
            ("..", "plain"),
            ("../x", "separator"),
            ("a\\b", "separator"),
            ("/abs", "separator"),
            ("a\0b", "control"),
            ("a\nb", "control"),
            ("a\u{202e}b", "invisible"),
            ("\u{feff}a", "invisible"),
            ("a\u{200b}", "invisible"),
            (" ", "space"),
            ("a ", "space"),
            ("-rf", "'-'"),
            (".engram-staging", "'.'"),
            ("a\u{2028}b", "invisible"),
            ("a\u{ad}b", "invisible"),
            ("a\u{e0041}", "invisible"),
            (&"x".repeat(201), "200 bytes"),
        ] {
            let e = plain_name("task name", bad).unwrap_err().to_string();
            assert!(e.contains("task name") && e.contains(why), "{bad:?}: {e}");
        }
    }

    /// The obvious slow matcher: `*` tries every split of the rest of the name.
    fn slow(p: &[u8], n: &[u8]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some((b'*', rest)) => (0..=n.len()).any(|k| slow(rest, &n[k..])),
            Some((c, rest)) => n.first() == Some(c) && slow(rest, &n[1..]),
        }
    }

    /// Every string of length up to `max` over `alphabet`.
    fn strings(alphabet: &[char], max: usize) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut last = all.clone();
        for _ in 0..max {
            last = last
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    #[test]
    fn glob_agrees_with_the_slow_matcher() {
        // Every pattern up to 5 characters over {a, b, ., *} against every name up to 6 over
        // {a, b, .}: overlapping parts, repeated stars, empty names and parts.
        let names = strings(&['a', 'b', '.'], 6);
        for p in strings(&['a', 'b', '.', '*'], 5) {
            for n in &names {
                assert_eq!(glob(&p, n), slow(p.as_bytes(), n.as_bytes()), "{p:?} {n:?}");
            }
        }
        // Tensor names, and characters outside ASCII.
        assert!(glob("enc.*", "enc.0.w") && !glob("enc.*", "dec.enc.0.w"));
        assert!(glob("*.lora_A.*", "l.0.lora_A.weight") && !glob("*.lora_A.*", "lora_A.w"));
        assert!(glob("l.*.w", "l.1.2.w") && !glob("l.*.w", "l.1.b"));
        assert!(glob("a.b", "a.b") && !glob("a", "a.b") && !glob("a.b", "a.bc"));
        assert!(glob("é*ü", "é.ü") && glob("*ü", "ü") && !glob("é*ü", "éü.x"));
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(esc("model.w"), "model.w");
        assert_eq!(esc("a\u{1b}[31mb\u{7}"), "a\\u{1b}[31mb\\u{7}");
        assert_eq!(esc("x\ny\u{202e}z\u{9f}"), "x\\u{a}y\\u{202e}z\\u{9f}");
    }
}
