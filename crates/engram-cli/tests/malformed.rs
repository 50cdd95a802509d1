//! A corpus of malformed checkpoints, generated here. Each one is given to `engram inspect` and
//! to `engram convert` (into a new folder and into an existing one): every run must exit 1,
//! name the file (and the tensor where one is at fault) and the defect on stderr, not panic,
//! and leave no output behind (an existing output folder unchanged).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::st;

fn engram() -> Command {
    Command::new(env!("CARGO_BIN_EXE_engram"))
}

fn write(p: &Path, bytes: &[u8]) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(p, bytes).unwrap();
}

const ONE: &str = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
const TWO: &str = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#;

struct Case {
    name: &'static str,
    /// Builds the defective input under the given folder and returns the path to pass.
    build: fn(&Path) -> PathBuf,
    /// Substrings stderr must hold: the file (or folder) at fault, the defect, the tensor.
    expect: &'static [&'static str],
}

fn file_case(dir: &Path, bytes: Vec<u8>) -> PathBuf {
    let p = dir.join("bad.safetensors");
    write(&p, &bytes);
    p
}

fn json_case(dir: &Path, json: &str, data: usize) -> PathBuf {
    file_case(dir, st(json, data))
}

/// A model folder with two good shards `a.safetensors` (tensor a) and `b.safetensors`
/// (tensor b), and an index given as JSON text.
fn sharded(dir: &Path, index: &str) -> PathBuf {
    let m = dir.join("model");
    write(
        &m.join("a.safetensors"),
        &st(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            8,
        ),
    );
    write(
        &m.join("b.safetensors"),
        &st(
            r#"{"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            8,
        ),
    );
    write(&m.join("model.safetensors.index.json"), index.as_bytes());
    m
}

