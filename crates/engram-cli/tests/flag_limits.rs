//! Flags out of range or without effect, through the built binary: `study scole` counts
//! that used to panic, abort or run unchecked, a data set given twice, and `bench train
//! --no-torch` with torch's own flags. Each is an error naming the flag (exit status 1, no
//! panic) before anything is trained or written.

mod common;
use common::{engram, fails, s};

/// `study scole` with `args` after `-o DIR`: its error, and that nothing was written.
fn scole_fails(args: &[&str]) -> String {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let mut all = vec!["study", "scole", "-q", "-o", s(&out)];
    all.extend_from_slice(args);
    let e = fails(&all);
    assert!(!out.exists(), "{args:?} wrote {}", out.display());
    e
}

#[test]
fn scole_counts_beyond_their_limits_are_refused() {
    for t in ["18446744073709551615", "100000000000", "10001"] {
        let e = scole_fails(&["--tasks", t]);
        assert!(
            e.contains(&format!("--tasks {t} is more than the limit of 10000")),
            "{e}"
        );
    }
    let e = scole_fails(&["--seeds", "18446744073709551615"]);
    assert!(e.contains("--seeds") && e.contains("limit"), "{e}");
    let e = scole_fails(&["--train-per-task", "1000000000"]);
    assert!(e.contains("--train-per-task") && e.contains("limit"), "{e}");
    let e = scole_fails(&["--test-per-class", "18446744073709551615"]);
    assert!(e.contains("--test-per-class") && e.contains("limit"), "{e}");
}

#[test]
fn scole_refuses_a_data_set_given_twice() {
    let e = scole_fails(&["--datasets", "fashion-mnist,fashion-mnist"]);
    assert!(
        e.contains("--datasets") && e.contains("`fashion-mnist` is given twice"),
        "{e}"
    );
    let e = scole_fails(&["--datasets", "mnist,fashion-mnist", "--datasets", "mnist"]);
    assert!(e.contains("`mnist` is given twice"), "{e}");
}

/// More training examples per task than two Fashion-MNIST classes hold (2 × 6,000), or more
/// test examples than a class has (1,000): refused once the data are read (skipped where
/// Fashion-MNIST is not installed).
#[test]
fn scole_refuses_more_examples_than_the_data_hold() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let run = |extra: &[&str]| {
        let mut a = vec![
            "study",
            "scole",
            "-q",
            "--quick",
            "--datasets",
            "fashion-mnist",
            "-o",
            s(&out),
        ];
        a.extend_from_slice(extra);
        engram(&a)
    };
    let r = run(&["--train-per-task", "12001"]);
    let e = String::from_utf8_lossy(&r.stderr).into_owned();
    if e.contains("not found (looked in") {
        assert!(
            std::env::var("ENGRAM_REQUIRE_DATA").as_deref() != Ok("1"),
            "ENGRAM_REQUIRE_DATA=1 but Fashion-MNIST is missing: {e}"
        );
        eprintln!("skipping: {e}");
        return;
    }
    assert_eq!(r.status.code(), Some(1), "{e}");
    assert!(
        e.contains("--train-per-task 12001") && e.contains("at most 12000"),
        "{e}"
    );
    let r = run(&["--test-per-class", "1001"]);
    let e = String::from_utf8_lossy(&r.stderr).into_owned();
    assert_eq!(r.status.code(), Some(1), "{e}");
    assert!(
        e.contains("--test-per-class 1001") && e.contains("at most 1000"),
        "{e}"
    );
    assert!(!out.exists());
}

#[test]
fn bench_train_refuses_torch_flags_with_no_torch() {
    let d = tempfile::tempdir().unwrap();
    let json = d.path().join("t.json");
    let base = ["bench", "train", "--no-torch", "--json-out", s(&json)];
    let with = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        fails(&a)
    };
    let e = with(&["--install-torch"]);
    assert!(
        e.contains("--install-torch has no effect with --no-torch"),
        "{e}"
    );
    let e = with(&["--python", "/usr/bin/python3"]);
    assert!(e.contains("--python has no effect with --no-torch"), "{e}");
    let e = with(&["--python", "p", "--install-torch"]);
    assert!(e.contains("--install-torch and --python"), "{e}");
    assert!(!json.exists());
    assert!(!d.path().join("bench-out").exists());
}
