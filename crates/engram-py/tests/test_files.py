# The Python API against the CLI on the same inputs: reports equal and output files equal
# byte for byte. Outputs record the command line as provenance (`engram.command`): the Python
# side is given the CLI's command line (command=), so whole files must match byte for byte;
# one test checks the default provenance, where everything but that entry must match.
import json

import engram
import pytest
import safetensors

from conftest import (
    assert_same_files,
    cli_error,
    cli_json,
    command_of,
    run_cli,
    swap_paths,
)


def models(family, n=2):
    return [family / f"ft-{i}" for i in range(1, n + 1)]


def test_inspect(family):
    for args, kw in [([], {}), (["--stats"], {"stats": True}), (["--check-finite"], {"check_finite": True})]:
        want = cli_json("inspect", "--json", *args, family / "base")
        assert engram.inspect(family / "base", **kw) == want
    # A path as str works as well as a pathlib.Path.
    assert engram.inspect(str(family / "ft-1"))["tensor_count"] > 0


def test_merge_yaml_config(family, tmp_path):
    cfg = tmp_path / "merge.yml"
    ft = models(family)
    cfg.write_text(
        f"merge_method: ties\nbase_model: {family / 'base'}\nmodels:\n"
        f"  - model: {ft[0]}\n    parameters:\n      weight: 0.7\n"
        f"  - model: {ft[1]}\n    parameters:\n      weight: 1.0\n"
        "parameters:\n  density: 0.4\n"
    )
    args = ["merge", cfg, "-o", tmp_path / "cli", "--json", "-q"]
    want = cli_json(*args)
    got = engram.merge(cfg, tmp_path / "py", command=command_of(*args))
    assert swap_paths(got, tmp_path / "py", tmp_path / "cli") == want
    assert_same_files(tmp_path / "cli", tmp_path / "py")
    # The same config as YAML text and as a dict: the same tensors (the recorded inputs differ).
    ref = safetensors.safe_open(str(tmp_path / "cli" / "model.safetensors"), "np")
    for i, config in enumerate([cfg.read_text(), _yaml_dict(family, ft)]):
        engram.merge(config, tmp_path / f"alt{i}")
        alt = safetensors.safe_open(str(tmp_path / f"alt{i}" / "model.safetensors"), "np")
        for k in ref.keys():
            assert ref.get_tensor(k).tobytes() == alt.get_tensor(k).tobytes(), k


def _yaml_dict(family, ft):
    return {
        "merge_method": "ties",
        "base_model": str(family / "base"),
        "models": [
            {"model": str(ft[0]), "parameters": {"weight": 0.7}},
            {"model": str(ft[1]), "parameters": {"weight": 1.0}},
        ],
        "parameters": {"density": 0.4},
    }


def test_merge_quick_form(family, tmp_path):
    ft = models(family, 3)
    args = [
        "merge", "--method", "dare_ties", "--base", family / "base", *ft, "--density", "0.5",
        "--weights", "1,0.5,2", "--seed", "3", "--out-dtype", "bf16", "-o", tmp_path / "cli.safetensors",
        "--json", "-q",
    ]
    want = cli_json(*args)
    got = engram.merge(
        out=tmp_path / "py.safetensors", method="dare_ties", base=family / "base", models=ft,
        density=0.5, weights=[1, 0.5, 2], seed=3, out_dtype="bf16", command=command_of(*args),
    )
    assert swap_paths(got, "py.safetensors", "cli.safetensors") == want
    assert_same_files(tmp_path / "cli.safetensors", tmp_path / "py.safetensors")


def test_default_provenance(family, tmp_path):
    ft = models(family)
    args = ["merge", "--method", "task_arithmetic", "--base", family / "base", *ft, "--lambda", "0.5",
            "-o", tmp_path / "cli", "-q"]
    run_cli(*args)
    engram.merge(method="task_arithmetic", base=family / "base", models=ft, lambda_=0.5, out=tmp_path / "py")
    a = engram.inspect(tmp_path / "cli")["metadata"]
    b = engram.inspect(tmp_path / "py")["metadata"]
    assert b.pop("engram.command") == "python: engram.merge"
    assert a.pop("engram.command") == command_of(*args)
    assert a == b  # params, version, checksums: everything else is equal


def test_tall(family, tmp_path):
    ft = models(family, 3)
    args = ["tall", "--base", family / "base", *ft, "--lambdas", "0.4,0.5,0.6",
            "--reconstruct", tmp_path / "cli", "--json", "-q"]
    want = cli_json(*args)
    got = engram.tall(family / "base", ft, lambdas=[0.4, 0.5, 0.6], reconstruct=tmp_path / "py",
                      command=command_of(*args))
    assert got == want
    assert_same_files(tmp_path / "cli", tmp_path / "py")
    # TIES recipe with a density.
    want = cli_json("tall", "--base", family / "base", *ft, "--tau", "ties", "--density", "0.3", "--json", "-q")
    assert engram.tall(family / "base", ft, tau="ties", density=0.3) == want


