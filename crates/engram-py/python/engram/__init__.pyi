# Type stubs of the engram Python module (the native functions of engram._engram), so that
# editors complete the API; docstrings say what each CLI command it mirrors does.
"""engram: weight-space edits, merges and continual-learning runs from Python."""

from os import PathLike
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

__version__: str

StrPath = Union[str, "PathLike[str]"]
StateDict = Mapping[str, npt.NDArray[Any]]
Report = dict[str, Any]

class EngramError(Exception):
    """An engram operation failed; the message is engram's and names the file, tensor or key."""

# Checkpoint files: each function is the CLI command of the same name with --json. `command`
# is the command line recorded as provenance in the files written (default
# "python: engram.<name>"); `progress=True` draws a bar on stderr when it is a terminal.

def inspect(
    path: StrPath, *, stats: bool = False, check_finite: bool = False, progress: bool = False
) -> Report:
    """`engram inspect PATH --json`: tensors, shapes, dtypes, sizes, metadata, side files.

    `stats` adds min, max, mean, std, L2 norm and NaN/Inf counts per tensor; `check_finite`
    raises EngramError naming the tensors that hold NaN or infinite values. A `.gguf` file
    gets its header, metadata and tensor list.
    """

def merge(
    config: Union[StrPath, Mapping[str, Any], None] = None,
    out: Optional[StrPath] = None,
    *,
    method: Optional[str] = None,
    base: Optional[StrPath] = None,
    models: Optional[Sequence[StrPath]] = None,
    density: Optional[float] = None,
    weights: Optional[Sequence[float]] = None,
    lambda_: Optional[float] = None,
    t: Optional[float] = None,
    params: Optional[Mapping[str, Union[float, bool]]] = None,
    trim_scope: Optional[str] = None,
    seed: Optional[int] = None,
    out_dtype: Optional[str] = None,
    allow_missing: bool = False,
    check_finite: bool = False,
    shard_size: Union[str, int, None] = None,
    progress: bool = False,
    command: Optional[str] = None,
) -> Report:
    """`engram merge CONFIG -o OUT --json`, or the quick form with `method=`.

    `config` is a mergekit YAML file, YAML text (a string with a line break) or a dict of the
    same keys (relative model paths of text and dicts resolve from the current folder).
    Quick form: `method` (linear, task_arithmetic, ties, dare_*, breadcrumbs*, della*,
    model_stock, slerp, ...), `base`, `models`, and `density`, `weights` (one per model),
    `lambda_` (the CLI's --lambda), `t`, further `params`, `trim_scope` ("tensor" or
    "model"). `seed` and `out_dtype` apply to both forms. Returns the merge report (method,
    tensors and parameters merged, tensors copied, kept or ignored, files written).
    """

def tall(
    base: StrPath,
    models: Sequence[StrPath],
    *,
    tasks: Optional[Sequence[str]] = None,
    lambda_: Optional[float] = None,
    lambdas: Optional[Sequence[float]] = None,
    tau: str = "sum",
    density: Optional[float] = None,
    reconstruct: Optional[StrPath] = None,
    progress: bool = False,
    command: Optional[str] = None,
) -> Report:
    """`engram tall --base B MODELS --json`: TALL mask statistics (per tensor and in total).

    `lambda_` (default 0.6) or one `lambdas` entry per task; `tau` "sum"/"ta" or "ties" (with
    `density`, default 0.2). `reconstruct=DIR` writes each task's model into DIR/<task>/.
    Task names default to the model files' stems.
    """

def consensus(
    base: StrPath,
    models: Sequence[StrPath],
    out: StrPath,
    *,
    k: int = 2,
    alpha: float = 1.0,
    out_dtype: Optional[str] = None,
    tasks: Optional[Sequence[str]] = None,
    lambda_: Optional[float] = None,
    lambdas: Optional[Sequence[float]] = None,
    tau: str = "sum",
    density: Optional[float] = None,
    progress: bool = False,
    command: Optional[str] = None,
) -> Report:
    """`engram consensus --base B MODELS -o OUT --json`: keep the weights at least `k` task
    masks hold, scaled by `alpha`. Returns {"params": ..., "files": [...]}."""

