//! Pretraining-data filtering as in Deep Ignorance (arXiv 2508.06601; card
//! `shared/methods/robustness_safety.md`, "Deep Ignorance"): a blocklist stage and a
//! classifier stage over text documents.
//!
//! - **Blocklist.** Terms are stems (`poison*`: any word that starts so) or whole words. The
//!   card's keyword family is [`FAMILY`]; [`Blocklist::extend_from`] adds the words seen at
//!   least `min_count` times in proxy documents (known hazardous) whose pos-ratio —
//!   occurrences in the proxies over occurrences in the whole corpus — is at least
//!   `min_ratio` (the paper keeps terms with pos-ratio ≥ 0.4). A document with at least
//!   `min_hits` (2) hits is *escalated*.
//! - **Classifier.** The paper fine-tunes ModernBERT; engram's small stand-in is a logistic
//!   regression on hashed word counts (log(1 + count), L2-normalised), trained on chunks of
//!   proxy documents against chunks of documents without a single hit. A document is flagged
//!   if **any chunk** scores above the threshold.
//! - **Variants.** Strong: every escalated document is removed. Weak: an escalated document
//!   is removed only if the classifier flags it.
//!
//! Words are runs of ASCII letters and inner apostrophes, lower-cased (`Poison'd` is one
//! word). The card's derivation rule alone (≥ 3 occurrences, pos-ratio ≥ 0.4) picks up the
//! names of characters whose plays hold the proxies — on Shakespeare it blocked Othello and
//! Iago, and removed a third of the corpus against the paper's 8 %; engram's [`Derive`] also
//! asks for ≥ 2 groups (plays) and ≥ 4 letters.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The card's hazard keyword family (stems).
pub const FAMILY: [&str; 5] = ["poison", "venom", "potion", "drug", "apothecar"];

/// The byte spans of the words of `text`: runs of ASCII letters and apostrophes, without
/// apostrophes at either end (`Poison'd` is one word, `'tis` is `tis`).
pub fn word_spans(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_alphabetic() {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < b.len() && (b[j].is_ascii_alphabetic() || b[j] == b'\'') {
            j += 1;
        }
        let mut end = j;
        while b[end - 1] == b'\'' {
            end -= 1;
        }
        out.push((i, end));
        i = j;
    }
    out
}

/// The words of `text` (see [`word_spans`]), lower-cased.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    word_spans(text)
        .into_iter()
        .map(move |(a, b)| text[a..b].to_ascii_lowercase())
}

/// How [`Blocklist::extend_from`] derives words from proxy documents.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Derive {
    /// Occurrences in the proxies.
    pub min_count: usize,
    /// Occurrences in the proxies over occurrences in the corpus.
    pub min_ratio: f64,
    /// Distinct proxy groups (plays, files) the word occurs in: a character's name or a
    /// speaker's abbreviation lives in one play, a topic's words in several.
    pub min_groups: usize,
    /// Letters at least (apostrophe fragments and short function words out).
    pub min_len: usize,
}

impl Default for Derive {
    /// The card's rule (≥ 3 occurrences, pos-ratio ≥ 0.4) and engram's guards (≥ 2 groups,
    /// ≥ 4 letters).
    fn default() -> Self {
        Derive {
            min_count: 3,
            min_ratio: 0.4,
            min_groups: 2,
            min_len: 4,
        }
    }
}

/// A blocklist term: a stem (matches any word starting with it) or a whole word.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Term {
    pub text: String,
    pub stem: bool,
}

impl Term {
    pub fn matches(&self, word: &str) -> bool {
        match self.stem {
            true => word.starts_with(&self.text),
            false => word == self.text,
        }
    }
}

/// Terms whose hits escalate a document.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Blocklist {
    pub terms: Vec<Term>,
}

impl Blocklist {
    /// The card's keyword family, as stems.
    pub fn family() -> Blocklist {
        Blocklist {
            terms: FAMILY
                .iter()
                .map(|s| Term {
                    text: s.to_string(),
                    stem: true,
                })
                .collect(),
        }
    }

