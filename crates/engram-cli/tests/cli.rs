//! `engram inspect`, `diff` and `convert` end to end, through the built binary.

use engram_ckpt::{DType, Model, ModelWriter, TensorSpec, WriteOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn engram() -> Command {
    Command::new(env!("CARGO_BIN_EXE_engram"))
}

fn run(args: &[&str]) -> Output {
    engram().args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&ok(args)).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Writes `tensors` (name, dtype, shape, values as f32; integer tensors from the values cast)
/// with the library writer.
fn write_model(out: &Path, tensors: &[(&str, DType, &[usize], Vec<f32>)], md: &[(&str, &str)]) {
    let specs = tensors
        .iter()
        .map(|(n, d, s, _)| TensorSpec::new(*n, *d, s))
        .collect();
    let opts = WriteOptions {
        max_shard_bytes: None,
        metadata: md
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let w = ModelWriter::create(out, specs, &opts).unwrap();
    for (n, d, _, v) in tensors {
        if d.is_float() {
            w.write_f32(n, v).unwrap();
        } else {
            let bytes: Vec<u8> = match d {
                DType::I32 => v.iter().flat_map(|x| (*x as i32).to_le_bytes()).collect(),
                DType::I64 => v.iter().flat_map(|x| (*x as i64).to_le_bytes()).collect(),
                _ => v.iter().map(|x| *x as u8).collect(),
            };
            w.write_bytes(n, &bytes).unwrap();
        }
    }
    w.finish(&[]).unwrap();
}

fn synth(dir: &Path, extra: &[&str]) -> PathBuf {
    let mut args = vec!["synth", "-q", "-o", s(dir), "--size", "tiny"];
    args.extend_from_slice(extra);
    ok(&args);
    dir.to_path_buf()
}

#[test]
fn inspect_summarises_a_model() {
    let t = tempfile::tempdir().unwrap();
    let fam = synth(&t.path().join("fam"), &["-n", "1"]);
    let base = fam.join("base");
    let j = json(&["inspect", "--json", s(&base)]);
    assert_eq!(j["engram_inspect"], 1);
    assert_eq!(j["tensor_count"], 21);
    let params: u64 = j["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["params"].as_u64().unwrap())
        .sum();
    assert_eq!(j["param_count"].as_u64(), Some(params));
    assert_eq!(j["dtypes"][0]["dtype"], "BF16");
    assert_eq!(j["metadata"]["format"], "pt");
    assert!(j["metadata"]["engram.version"].is_string());
    assert!(
        j["side_files"][0]
            .as_str()
            .unwrap()
            .ends_with("config.json")
    );
    let groups: Vec<&str> = j["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        groups,
        [
            "model.embed_tokens",
            "model.layers.0",
            "model.layers.1",
            "model.norm",
            "lm_head"
        ]
    );
    assert!(j.get("non_finite").is_none());

    let text = ok(&["inspect", s(&base)]);
    assert!(text.contains("model.layers.[0-1]"), "{text}");
    assert!(text.contains("2 x 9"), "{text}");
    assert!(text.contains("--all lists them"), "{text}");
    assert!(text.contains("config.json"), "{text}");
    let all = ok(&["inspect", "--all", s(&base)]);
    assert!(all.contains("model.layers.1.self_attn.o_proj.weight"));
    let fin = ok(&["inspect", "--check-finite", s(&base)]);
    assert!(fin.contains("all values finite"));

    // The index and a single shard file open too.
    let sharded = t.path().join("sharded");
    ok(&[
        "convert",
        "-q",
        s(&base),
        "-o",
        s(&sharded),
        "--shard-size",
        "100KB",
    ]);
    let j = json(&[
        "inspect",
        "--json",
        s(&sharded.join("model.safetensors.index.json")),
    ]);
    assert_eq!(j["tensor_count"], 21);
    assert!(j["files"].as_array().unwrap().len() > 1);
    assert!(j["index_metadata"]["total_size"].is_u64());
    let first = j["files"][0]["path"].as_str().unwrap().to_string();
    assert!(first.contains("model-00001-of-"), "{first}");
    let j = json(&["inspect", "--json", &first]);
    let n = j["tensor_count"].as_u64().unwrap();
    assert!((1..21).contains(&n), "{n}");
}

#[test]
fn inspect_stats_and_non_finite_values() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("m.safetensors");
    write_model(
        &f,
        &[
            ("ok", DType::F32, &[4], vec![1.0, -2.0, 3.0, 0.5]),
            ("bad", DType::F16, &[3], vec![1.0, f32::NAN, f32::INFINITY]),
            ("ids", DType::I64, &[2], vec![7.0, 9.0]),
        ],
        &[("note", "hello")],
    );
    let j = json(&["inspect", "--json", "--stats", s(&f)]);
    let ok_t = &j["tensors"][0];
    assert_eq!(ok_t["name"], "ok");
    assert_eq!(ok_t["stats"]["min"], -2.0);
    assert_eq!(ok_t["stats"]["max"], 3.0);
    assert_eq!(ok_t["stats"]["sum"], 2.5);
    assert_eq!(ok_t["stats"]["mean"], 0.625);
    assert_eq!(j["tensors"][1]["stats"]["nan"], 1);
    assert_eq!(j["tensors"][1]["stats"]["inf"], 1);
    assert_eq!(j["non_finite"][0]["name"], "bad");
    assert_eq!(j["metadata"]["note"], "hello");

    let out = run(&["inspect", "--check-finite", s(&f)]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("m.safetensors"), "{err}");
    assert!(err.contains("tensor 'bad'"), "{err}");
    assert!(err.contains("1 NaN and 1 infinite"), "{err}");
    assert!(!err.contains("tensor 'ok'"), "{err}");
    // --json with --check-finite: the report is printed, and the exit status is still 1.
    let out = run(&["inspect", "--json", "--check-finite", s(&f)]);
    assert_eq!(out.status.code(), Some(1));
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["non_finite"][0]["nan"], 1);
}

#[test]
fn diff_reports_changes_mismatches_and_identity() {
    let t = tempfile::tempdir().unwrap();
    let fam = synth(&t.path().join("fam"), &["-n", "1"]);
    let (base, ft) = (fam.join("base"), fam.join("ft-1"));

    let same = json(&["diff", "--json", s(&base), s(&base)]);
    assert_eq!(same["summary"]["compared"], 21);
    assert_eq!(same["summary"]["identical"], 21);
    assert_eq!(same["summary"]["l2_diff"], 0.0);
    assert_eq!(same["summary"]["cosine"], 1.0);
    assert_eq!(same["top"].as_array().unwrap().len(), 0);

    let d = json(&["diff", "--json", "--top", "3", s(&base), s(&ft)]);
    assert_eq!(d["summary"]["changed_tensors"], 21);
    let top = d["top"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    let rel = |name: &Value| {
        d["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| &t["name"] == name)
            .unwrap()["rel_change"]
            .as_f64()
            .unwrap()
    };
    assert!(rel(&top[0]) >= rel(&top[1]) && rel(&top[1]) >= rel(&top[2]));
    for tj in d["tensors"].as_array().unwrap() {
        let (l2, na) = (
            tj["l2_diff"].as_f64().unwrap(),
            tj["norm_a"].as_f64().unwrap(),
        );
        assert!((tj["rel_change"].as_f64().unwrap() - l2 / na).abs() < 1e-12);
        let cos = tj["cosine"].as_f64().unwrap();
        assert!(cos > 0.5 && cos <= 1.0);
        assert!(tj["max_abs"].as_f64().unwrap() > 0.0);
    }
    let text = ok(&["diff", "--top", "2", s(&base), s(&ft)]);
    assert!(
        text.contains("most changed tensors (top 2 of 21)"),
        "{text}"
    );

    // Exact values: a = [3, 0], b = [0, 4].
    let a = t.path().join("a.safetensors");
    let b = t.path().join("b.safetensors");
    write_model(
        &a,
        &[
            ("v", DType::F32, &[2], vec![3.0, 0.0]),
            ("only_a", DType::F32, &[1], vec![1.0]),
            ("shape", DType::F32, &[2], vec![1.0, 1.0]),
            ("dt", DType::F32, &[1], vec![2.0]),
        ],
        &[],
    );
    write_model(
        &b,
        &[
            ("v", DType::F32, &[2], vec![0.0, 4.0]),
            ("only_b", DType::F32, &[1], vec![1.0]),
            ("shape", DType::F32, &[1, 2], vec![1.0, 1.0]),
            ("dt", DType::BF16, &[1], vec![2.0]),
        ],
        &[],
    );
    let d = json(&["diff", "--json", s(&a), s(&b)]);
    assert_eq!(d["only_in_a"], serde_json::json!(["only_a"]));
    assert_eq!(d["only_in_b"], serde_json::json!(["only_b"]));
    assert_eq!(d["shape_mismatch"][0]["name"], "shape");
    assert_eq!(d["dtype_differs"], serde_json::json!(["dt"]));
    let v = d["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "v")
        .unwrap();
    assert_eq!(v["l2_diff"], 5.0);
    assert_eq!(v["rel_change"], 5.0 / 3.0);
    assert_eq!(v["cosine"], 0.0);
    assert_eq!(v["max_abs"], 4.0);
    let text = ok(&["diff", s(&a), s(&b)]);
    assert!(text.contains("only in A (1): only_a"), "{text}");
    assert!(text.contains("shape mismatch: shape"), "{text}");
}

#[test]
fn convert_changes_dtype_and_sharding() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let vals: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.731).sin() * 3.0).collect();
    write_model(
        &src,
        &[
            ("w", DType::F32, &[10, 100], vals.clone()),
            ("ids", DType::I32, &[3], vec![-1.0, 5.0, 70000.0]),
            ("mask", DType::Bool, &[2], vec![1.0, 0.0]),
        ],
        &[("format", "pt"), ("origin", "test")],
    );
    std::fs::write(src.join("config.json"), b"{\"a\": 1}").unwrap();
    std::fs::write(src.join("tokenizer.json"), b"{}").unwrap();

    // bf16, sharded so that each tensor gets its own shard.
    let sh = t.path().join("sharded");
    ok(&[
        "convert",
        "-q",
        s(&src),
        "-o",
        s(&sh),
        "--dtype",
        "bf16",
        "--shard-size",
        "1KB",
    ]);
    let m = Model::open(&sh).unwrap();
    // w (2000 bytes) alone; ids and mask (14 bytes) together.
    assert_eq!(m.files().len(), 2);
    assert!(sh.join("model.safetensors.index.json").is_file());
    assert_eq!(m.require("w").unwrap().dtype(), DType::BF16);
    assert_eq!(m.require("ids").unwrap().dtype(), DType::I32);
    assert_eq!(m.require("mask").unwrap().dtype(), DType::Bool);
    let mut want = vals.clone();
    engram_ckpt::dtype::round_through(DType::BF16, &mut want);
    assert_eq!(m.require("w").unwrap().to_f32().unwrap(), want);
    let src_m = Model::open(&src).unwrap();
    for n in ["ids", "mask"] {
        assert_eq!(m.require(n).unwrap().bytes, src_m.require(n).unwrap().bytes);
    }
    let md = m.metadata();
    assert_eq!(md["origin"], "test");
    assert_eq!(md["engram.version"], env!("CARGO_PKG_VERSION"));
    assert!(md["engram.command"].contains("convert"));
    assert!(md["engram.params"].contains("BF16"));
    assert_eq!(
        std::fs::read(sh.join("config.json")).unwrap(),
        b"{\"a\": 1}"
    );
    assert!(sh.join("tokenizer.json").is_file());

    // In place over its own input: refused (an output never replaces an input of its run).
    let e = run(&["convert", "-q", s(&sh), "-o", s(&sh), "--dtype", "f32"]);
    assert_eq!(e.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&e.stderr).contains("an input of this run"));
    // Back to one file (no --shard-size) over the sharded folder: the stale shards and index
    // go, and the folder opens as the new model.
    ok(&["convert", "-q", s(&src), "-o", s(&sh), "--dtype", "f32"]);
    let names: Vec<String> = std::fs::read_dir(&sh)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(
        names,
        ["config.json", "model.safetensors", "tokenizer.json"]
    );
    let m = Model::open(&sh).unwrap();
    assert_eq!(m.require("w").unwrap().dtype(), DType::F32);
    assert_eq!(m.require("w").unwrap().to_f32().unwrap(), vals);

    // Same dtype: a byte copy, values identical; a single-file output.
    let single = t.path().join("copy.safetensors");
    ok(&["convert", "-q", s(&src), "-o", s(&single)]);
    let d = json(&["diff", "--json", s(&src), s(&single)]);
    assert_eq!(d["summary"]["identical"], 3);
    let c = Model::open(&single).unwrap();
    assert_eq!(
        c.require("w").unwrap().bytes,
        src_m.require("w").unwrap().bytes
    );

    // Every float dtype round-trips through f32 to the same rounded values.
    for dt in ["f64", "f16", "f8_e4m3", "f8_e5m2"] {
        let o = t.path().join(format!("{dt}.safetensors"));
        ok(&["convert", "-q", s(&src), "-o", s(&o), "--dtype", dt]);
        let d = DType::parse(dt).unwrap();
        let mut want = vals.clone();
        engram_ckpt::dtype::round_through(d, &mut want);
        let m = Model::open(&o).unwrap();
        assert_eq!(m.require("w").unwrap().dtype(), d);
        assert_eq!(m.require("w").unwrap().to_f32().unwrap(), want, "{dt}");
    }

    // Refusals.
    let bad = run(&["convert", s(&src), "-o", s(&single), "--shard-size", "1KB"]);
    assert_eq!(bad.status.code(), Some(1));
    let bad = run(&[
        "convert",
        s(&src),
        "-o",
        s(&t.path().join("x")),
        "--dtype",
        "i32",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a float type"));
    assert!(!t.path().join("x").exists());
}

#[test]
fn convert_check_finite_refuses_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let nan = t.path().join("nan.safetensors");
    write_model(
        &nan,
        &[
            ("fine", DType::F32, &[2], vec![1.0, 2.0]),
            ("broken", DType::F32, &[3], vec![1.0, f32::NAN, 2.0]),
        ],
        &[],
    );
    let out_dir = t.path().join("out");
    let out = run(&["convert", s(&nan), "-o", s(&out_dir), "--check-finite"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nan.safetensors") && err.contains("tensor 'broken'"),
        "{err}"
    );
    assert!(err.contains("element 1"), "{err}");
    assert!(!out_dir.exists(), "output created");
    // Without the flag the values are copied as they are.
    ok(&["convert", "-q", s(&nan), "-o", s(&out_dir)]);

    // Values that the conversion would make infinite.
    let big = t.path().join("big.safetensors");
    write_model(&big, &[("w", DType::F32, &[2], vec![1.0, 70000.0])], &[]);
    let o = t.path().join("big-f16.safetensors");
    let out = run(&[
        "convert",
        s(&big),
        "-o",
        s(&o),
        "--dtype",
        "f16",
        "--check-finite",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tensor 'w'") && err.contains("beyond the range of F16"),
        "{err}"
    );
    assert!(!o.exists());
    // No temporary file is left behind by a failed run.
    let left: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains("engram-tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A killed `engram convert` leaves the earlier output byte-identical, or (when it finished
/// first) a complete new one: never a partial file under the final name.
#[test]
fn killed_convert_leaves_old_output_intact() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src.safetensors");
    // 16 tensors of 1M f32: 64 MB.
    let tensors: Vec<(String, Vec<f32>)> = (0..16)
        .map(|i| {
            let v: Vec<f32> = (0..1 << 20)
                .map(|k| ((k % 977) as f32 - 488.0) * 1e-3 + i as f32)
                .collect();
            (format!("layer.{i}.weight"), v)
        })
        .collect();
    let specs: Vec<_> = tensors
        .iter()
        .map(|(n, v)| (n.as_str(), DType::F32, [v.len()], v.clone()))
        .collect();
    let specs: Vec<(&str, DType, &[usize], Vec<f32>)> = specs
        .iter()
        .map(|(n, d, s, v)| (*n, *d, &s[..], v.clone()))
        .collect();
    write_model(&src, &specs, &[]);

    let dest = t.path().join("out.safetensors");
    ok(&["convert", "-q", s(&src), "-o", s(&dest), "--dtype", "bf16"]);
    let mut current = std::fs::read(&dest).unwrap();

    for (i, ms) in [5u64, 40, 120, 300, 800].into_iter().enumerate() {
        let dt = if i % 2 == 0 { "f64" } else { "f16" };
        let mut child = engram()
            .args(["convert", "-q", s(&src), "-o", s(&dest), "--dtype", dt])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(ms));
        let _ = child.kill(); // SIGKILL: no destructor, no cleanup runs.
        child.wait().unwrap();
        let now = std::fs::read(&dest).unwrap();
        if now == current {
            continue; // killed before the rename: the earlier output is intact
        }
        // Replaced: then it must be the complete new file.
        let m = Model::open(&dest).unwrap_or_else(|e| panic!("after {ms} ms: {e}"));
        assert_eq!(m.len(), 16);
        let want = DType::parse(dt).unwrap();
        for (k, tv) in m.tensors().enumerate() {
            assert_eq!(tv.dtype(), want);
            let v = tv.to_f32().unwrap();
            for (j, x) in v.iter().enumerate().step_by(4099) {
                let exact = ((j % 977) as f32 - 488.0) * 1e-3 + k as f32;
                assert!((x - exact).abs() <= 0.01 * (1.0 + k as f32), "{k} {j}: {x}");
            }
        }
        current = now;
    }
    // The killed runs' temporary files never carry the final name.
    for e in std::fs::read_dir(t.path()).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            ["src.safetensors", "out.safetensors"].contains(&n.as_str())
                || n.contains(".engram-tmp-"),
            "unexpected file {n}"
        );
    }
}
