//! GGUF interoperability with the reference implementation, the `gguf` Python package (its
//! numpy quantizer `gguf.quants`, its `GGUFReader` and `GGUFWriter`):
//!
//! - the Q8_0 and Q4_0 blocks `engram convert --dtype q8_0|q4_0` writes are byte for byte
//!   those of `gguf.quants.quantize` on the same float values (zero rows, rounding ties,
//!   large and tiny magnitudes included), and tensors that cannot be blocked stay F32;
//! - F32, F16 and BF16 files engram writes load with `GGUFReader` with the right names,
//!   shapes, types, values and metadata;
//! - a file written by `GGUFWriter` (F32, F16, Q8_0, Q4_0, metadata of many types) converts
//!   to safetensors with the values of `gguf.quants.dequantize`, and to GGUF with its tensors
//!   and metadata carried through.
//!
//! Like `python_interop.rs`, the test uses the virtual environment at `target/pyenv` (made
//! with `python3 -m venv` if missing) and pip-installs `gguf` (the version checked against),
//! `numpy` and `safetensors` into it. Without python3 the test fails with a message saying
//! so, unless `ENGRAM_SKIP_PY=1` is set. The checks of refused conversions need no Python.

mod common;
use common::run_py;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `gguf` package version engram's quantizers were checked against.
const GGUF_VERSION: &str = "0.19.0";