    /// Parses a blocklist file: one term per line, `word` or `stem*`; blank lines and lines
    /// starting with `#` are skipped. A term is ASCII letters with inner apostrophes
    /// (lower-cased here).
    pub fn parse(text: &str, origin: &str) -> crate::Result<Blocklist> {
        let mut terms = BTreeSet::new();
        for (n, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let (w, stem) = match t.strip_suffix('*') {
                Some(w) => (w, true),
                None => (t, false),
            };
            let letters = w.bytes().all(|b| b.is_ascii_alphabetic() || b == b'\'');
            if !letters || !w.starts_with(|c: char| c.is_ascii_alphabetic()) || w.ends_with('\'') {
                return Err(crate::err!(
                    "{origin}, line {}: `{t}` is not a term (ASCII letters and inner \
                     apostrophes, optionally ending in `*` for a stem)",
                    n + 1
                ));
            }
            terms.insert(Term {
                text: w.to_ascii_lowercase(),
                stem,
            });
        }
        if terms.is_empty() {
            return Err(crate::err!("{origin}: no terms"));
        }
        Ok(Blocklist {
            terms: terms.into_iter().collect(),
        })
    }

    /// The blocklist as a file [`Blocklist::parse`] reads.
    pub fn to_text(&self) -> String {
        self.terms
            .iter()
            .map(|t| format!("{}{}\n", t.text, if t.stem { "*" } else { "" }))
            .collect()
    }

    pub fn matches(&self, word: &str) -> bool {
        self.terms.iter().any(|t| t.matches(word))
    }

    /// The number of words of `text` the blocklist matches.
    pub fn hits(&self, text: &str) -> usize {
        words(text).filter(|w| self.matches(w)).count()
    }

    /// Adds the words that pass `d` over `proxies` (group, text) against `corpus` (which
    /// should contain the proxies) and that no term matches yet. Returns the words added, in
    /// order.
    pub fn extend_from(
        &mut self,
        proxies: &[(&str, &str)],
        corpus: &[&str],
        d: &Derive,
    ) -> Vec<String> {
        let mut pos: BTreeMap<String, (usize, BTreeSet<&str>)> = BTreeMap::new();
        for (group, text) in proxies {
            for w in words(text) {
                let e = pos.entry(w).or_default();
                e.0 += 1;
                e.1.insert(group);
            }
        }
        let mut all: BTreeMap<String, usize> = BTreeMap::new();
        for text in corpus {
            for w in words(text) {
                *all.entry(w).or_default() += 1;
            }
        }
        let added: Vec<String> = pos
            .into_iter()
            .filter(|(w, (n, groups))| {
                let total = all.get(w).copied().unwrap_or(0).max(*n);
                *n >= d.min_count
                    && *n as f64 / total as f64 >= d.min_ratio
                    && groups.len() >= d.min_groups
                    && w.bytes().filter(u8::is_ascii_alphabetic).count() >= d.min_len
                    && !self.matches(w)
            })
            .map(|(w, _)| w)
            .collect();
        self.terms.extend(added.iter().map(|w| Term {
            text: w.clone(),
            stem: false,
        }));
        self.terms.sort();
        added
    }
}

/// Hashed word features of one chunk: log(1 + count) per bucket, L2-normalised.
fn features(text: &str, dim: usize) -> Vec<(usize, f32)> {
    let mut m: BTreeMap<usize, f32> = BTreeMap::new();
    for w in words(text) {
        let h = engram_weights::rng::hash_str(&w) as usize % dim;
        *m.entry(h).or_default() += 1.0;
    }
    let mut v: Vec<(usize, f32)> = m.into_iter().map(|(k, c)| (k, c.ln_1p())).collect();
    let norm = v.iter().map(|(_, x)| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|(_, x)| *x /= norm);
    v
}

/// `text` cut at line ends into chunks of about `chunk` bytes (a line longer than that is a
/// chunk of its own).
pub fn chunks(text: &str, chunk: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut end = 0;
    for line in text.split_inclusive('\n') {
        if end > start && end - start + line.len() > chunk {
            out.push(&text[start..end]);
            start = end;
        }
        end += line.len();
    }
    if end > start {
        out.push(&text[start..end]);
    }
    out
}

