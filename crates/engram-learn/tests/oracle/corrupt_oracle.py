"""Python side of crates/engram-learn/tests/corruption_oracle.rs: runs the reference package
`imagecorruptions` 1.1.2 on the images the Rust test writes and writes its outputs back.

Usage: python corrupt_oracle.py JOB.json     (or: python corrupt_oracle.py --check)

JOB.json: {"dir": folder for all files, "h": H, "w": W, "tasks": [task, ...]}. Tasks:
- {"kind": "image", "op": NAME, "severity": s, "n": n, "input": u8 file, "output": u8 file,
   "seed": k}: the package's function NAME on each of the n mode-'L' H x W images of the input
   (raw u8, row-major), converted as the package's `corrupt` does (np.uint8 of the result).
   With "zoom": "centred", the package's clipped_zoom is replaced for the task by CIFAR-10-C's
   (make_cifar_c.py), which trims the zoomed crop around its centre (see
   clipped_zoom_centred).
- {"kind": "motion", "n", "input", "output", "radius": R, "sigma": S, "angles": [deg, ...]}:
   the package's `motion_blur` path with a fixed angle per image:
   np.uint8(clip(_motion_blur(np.array(img), R, S, angle), 0, 255)).
- {"kind": "map_coordinates", "n", "input", "dy", "dx", "output"}: raw little-endian f64
   files (n x H x W); scipy.ndimage.map_coordinates(x, [y + dy, x + dx], order=1,
   mode='reflect') in f64, written as f64.
- {"kind": "frost", "crops": N, "size": C, "seed": k, "output": json file}: for textures
   1..=5 of the package (frost1.png ... frost5.jpg), resized x0.2 with cv2.resize (as
   CIFAR-10-C's make_cifar_c.py does), N random C x C crops (top-left ~ randint(0, side - C)),
   luminance 0.299 R + 0.587 G + 0.114 B; writes their statistics (see crop_stats).

Patches for current numpy / scikit-image, as the method card says: np.float_ = np.float64
before the import; corruptions.gaussian turns multichannel=True into channel_axis=-1 for 3-D
input and drops it for 2-D input; skimage's random_noise gets a seeded generator (the package
passes none) so that runs repeat. If setuptools no longer ships pkg_resources (which the
package imports for resource_filename), a minimal stand-in is installed.
"""

import json
import os
import sys
import types

import numpy as np

np.float_ = np.float64

try:
    import pkg_resources  # noqa: F401
except ImportError:  # setuptools >= 81 or none: the package only needs resource_filename
    stub = types.ModuleType("pkg_resources")

    def resource_filename(package, name):
        mod = sys.modules[package]
        return os.path.join(os.path.dirname(mod.__file__), name)

    stub.resource_filename = resource_filename
    sys.modules["pkg_resources"] = stub

import cv2  # noqa: E402
import imagecorruptions  # noqa: E402
import imagecorruptions.corruptions as C  # noqa: E402
import scipy.ndimage  # noqa: E402
import skimage.util  # noqa: E402
from PIL import Image  # noqa: E402

_gaussian = C.gaussian


def _gaussian_patched(image, sigma=1, *args, multichannel=None, **kw):
    image = np.asarray(image)
    if multichannel and image.ndim == 3:
        kw["channel_axis"] = -1
    return _gaussian(image, sigma, *args, **kw)


C.gaussian = _gaussian_patched

_RNG = [np.random.default_rng(0)]
_random_noise = skimage.util.random_noise


def _random_noise_seeded(image, mode="gaussian", **kw):
    kw.setdefault("rng", _RNG[0])
    return _random_noise(image, mode=mode, **kw)


C.sk.util.random_noise = _random_noise_seeded

OPS = {
    "gaussian_noise": C.gaussian_noise,
    "shot_noise": C.shot_noise,
    "impulse_noise": C.impulse_noise,
    "speckle_noise": C.speckle_noise,
    "defocus_blur": C.defocus_blur,
    "glass_blur": C.glass_blur,
    "zoom_blur": C.zoom_blur,
    "snow": C.snow,
    "fog": C.fog,
    "brightness": C.brightness,
    "contrast": C.contrast,
    "pixelate": C.pixelate,
    "jpeg_compression": C.jpeg_compression,
    "gaussian_blur": C.gaussian_blur,
}


def read(path, dtype, n, h, w):
    """The first n h x w images of a raw file."""
    a = np.fromfile(path, dtype=dtype)
    assert a.size >= n * h * w, f"{path}: {a.size} values, expected >= {n}*{h}*{w}"
    return a[:n * h * w].reshape(n, h, w)


def to_u8(y, h, w):
    """The package's `corrupt` conversion: np.uint8 of the result (truncation)."""
    y = np.uint8(np.asarray(y))
    assert y.shape == (h, w), f"output shape {y.shape}, expected {(h, w)}"
    return y


def clipped_zoom_centred(img, zoom_factor):
    """clipped_zoom of CIFAR-10-C's make_cifar_c.py (the card's Z_z): like the package's, but
    the zoomed crop is trimmed to the input's size around its centre; the package's version
    returns it untrimmed, and its callers keep the top-left corner (snow only after the
    motion blur). The two agree while the zoomed crop exceeds the input by at most 1 px."""
    h = img.shape[0]
    ch = int(np.ceil(h / float(zoom_factor)))
    top = (h - ch) // 2
    img = C.scizoom(img[top:top + ch, top:top + ch], (zoom_factor, zoom_factor, 1), order=1)
    trim = (img.shape[0] - h) // 2
    return img[trim:trim + h, trim:trim + h]


