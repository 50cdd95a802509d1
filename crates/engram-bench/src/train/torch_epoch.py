# The PyTorch side of `engram bench train` (train/mod.rs writes it next to the data and runs it).
# argv[1]: a JSON object of settings. Loads the data, prints one JSON line {"torch", "threads"},
# then answers requests on stdin, one JSON line each, so that engram can interleave its epochs
# with these: {"epoch": SEED} -> one epoch's record; {"batches": true} -> {"batch_s"}.
# Ends at the end of stdin. cfg["device"]: "cpu" (default) or "cuda" (data, network and steps on
# the GPU; the epoch's clock stops after torch.cuda.synchronize()).
import json, math, os, sys, time
cfg = json.loads(sys.argv[1])
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(cfg["threads"])
try:
    torch.set_num_interop_threads(1)
except RuntimeError:
    pass
d, dim, classes, bs = cfg["data"], cfg["dim"], cfg["classes"], cfg["batch_size"]
def arr(name, dtype, n):
    return torch.from_numpy(np.fromfile(os.path.join(d, name), dtype=dtype).reshape((n, -1)))
xtr = arr("train_x.f32", "<f4", cfg["n_train"])
ytr = arr("train_y.i64", "<i8", cfg["n_train"]).reshape(-1)
xte = arr("test_x.f32", "<f4", cfg["n_test"])
yte = arr("test_y.i64", "<i8", cfg["n_test"]).reshape(-1)
n = xtr.shape[0]
dev = torch.device(cfg.get("device", "cpu"))
if dev.type == "cuda":
    xtr, ytr, xte, yte = (t.to(dev) for t in (xtr, ytr, xte, yte))
def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()

def build(m):
    if m["kind"] == "mlp":
        dims = [dim] + m["hidden"] + [classes]
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers[:-1])
    c, h, w = cfg["image"]
    c1, c2 = m["channels"]
    side = lambda s: ((s - 2) // 2 - 2) // 2
    return nn.Sequential(
        nn.Unflatten(1, (c, h, w)),
        nn.Conv2d(c, c1, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * side(h) * side(w), m["hidden"]), nn.ReLU(),
        nn.Linear(m["hidden"], classes))

def cpu_ns():
    out = {}
    for t in os.listdir("/proc/self/task"):
        try:
            with open("/proc/self/task/%s/schedstat" % t) as f:
                out[t] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return out

def epoch(seed):
    torch.manual_seed(seed)
    model = build(cfg["model"]).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(dev)
    model.train()
    sync()
    c0, t0 = cpu_ns(), time.perf_counter()
    for i in range(0, n, bs):
        idx = perm[i:i + bs]
        x, y = xtr[idx], ytr[idx]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if not math.isfinite(loss.item()):
            sys.exit("the loss is not finite")
    sync()
    wall = time.perf_counter() - t0
    c1 = cpu_ns()
    per = [c1[t] - c0.get(t, 0) for t in c1]
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, xte.shape[0], 1000):
            correct += (model(xte[i:i + 1000]).argmax(1) == yte[i:i + 1000]).sum().item()
    return {"seconds": wall, "cpu_s": sum(per) / 1e9,
            "busy_threads": sum(1 for p in per if p >= 0.1 * wall * 1e9),
            "accuracy": 100.0 * correct / xte.shape[0]}

def batches_only():
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    s = 0.0
    for i in range(0, n, bs):
        idx = perm[i:i + bs]
        x, y = xtr[idx], ytr[idx]
        s += float(x[0, 0]) + float(y[0])
    return time.perf_counter() - t0

print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                  "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"}),
      flush=True)
for line in sys.stdin:
    req = json.loads(line)
    if "epoch" in req:
        out = epoch(int(req["epoch"]))
    elif req.get("batches"):
        out = {"batch_s": batches_only()}
    else:
        sys.exit("unknown request: %s" % line.strip())
    print(json.dumps(out), flush=True)