def compress(
    base: StrPath,
    models: Sequence[StrPath],
    out: StrPath,
    *,
    tau_dtype: Optional[str] = None,
    mask_coding: str = "packed",
    tasks: Optional[Sequence[str]] = None,
    lambda_: Optional[float] = None,
    lambdas: Optional[Sequence[float]] = None,
    tau: str = "sum",
    density: Optional[float] = None,
    progress: bool = False,
    command: Optional[str] = None,
) -> Report:
    """`engram compress --base B MODELS -o BUNDLE --json`: many fine-tunes into one bundle
    (base, merged vector, one bit mask per task; `mask_coding` "packed" or "arith")."""

def extract(
    bundle: StrPath,
    task: str,
    out: StrPath,
    *,
    progress: bool = False,
    command: Optional[str] = None,
) -> list[str]:
    """`engram extract BUNDLE --task T -o OUT`: rebuilds one task's model; the files written."""

def quantize(
    input: StrPath,
    out: StrPath,
    *,
    bits: int,
    method: str = "rtn",
    scope: Optional[str] = None,
    group: Optional[int] = None,
    asym: bool = False,
    scale_dtype: str = "f32",
    grid: bool = False,
    quantize_all: bool = False,
    progress: bool = False,
    command: Optional[str] = None,
) -> Report:
    """`engram quantize MODEL -o OUT --bits B --json`: rtn, power or statsq at 2 to 8 bits,
    per "tensor", "channel" (default) or "group" (`group` size). Returns {"report", "files"}."""

def analyze(
    path: StrPath,
    *,
    values: bool = False,
    max_dim: int = 4096,
    max_values: int = 1 << 26,
    top_k: int = 32,
    seed: int = 0,
    include: Optional[Sequence[str]] = None,
    exclude: Optional[Sequence[str]] = None,
    lift_masks: Optional[StrPath] = None,
    filter_rank: int = 8,
    lift_rank: int = 8,
    lift_exclude: Optional[Sequence[str]] = None,
    progress: bool = False,
    command: Optional[str] = None,
) -> Report:
    """`engram analyze MODEL --json`: singular values, condition number, effective and stable
    rank, norms of every weight matrix; `lift_masks=FILE` also writes LIFT's principal-weight
    masks. (The CLI's --out HTML page and --embeddings mode are not wrapped.)"""

# In-memory state dicts: dicts of NumPy arrays in (read without copying where the array is
# C-contiguous in native byte order; float16/32/64, ml_dtypes bfloat16/float8, ints, bool),
# new arrays out (bf16/f8 as ml_dtypes types when installed, else their raw bits). Input arrays
# are never modified; do not modify them from another thread while a call runs.

