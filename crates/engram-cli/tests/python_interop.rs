//! Interoperability with the reference implementation: the Python `safetensors` package (with
//! numpy) reads what engram writes, and engram reads what it writes, value for value.
//!
//! The test makes a virtual environment at `target/pyenv` (reused while it has both packages)
//! with `python3 -m venv` and installs `safetensors` and `numpy` with pip. Without python3 the
//! test fails with a message saying so, unless `ENGRAM_SKIP_PY=1` is set.

mod common;
use common::run_py;
use engram_ckpt::{DType, Model, ModelWriter, TensorSpec, WriteOptions};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

fn engram(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "engram {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The shared virtual environment's python with safetensors and numpy.
fn python() -> Option<PathBuf> {
    common::pyenv(
        "Python interoperability test",
        "import safetensors.numpy, numpy",
        &["safetensors", "numpy"],
    )
}

/// Values for a float tensor: ordinary magnitudes, signed zeros, tiny and large values, and
/// (where `special`) infinities and NaN.
fn float_values(n: usize, special: bool) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n)
        .map(|i| (i as f32 * 0.618).sin() * 10f32.powi((i % 7) as i32 - 3))
        .collect();
    v[0] = 0.0;
    v[1] = -0.0;
    v[2] = 1.0e-6;
    v[3] = -300.0;
    if special {
        v[4] = f32::INFINITY;
        v[5] = f32::NEG_INFINITY;
        v[6] = f32::NAN;
    }
    v
}

/// Python side of the first test: checks the files engram wrote against `expected.json`.
const CHECK_ENGRAM_FILES: &str = r#"
import json, struct, sys
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

d = sys.argv[1]
exp = json.load(open(f"{d}/expected.json"))
NP = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
      "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8,
        "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}

def raw(path):
    """Header and data section read by hand, for the dtypes numpy lacks."""
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    return json.loads(b[8:8 + n]), b[8 + n:]

def fp8(byte, e, m, bias, ieee):
    sign = -1.0 if byte & 0x80 else 1.0
    ex = (byte >> m) & ((1 << e) - 1)
    man = byte & ((1 << m) - 1)
    top = (1 << e) - 1
    if ieee and ex == top:
        return sign * float("inf") if man == 0 else float("nan")
    if not ieee and ex == top and man == (1 << m) - 1:
        return float("nan")
    if ex == 0:
        return sign * man / (1 << m) * 2.0 ** (1 - bias)
    return sign * (1 + man / (1 << m)) * 2.0 ** (ex - bias)

def same(a, b):
    a = np.asarray(a, dtype=np.float64); b = np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)

def val(x):
    return {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}.get(x, x) if isinstance(x, str) else x

checked = 0
for fname, tensors in exp.items():
    path = f"{d}/{fname}"
    # The reference reader, tensor by tensor (a whole-file load_file would refuse the file
    # for its bf16 and fp8 tensors, which numpy lacks).
    with safe_open(path, framework="np") as f:
        loaded = {n: f.get_tensor(n) for n, t in tensors.items() if t["dtype"] in NP}
    header, data = raw(path)
    for name, t in tensors.items():
        bits = np.array(t["bits"], dtype=np.uint64)
        if t["dtype"] in NP:
            arr = loaded[name]
            assert arr.dtype == NP[t["dtype"]], (fname, name, arr.dtype)
            assert list(arr.shape) == t["shape"], (fname, name, arr.shape)
            got = arr.reshape(-1).view(UINT[arr.itemsize]).astype(np.uint64)
            assert np.array_equal(got, bits), (fname, name, got[:8], bits[:8])
        # Every dtype, numpy's or not: the bytes in the file are the expected elements.
        h = header[name]
        assert h["dtype"] == t["dtype"] and h["shape"] == t["shape"], (fname, name, h)
        s0, s1 = h["data_offsets"]
        size = SIZE[t["dtype"]]
        got = np.frombuffer(data[s0:s1], dtype=np.dtype(UINT[size]).newbyteorder("<")).astype(np.uint64)
        assert np.array_equal(got, bits), (fname, name)
        # And the values engram decodes are what an independent decoder makes of those bytes.
        if "values" in t:
            want = [val(x) for x in t["values"]]
            if t["dtype"] == "BF16":
                dec = (got.astype(np.uint32) << 16).view(np.float32)
            elif t["dtype"] == "F8_E4M3":
                dec = [fp8(int(b), 4, 3, 7, False) for b in got]
            elif t["dtype"] == "F8_E5M2":
                dec = [fp8(int(b), 5, 2, 15, True) for b in got]
            else:
                dec = loaded[name].reshape(-1).astype(np.float32)
            assert same(np.asarray(dec, dtype=np.float32), want), (fname, name, dec[:8], want[:8])
        checked += 1