/// The classifier stage: logistic regression on hashed word counts of chunks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Classifier {
    pub dim: usize,
    pub chunk: usize,
    pub weights: Vec<f32>,
    pub bias: f32,
}

/// Training settings of the [`Classifier`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    /// Hash buckets.
    pub dim: usize,
    /// Chunk length (bytes).
    pub chunk: usize,
    /// Full-batch gradient-descent steps, learning rate and L2 weight.
    pub steps: usize,
    pub lr: f32,
    pub l2: f32,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig {
            dim: 4096,
            chunk: 1000,
            steps: 300,
            lr: 2.0,
            l2: 1e-4,
        }
    }
}

impl Classifier {
    /// Trains on chunks of `positive` against chunks of `negative` documents, each class
    /// weighted to half the loss. Deterministic (full-batch gradient descent from zero).
    pub fn train(
        positive: &[&str],
        negative: &[&str],
        cfg: &ClassifierConfig,
    ) -> crate::Result<Classifier> {
        let (lr_ok, l2_ok) = (
            cfg.lr > 0.0 && cfg.lr.is_finite(),
            cfg.l2 >= 0.0 && cfg.l2.is_finite(),
        );
        if cfg.dim == 0 || cfg.chunk == 0 || !lr_ok || !l2_ok {
            return Err(crate::err!(
                "classifier: dim, chunk and lr must be positive and l2 not negative"
            ));
        }
        let rows = |docs: &[&str]| -> Vec<Vec<(usize, f32)>> {
            docs.iter()
                .flat_map(|d| chunks(d, cfg.chunk))
                .map(|c| features(c, cfg.dim))
                .collect()
        };
        let (pos, neg) = (rows(positive), rows(negative));
        if pos.is_empty() || neg.is_empty() {
            return Err(crate::err!(
                "classifier: needs positive and negative documents with text ({} and {} chunks)",
                pos.len(),
                neg.len()
            ));
        }
        let mut w = vec![0f32; cfg.dim];
        let mut b = 0f32;
        let (wp, wn) = (0.5 / pos.len() as f32, 0.5 / neg.len() as f32);
        for _ in 0..cfg.steps {
            let mut gw = vec![0f32; cfg.dim];
            let mut gb = 0f32;
            for (set, y, wt) in [(&pos, 1.0f32, wp), (&neg, 0.0, wn)] {
                for r in set.iter() {
                    let z = b + r.iter().map(|&(k, x)| w[k] * x).sum::<f32>();
                    let g = (sigmoid(z) - y) * wt;
                    gb += g;
                    for &(k, x) in r {
                        gw[k] += g * x;
                    }
                }
            }
            for (wi, gi) in w.iter_mut().zip(&gw) {
                *wi -= cfg.lr * (gi + cfg.l2 * *wi);
            }
            b -= cfg.lr * gb;
        }
        Ok(Classifier {
            dim: cfg.dim,
            chunk: cfg.chunk,
            weights: w,
            bias: b,
        })
    }

    /// The probability that a chunk is hazardous.
    pub fn score_chunk(&self, text: &str) -> f64 {
        let z = self.bias
            + features(text, self.dim)
                .iter()
                .map(|&(k, x)| self.weights[k] * x)
                .sum::<f32>();
        sigmoid(z) as f64
    }

    /// The highest chunk score of a document (0 for an empty one).
    pub fn score(&self, text: &str) -> f64 {
        chunks(text, self.chunk)
            .into_iter()
            .map(|c| self.score_chunk(c))
            .fold(0.0, f64::max)
    }
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// Strong (blocklist only) or weak (blocklist, then the classifier decides).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    #[default]
    Strong,
    Weak,
}

/// Settings of [`filter`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FilterConfig {
    pub variant: Variant,
    /// Hits that escalate a document (the paper: 2).
    pub min_hits: usize,
    /// Classifier threshold on a chunk's score (weak variant).
    pub threshold: f64,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            variant: Variant::Strong,
            min_hits: 2,
            threshold: 0.5,
        }
    }
}

/// What happened to one document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub id: String,
    pub hits: usize,
    pub escalated: bool,
    /// The classifier's highest chunk score (weak variant, escalated documents).
    pub score: Option<f64>,
    pub removed: bool,
}