def merge_tensors(
    method: str,
    base: Optional[StateDict],
    models: Sequence[StateDict],
    *,
    weights: Optional[Sequence[float]] = None,
    density: Optional[float] = None,
    lambda_: Optional[float] = None,
    t: Optional[float] = None,
    params: Optional[Mapping[str, Union[float, bool]]] = None,
    trim_scope: Optional[str] = None,
    seed: Optional[int] = None,
    out_dtype: Optional[str] = None,
    allow_missing: bool = False,
    check_finite: bool = False,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """The quick form of `engram merge` on state dicts: the merged state dict, equal bit for
    bit to the file-based merge of the same tensors. Errors name `base`, `models[i]` and the
    tensor."""

def tall_tensors(
    base: StateDict,
    models: Sequence[StateDict],
    *,
    tasks: Optional[Sequence[str]] = None,
    lambda_: Optional[float] = None,
    lambdas: Optional[Sequence[float]] = None,
    tau: str = "sum",
    density: Optional[float] = None,
    progress: bool = False,
) -> Report:
    """`engram tall --json` on state dicts (tasks default to task1, task2, ...)."""

def consensus_tensors(
    base: StateDict,
    models: Sequence[StateDict],
    *,
    k: int = 2,
    alpha: float = 1.0,
    out_dtype: Optional[str] = None,
    tasks: Optional[Sequence[str]] = None,
    lambda_: Optional[float] = None,
    lambdas: Optional[Sequence[float]] = None,
    tau: str = "sum",
    density: Optional[float] = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """`engram consensus` on state dicts: the merged state dict."""

def quantize_tensors(
    tensors: StateDict,
    *,
    bits: int,
    method: str = "rtn",
    scope: Optional[str] = None,
    group: Optional[int] = None,
    asym: bool = False,
    scale_dtype: str = "f32",
    grid: bool = False,
    quantize_all: bool = False,
    progress: bool = False,
) -> tuple[dict[str, np.ndarray], Report]:
    """`engram quantize` on a state dict: the tensors of engram's packed layout
    (docs/quantization.md) and the report."""

def analyze_tensors(
    tensors: StateDict,
    *,
    values: bool = False,
    max_dim: int = 4096,
    max_values: int = 1 << 26,
    top_k: int = 32,
    seed: int = 0,
    include: Optional[Sequence[str]] = None,
    exclude: Optional[Sequence[str]] = None,
    progress: bool = False,
) -> Report:
    """`engram analyze --json` on a state dict."""

def lora_extract(
    base: StrPath,
    model: StrPath,
    rank: int,
    out: StrPath,
    *,
    targets: Optional[Union[str, Sequence[str]]] = None,
    exclude: Optional[Union[str, Sequence[str]]] = None,
    alpha: Optional[float] = None,
    dtype: Optional[str] = None,
    exact_below: Optional[int] = None,
    power_iters: int = 4,
    oversample: int = 10,
    seed: int = 0,
    progress: bool = False,
    command: Optional[str] = None,
) -> Report:
    """`engram lora extract`: a PEFT LoRA adapter folder of `model`'s task vector against
    `base`, each linear weight's best rank-`rank` approximation (exact SVD up to a smaller side
    of `exact_below`, by default 4·(rank + oversample), randomized above), lora_alpha = `alpha` or the rank. `targets`/`exclude`:
    module-name globs (module = tensor name without `.weight`). Returns the report (captured
    energy per matrix, the tensors left out and why) as `--json` prints it."""

def lora_apply(
    base: StrPath,
    adapter: StrPath,
    out: StrPath,
    dtype: str,
    *,
    multiplier: float = 1.0,
    progress: bool = False,
    command: Optional[str] = None,
) -> Report:
    """`engram lora apply`: `base` with the adapter merged in (W + m·s·B·A in f32), written in
    `dtype` (`f32`, `bf16`, ... or `base`); the rounding error of every changed tensor."""

def lora_merge(
    base: StrPath,
    adapters: Sequence[StrPath],
    out: StrPath,
    *,
    rank: Optional[int] = None,
    dtype: str = "f32",
    method: Optional[str] = None,
    weights: Optional[Sequence[float]] = None,
    density: Optional[float] = None,
    lambda_: Optional[float] = None,
    params: Optional[Mapping[str, Any]] = None,
    seed: Optional[int] = None,
    out_dtype: Optional[str] = None,
    progress: bool = False,
    command: Optional[str] = None,
) -> Report:
    """`engram lora merge`: with `rank`, the adapters recombined into one adapter
    (Σ w·s·B·A truncated by SVD, factors in `dtype`); with `method`, a model merged over the
    adapters' task vectors with any merge method (`density`, `lambda_`, `params` as in
    `engram.merge`)."""

def train(
    run: Union[StrPath, Mapping[str, Any]],
    out: StrPath = "runs",
    *,
    resume: bool = False,
    overwrite: bool = False,
    data_dir: Optional[StrPath] = None,
    export_masks: Optional[StrPath] = None,
    progress: bool = False,
    if_needed: bool = False,
) -> Optional[Report]:
    """`engram train --config RUN --out OUT`: a continual-learning run (or a curriculum with
    [[phase]] tables) from a TOML run file, TOML text (a string with a line break) or a dict
    of the same tables; writes OUT/<run name>/ (results.json, checkpoint/, and the event log
    events.jsonl as it trains) and returns its results.json as a dict. Relative data paths in
    a run file are taken from the run file's folder. `if_needed=True` (`--if-needed`): a run
    whose results.json is there returns it without running (an error if it was made with other
    settings); a run with a checkpoint resumes it; else it starts."""