# Metadata written by engram reads back through the reference reader.
with safe_open(f"{d}/all.safetensors", framework="np") as f:
    md = f.metadata()
assert md["origin"] == "engram-test" and md["format"] == "pt", md

# engram convert F32 -> F16 / F64 / BF16 rounds exactly as numpy (and bf16 as round-to-nearest-even).
with safe_open(f"{d}/all.safetensors", framework="np") as f:
    src = f.get_tensor("f32").reshape(-1)
for dt, conv in [("f16", lambda x: x.astype(np.float16)), ("f64", lambda x: x.astype(np.float64))]:
    out = load_file(f"{d}/conv-{dt}.safetensors")["f32"].reshape(-1)
    assert out.dtype == conv(src).dtype
    assert np.array_equal(out, conv(src), equal_nan=True), dt
b = src.view(np.uint32).astype(np.uint64)
rne = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
rne[np.isnan(src)] = (b[np.isnan(src)] >> 16).astype(np.uint16) | 0x40
h, data = raw(f"{d}/conv-bf16.safetensors")
s0, s1 = h["f32"]["data_offsets"]
got = np.frombuffer(data[s0:s1], dtype="<u2")
fin = np.isfinite(src)
assert np.array_equal(got[fin], rne[fin]), "bf16 rounding"
assert np.all(np.isnan((got[~fin].astype(np.uint32) << 16).view(np.float32)) == np.isnan(src[~fin]))

# A sharded folder written by engram: the index names every tensor's shard, each shard holds
# the same bytes as the single file, and total_size is the sum of the tensors' bytes.
idx = json.load(open(f"{d}/sharded/model.safetensors.index.json"))
h_all, data_all = raw(f"{d}/all.safetensors")
names = [k for k in h_all if k != "__metadata__"]
assert sorted(idx["weight_map"]) == sorted(names), (sorted(idx["weight_map"]), names)
assert len(set(idx["weight_map"].values())) > 1
for name, shard in idx["weight_map"].items():
    h, data = raw(f"{d}/sharded/{shard}")
    assert h[name]["dtype"] == h_all[name]["dtype"] and h[name]["shape"] == h_all[name]["shape"]
    s0, s1 = h[name]["data_offsets"]
    a0, a1 = h_all[name]["data_offsets"]
    assert data[s0:s1] == data_all[a0:a1], name
    if all(v["dtype"] in NP for k, v in h.items() if k != "__metadata__"):
        part = load_file(f"{d}/sharded/{shard}")
        assert part[name].tobytes() == data_all[a0:a1], name
assert idx["metadata"]["total_size"] == sum(h_all[k]["data_offsets"][1] - h_all[k]["data_offsets"][0] for k in names)

# engram synth output against engram inspect --stats.
stats = json.load(open(f"{d}/inspect.json"))
synth = load_file(f"{d}/synth/base/model.safetensors")
assert len(synth) == stats["tensor_count"]
for t in stats["tensors"]:
    a = synth[t["name"]].astype(np.float64)
    assert list(a.shape) == t["shape"]
    st = t["stats"]
    assert abs(a.sum() - st["sum"]) <= 1e-9 * max(1.0, np.abs(a).sum()), (t["name"], a.sum(), st["sum"])
    assert a.min() == st["min"] and a.max() == st["max"], t["name"]
    assert abs(np.sqrt((a * a).sum()) - st["l2"]) <= 1e-9 * st["l2"], t["name"]
print(f"checked {checked} tensors")
"#;

