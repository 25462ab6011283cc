#!/usr/bin/env bash
# Fetch, HERE (where pip reaches PyPI), the wheels the GPU machine lacks into .whl/, for
# bench/gpu_session.sh to install there (the device machine reaches no registry).
#
# The GPU image (see the device tool's KINDS.md) has torch 2.11, transformers 5.17, rich,
# jinja2, pyyaml, safetensors and triton, but not pydantic (+ pydantic-core, annotated-types,
# typing-inspection), cryptography (+ cffi, pycparser) or rfc8785; typing-extensions is
# carried too because pydantic 2.13 needs a recent one. liger-kernel (pure Python + Triton)
# is the baseline the issue compares against. fvcore is not imported by flopgate's code.
# nvidia-ml-py (pure Python, module pynvml) reads the GPUs' energy counters (distill/runtime/energy.py).
# Versions are the ones flopgate is tested with here; one version of each (two stop the install).
#
# .whl/ is ignored through .git/info/exclude (never .gitignore): the wheels are never committed.
# Usage: bash bench/make_wheels.sh   (from anywhere; prints the total size at the end)
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"

exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"

WHEELS=(
  pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2
  typing-extensions==4.16.0
  cryptography==48.0.0 cffi==2.0.0 pycparser==3.0
  rfc8785==0.1.4
  liger-kernel==0.8.5
  nvidia-ml-py==13.615.71
)
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_34_x86_64 \
  -d .whl "${WHEELS[@]}"

# One file per distribution: a stale version left from an earlier pin would break the install.
python3 - <<'PY'
import collections, pathlib, sys
names = collections.Counter(p.name.split("-")[0].lower() for p in pathlib.Path(".whl").glob("*.whl"))
twice = [name for name, count in names.items() if count > 1]
if twice:
    sys.exit(f"more than one wheel of: {', '.join(twice)} (delete .whl/ and run again)")
PY

git check-ignore -q .whl || { echo "error: .whl/ is not ignored by git" >&2; exit 1; }
ls -1 .whl
echo "total: $(du -sk .whl | cut -f1) KiB in $(ls .whl/*.whl | wc -l) wheels (the working tree sent to the GPU must stay under 64 MiB)"
