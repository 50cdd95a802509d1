# The speed baseline of `engram bench quant`: the `gguf` Python package's numpy quantizer
# (gguf.quants.quantize) on the same tensors engram block-quantizes (2-D and up, rows a
# multiple of 32), read from a safetensors file (bf16, f16 or f32) with numpy.
# Usage: python gguf_quant.py MODEL.safetensors TYPE... ; prints JSON on stdout.
import json, struct, sys, time
import numpy as np
from gguf import GGMLQuantizationType, quants

path, types = sys.argv[1], sys.argv[2:]
with open(path, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
base = 8 + n
raw = np.memmap(path, dtype=np.uint8, mode="r")
result = {"tensors": 0, "elements": 0}
for t in types:
    result[t] = 0.0
for name, info in header.items():
    if name == "__metadata__":
        continue
    shape, (a, b) = info["shape"], info["data_offsets"]
    if len(shape) < 2 or shape[-1] % 32 != 0:
        continue
    buf = raw[base + a : base + b]
    dt = info["dtype"]
    if dt == "BF16":
        x = (buf.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    elif dt == "F16":
        x = buf.view(np.float16).astype(np.float32)
    elif dt == "F32":
        x = np.array(buf.view(np.float32))
    else:
        continue
    x = x.reshape(shape)
    result["tensors"] += 1
    result["elements"] += int(x.size)
    for t in types:
        qt = GGMLQuantizationType[t.upper()]
        s = time.perf_counter()
        quants.quantize(x, qt)
        result[t] += time.perf_counter() - s
print(json.dumps(result))