const CASES: &[Case] = &[
    Case {
        name: "header length beyond the file",
        build: |d| {
            let mut v = st(ONE, 8);
            v[..8].copy_from_slice(&1000u64.to_le_bytes());
            file_case(d, v)
        },
        expect: &["bad.safetensors", "header length 1000 runs past the end"],
    },
    Case {
        name: "invalid JSON",
        build: |d| json_case(d, r#"{"w": {"dtype": "#, 8),
        expect: &["bad.safetensors", "not valid JSON"],
    },
    Case {
        name: "non-UTF-8 header",
        build: |d| {
            let mut v = 4u64.to_le_bytes().to_vec();
            v.extend_from_slice(&[b'{', 0xff, 0xfe, b'}']);
            file_case(d, v)
        },
        expect: &["bad.safetensors", "not valid UTF-8"],
    },
    Case {
        name: "overlapping offsets",
        build: |d| {
            json_case(
                d,
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                12,
            )
        },
        expect: &["bad.safetensors", "tensor 'b'", "overlap tensor 'a'"],
    },
    Case {
        name: "overlap hidden behind an empty tensor",
        build: |d| {
            json_case(
                d,
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[6,10]}}"#,
                12,
            )
        },
        // The empty tensor inside 'a' is itself refused (as the reference does).
        expect: &["bad.safetensors", "tensor 'e'", "overlap tensor 'a'"],
    },
    Case {
        name: "offsets out of bounds",
        build: |d| {
            json_case(
                d,
                r#"{"w":{"dtype":"F32","shape":[100],"data_offsets":[0,400]}}"#,
                16,
            )
        },
        expect: &["bad.safetensors", "tensor 'w'", "out of bounds"],
    },
    Case {
        name: "offsets not matching shape x dtype",
        build: |d| {
            json_case(
                d,
                r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                8,
            )
        },
        expect: &["bad.safetensors", "tensor 'w'", "needs 12"],
    },
    Case {
        name: "unknown dtype",
        build: |d| {
            json_case(
                d,
                r#"{"w":{"dtype":"F7","shape":[2],"data_offsets":[0,8]}}"#,
                8,
            )
        },
        expect: &["bad.safetensors", "tensor 'w'", "unknown dtype 'F7'"],
    },
    Case {
        name: "dtype not a string",
        build: |d| {
            json_case(
                d,
                r#"{"w":{"dtype":4,"shape":[2],"data_offsets":[0,8]}}"#,
                8,
            )
        },
        expect: &["bad.safetensors", "tensor 'w'", "'dtype' is not a string"],
    },
    Case {
        name: "duplicate tensor names",
        build: |d| {
            json_case(
                d,
                r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                8,
            )
        },
        expect: &["bad.safetensors", "tensor 'w'", "duplicate tensor name"],
    },
    Case {
        name: "empty file",
        build: |d| file_case(d, Vec::new()),
        expect: &["bad.safetensors", "empty"],
    },
    Case {
        name: "file shorter than the length field",
        build: |d| file_case(d, vec![1, 2, 3, 4, 5]),
        expect: &["bad.safetensors", "too short"],
    },
    Case {
        name: "header length 0",
        build: |d| file_case(d, 0u64.to_le_bytes().to_vec()),
        expect: &["bad.safetensors", "header length is 0"],
    },
    Case {
        name: "header length over the limit",
        build: |d| {
            let mut v = u64::MAX.to_le_bytes().to_vec();
            v.extend_from_slice(b"{}");
            file_case(d, v)
        },
        expect: &["bad.safetensors", "exceeds"],
    },
    Case {
        name: "truncated data section",
        build: |d| {
            let mut v = st(TWO, 16);
            v.truncate(v.len() - 5);
            file_case(d, v)
        },
        expect: &["bad.safetensors", "tensor 'b'", "out of bounds"],
    },
    Case {
        name: "negative shape entry",
        build: |d| {
            json_case(
                d,
                r#"{"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#,
                8,
            )
        },
        expect: &["bad.safetensors", "tensor 'w'", "shape entry -2 is not"],
    },
    Case {
        name: "float shape entry",
        build: |d| {
            json_case(
                d,
                r#"{"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,8]}}"#,
                8,
            )
        },
        expect: &["bad.safetensors", "tensor 'w'", "shape entry 1.5 is not"],
    },
    Case {
        name: "shape overflowing",
        build: |d| {
            json_case(
                d,
                r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#,
                8,
            )
        },
        expect: &["bad.safetensors", "tensor 'w'", "overflows"],
    },
    Case {
        name: "missing data_offsets",
        build: |d| json_case(d, r#"{"w":{"dtype":"F32","shape":[2]}}"#, 8),
        expect: &["bad.safetensors", "tensor 'w'", "missing 'data_offsets'"],
    },
    Case {
        name: "missing shape",
        build: |d| json_case(d, r#"{"w":{"dtype":"F32","data_offsets":[0,8]}}"#, 8),
        expect: &["bad.safetensors", "tensor 'w'", "missing 'shape'"],
    },
    Case {
        name: "data_offsets of three numbers",
        build: |d| {
            json_case(
                d,
                r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}}"#,
                8,
            )
        },
        expect: &["bad.safetensors", "tensor 'w'", "exactly two numbers"],
    },
    Case {
        name: "data_offsets end before start",
        build: |d| {
            json_case(
                d,
                r#"{"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}"#,
                8,
            )
        },
        expect: &["bad.safetensors", "tensor 'w'", "end before start"],
    },
    Case {
        name: "metadata value not a string",
        build: |d| {
            json_case(
                d,
                r#"{"__metadata__":{"epoch":3},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                8,
            )
        },
        expect: &[
            "bad.safetensors",
            "__metadata__ value for 'epoch' is not a string",
        ],
    },
    Case {
        name: "header a JSON array",
        build: |d| json_case(d, "[1, 2, 3]", 0),
        expect: &["bad.safetensors", "not a JSON object"],
    },
    Case {
        name: "tensor entry not an object",
        build: |d| json_case(d, r#"{"w":[1,2]}"#, 0),
        expect: &[
            "bad.safetensors",
            "tensor 'w'",
            "entry is not a JSON object",
        ],
    },
    Case {
        name: "directory where a file is expected",
        build: |d| {
            let m = d.join("model");
            std::fs::create_dir_all(m.join("model.safetensors")).unwrap();
            m
        },
        expect: &["model.safetensors", "is a folder"],
    },
    Case {
        name: "folder without weights",
        build: |d| {
            let m = d.join("model");
            write(&m.join("config.json"), b"{}");
            m
        },
        expect: &["model", "holds no .safetensors file"],
    },
    Case {
        name: "two files and no index",
        build: |d| {
            let m = d.join("model");
            write(&m.join("x.safetensors"), &st(ONE, 8));
            write(&m.join("y.safetensors"), &st(ONE, 8));
            m
        },
        expect: &[
            "model",
            "2 .safetensors files but no model.safetensors.index.json",
        ],
    },
    Case {
        name: "index naming a missing shard",
        build: |d| {
            sharded(
                d,
                r#"{"weight_map":{"a":"a.safetensors","b":"c.safetensors"}}"#,
            )
        },
        expect: &[
            "model.safetensors.index.json",
            "'c.safetensors'",
            "does not exist",
        ],
    },
    Case {
        name: "index with ../ path",
        build: |d| {
            write(&d.join("outside.safetensors"), &st(ONE, 8));
            sharded(
                d,
                r#"{"weight_map":{"a":"a.safetensors","b":"../outside.safetensors"}}"#,
            )
        },
        expect: &[
            "model.safetensors.index.json",
            "tensor 'b'",
            "leaves the model folder",
        ],
    },
    Case {
        name: "index with absolute path",
        build: |d| {
            let abs = d.join("abs.safetensors");
            write(&abs, &st(ONE, 8));
            let idx = format!(
                r#"{{"weight_map":{{"a":"a.safetensors","b":"{}"}}}}"#,
                abs.display()
            );
            sharded(d, &idx)
        },
        expect: &["model.safetensors.index.json", "tensor 'b'", "absolute"],
    },
    Case {
        name: "symlinked shard outside the folder",
        build: |d| {
            let outside = d.join("elsewhere").join("b.safetensors");
            write(
                &outside,
                &st(
                    r#"{"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                    8,
                ),
            );
            let m = sharded(
                d,
                r#"{"weight_map":{"a":"a.safetensors","b":"link.safetensors"}}"#,
            );
            std::os::unix::fs::symlink(&outside, m.join("link.safetensors")).unwrap();
            m
        },
        expect: &[
            "model.safetensors.index.json",
            "'link.safetensors'",
            "resolves outside the model folder",
        ],
    },
    Case {
        name: "tensor in a shard but not in the index",
        build: |d| {
            let m = sharded(
                d,
                r#"{"weight_map":{"a":"a.safetensors","b":"b.safetensors"}}"#,
            );
            write(
                &m.join("b.safetensors"),
                &st(
                    r#"{"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"extra":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#,
                    16,
                ),
            );
            m
        },
        expect: &["b.safetensors", "tensor 'extra'", "not listed in"],
    },
    Case {
        name: "tensor in the index but missing from its shard",
        build: |d| {
            sharded(
                d,
                r#"{"weight_map":{"a":"a.safetensors","b":"b.safetensors","c":"b.safetensors"}}"#,
            )
        },
        expect: &[
            "model.safetensors.index.json",
            "tensor 'c'",
            "missing from shard 'b.safetensors'",
        ],
    },
    Case {
        name: "index placing a tensor in the wrong shard",
        build: |d| {
            sharded(
                d,
                r#"{"weight_map":{"a":"a.safetensors","b":"a.safetensors","x":"b.safetensors"}}"#,
            )
        },
        expect: &["b.safetensors", "tensor 'b'", "index places this tensor in"],
    },
    Case {
        name: "index not JSON",
        build: |d| sharded(d, "{weight_map: nope"),
        expect: &["model.safetensors.index.json", "index is not valid JSON"],
    },
    Case {
        name: "empty index",
        build: |d| sharded(d, ""),
        expect: &["model.safetensors.index.json", "index file is empty"],
    },
    Case {
        name: "index without weight_map",
        build: |d| sharded(d, r#"{"metadata":{"total_size":16}}"#),
        expect: &["model.safetensors.index.json", "no 'weight_map'"],
    },
    Case {
        name: "index with an empty weight_map",
        build: |d| sharded(d, r#"{"weight_map":{}}"#),
        expect: &["model.safetensors.index.json", "empty 'weight_map'"],
    },
    Case {
        name: "index value not a file name",
        build: |d| sharded(d, r#"{"weight_map":{"a":"a.safetensors","b":7}}"#),
        expect: &[
            "model.safetensors.index.json",
            "tensor 'b'",
            "not a file name",
        ],
    },
    Case {
        name: "index naming a tensor twice",
        build: |d| {
            sharded(
                d,
                r#"{"weight_map":{"a":"a.safetensors","b":"b.safetensors","a":"a.safetensors"}}"#,
            )
        },
        expect: &["model.safetensors.index.json", "tensor 'a'", "listed twice"],
    },
    Case {
        name: "index pointing at a malformed shard",
        build: |d| {
            let m = sharded(
                d,
                r#"{"weight_map":{"a":"a.safetensors","b":"b.safetensors"}}"#,
            );
            write(&m.join("b.safetensors"), &st(r#"{"b":{"dtype":"F32""#, 0));
            m
        },
        expect: &["b.safetensors", "not valid JSON"],
    },
    Case {
        name: "index given directly, naming a missing shard",
        build: |d| {
            sharded(
                d,
                r#"{"weight_map":{"a":"a.safetensors","b":"gone.safetensors"}}"#,
            )
            .join("model.safetensors.index.json")
        },
        expect: &["model.safetensors.index.json", "does not exist"],
    },
    Case {
        name: "path that does not exist",
        build: |d| d.join("nothing-here.safetensors"),
        expect: &["nothing-here.safetensors", "No such file"],
    },
];

/// Every file under `dir` with its bytes (for "unchanged" checks).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    out
}

fn check_failure(case: &str, what: &str, out: &std::process::Output, expect: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{case}: {what}: exit status {:?}, stderr: {err}",
        out.status
    );
    assert!(!err.contains("panicked"), "{case}: {what}: panicked: {err}");
    for e in expect {
        assert!(err.contains(e), "{case}: {what}: stderr lacks {e:?}: {err}");
    }
}

#[test]
fn malformed_inputs_fail_cleanly_and_write_nothing() {
    assert!(CASES.len() >= 20);
    for (i, case) in CASES.iter().enumerate() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join(format!("case{i}"));
        std::fs::create_dir_all(&work).unwrap();
        let input = (case.build)(&work);
        let before = snapshot(&work);

        let out = engram().arg("inspect").arg(&input).output().unwrap();
        check_failure(case.name, "inspect", &out, case.expect);
        let out = engram()
            .args(["inspect", "--json", "--check-finite"])
            .arg(&input)
            .output()
            .unwrap();
        check_failure(case.name, "inspect --json", &out, case.expect);
        assert!(
            out.stdout.is_empty(),
            "{}: inspect --json printed",
            case.name
        );

        // Into a folder that does not exist: it must not be created.
        let new_out = tmp.path().join("new-out");
        let out = engram()
            .arg("convert")
            .arg(&input)
            .arg("-o")
            .arg(&new_out)
            .output()
            .unwrap();
        check_failure(case.name, "convert", &out, case.expect);
        assert!(
            !new_out.exists(),
            "{}: convert created its output",
            case.name
        );

        // A single-file output: not created either.
        let new_file = tmp.path().join("new.safetensors");
        let out = engram()
            .arg("convert")
            .arg(&input)
            .args(["--dtype", "bf16", "-o"])
            .arg(&new_file)
            .output()
            .unwrap();
        check_failure(case.name, "convert to a file", &out, case.expect);
        assert!(!new_file.exists(), "{}: convert created a file", case.name);

        // Into an existing model folder: left exactly as it was.
        let old = tmp.path().join("old-out");
        write(&old.join("model.safetensors"), &st(ONE, 8));
        write(&old.join("config.json"), b"{\"keep\": true}");
        let old_before = snapshot(&old);
        let out = engram()
            .arg("convert")
            .arg(&input)
            .arg("-o")
            .arg(&old)
            .output()
            .unwrap();
        check_failure(
            case.name,
            "convert into an existing folder",
            &out,
            case.expect,
        );
        assert_eq!(
            snapshot(&old),
            old_before,
            "{}: existing output changed",
            case.name
        );
        // The input is never modified either.
        assert_eq!(snapshot(&work), before, "{}: input changed", case.name);
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["inspect"][..],
        &["convert", "x.safetensors"],
        &["diff", "a"],
        &["frobnicate"],
        &["inspect", "x", "--no-such-flag"],
        &["diff", "a", "b", "--top", "many"],
    ] {
        let out = engram().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("error:"), "{args:?}: {err}");
    }
}
