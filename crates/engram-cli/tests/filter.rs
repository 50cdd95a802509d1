// Deep Ignorance: pretraining-data filtering (O'Brien et al., arXiv 2508.06601).
// Card: shared/methods/robustness_safety.md, "Deep Ignorance".

//! `engram filter` end to end through the built binary on hand-made documents: the strong and
//! weak variants, blocklist files and proxies, the output folder's contents and switch, and
//! the inputs it refuses.

use std::path::Path;

mod common;
use common::{fails, mkfifo, ok, s};

fn corpus(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in [
        ("a.txt", "He drank the poison and slept.\n"),
        ("b.txt", "The apothecary sold a poisonous drug.\n"),
        ("c.txt", "A rose by any other name would smell as sweet.\n"),
        ("d.txt", "Nightshade in the vial, nightshade in the cup.\n"),
        ("notes.md", "drug drug drug\n"),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

#[test]
fn strong_filter_removes_escalated_documents_and_reports_them() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in");
    corpus(&input);
    let out = d.path().join("out");
    let line = ok(&["filter", s(&input), "-o", s(&out)]);
    assert!(line.contains("kept 3 of 4 documents"), "{line}");
    assert!(out.join("a.txt").is_file() && out.join("c.txt").is_file());
    assert!(!out.join("b.txt").exists());
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("filter-report.json")).unwrap()).unwrap();
    assert_eq!(r["report"]["removed"], 1);
    assert_eq!(r["ignored"][0], "notes.md");
    let b = std::fs::read_to_string(out.join("blocklist.terms")).unwrap();
    assert!(b.contains("poison*") && b.contains("apothecar*"));
    // A blocklist file with a whole word: the nightshade document goes too, the earlier output
    // is replaced whole (b.txt stays out, a rerun never mixes outputs).
    let list = d.path().join("list.txt");
    std::fs::write(&list, "nightshade\npoison*\n").unwrap();
    let line = ok(&["filter", s(&input), "-o", s(&out), "--blocklist", s(&list)]);
    assert!(line.contains("kept 3 of 4"), "{line}");
    assert!(!out.join("d.txt").exists() && out.join("b.txt").is_file());
    // min-hits 1: every document with a hit.
    let line = ok(&["filter", s(&input), "-o", s(&out), "--min-hits", "1"]);
    assert!(line.contains("kept 2 of 4"), "{line}");
}

#[test]
fn weak_filter_needs_proxies_and_keeps_what_the_classifier_clears() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(
        input.join("vial.txt"),
        "the apothecary's poison in a vial for the king\n",
    )
    .unwrap();
    std::fs::write(
        input.join("garden.txt"),
        "in the garden at dawn: drug, drug, sang the fool of rain\n",
    )
    .unwrap();
    std::fs::write(
        input.join("walk.txt"),
        "the lovers walked in the garden at dawn\n",
    )
    .unwrap();
    std::fs::write(
        input.join("song.txt"),
        "the fool sang of rain and wind in the garden\n",
    )
    .unwrap();
    let proxy = d.path().join("proxy");
    std::fs::create_dir_all(&proxy).unwrap();
    std::fs::write(
        proxy.join("p1.txt"),
        "the apothecary mixed poison in the vial for the king\n",
    )
    .unwrap();
    std::fs::write(
        proxy.join("p2.txt"),
        "a vial of poison, the apothecary said, kills the king\n",
    )
    .unwrap();
    let out = d.path().join("out");
    let e = fails(&["filter", s(&input), "-o", s(&out), "--variant", "weak"]);
    assert!(e.contains("--proxy"), "{e}");
    let v: serde_json::Value = serde_json::from_str(&ok(&[
        "filter",
        s(&input),
        "-o",
        s(&out),
        "--variant",
        "weak",
        "--proxy",
        s(&proxy),
        "--min-count",
        "2",
        "--json",
    ]))
    .unwrap();
    assert_eq!(v["report"]["escalated"], 2, "{v}");
    assert_eq!(v["report"]["removed"], 1, "{v}");
    assert!(!out.join("vial.txt").exists() && out.join("garden.txt").is_file());
    // vial, king, apothecary's neighbours: words only the proxies use often.
    assert!(
        v["blocklist_added"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w == "vial"),
        "{v}"
    );
}

#[test]
fn bad_inputs_are_refused_with_their_names() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in");
    corpus(&input);
    let out = d.path().join("out");
    for (args, want) in [
        (vec!["--min-hits", "0"], "--min-hits"),
        (vec!["--threshold", "1.5"], "--threshold"),
        (vec!["--min-ratio", "1.5"], "--min-ratio"),
        (vec!["--chunk", "0"], "--chunk"),
    ] {
        let mut a = vec!["filter", s(&input), "-o", s(&out)];
        a.extend(args);
        let e = fails(&a);
        assert!(e.contains(want), "{want}: {e}");
    }
    // A bad blocklist line is named with its file and line.
    let list = d.path().join("list.txt");
    std::fs::write(&list, "poison*\nno way\n").unwrap();
    let e = fails(&["filter", s(&input), "-o", s(&out), "--blocklist", s(&list)]);
    assert!(e.contains("list.txt, line 2"), "{e}");
    // Not UTF-8.
    std::fs::write(input.join("bad.txt"), [0xffu8, 0xfe, 0x00]).unwrap();
    let e = fails(&["filter", s(&input), "-o", s(&out)]);
    assert!(e.contains("bad.txt") && e.contains("UTF-8"), "{e}");
    std::fs::remove_file(input.join("bad.txt")).unwrap();
    // A FIFO named like a document is refused before it is opened (it would block).
    mkfifo(&input.join("pipe.txt"));
    let e = fails(&["filter", s(&input), "-o", s(&out)]);
    assert!(e.contains("pipe.txt"), "{e}");
    std::fs::remove_file(input.join("pipe.txt")).unwrap();
    // An output folder holding someone else's files is not replaced.
    let theirs = d.path().join("theirs");
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::write(theirs.join("keep.me"), "mine").unwrap();
    let e = fails(&["filter", s(&input), "-o", s(&theirs)]);
    assert!(e.contains("not an output of engram filter"), "{e}");
    assert!(theirs.join("keep.me").is_file());
    // A folder that only pretends to be an earlier output (a report of another kind) is not
    // replaced either.
    std::fs::write(theirs.join("filter-report.json"), "{}").unwrap();
    let e = fails(&["filter", s(&input), "-o", s(&theirs)]);
    assert!(e.contains("not an output of engram filter"), "{e}");
    assert!(theirs.join("keep.me").is_file());
    // An earlier output used as the input cannot be its own output: its documents are held.
    let first = d.path().join("first");
    ok(&["filter", s(&input), "-o", s(&first)]);
    let e = fails(&["filter", s(&first), "-o", s(&first)]);
    assert!(!e.is_empty());
    assert!(first.join("a.txt").is_file());
}
