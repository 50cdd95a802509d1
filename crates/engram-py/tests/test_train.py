# engram.train against `engram train` on a tiny synthetic run (blobs, a few hundred steps):
# the same results (all but the measured time and memory) and the same trained weights.
import engram
import pytest
from safetensors.numpy import load_file

from conftest import run_cli

RUN = """
name = "t"
seed = 1
[scenario]
kind = "class-incremental"
dataset = "blobs"
tasks = 2
classes-per-task = 2
[model]
kind = "mlp"
hidden = [16]
[strategy]
name = "ewc"
[train]
epochs = 2
batch-size = 32
[train.optimizer]
kind = "adam"
lr = 0.01
"""

RUN_DICT = {
    "name": "t",
    "seed": 1,
    "scenario": {"kind": "class-incremental", "dataset": "blobs", "tasks": 2, "classes-per-task": 2},
    "model": {"kind": "mlp", "hidden": [16]},
    "strategy": {"name": "ewc"},
    "train": {"epochs": 2, "batch-size": 32, "optimizer": {"kind": "adam", "lr": 0.01}},
}

MEASURED = ("time_per_task_s", "time_total_s", "peak_memory_bytes")


def comparable(results):
    """Results without what the run measured of the machine (time, memory)."""
    summary = {k: v for k, v in results["summary"].items() if k not in MEASURED}
    return {**results, "summary": summary}


def weights(run_dir):
    """Every tensor of the run's checkpoint files, by file and name."""
    return {
        (f.name, k): v
        for f in sorted((run_dir / "checkpoint").glob("*.safetensors"))
        for k, v in load_file(str(f)).items()
    }


def test_train_matches_the_cli(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(RUN)
    run_cli("train", "-q", "--config", cfg, "-o", tmp_path / "cli")
    import json

    want = json.loads((tmp_path / "cli" / "t" / "results.json").read_text())
    got = engram.train(cfg, tmp_path / "py")
    assert comparable(got) == comparable(want)
    saved = json.loads((tmp_path / "py" / "t" / "results.json").read_text())
    assert saved == got
    w_cli, w_py = weights(tmp_path / "cli" / "t"), weights(tmp_path / "py" / "t")
    assert sorted(w_cli) == sorted(w_py)
    for k in w_cli:
        assert w_cli[k].tobytes() == w_py[k].tobytes(), k
    # The same run as TOML text and as a dict.
    for i, run in enumerate([RUN, RUN_DICT]):
        assert comparable(engram.train(run, tmp_path / f"alt{i}")) == comparable(want)


def test_train_errors():
    with pytest.raises(engram.EngramError, match="strategy"):
        engram.train({**RUN_DICT, "strategy": {"name": "nope"}}, "/nonexistent-engram-out")
    with pytest.raises(ValueError, match="TOML"):
        engram.train({**RUN_DICT, "seed": None}, "/nonexistent-engram-out")
    with pytest.raises(engram.EngramError, match="no-such-run.toml"):
        engram.train("no-such-run.toml")


def test_train_if_needed(tmp_path):
    import json

    fresh = engram.train(RUN, tmp_path, if_needed=True)
    run = tmp_path / "t"
    log = (run / "events.jsonl").read_text()
    events = [json.loads(line)["event"] for line in log.splitlines()]
    assert events[0] == "run_start" and events[-1] == "run_end"
    assert [json.loads(line)["accuracy"] for line in log.splitlines() if "task_end" in line] == fresh[
        "accuracy"
    ]
    # Done: the stored results, nothing run or touched.
    before = [(run / f).read_bytes() for f in ("results.json", "events.jsonl")]
    assert engram.train(RUN, tmp_path, if_needed=True) == fresh
    assert [(run / f).read_bytes() for f in ("results.json", "events.jsonl")] == before
    # Other settings: an error naming them.
    with pytest.raises(engram.EngramError, match="lr: 0.01 -> 0.02"):
        engram.train(RUN.replace("lr = 0.01", "lr = 0.02"), tmp_path, if_needed=True)
    with pytest.raises(ValueError, match="if_needed"):
        engram.train(RUN, tmp_path, if_needed=True, resume=True)