#[test]
fn python_reads_what_engram_writes() {
    let Some(py) = python() else { return };
    let t = tempfile::tempdir().unwrap();
    let d = t.path();

    // One file with every dtype engram knows, values set bit by bit.
    let n = 50;
    let floats = float_values(n, true);
    let finite = float_values(n, false);
    let mut specs = Vec::new();
    let mut data: Vec<(String, DType, Vec<u8>)> = Vec::new();
    for (name, dt) in [
        ("f64", DType::F64),
        ("f32", DType::F32),
        ("f16", DType::F16),
        ("bf16", DType::BF16),
        ("f8_e4m3", DType::F8E4M3),
        ("f8_e5m2", DType::F8E5M2),
    ] {
        let vals = if matches!(dt, DType::F8E4M3) {
            &finite
        } else {
            &floats
        };
        let mut bytes = vec![0u8; n * dt.size()];
        engram_ckpt::dtype::encode_f32(dt, vals, &mut bytes);
        if dt == DType::F64 {
            // f64 beyond f32 precision, written directly.
            bytes = (0..n)
                .flat_map(|i| (i as f64 * 1.000000001 - 7.0).to_le_bytes())
                .collect();
        }
        data.push((name.into(), dt, bytes));
    }
    let ints: Vec<i64> = (0..n as i64).map(|i| (i - 25) * 1_234_567).collect();
    data.push((
        "i64".into(),
        DType::I64,
        ints.iter()
            .map(|x| x * 1_000_000)
            .flat_map(|x| x.to_le_bytes())
            .collect(),
    ));
    data.push((
        "i32".into(),
        DType::I32,
        ints.iter()
            .flat_map(|x| (*x as i32).to_le_bytes())
            .collect(),
    ));
    data.push((
        "i16".into(),
        DType::I16,
        ints.iter()
            .flat_map(|x| (*x as i16).to_le_bytes())
            .collect(),
    ));
    data.push((
        "i8".into(),
        DType::I8,
        ints.iter().map(|x| *x as i8 as u8).collect(),
    ));
    data.push((
        "u8".into(),
        DType::U8,
        ints.iter().map(|x| *x as u8).collect(),
    ));
    data.push((
        "bool".into(),
        DType::Bool,
        (0..n).map(|i| (i % 3 == 0) as u8).collect(),
    ));
    for (name, dt, _) in &data {
        let shape: Vec<usize> = if name == "f32" { vec![5, 10] } else { vec![n] };
        specs.push(TensorSpec::new(name.clone(), *dt, &shape));
    }
    let opts = WriteOptions {
        max_shard_bytes: None,
        metadata: [("origin", "engram-test"), ("format", "pt")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let all = d.join("all.safetensors");
    let w = ModelWriter::create(&all, specs, &opts).unwrap();
    for (name, _, bytes) in &data {
        w.write_bytes(name, bytes).unwrap();
    }
    w.finish(&[]).unwrap();

    // What python should find: each element's bits, and engram's decoded values for floats.
    let m = Model::open(&all).unwrap();
    let mut expected = serde_json::Map::new();
    for tv in m.tensors() {
        let size = tv.dtype().size();
        let bits: Vec<u64> = tv
            .bytes
            .chunks_exact(size)
            .map(|c| {
                let mut a = [0u8; 8];
                a[..size].copy_from_slice(c);
                u64::from_le_bytes(a)
            })
            .collect();
        let mut e = json!({"dtype": tv.dtype().name(), "shape": tv.shape(), "bits": bits});
        if tv.dtype().is_float() && tv.dtype() != DType::F64 {
            let vals: Vec<Value> = tv
                .to_f32()
                .unwrap()
                .iter()
                .map(|v| match v {
                    v if v.is_nan() => json!("nan"),
                    v if *v == f32::INFINITY => json!("inf"),
                    v if *v == f32::NEG_INFINITY => json!("-inf"),
                    v => json!(*v as f64),
                })
                .collect();
            e["values"] = vals.into();
        }
        expected.insert(tv.name().to_string(), e);
    }
    let mut files = serde_json::Map::new();
    files.insert("all.safetensors".into(), Value::Object(expected.clone()));

    // engram convert: every dtype out of F32, and a sharded folder.
    for dt in ["f16", "f64", "bf16"] {
        let o = d.join(format!("conv-{dt}.safetensors"));
        engram(&["convert", "-q", s(&all), "-o", s(&o), "--dtype", dt]);
    }
    // Integer tensors are copied unchanged by a float conversion.
    let ints_only: serde_json::Map<String, Value> = expected
        .iter()
        .filter(|(k, _)| ["i64", "i32", "i16", "i8", "u8", "bool"].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    files.insert("conv-f16.safetensors".into(), Value::Object(ints_only));
    engram(&[
        "convert",
        "-q",
        s(&all),
        "-o",
        s(&d.join("sharded")),
        "--shard-size",
        "150",
    ]);
    std::fs::write(
        d.join("expected.json"),
        serde_json::to_vec(&Value::Object(files)).unwrap(),
    )
    .unwrap();

    // engram synth, with its statistics as engram reports them.
    engram(&[
        "synth",
        "-q",
        "-o",
        s(&d.join("synth")),
        "--size",
        "tiny",
        "-n",
        "0",
        "--dtype",
        "f32",
    ]);
    let stats = engram(&[
        "inspect",
        "--json",
        "--stats",
        s(&d.join("synth").join("base")),
    ]);
    std::fs::write(d.join("inspect.json"), stats).unwrap();

    let out = run_py(&py, d, CHECK_ENGRAM_FILES, &[s(d)]);
    assert!(out.contains("checked 18 tensors"), "{out}");
}

/// Python side of the second test: writes files (one with every numpy dtype, a sharded folder
/// with an index) and the values it wrote; with `check`, compares engram's outputs.
const PYTHON_WRITES: &str = r#"
import json, sys
import numpy as np
from safetensors.numpy import save_file, load_file

d, mode = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(7)
arrays = {
    "f64": rng.standard_normal((3, 4)) * 1e3,
    "f32": rng.standard_normal((2, 3, 5)).astype(np.float32),
    "f16": rng.standard_normal((7,)).astype(np.float16),
    "i64": rng.integers(-2**40, 2**40, size=(6,), dtype=np.int64),
    "i32": rng.integers(-2**31, 2**31 - 1, size=(2, 2), dtype=np.int32),
    "i16": rng.integers(-2**15, 2**15 - 1, size=(5,), dtype=np.int16),
    "i8": rng.integers(-128, 127, size=(4,), dtype=np.int8),
    "u8": rng.integers(0, 255, size=(9,), dtype=np.uint8),
    "bool": rng.integers(0, 2, size=(3, 3)).astype(np.bool_),
    "scalar": np.array(2.5, dtype=np.float32),
    "empty": np.zeros((0, 3), dtype=np.float32),
}
layers = {f"model.layers.{i}.w": rng.standard_normal((4, 4)).astype(np.float32) for i in range(5)}
layers["model.embed.weight"] = rng.standard_normal((10, 4)).astype(np.float32)

if mode == "write":
    save_file(arrays, f"{d}/all.safetensors", metadata={"source": "python"})
    import os
    os.makedirs(f"{d}/sharded", exist_ok=True)
    names = sorted(layers)
    parts = [names[:2], names[2:4], names[4:]]
    weight_map = {}
    for i, part in enumerate(parts):
        fname = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        save_file({n: layers[n] for n in part}, f"{d}/sharded/{fname}", metadata={"format": "np"})
        weight_map.update({n: fname for n in part})
    total = sum(a.nbytes for a in layers.values())
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map},
              open(f"{d}/sharded/model.safetensors.index.json", "w"), indent=2)
    json.dump({"model_type": "test"}, open(f"{d}/sharded/config.json", "w"))
    exp = {}
    for group, src in [("all", arrays), ("sharded", layers)]:
        exp[group] = {n: {"dtype": str(a.dtype), "shape": list(a.shape),
                          "values": [float(x) for x in a.reshape(-1)],
                          "ints": [int(x) for x in a.reshape(-1)] if a.dtype.kind in "iub" else None}
                      for n, a in src.items()}
    json.dump(exp, open(f"{d}/expected.json", "w"))
else:
    # engram's copies: byte-for-byte conversions and a float64 conversion.
    single = load_file(f"{d}/single.safetensors")
    assert sorted(single) == sorted(layers)
    for n, a in layers.items():
        assert single[n].dtype == a.dtype and np.array_equal(single[n], a), n
    copy = load_file(f"{d}/all-copy.safetensors")
    wide = load_file(f"{d}/all-f64.safetensors")
    for n, a in arrays.items():
        assert copy[n].dtype == a.dtype and np.array_equal(copy[n], a), n
        if a.dtype.kind == "f":
            assert wide[n].dtype == np.float64, n
            # F64 is copied byte for byte (dtype unchanged); F32 and F16 widen exactly.
            want = a if a.dtype == np.float64 else a.astype(np.float64)
            assert np.array_equal(wide[n], want), n
        else:
            assert wide[n].dtype == a.dtype and np.array_equal(wide[n], a), n
    print("python confirms engram's copies")
"#;

#[test]
fn engram_reads_what_python_writes() {
    let Some(py) = python() else { return };
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    run_py(&py, d, PYTHON_WRITES, &[s(d), "write"]);
    let exp: Value =
        serde_json::from_slice(&std::fs::read(d.join("expected.json")).unwrap()).unwrap();
    let np_to_st = |n: &str| match n {
        "float64" => "F64",
        "float32" => "F32",
        "float16" => "F16",
        "int64" => "I64",
        "int32" => "I32",
        "int16" => "I16",
        "int8" => "I8",
        "uint8" => "U8",
        "bool" => "BOOL",
        other => panic!("{other}"),
    };

    for (group, path) in [
        ("all", d.join("all.safetensors")),
        ("sharded", d.join("sharded")),
    ] {
        let want = exp[group].as_object().unwrap();
        // engram inspect: names, dtypes, shapes.
        let j: Value = serde_json::from_str(&engram(&["inspect", "--json", s(&path)])).unwrap();
        assert_eq!(j["tensor_count"].as_u64().unwrap() as usize, want.len());
        for tj in j["tensors"].as_array().unwrap() {
            let w = &want[tj["name"].as_str().unwrap()];
            assert_eq!(tj["dtype"], np_to_st(w["dtype"].as_str().unwrap()));
            assert_eq!(tj["shape"], w["shape"]);
        }
        // The library: every value.
        let m = Model::open(&path).unwrap();
        for (name, w) in want {
            let tv = m.require(name).unwrap();
            let got = tv.to_f32().unwrap();
            let vals: Vec<f64> = w["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(got.len(), vals.len(), "{name}");
            for (g, v) in got.iter().zip(&vals) {
                assert_eq!(*g, *v as f32, "{group}/{name}");
            }
            if let Some(ints) = w["ints"].as_array() {
                let size = tv.dtype().size();
                for (c, i) in tv.bytes.chunks_exact(size).zip(ints) {
                    let mut a = [0u8; 8];
                    a[..size].copy_from_slice(c);
                    let mut x = i64::from_le_bytes(a);
                    if tv.dtype() != DType::U8 && tv.dtype() != DType::Bool && size < 8 {
                        let sh = 64 - 8 * size as u32;
                        x = (x << sh) >> sh; // sign-extend
                    }
                    assert_eq!(Some(x), i.as_i64(), "{group}/{name}");
                }
            }
        }
    }
    let j: Value = serde_json::from_str(&engram(&[
        "inspect",
        "--json",
        s(&d.join("all.safetensors")),
    ]))
    .unwrap();
    assert_eq!(j["metadata"]["source"], "python");
    let j: Value =
        serde_json::from_str(&engram(&["inspect", "--json", s(&d.join("sharded"))])).unwrap();
    assert_eq!(j["files"].as_array().unwrap().len(), 3);
    assert!(
        j["side_files"][0]
            .as_str()
            .unwrap()
            .ends_with("config.json")
    );

    // engram's copies, checked by engram diff and then by python.
    let single = d.join("single.safetensors");
    engram(&["convert", "-q", s(&d.join("sharded")), "-o", s(&single)]);
    let diff: Value = serde_json::from_str(&engram(&[
        "diff",
        "--json",
        s(&d.join("sharded")),
        s(&single),
    ]))
    .unwrap();
    assert_eq!(diff["summary"]["identical"], 6);
    assert_eq!(diff["summary"]["l2_diff"], 0.0);
    engram(&[
        "convert",
        "-q",
        s(&d.join("all.safetensors")),
        "-o",
        s(&d.join("all-copy.safetensors")),
    ]);
    engram(&[
        "convert",
        "-q",
        s(&d.join("all.safetensors")),
        "-o",
        s(&d.join("all-f64.safetensors")),
        "--dtype",
        "f64",
    ]);
    let out = run_py(&py, d, PYTHON_WRITES, &[s(d), "check"]);
    assert!(out.contains("python confirms"), "{out}");
}