def task_image(d, h, w, t):
    fn = OPS[t["op"]]
    s = int(t["severity"])
    np.random.seed(int(t.get("seed", 0)))
    _RNG[0] = np.random.default_rng(int(t.get("seed", 0)))
    x = read(os.path.join(d, t["input"]), np.uint8, t["n"], h, w)
    out = np.empty_like(x)
    shipped = C.clipped_zoom
    if t.get("zoom") == "centred":
        C.clipped_zoom = clipped_zoom_centred
    try:
        for i in range(t["n"]):
            img = Image.fromarray(x[i])
            assert img.mode == "L", img.mode
            out[i] = to_u8(fn(img, s), h, w)
    finally:
        C.clipped_zoom = shipped
    out.tofile(os.path.join(d, t["output"]))


def task_motion(d, h, w, t):
    x = read(os.path.join(d, t["input"]), np.uint8, t["n"], h, w)
    out = np.empty_like(x)
    for i in range(t["n"]):
        img = np.array(Image.fromarray(x[i]))
        y = C._motion_blur(img, radius=t["radius"], sigma=t["sigma"], angle=t["angles"][i])
        out[i] = to_u8(np.clip(y, 0, 255), h, w)
    out.tofile(os.path.join(d, t["output"]))


def task_map_coordinates(d, h, w, t):
    n = t["n"]
    x = read(os.path.join(d, t["input"]), "<f8", n, h, w)
    dy = read(os.path.join(d, t["dy"]), "<f8", n, h, w)
    dx = read(os.path.join(d, t["dx"]), "<f8", n, h, w)
    xx, yy = np.meshgrid(np.arange(w), np.arange(h))
    out = np.empty((n, h, w), dtype="<f8")
    for i in range(n):
        ind = np.reshape(yy + dy[i], (-1, 1)), np.reshape(xx + dx[i], (-1, 1))
        out[i] = scipy.ndimage.map_coordinates(
            x[i], ind, order=1, mode="reflect").reshape(h, w)
    out.tofile(os.path.join(d, t["output"]))


def crop_stats(crops):
    """Statistics of m crops (m x C x C, luminance levels): mean; between-crop sd (population
    sd of the crop means); within-crop sd (root of the mean within-crop population variance);
    total sd (population sd of all pixels = sqrt(between^2 + within^2)); lag-k
    autocorrelation for k = 1, 4: per crop, the mean over all horizontal and vertical pixel
    pairs k apart of (a - m)(b - m), over the crop's variance, averaged over the crops with a
    positive variance."""
    crops = np.asarray(crops, dtype=np.float64)
    means = crops.mean(axis=(1, 2))
    var = crops.var(axis=(1, 2))
    z = crops - means[:, None, None]
    ok = var > 1e-12
    lags = {}
    for k in (1, 4):
        prod = np.concatenate([(z[:, :, :-k] * z[:, :, k:]).reshape(len(z), -1),
                               (z[:, :-k, :] * z[:, k:, :]).reshape(len(z), -1)], axis=1)
        r = prod.mean(axis=1)[ok] / var[ok]
        lags[k] = float(r.mean())
    return {
        "mean": float(crops.mean()),
        "between_sd": float(means.std()),
        "within_sd": float(np.sqrt(var.mean())),
        "total_sd": float(crops.std()),
        "lag1": lags[1],
        "lag4": lags[4],
    }


def frost_texture_files():
    base = os.path.join(os.path.dirname(imagecorruptions.__file__), "frost")
    names = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg"]
    return [os.path.join(base, f) for f in names]


def task_frost(d, h, w, t):
    rng = np.random.RandomState(int(t.get("seed", 0)))
    size = int(t["size"])
    res = []
    for i, path in enumerate(frost_texture_files(), start=1):
        img = cv2.imread(path)  # BGR, as the reference reads it
        assert img is not None, f"cannot read {path}"
        img = cv2.resize(img, (0, 0), fx=0.2, fy=0.2)  # make_cifar_c.py: INTER_LINEAR
        lum = 0.299 * img[..., 2] + 0.587 * img[..., 1] + 0.114 * img[..., 0]
        crops = []
        for _ in range(int(t["crops"])):
            y0 = rng.randint(0, lum.shape[0] - size)
            x0 = rng.randint(0, lum.shape[1] - size)
            crops.append(lum[y0:y0 + size, x0:x0 + size])
        st = crop_stats(np.stack(crops))
        st["texture"] = i
        st["file"] = os.path.basename(path)
        st["resized_shape"] = list(lum.shape)
        res.append(st)
    with open(os.path.join(d, t["output"]), "w") as f:
        json.dump(res, f, indent=1)


def main():
    if sys.argv[1:] == ["--check"]:
        # Exercise every patched path once on a small image.
        x = Image.fromarray((np.arange(32 * 32) % 251).astype(np.uint8).reshape(32, 32))
        for name, fn in OPS.items():
            to_u8(fn(x, 3), 32, 32)
        C._motion_blur(np.array(x), 10, 3, 20.0)
        assert len(frost_texture_files()) == 5
        print("ok", imagecorruptions.__file__)
        return
    job = json.load(open(sys.argv[1]))
    d, h, w = job["dir"], int(job["h"]), int(job["w"])
    kinds = {"image": task_image, "motion": task_motion,
             "map_coordinates": task_map_coordinates, "frost": task_frost}
    for t in job["tasks"]:
        kinds[t["kind"]](d, h, w, t)
    print("done", len(job["tasks"]), "tasks")


if __name__ == "__main__":
    main()