fn engram(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs engram, which must succeed; returns stdout and stderr.
fn ok(args: &[&str]) -> (String, String) {
    let out = engram(args);
    assert!(
        out.status.success(),
        "engram {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Runs engram, which must fail; returns stderr.
fn fails(args: &[&str]) -> String {
    let out = engram(args);
    assert!(!out.status.success(), "engram {args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The shared virtual environment's python with gguf (the version checked against), numpy
/// and safetensors.
fn python() -> Option<PathBuf> {
    let check = format!(
        "import gguf, numpy, safetensors.numpy, importlib.metadata as m; \
         assert m.version('gguf') == '{GGUF_VERSION}'"
    );
    let pkg = format!("gguf=={GGUF_VERSION}");
    common::pyenv(
        "GGUF interoperability test",
        &check,
        &[&pkg, "numpy", "safetensors"],
    )
}

/// Writes `in.safetensors` (F32): random tensors of several scales, a zero row, rounding
/// ties for both formats, the largest and smallest magnitudes, equal extremes of opposite
/// sign, and tensors that cannot be blocked (1-D, a row of 48).
const MAKE_INPUT: &str = r#"
import sys
import numpy as np
from safetensors.numpy import save_file

d = sys.argv[1]
rng = np.random.default_rng(16)
t = {}
for i, scale in enumerate([1e-4, 0.02, 1.0, 300.0]):
    t[f"layers.{i}.weight"] = (rng.standard_normal((8, 96)) * scale).astype(np.float32)
w = (rng.standard_normal((6, 64)) * 2).astype(np.float32)
w[1] = 0.0
w[2, :32] = np.arange(32, dtype=np.float32) - 15.5      # q8: d = 16.5/127; q4: max -15.5
w[2, 32:] = 0.0
w[2, 32] = 127.0                                       # q8: d = 1, halves are ties
w[2, 33:40] = [2.5, -2.5, 0.5, -0.5, 126.5, -1.5, 3.5]
w[3, :32] = -8.0                                       # q4: d = 1, id = 1
w[3, 1:8] = [0.5, -0.5, 7.5, 6.5, -7.5, 7.999, -0.0]
w[3, 32:] = 1e-7                                       # scales subnormal in f16
w[4, :32] = rng.standard_normal(32).astype(np.float32) * 4e5   # near Q4_0's scale limit
w[4, 32:] = rng.standard_normal(32).astype(np.float32) * 7e6   # near Q8_0's
w[4, 32:] = np.clip(w[4, 32:], -8e6, 8e6)
w[4, :32] = np.clip(w[4, :32], -5e5, 5e5)
w[5, :32] = 3.0
w[5, 0] = -3.0                                         # first extreme is negative
w[5, 32:] = -3.0
w[5, 40] = 3.0
t["edge.weight"] = w
t["norm.weight"] = rng.standard_normal(96).astype(np.float32)
t["odd.weight"] = rng.standard_normal((4, 48)).astype(np.float32)
t["conv.weight"] = rng.standard_normal((2, 3, 64)).astype(np.float32)
save_file(t, f"{d}/in.safetensors")
# Q4_0's scale reaches f16's limit at |x| = 8 * 65504: the Q8_0-sized values are too large.
w4 = w.copy()
w4[4, 32:] = np.clip(w4[4, 32:], -5e5, 5e5)
save_file({**t, "edge.weight": w4}, f"{d}/in_q4.safetensors")
"#;

/// Checks engram's Q8_0 and Q4_0 files against `gguf.quants.quantize` of the same values.
const CHECK_QUANTS: &str = r#"
import sys
import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from safetensors.numpy import load_file

d = sys.argv[1]
blocked = kept = 0
for q in ["Q8_0", "Q4_0"]:
    src = load_file(f"{d}/" + ("in_q4" if q == "Q4_0" else "in") + ".safetensors")
    r = gguf.GGUFReader(f"{d}/{q.lower()}.gguf")
    names = [t.name for t in r.tensors]
    assert sorted(names) == sorted(src), names
    for t in r.tensors:
        x = src[t.name]
        assert tuple(reversed(t.shape.tolist())) == x.shape, (t.name, t.shape, x.shape)
        if x.ndim >= 2 and x.shape[-1] % 32 == 0:
            assert t.tensor_type == T[q], (t.name, t.tensor_type)
            want = gguf.quants.quantize(x, T[q])
            got = np.asarray(t.data)
            assert got.shape == want.shape, (t.name, got.shape, want.shape)
            if got.tobytes() != want.tobytes():
                bad = np.argwhere(got != want)[:5]
                raise SystemExit(f"{q} {t.name}: bytes differ at {bad.tolist()}")
            blocked += 1
        else:
            assert t.tensor_type == T.F32, (t.name, t.tensor_type)
            assert np.asarray(t.data).tobytes() == x.tobytes(), t.name
            kept += 1
    f = r.get_field("general.file_type")
    assert f.contents() == {"Q8_0": 7, "Q4_0": 2}[q], f.contents()
    assert r.get_field("engram.version") is not None
    # Decoding engram's blocks: engram's own f32 output equals gguf.quants.dequantize.
    back = load_file(f"{d}/{q.lower()}.safetensors")
    for t in r.tensors:
        if t.tensor_type == T[q]:
            want = gguf.quants.dequantize(np.asarray(t.data), T[q])
            assert back[t.name].tobytes() == want.astype(np.float32).tobytes(), t.name
print(f"blocked {blocked} kept {kept}")
"#;

/// Checks engram's F32, F16 and BF16 files with `GGUFReader`.
const CHECK_FLOATS: &str = r#"
import sys
import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from safetensors.numpy import load_file

d = sys.argv[1]
src = load_file(f"{d}/in.safetensors")
for name, ty in [("f32", T.F32), ("f16", T.F16), ("bf16", T.BF16)]:
    r = gguf.GGUFReader(f"{d}/{name}.gguf")
    assert r.get_field("GGUF.version").contents() == 3
    assert r.alignment == 32
    assert sorted(t.name for t in r.tensors) == sorted(src)
    for t in r.tensors:
        x = src[t.name]
        assert t.tensor_type == ty, (name, t.name, t.tensor_type)
        assert tuple(reversed(t.shape.tolist())) == x.shape, (t.name, t.shape)
        assert t.data_offset % 32 == 0
        got = np.asarray(t.data)
        if ty == T.F32:
            assert got.dtype == np.float32 and got.shape == x.shape and got.tobytes() == x.tobytes()
        elif ty == T.F16:
            assert got.dtype == np.float16 and got.shape == x.shape
            assert got.tobytes() == x.astype(np.float16).tobytes(), t.name
        else:
            want = gguf.quants.quantize(x, T.BF16)
            assert got.tobytes() == want.tobytes(), t.name
            back = gguf.quants.dequantize(got, T.BF16)
            assert back.shape == x.shape
    cmd = r.get_field("engram.command").contents()
    assert "convert" in cmd, cmd
    assert r.get_field("engram.crc32").contents().startswith("{")
print("ok")
"#;

/// Writes a GGUF file with the reference writer.
const MAKE_PY_GGUF: &str = r#"
import sys
import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

d = sys.argv[1]
rng = np.random.default_rng(3)
w = gguf.GGUFWriter(f"{d}/py.gguf", arch="llama")
w.add_uint8("t.u8", 7)
w.add_int8("t.i8", -7)
w.add_uint16("t.u16", 65535)
w.add_int16("t.i16", -300)
w.add_uint32("t.u32", 4000000000)
w.add_int32("t.i32", -5)
w.add_float32("t.f32", 0.5)
w.add_bool("t.bool", True)
w.add_string("t.str", "héllo")
w.add_uint64("t.u64", 2**63)
w.add_int64("t.i64", -2**40)
w.add_float64("t.f64", 1.25)
w.add_array("t.tokens", ["a", "b", "<0x0A>"])
w.add_array("t.ints", [1, 2, 3])
x32 = rng.standard_normal((3, 5)).astype(np.float32)
x16 = rng.standard_normal((4, 8)).astype(np.float16)
xq8 = rng.standard_normal((4, 64)).astype(np.float32)
xq4 = rng.standard_normal((2, 3, 32)).astype(np.float32)
xq4[0, 1] = 0.0
w.add_tensor("a.f32", x32)
w.add_tensor("b.f16", x16)
w.add_tensor("c.q8", gguf.quants.quantize(xq8, T.Q8_0), raw_dtype=T.Q8_0)
w.add_tensor("d.q4", gguf.quants.quantize(xq4, T.Q4_0), raw_dtype=T.Q4_0)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
"#;

/// Checks engram's conversions of the reference writer's file.
const CHECK_PY_GGUF: &str = r#"
import json, struct, sys
import numpy as np
import gguf
from safetensors import safe_open
from safetensors.numpy import load_file

d = sys.argv[1]
r = gguf.GGUFReader(f"{d}/py.gguf")
out = load_file(f"{d}/py.safetensors")
assert sorted(out) == sorted(t.name for t in r.tensors), sorted(out)
for t in r.tensors:
    want = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
    got = out[t.name]
    assert got.dtype == np.float32 and got.shape == want.shape, (t.name, got.shape, want.shape)
    assert got.tobytes() == want.tobytes(), t.name
with safe_open(f"{d}/py.safetensors", "np") as f:
    md = f.metadata()
assert md["general.architecture"] == "llama", md
assert md["t.u64"] == str(2**63) and md["t.i8"] == "-7" and md["t.bool"] == "true", md
assert md["t.f32"] == "0.5" and md["t.str"] == "héllo", md
assert "t.tokens" not in md and "t.ints" not in md

# GGUF to GGUF: tensors byte for byte, every key with its type and value.
c = gguf.GGUFReader(f"{d}/copy.gguf")
assert [t.name for t in c.tensors] == [t.name for t in r.tensors]
for a, b in zip(r.tensors, c.tensors):
    assert a.tensor_type == b.tensor_type and a.shape.tolist() == b.shape.tolist(), a.name
    assert np.asarray(a.data).tobytes() == np.asarray(b.data).tobytes(), a.name
for k, f in r.fields.items():
    if k.startswith("GGUF."):
        continue
    g = c.get_field(k)
    assert g is not None, k
    assert g.types == f.types, (k, g.types, f.types)
    assert g.contents() == f.contents(), (k, g.contents(), f.contents())
print("ok")
"#;

#[test]
fn blocks_agree_with_the_reference_quantizer() {
    let Some(py) = python() else { return };
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    run_py(&py, d, MAKE_INPUT, &[s(d)]);
    // A value whose block's f16 scale would overflow is refused, naming tensor and element.
    let input = d.join("in.safetensors");
    let out = d.join("q4_0.gguf");
    let err = fails(&["convert", s(&input), "-o", s(&out), "--dtype", "q4_0"]);
    assert!(
        err.contains("'edge.weight'") && err.contains("element 2") && err.contains("Q4_0"),
        "{err}"
    );
    assert!(!out.exists());
    for q in ["q8_0", "q4_0"] {
        let input = d.join(if q == "q4_0" {
            "in_q4.safetensors"
        } else {
            "in.safetensors"
        });
        let out = d.join(format!("{q}.gguf"));
        let (_, err) = ok(&["convert", s(&input), "-o", s(&out), "--dtype", q]);
        // norm.weight (1-D) and odd.weight (rows of 48) stay F32, and the command says so.
        assert!(
            err.contains("2 tensors stayed F32") && err.contains(&q.to_uppercase()),
            "{err}"
        );
        let back = d.join(format!("{q}.safetensors"));
        ok(&["convert", s(&out), "-o", s(&back)]);
    }
    let out = run_py(&py, d, CHECK_QUANTS, &[s(d)]);
    assert_eq!(out.trim(), "blocked 12 kept 4", "{out}");
}

#[test]
fn float_files_load_with_the_reference_reader() {
    let Some(py) = python() else { return };
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    run_py(&py, d, MAKE_INPUT, &[s(d)]);
    let input = d.join("in.safetensors");
    // Row 4 of edge.weight reaches 8e6, beyond f16: refused, naming the tensor.
    let f16 = d.join("f16.gguf");
    let err = fails(&["convert", s(&input), "-o", s(&f16), "--dtype", "f16"]);
    assert!(
        err.contains("edge.weight") && err.contains("beyond the range of F16"),
        "{err}"
    );
    assert!(!f16.exists());
    run_py(
        &py,
        d,
        r#"
import sys
from safetensors.numpy import load_file, save_file
d = sys.argv[1]
t = load_file(f"{d}/in.safetensors")
t["edge.weight"][4] = 0.0
save_file(t, f"{d}/in.safetensors")
"#,
        &[s(d)],
    );
    // f32 without --dtype (unchanged), f16 and bf16 by --dtype.
    ok(&["convert", s(&input), "-o", s(&d.join("f32.gguf"))]);
    ok(&["convert", s(&input), "-o", s(&f16), "--dtype", "f16"]);
    ok(&[
        "convert",
        s(&input),
        "-o",
        s(&d.join("bf16.gguf")),
        "--dtype",
        "bf16",
    ]);
    let out = run_py(&py, d, CHECK_FLOATS, &[s(d)]);
    assert_eq!(out.trim(), "ok");
}

#[test]
fn reference_files_convert_to_safetensors_and_gguf() {
    let Some(py) = python() else { return };
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    run_py(&py, d, MAKE_PY_GGUF, &[s(d)]);
    let src = d.join("py.gguf");
    let (_, err) = ok(&["convert", s(&src), "-o", s(&d.join("py.safetensors"))]);
    assert!(err.contains("2 array-valued GGUF metadata keys"), "{err}");
    ok(&["convert", s(&src), "-o", s(&d.join("copy.gguf"))]);
    let out = run_py(&py, d, CHECK_PY_GGUF, &[s(d)]);
    assert_eq!(out.trim(), "ok");
    // engram's GGUF copy verifies its checksums; a flipped data byte is found.
    let copy = d.join("copy.gguf");
    let again = d.join("again.gguf");
    ok(&["convert", s(&copy), "-o", s(&again), "--dtype", "q8_0"]);
    let mut bytes = std::fs::read(&copy).unwrap();
    let n = bytes.len();
    bytes[n - 40] ^= 0x10;
    std::fs::write(&copy, bytes).unwrap();
    let err = fails(&["convert", s(&copy), "-o", s(&again)]);
    assert!(
        err.contains("checksum mismatch") && err.contains("copy.gguf"),
        "{err}"
    );
}

/// Conversions GGUF cannot take are refused before anything is written (no Python needed).
#[test]
fn refused_conversions_write_nothing() {
    use engram_ckpt::{DType, ModelWriter, TensorSpec, WriteOptions};
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let input = d.join("m.safetensors");
    let specs = vec![
        TensorSpec::new("w", DType::F32, &[2, 32]),
        TensorSpec::new("ids", DType::I64, &[3]),
    ];
    let w = ModelWriter::create(&input, specs, &WriteOptions::default()).unwrap();
    w.write_f32("w", &[0.5; 64]).unwrap();
    w.write_bytes("ids", &[0u8; 24]).unwrap();
    w.finish(&[]).unwrap();
    let out = d.join("o.gguf");
    let err = fails(&["convert", s(&input), "-o", s(&out)]);
    assert!(err.contains("'ids'") && err.contains("I64"), "{err}");
    let err = fails(&["convert", s(&input), "-o", s(&out), "--shard-size", "1MB"]);
    assert!(err.contains("--shard-size"), "{err}");
    let err = fails(&["convert", s(&input), "-o", s(&out), "--dtype", "q5_k"]);
    assert!(err.contains("q8_0"), "{err}");
    let err = fails(&[
        "convert",
        s(&input),
        "-o",
        s(&d.join("o.safetensors")),
        "--dtype",
        "q8_0",
    ]);
    assert!(err.contains(".gguf"), "{err}");
    assert_eq!(std::fs::read_dir(d).unwrap().count(), 1, "nothing written");
}