/// The filter's decisions, in document order, and totals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FilterReport {
    pub config: FilterConfig,
    pub documents: usize,
    pub escalated: usize,
    pub removed: usize,
    pub removed_bytes: usize,
    pub total_bytes: usize,
    pub decisions: Vec<Decision>,
}

impl FilterReport {
    /// The documents kept (indices into the input).
    pub fn kept(&self) -> Vec<usize> {
        (0..self.decisions.len())
            .filter(|&i| !self.decisions[i].removed)
            .collect()
    }
}

/// Runs the filter over `docs` (id, text). The weak variant needs a classifier.
pub fn filter(
    docs: &[(&str, &str)],
    blocklist: &Blocklist,
    classifier: Option<&Classifier>,
    cfg: &FilterConfig,
) -> crate::Result<FilterReport> {
    if cfg.min_hits == 0 {
        return Err(crate::err!("filter: min-hits must be at least 1"));
    }
    if !(0.0..=1.0).contains(&cfg.threshold) {
        return Err(crate::err!("filter: threshold must be in [0, 1]"));
    }
    let clf = match (cfg.variant, classifier) {
        (Variant::Weak, None) => {
            return Err(crate::err!("filter: the weak variant needs a classifier"));
        }
        (Variant::Weak, c) => c,
        (Variant::Strong, _) => None,
    };
    let decisions: Vec<Decision> = docs
        .iter()
        .map(|(id, text)| {
            let hits = blocklist.hits(text);
            let escalated = hits >= cfg.min_hits;
            let score = clf.filter(|_| escalated).map(|c| c.score(text));
            let removed = escalated && score.is_none_or(|s| s > cfg.threshold);
            Decision {
                id: id.to_string(),
                hits,
                escalated,
                score,
                removed,
            }
        })
        .collect();
    let removed_bytes = docs
        .iter()
        .zip(&decisions)
        .filter(|(_, d)| d.removed)
        .map(|((_, t), _)| t.len())
        .sum();
    Ok(FilterReport {
        config: *cfg,
        documents: docs.len(),
        escalated: decisions.iter().filter(|d| d.escalated).count(),
        removed: decisions.iter().filter(|d| d.removed).count(),
        removed_bytes,
        total_bytes: docs.iter().map(|(_, t)| t.len()).sum(),
        decisions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = "He drank the poison and slept.";
    const TWO: &str = "The apothecary sold a poisonous drug.\nVenom!";
    const NONE: &str = "A rose by any other name would smell as sweet.";

    #[test]
    fn stems_match_inflections_and_words_match_whole() {
        let b = Blocklist::family();
        assert_eq!(b.hits(ONE), 1);
        // apothecary, poisonous, drug, Venom: four hits, case-insensitive.
        assert_eq!(b.hits(TWO), 4);
        assert_eq!(b.hits("Poison'd, poisoner, POTIONS; drugs"), 4);
        let w: Vec<String> = words("'Tis the apothecary's poison'd cup'").collect();
        assert_eq!(w, ["tis", "the", "apothecary's", "poison'd", "cup"]);
        assert_eq!(b.hits(NONE), 0);
        let w = Blocklist::parse("rose\n# comment\n\nsme*\n", "t").unwrap();
        assert_eq!(w.hits(NONE), 2);
        assert_eq!(w.hits("roses smelt"), 1);
        assert_eq!(Blocklist::parse(&w.to_text(), "t").unwrap(), w);
        assert!(Blocklist::parse("o'er\n", "t").unwrap().matches("o'er"));
        for bad in ["po ison", "caf\u{e9}", "*", "", "'tis", "tis'"] {
            assert!(Blocklist::parse(bad, "list.txt").is_err(), "{bad}");
        }
        assert!(
            Blocklist::parse("ok\nno-no\n", "list.txt")
                .unwrap_err()
                .to_string()
                .contains("list.txt, line 2")
        );
    }

    #[test]
    fn strong_variant_removes_exactly_the_escalated_documents() {
        let docs = [("a", ONE), ("b", TWO), ("c", NONE), ("d", "drug drug")];
        let r = filter(&docs, &Blocklist::family(), None, &FilterConfig::default()).unwrap();
        let removed: Vec<&str> = r
            .decisions
            .iter()
            .filter(|d| d.removed)
            .map(|d| d.id.as_str())
            .collect();
        // One hit is not enough; two are.
        assert_eq!(removed, ["b", "d"]);
        assert_eq!(r.kept(), [0, 2]);
        assert_eq!((r.escalated, r.removed), (2, 2));
        assert_eq!(r.removed_bytes, TWO.len() + 9);
        let three = FilterConfig {
            min_hits: 3,
            ..FilterConfig::default()
        };
        let r = filter(&docs, &Blocklist::family(), None, &three).unwrap();
        assert_eq!(r.kept(), [0, 2, 3]);
    }

    #[test]
    fn the_blocklist_grows_by_pos_ratio_count_and_groups() {
        let proxies = [
            (
                "play1",
                "nightshade nightshade nightshade the the iago iago",
            ),
            ("play2", "nightshade the iago"),
        ];
        let corpus = [
            proxies[0].1,
            proxies[1].1,
            "the the the the the the the the the",
            "nightshade",
        ];
        let d = Derive::default();
        let mut b = Blocklist::family();
        // nightshade: 4 of 5 occurrences in proxies (0.8), two plays; the: 3 of 12 (0.25);
        // iago: 3 of 3, two plays.
        assert_eq!(b.extend_from(&proxies, &corpus, &d), ["iago", "nightshade"]);
        assert!(b.matches("nightshade") && !b.matches("nightshades"));
        // Seen fewer than min_count times, in too few groups, or too short: not added.
        let mut b = Blocklist::family();
        let five = Derive { min_count: 5, ..d };
        assert!(b.extend_from(&proxies, &corpus, &five).is_empty());
        let one_play = [("play1", proxies[0].1), ("play1", proxies[1].1)];
        assert!(
            Blocklist::family()
                .extend_from(&one_play, &corpus, &d)
                .is_empty()
        );
        let long = Derive { min_len: 5, ..d };
        assert_eq!(
            Blocklist::family().extend_from(&proxies, &corpus, &long),
            ["nightshade"]
        );
    }

    #[test]
    fn the_weak_variant_removes_what_the_classifier_flags() {
        let pos = [
            "the apothecary mixed poison in the vial for the king",
            "a vial of poison, the apothecary said, kills the king",
        ];
        let neg = [
            "the lovers walked in the garden at dawn",
            "the fool sang of rain and wind in the garden",
        ];
        let clf = Classifier::train(&pos, &neg, &ClassifierConfig::default()).unwrap();
        assert!(clf.score("apothecary vial poison king") > 0.5);
        assert!(clf.score("garden lovers dawn") < 0.5);
        // Both escalated (two hits); only the one that reads like the proxies is removed.
        let docs = [
            ("vial", "the apothecary's poison in a vial for the king"),
            (
                "garden",
                "in the garden at dawn: drug, drug, sang the fool of rain",
            ),
        ];
        let cfg = FilterConfig {
            variant: Variant::Weak,
            ..FilterConfig::default()
        };
        let r = filter(&docs, &Blocklist::family(), Some(&clf), &cfg).unwrap();
        assert_eq!(r.escalated, 2);
        assert_eq!(r.kept(), [1]);
        assert!(r.decisions.iter().all(|d| d.score.is_some()));
        assert!(filter(&docs, &Blocklist::family(), None, &cfg).is_err());
        // A document is flagged if any chunk is: a hazardous chunk after a long benign one.
        let long = format!("{}\n{}", "the garden at dawn. ".repeat(60), pos[0]);
        assert!(clf.score(&long) > 0.5 && clf.score_chunk(&long) < clf.score(&long));
    }

    #[test]
    fn chunks_cover_the_text_at_line_ends() {
        let t = "aaaa\nbbbb\ncccccccccccc\nd\n";
        let c = chunks(t, 10);
        assert_eq!(c.concat(), t);
        assert_eq!(c, ["aaaa\nbbbb\n", "cccccccccccc\n", "d\n"]);
        assert!(chunks("", 10).is_empty());
    }
}
