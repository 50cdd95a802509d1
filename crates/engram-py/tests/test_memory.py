# The in-memory API: dicts of NumPy arrays in, dicts out, equal bit for bit to the file-based
# commands on the same tensors; inputs never modified; bad inputs named in the errors.
import json

import engram
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import run_cli


def state(family, name):
    return load_file(str(family / name / "model.safetensors"))


def snapshot(d):
    return {k: v.copy() for k, v in d.items()}


def assert_same_arrays(got, want):
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert got[k].shape == want[k].shape, k
        assert got[k].tobytes() == want[k].tobytes(), k


def test_merge_tensors_equals_the_file_merge(family, tmp_path):
    base = state(family, "base")
    fts = [state(family, f"ft-{i}") for i in (1, 2, 3)]
    before = [snapshot(d) for d in [base, *fts]]
    got = engram.merge_tensors("ties", base, fts, density=0.3, lambda_=0.9, weights=[1, 0.5, 1])
    for d, b in zip([base, *fts], before):
        assert_same_arrays(d, b)  # inputs not modified
    run_cli("merge", "--method", "ties", "--base", family / "base", *(family / f"ft-{i}" for i in (1, 2, 3)),
            "--density", "0.3", "--lambda", "0.9", "--weights", "1,0.5,1", "-o", tmp_path / "m", "-q")
    assert_same_arrays(got, state(tmp_path, "m"))


def test_merge_tensors_of_arrays_written_by_numpy(tmp_path):
    """A state dict made in Python (mixed dtypes, a non-contiguous view, an integer tensor)
    merges as the same tensors saved to files."""
    rng = np.random.default_rng(0)
    base = {
        "w": rng.standard_normal((6, 4), dtype=np.float32),
        "h": rng.standard_normal((8,)).astype(np.float16),
        "ids": np.arange(5, dtype=np.int64),
    }
    fts = [{k: (v + rng.standard_normal(v.shape).astype(v.dtype) * 0.1 if v.dtype.kind == "f" else v.copy())
            for k, v in base.items()} for _ in range(2)]
    # A transposed (non-contiguous) array is copied to C order; the values are the same.
    fts[1]["w"] = np.ascontiguousarray(fts[1]["w"].T).T
    assert not fts[1]["w"].flags.c_contiguous
    for i, d in enumerate([base, *fts]):
        save_file({k: np.ascontiguousarray(v) for k, v in d.items()}, str(tmp_path / f"m{i}.safetensors"))
    got = engram.merge_tensors("dare_linear", base, fts, density=0.5, seed=11)
    run_cli("merge", "--method", "dare_linear", "--base", tmp_path / "m0.safetensors",
            tmp_path / "m1.safetensors", tmp_path / "m2.safetensors", "--density", "0.5", "--seed", "11",
            "-o", tmp_path / "out.safetensors", "-q")
    assert_same_arrays(got, load_file(str(tmp_path / "out.safetensors")))
    assert got["ids"].dtype == np.int64 and got["h"].dtype == np.float16
    # A method without a base.
    got = engram.merge_tensors("linear", None, fts, weights=[0.25, 0.75])
    assert got["w"].dtype == np.float32


def test_consensus_and_tall_tensors_equal_the_files(family, tmp_path):
    base = state(family, "base")
    fts = [state(family, f"ft-{i}") for i in (1, 2, 3)]
    paths = [family / f"ft-{i}" for i in (1, 2, 3)]
    got = engram.consensus_tensors(base, fts, k=2, alpha=0.7)
    engram.consensus(family / "base", paths, tmp_path / "c", k=2, alpha=0.7)
    assert_same_arrays(got, state(tmp_path, "c"))
    tasks = ["task1", "task2", "task3"]
    assert engram.tall_tensors(base, fts, lambda_=0.4) == engram.tall(family / "base", paths, lambda_=0.4, tasks=tasks)


