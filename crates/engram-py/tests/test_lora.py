# engram.lora_extract / lora_apply / lora_merge against `engram lora ...` on the same inputs:
# the reports equal (timings aside) and the written adapters and models equal byte for byte.
import json

import engram
import pytest
import safetensors

from conftest import assert_same_files, cli_json, command_of, swap_paths


def tensors(path):
    f = safetensors.safe_open(str(path), "np")
    return {k: f.get_tensor(k).tobytes() for k in f.keys()}


def test_extract_and_apply_match_the_cli(family, tmp_path):
    base, ft = family / "base", family / "ft-1"
    args = ["lora", "extract", "-q", "--base", base, "--model", ft, "-r", "4",
            "--targets", "*proj", "--json", "-o", tmp_path / "cli"]
    want = cli_json(*args)
    got = engram.lora_extract(base, ft, 4, tmp_path / "py", targets="*proj",
                              command=command_of(*args))
    for r in (want, got):
        r.pop("seconds")
    assert swap_paths(got, tmp_path / "py", tmp_path / "cli") == want
    assert_same_files(tmp_path / "cli", tmp_path / "py")
    assert got["report"]["energy"] > 0.0
    assert all(m["module"].endswith("proj") for m in got["report"]["modules"])

    args = ["lora", "apply", "-q", "--base", base, "--adapter", tmp_path / "cli", "--dtype",
            "bf16", "--multiplier", "0.5", "--json", "-o", tmp_path / "m-cli"]
    want = cli_json(*args)
    got = engram.lora_apply(base, tmp_path / "cli", tmp_path / "m-py", "bf16",
                            multiplier=0.5, command=command_of(*args))
    assert swap_paths(got, tmp_path / "m-py", tmp_path / "m-cli") == want
    assert_same_files(tmp_path / "m-cli", tmp_path / "m-py")


def test_merges_of_adapters_match_the_cli(family, tmp_path):
    base = family / "base"
    ads = []
    for i in (1, 2):
        ad = tmp_path / f"a{i}"
        engram.lora_extract(base, family / f"ft-{i}", 3, ad)
        ads.append(ad)
    args = ["lora", "merge", "-q", "--base", base, "--rank", "4", "--weights", "0.5,1",
            *ads, "--json", "-o", tmp_path / "r-cli"]
    want = cli_json(*args)
    got = engram.lora_merge(base, ads, tmp_path / "r-py", rank=4, weights=[0.5, 1],
                            command=command_of(*args))
    assert swap_paths(got, tmp_path / "r-py", tmp_path / "r-cli") == want
    assert_same_files(tmp_path / "r-cli", tmp_path / "r-py")

    args = ["lora", "merge", "-q", "--base", base, "--method", "ties", "--density", "0.5",
            *ads, "-o", tmp_path / "t-cli"]
    cli_json(*args, "--json")
    got = engram.lora_merge(base, ads, tmp_path / "t-py", method="ties", density=0.5)
    assert got["tensors_merged"] > 0
    # The recorded inputs are temporary folders: the tensors are compared.
    assert tensors(tmp_path / "t-cli" / "model.safetensors") == tensors(
        tmp_path / "t-py" / "model.safetensors")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_arguments_raise_before_anything_is_written(family, tmp_path):
    base, ft = family / "base", family / "ft-1"
    with pytest.raises(ValueError, match="rank must be at least 1"):
        engram.lora_extract(base, ft, 0, tmp_path / "x")
    with pytest.raises(ValueError, match="not a float type"):
        engram.lora_extract(base, ft, 2, tmp_path / "x", dtype="i8")
    with pytest.raises(ValueError, match="finite"):
        engram.lora_apply(base, tmp_path / "a", tmp_path / "x", "f32", multiplier=float("nan"))
    with pytest.raises(engram.EngramError, match="adapter_config.json"):
        engram.lora_apply(base, base, tmp_path / "x", "f32")
    with pytest.raises(ValueError, match="method= .* or rank="):
        engram.lora_merge(base, [base], tmp_path / "x")
    with pytest.raises(ValueError, match="seed= belongs"):
        engram.lora_merge(base, [base], tmp_path / "x", rank=2, seed=1)
    with pytest.raises(ValueError, match="rank must be at least 1"):
        engram.lora_merge(base, [base], tmp_path / "x", rank=0)
    with pytest.raises(ValueError, match="takes no base"):
        engram.lora_merge(base, [base], tmp_path / "x", method="linear")
    with pytest.raises(ValueError, match="density"):
        engram.lora_merge(base, [base, base], tmp_path / "x", method="ties", density=2.0)
    with pytest.raises(engram.EngramError, match="nothing to extract"):
        engram.lora_extract(base, base, 2, tmp_path / "x")
    assert not (tmp_path / "x").exists()
