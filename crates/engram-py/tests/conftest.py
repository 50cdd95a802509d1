# Shared fixtures of the Python tests: the engram CLI binary (ENGRAM_BIN), a small synthetic
# model family written by `engram synth`, and helpers that compare outputs byte for byte.
import json
import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
BIN = os.environ.get("ENGRAM_BIN", str(REPO / "target" / "debug" / "engram"))


def cli_argv(*args):
    """The argv of a CLI run: BIN first, then the arguments as strings."""
    return [BIN, *[str(a) for a in args]]


def command_of(*args):
    """The command line the CLI records as provenance for `args` (std::env::args joined by
    spaces): passing it as `command=` makes the Python side write byte-identical files."""
    return " ".join(cli_argv(*args))


def run_cli(*args, check=True):
    """Runs the CLI quietly; returns the completed process (stdout and stderr as text)."""
    p = subprocess.run(cli_argv(*args), capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"engram {' '.join(map(str, args))} failed:\n{p.stderr}")
    return p


def cli_json(*args):
    """Runs the CLI with --json and returns the parsed report."""
    return json.loads(run_cli(*args).stdout)


def cli_error(*args):
    """The CLI's error message for a failing run (stderr without `error: `)."""
    p = run_cli(*args, check=False)
    assert p.returncode == 1, p
    return p.stderr.strip().removeprefix("error: ")


def tree(root):
    """Every file under `root` (a folder or a file) as {relative path: bytes}."""
    root = pathlib.Path(root)
    if root.is_file():
        return {".": root.read_bytes()}
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def assert_same_files(a, b):
    """Two outputs hold the same files with the same bytes."""
    ta, tb = tree(a), tree(b)
    assert sorted(ta) == sorted(tb)
    for name in ta:
        assert ta[name] == tb[name], f"{name} differs between {a} and {b}"


def swap_paths(value, a, b):
    """`value` (a report) with the path prefix `a` replaced by `b` in every string."""
    return json.loads(json.dumps(value).replace(str(a), str(b)))


@pytest.fixture(scope="session")
def family(tmp_path_factory):
    """A tiny transformer-shaped base and three fine-tunes in f32: base/, ft-1/ ... ft-3/."""
    d = tmp_path_factory.mktemp("family")
    run_cli("synth", "-q", "--size", "tiny", "-n", "3", "--dtype", "f32", "--seed", "7", "-o", d)
    return d
