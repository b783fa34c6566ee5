#!/usr/bin/env bash
# Build learn2learn 0.2.0 for this Python and install it where only algorithms/libraries/learn2learn_maml.py looks.
#     bash algorithms/libraries/install_learn2learn.sh VENV_PYTHON     (make setup runs it: make setup-learn2learn)
#
# Why a recipe: learn2learn 0.2.0 publishes only an sdist; its generated C files (Cython 0.29 era) do not
# compile on Python 3.11+, and its package __init__ imports gym and torchvision (PyPI's torchvision does
# not import beside torch 2.13.0). So, in a throwaway build environment:
#   1. fetch the sdist with pip (no dependencies, no build isolation: Cython < 3, setuptools and wheel are there);
#   2. regenerate the C sources from the .pyx files with Cython < 3;
#   3. build a wheel without dependencies;
#   4. install it with --no-deps --target <venv>/learn2learn/site: on no import path, so nothing else in
#      the project (or the user's environment) sees it; the learn2learn backend imports its MAML from there.
# On failure it says which step failed and exits non-zero; make setup reports that and goes on (the
# learn2learn backend then refuses with the command to retry).
set -euo pipefail
PY=${1:-.venv/bin/python}
PREFIX=$("$PY" -c 'import sys; print(sys.prefix)')
DEST=$PREFIX/learn2learn
SITE=$DEST/site
VERSION=0.2.0
if [[ -f $SITE/learn2learn/algorithms/maml.py ]] && [[ -f $SITE/.complete ]]; then
  echo "learn2learn $VERSION: already built in $SITE"; exit 0
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/learn2learn-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
step() { echo "learn2learn $VERSION: $1"; }
fail() { echo "learn2learn $VERSION: FAILED at: $1 (log: $WORK/log.txt kept in $DEST/build-log.txt)" >&2
         mkdir -p "$DEST"; cp "$WORK/log.txt" "$DEST/build-log.txt" 2>/dev/null || true; exit 1; }
: > "$WORK/log.txt"
step "build environment (Cython < 3, setuptools, wheel)"
"$PY" -m venv "$WORK/build" >> "$WORK/log.txt" 2>&1 || fail "creating the build environment"
"$WORK/build/bin/python" -m pip install -q "cython<3" setuptools wheel >> "$WORK/log.txt" 2>&1 \
  || fail "installing Cython < 3 (needs the package registry)"
step "fetching the sdist"
"$WORK/build/bin/python" -m pip download -q --no-deps --no-build-isolation "learn2learn==$VERSION" -d "$WORK/dl" \
  >> "$WORK/log.txt" 2>&1 || fail "pip download learn2learn==$VERSION"
tar -xzf "$WORK/dl/learn2learn-$VERSION.tar.gz" -C "$WORK" || fail "unpacking the sdist"
SRC=$WORK/learn2learn-$VERSION
step "regenerating the C sources with $("$WORK/build/bin/cython" --version 2>&1)"
(cd "$SRC" && "$WORK/build/bin/cython" -3 learn2learn/data/*.pyx) >> "$WORK/log.txt" 2>&1 || fail "cython -3"
step "building a wheel (no dependencies)"
"$WORK/build/bin/python" -m pip wheel -q --no-deps --no-build-isolation "$SRC" -w "$WORK/wheel" \
  >> "$WORK/log.txt" 2>&1 || fail "building the wheel (needs a C compiler and the Python headers)"
step "installing into $SITE (no dependencies; on no import path)"
rm -rf "$SITE"
"$PY" -m pip install -q --no-deps --no-compile --target "$SITE" "$WORK"/wheel/learn2learn-*.whl \
  >> "$WORK/log.txt" 2>&1 || fail "pip install --target"
touch "$SITE/.complete"
step "done"