def test_analyze_and_quantize_tensors_equal_the_files(family, tmp_path):
    base = state(family, "base")
    got = engram.analyze_tensors(base, top_k=4, max_dim=16)
    want = engram.analyze(family / "base", top_k=4, max_dim=16)
    for doc in (got, want):
        for k in ("seconds", "threads", "model"):
            doc.pop(k)
    # The tensors' order: load_file's against the file's.
    got["tensors"].sort(key=lambda t: t["name"])
    want["tensors"].sort(key=lambda t: t["name"])
    got["skipped"].sort(key=lambda t: t["name"])
    want["skipped"].sort(key=lambda t: t["name"])
    assert got == want
    q, report = engram.quantize_tensors(base, bits=4)
    engram.quantize(family / "base", tmp_path / "q", bits=4)
    assert_same_arrays(q, load_file(str(tmp_path / "q" / "model.safetensors")))
    assert report["quantized"] > 0


def test_bad_inputs_name_the_tensor():
    good = {"a": np.zeros((2, 2), np.float32)}
    with pytest.raises(TypeError, match=r"models\[1\]: tensor 'a' has dtype complex64"):
        engram.merge_tensors("linear", None, [good, {"a": np.zeros((2, 2), np.complex64)}])
    with pytest.raises(TypeError, match=r"tensor 'a' is a list, not a numpy.ndarray"):
        engram.merge_tensors("linear", None, [good, {"a": [[0.0]]}])
    with pytest.raises(TypeError, match="base: expected a dict"):
        engram.merge_tensors("ties", [good], [good])
    with pytest.raises(ValueError, match="no models to merge"):
        engram.merge_tensors("linear", None, [])
    with pytest.raises(engram.EngramError, match="'a'"):
        engram.merge_tensors("linear", None, [good, {"a": np.zeros((3, 2), np.float32)}])
    with pytest.raises(engram.EngramError, match="'b'"):
        engram.merge_tensors("task_arithmetic", good, [{"a": good["a"], "b": np.ones(2, np.float32)}])
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        engram.merge_tensors("nope", None, [good])
    # Big-endian input is read as its values.
    be = {"a": np.arange(4, dtype=">f4").reshape(2, 2)}
    out = engram.merge_tensors("linear", None, [be, be])
    assert out["a"].tolist() == [[0, 1], [2, 3]]


def test_bf16_through_ml_dtypes(tmp_path):
    """bf16 tensors (ml_dtypes.bfloat16, as torch users get them with
    `v.view(torch.int16).numpy().view(ml_dtypes.bfloat16)`) go in and come back as bf16."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(1)
    base = {"w": rng.standard_normal((4, 8)).astype(ml_dtypes.bfloat16)}
    fts = [{"w": (base["w"].astype(np.float32) + 0.01 * i).astype(ml_dtypes.bfloat16)} for i in (1, 2)]
    got = engram.merge_tensors("task_arithmetic", base, fts, lambda_=0.5)
    assert got["w"].dtype == ml_dtypes.bfloat16
    # safetensors' NumPy API has no bf16: the files are written by hand.
    for i, d in enumerate([base, *fts]):
        raw = d["w"].tobytes()
        header = json.dumps({"w": {"dtype": "BF16", "shape": [4, 8], "data_offsets": [0, len(raw)]}})
        header += " " * (-len(header) % 8)
        (tmp_path / f"m{i}.safetensors").write_bytes(len(header).to_bytes(8, "little") + header.encode() + raw)
    run_cli("merge", "--method", "task_arithmetic", "--base", tmp_path / "m0.safetensors",
            tmp_path / "m1.safetensors", tmp_path / "m2.safetensors", "--lambda", "0.5",
            "-o", tmp_path / "out.safetensors", "-q")
    out = tmp_path / "out.safetensors"
    data = out.read_bytes()
    n = int.from_bytes(data[:8], "little")
    assert got["w"].view(np.uint16).tobytes() == data[8 + n:]
