//! Helpers the integration tests share: run the built `engram` binary.
// Each test crate compiles this module on its own and uses only some of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `engram` with `args`.
pub fn engram(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(args)
        .output()
        .expect("run engram")
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = engram(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs a command that must fail cleanly: exit code 1, no panic; returns stderr.
pub fn fails(args: &[&str]) -> String {
    let out = engram(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// A tiny synthetic family (`engram synth`, seed 7): base, ft-1 .. ft-n.
pub fn family(dir: &Path, n: usize) -> (PathBuf, Vec<PathBuf>) {
    ok(&[
        "synth",
        "-q",
        "-o",
        s(dir),
        "-n",
        &n.to_string(),
        "--seed",
        "7",
    ]);
    (
        dir.join("base"),
        (1..=n).map(|i| dir.join(format!("ft-{i}"))).collect(),
    )
}

/// A safetensors image: length prefix, header JSON, `data` zero bytes.
pub fn st(json: &str, data: usize) -> Vec<u8> {
    let mut v = (json.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(json.as_bytes());
    v.extend(std::iter::repeat_n(0u8, data));
    v
}

/// Makes a FIFO (named pipe) at `p`.
pub fn mkfifo(p: &Path) {
    let st = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

/// A small, fast training run: three tasks of blobs, two steps each.
pub const BLOBS_RUN: &str = r#"
name = "t"
seed = 1
[scenario]
kind = "class-incremental"
dataset = "blobs"
tasks = 3
classes-per-task = 2
[scenario.blobs]
train-per-class = 20
test-per-class = 5
[model]
kind = "mlp"
hidden = [16]
[strategy]
name = "naive"
[train]
iterations = 2
batch-size = 16
[train.optimizer]
kind = "adam"
lr = 0.01
"#;

static PYENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The tests' shared virtual environment at `target/pyenv`, made with `python3 -m venv` when
/// missing and completed with `pip install PACKAGES` unless the Python code `check` (imports,
/// version asserts) already succeeds in it; its python, or `None` when ENGRAM_SKIP_PY=1.
/// Without python3 this panics with a message saying what to install; `what` names the test.
pub fn pyenv(what: &str, check: &str, packages: &[&str]) -> Option<PathBuf> {
    if std::env::var("ENGRAM_SKIP_PY").is_ok_and(|v| v == "1") {
        eprintln!("ENGRAM_SKIP_PY=1: skipping the {what}");
        return None;
    }
    let _guard = PYENV.lock().unwrap_or_else(|e| e.into_inner());
    let env = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/pyenv");
    let py = env.join("bin/python");
    let ready = |py: &Path| {
        Command::new(py)
            .args(["-c", check])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if py.exists() && ready(&py) {
        return Some(py);
    }
    let sys = Command::new("python3").arg("--version").output();
    if !sys.is_ok_and(|o| o.status.success()) {
        panic!(
            "python3 is not installed, and the {what} needs it (with venv and pip) to check \
             engram against the reference packages ({}). Install python3 (e.g. apt-get install \
             python3 python3-venv), or set ENGRAM_SKIP_PY=1 to skip this test.",
            packages.join(", ")
        );
    }
    if !py.exists() {
        let out = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&env)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "python3 -m venv {} failed (on Debian: apt-get install python3-venv): {}",
            env.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(&py)
        .args(["-m", "pip", "install", "-q"])
        .args(packages)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pip install {} failed: {}",
        packages.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ready(&py), "{} still not importable", packages.join(", "));
    Some(py)
}

/// Runs `script` (written to DIR/script.py) with `py` and `args`; it must succeed; its stdout.
pub fn run_py(py: &Path, dir: &Path, script: &str, args: &[&str]) -> String {
    let file = dir.join("script.py");
    std::fs::write(&file, script).unwrap();
    let out = Command::new(py).arg(&file).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
