# engram from Python: the weight-space library and training without the CLI. The functions
# live in the native module engram._engram (crates/engram-py/src); stubs in __init__.pyi.
"""engram: keep what neural networks know while they learn more, and edit it in the weights.

Functions on checkpoint files mirror the CLI commands (same keyword names as the flags, same
defaults) and return the report the command prints with ``--json`` as a dict:
``inspect``, ``merge``, ``tall``, ``consensus``, ``compress``, ``extract``, ``quantize``,
``analyze``. The ``*_tensors`` functions do the same on in-memory state dicts
(``dict[str, numpy.ndarray]``; torch users pass ``{k: v.numpy()}``). ``train`` runs a
continual-learning run file and returns its results. Failures raise ``EngramError`` (bad
arguments ``ValueError``, wrong types ``TypeError``) with engram's message.
"""

from ._engram import (
    EngramError,
    __version__,
    analyze,
    analyze_tensors,
    compress,
    consensus,
    consensus_tensors,
    extract,
    inspect,
    merge,
    merge_tensors,
    quantize,
    quantize_tensors,
    tall,
    tall_tensors,
    train,
)

from ._engram import lora_apply, lora_extract, lora_merge  # LoRA adapters (PEFT folders)

__all__ = [
    "EngramError",
    "__version__",
    "analyze",
    "analyze_tensors",
    "compress",
    "consensus",
    "consensus_tensors",
    "extract",
    "inspect",
    "lora_apply",
    "lora_extract",
    "lora_merge",
    "merge",
    "merge_tensors",
    "quantize",
    "quantize_tensors",
    "tall",
    "tall_tensors",
    "train",
]