def test_consensus(family, tmp_path):
    ft = models(family, 3)
    args = ["consensus", "--base", family / "base", *ft, "-k", "2", "--alpha", "0.8",
            "--lambda", "0.5", "-o", tmp_path / "cli", "--json", "-q"]
    want = cli_json(*args)
    got = engram.consensus(family / "base", ft, tmp_path / "py", k=2, alpha=0.8, lambda_=0.5,
                           command=command_of(*args))
    assert swap_paths(got, tmp_path / "py", tmp_path / "cli") == want
    assert_same_files(tmp_path / "cli", tmp_path / "py")


def test_compress_and_extract(family, tmp_path):
    ft = models(family, 3)
    args = ["compress", "--base", family / "base", *ft, "--mask-coding", "arith",
            "--tasks", "a,b,c", "-o", tmp_path / "cli", "--json", "-q"]
    want = cli_json(*args)
    got = engram.compress(family / "base", ft, tmp_path / "py", mask_coding="arith",
                          tasks=["a", "b", "c"], command=command_of(*args))
    assert swap_paths(got, tmp_path / "py", tmp_path / "cli") == want
    assert_same_files(tmp_path / "cli", tmp_path / "py")
    args = ["extract", tmp_path / "cli", "--task", "b", "-o", tmp_path / "cli-b", "-q"]
    run_cli(*args)
    files = engram.extract(tmp_path / "cli", "b", tmp_path / "py-b", command=command_of(*args))
    assert files and all(f.startswith(str(tmp_path / "py-b")) for f in files)
    assert_same_files(tmp_path / "cli-b", tmp_path / "py-b")


def test_quantize(family, tmp_path):
    args = ["quantize", family / "ft-1", "-o", tmp_path / "cli", "--method", "power", "--bits", "4",
            "--group", "32", "--scale-dtype", "f16", "--json", "-q"]
    want = cli_json(*args)
    got = engram.quantize(family / "ft-1", tmp_path / "py", method="power", bits=4, group=32,
                          scale_dtype="f16", command=command_of(*args))
    assert swap_paths(got, tmp_path / "py", tmp_path / "cli") == want
    assert_same_files(tmp_path / "cli", tmp_path / "py")


def _timeless(doc):
    """An analyze report without the fields that measure the run (time, thread count)."""
    doc = dict(doc)
    doc.pop("seconds")
    doc.pop("threads")
    return doc


def test_analyze(family, tmp_path):
    args = ["analyze", family / "base", "--json", "--values", "--top-k", "4", "--max-dim", "16",
            "--lift-masks", tmp_path / "cli.safetensors", "--lift-exclude", "embed", "-q"]
    want = cli_json(*args)
    got = engram.analyze(family / "base", values=True, top_k=4, max_dim=16,
                         lift_masks=tmp_path / "py.safetensors", lift_exclude=["embed"],
                         command=command_of(*args))
    assert _timeless(swap_paths(got, "py.safetensors", "cli.safetensors")) == _timeless(want)
    assert_same_files(tmp_path / "cli.safetensors", tmp_path / "py.safetensors")
    want = cli_json("analyze", family / "ft-2", "--json", "--include", "mlp", "-q")
    assert _timeless(engram.analyze(family / "ft-2", include=["mlp"])) == _timeless(want)


def test_errors_carry_engrams_messages(family, tmp_path):
    missing = tmp_path / "nope"
    want = cli_error("inspect", missing)
    with pytest.raises(engram.EngramError) as e:
        engram.inspect(missing)
    assert str(e.value) == want
    want = cli_error("merge", "--method", "ties", "--base", family / "base", missing, "-o", tmp_path / "o")
    with pytest.raises(engram.EngramError) as e:
        engram.merge(method="ties", base=family / "base", models=[missing], out=tmp_path / "o")
    assert str(e.value) == want
    # Bad arguments are ValueError, with the CLI's wording.
    with pytest.raises(ValueError, match="unknown dtype 'f7'"):
        engram.merge(method="ties", base=family / "base", models=models(family), out=tmp_path / "o",
                     out_dtype="f7")
    with pytest.raises(ValueError, match="parameter 'density' is given twice"):
        engram.merge(method="ties", base=family / "base", models=models(family), out=tmp_path / "o",
                     density=0.2, params={"density": 0.3})
    with pytest.raises(ValueError, match="no effect"):
        engram.merge(method="linear", base=family / "base", models=models(family), out=tmp_path / "o")
    with pytest.raises(ValueError, match="k=4 is more than the 2 task"):
        engram.consensus(family / "base", models(family), tmp_path / "o", k=4)
    with pytest.raises(ValueError, match="bits"):
        engram.quantize(family / "base", tmp_path / "o", bits=1)
    with pytest.raises(TypeError):
        engram.quantize(family / "base", tmp_path / "o")  # bits is required
    assert not (tmp_path / "o").exists()


def test_progress_is_silent_by_default(family, tmp_path, capfd):
    engram.consensus(family / "base", models(family), tmp_path / "o")
    engram.inspect(family / "base", stats=True)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_json_reports_are_plain_python(family):
    doc = engram.inspect(family / "base")
    assert json.loads(json.dumps(doc)) == doc


def test_merge_shard_size_is_read_as_the_cli_reads_it(family, tmp_path):
    kw = dict(method="task_arithmetic", base=family / "base", models=models(family))
    for bad in (0, -1, True, "0"):
        with pytest.raises(ValueError, match="shard_size"):
            engram.merge(out=tmp_path / "x", shard_size=bad, **kw)
    assert not (tmp_path / "x").exists()
