"""The TensorFlow environment the authors' codes run in, apart from this project's (an optional extra).

    make setup-peers                        # python -m benchmarks.peers.tf_env: make it (about 1.5 GB), or check it
    python -m benchmarks.peers.tf_env --env PATH

The authors' Reptile (openai/supervised-reptile) and MAML (cbfinn/maml) are TensorFlow 1 programs; patched to
``tensorflow.compat.v1`` they run on TensorFlow 2.21 with tf-keras (``tf.layers`` needs Keras 2). The environment
is a venv of its own (default ``.venv-official``, git-ignored): never the project's, never made by ``make setup``
or CI. Both peer commands make it on first use, or take ``--python`` for an interpreter that already has it.
Also here: what every peer harness shares (its error type, its ``--env``/``--python`` options, the JSON its
drivers print last, the commit of the checkout it runs).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENV_DIR = REPO / ".venv-official"
PACKAGES = ["tensorflow==2.21.0", "tf-keras~=2.21.0", "numpy", "pillow"]
TF_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}  # tf.layers needs tf-keras (Keras 2), not Keras 3


class PeerError(RuntimeError):
    """A peer run cannot go on; the message says what is wrong and what to do."""


def peer_python(env: Path = ENV_DIR, python: str | None = None) -> str:
    """The peer environment's interpreter (made with pip when absent); PeerError if TensorFlow will not import."""
    if python is None:
        py = env / "bin" / "python"
        if not py.is_file():
            print(f"making the TensorFlow environment {env} ({', '.join(PACKAGES)}; about 1.5 GB)...", flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
            p = subprocess.run([str(py), "-m", "pip", "install", "-q", *PACKAGES], capture_output=True, text=True)
            if p.returncode != 0:
                raise PeerError(f"TensorFlow did not install into {env} (pip exit {p.returncode}):\n"
                                f"{p.stderr.strip()[-1500:]}\nremove {env} and retry, or pass --python")
        python = str(py)
    probe = subprocess.run([python, "-c", "import tensorflow.compat.v1 as tf, tf_keras; print(tf.__version__)"],
                           capture_output=True, text=True, env={**os.environ, **TF_ENV})
    if probe.returncode != 0:
        raise PeerError(f"TensorFlow does not import with {python}:\n{probe.stderr.strip()[-800:]}\n"
                        f"install {' '.join(PACKAGES)} there, or remove {env} to have it made again")
    return python


def add_env_arguments(ap: argparse.ArgumentParser) -> None:
    """``--env`` and ``--python``, as every peer command takes them."""
    ap.add_argument("--env", default=str(ENV_DIR), help="the TensorFlow environment to use or make")
    ap.add_argument("--python", default=None, help="an interpreter that already has TensorFlow 2 and tf-keras")


def parse_last_json(stdout: str) -> dict:
    """The JSON object a run printed last (TensorFlow may print other lines before it)."""
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise PeerError(f"a peer run printed no result; its output ended with: {stdout.strip()[-500:]!r}")


def checkout_commit(checkout: Path) -> str:
    """The short commit of an authors' checkout (``unknown`` when it is not a git clone)."""
    p = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return p.stdout.strip() or "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peers.tf_env", description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", default=str(ENV_DIR), help="the environment to make or check")
    args = ap.parse_args(argv)
    try:
        python = peer_python(Path(args.env))
    except PeerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"TensorFlow environment ready: {python}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
