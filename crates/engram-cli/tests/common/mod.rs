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
