#!/usr/bin/env bash
# Regenerates typed Python code for protos/ into OUT (default services/api), importable as PKG
# (default: OUT with dots).
# protoc emits absolute imports named after the proto package (liqo.netagent.v1); they are rewritten
# to this project's package so the generated code lives inside `services`.
set -euo pipefail
PY=${1:-.venv/bin/python}
OUT=${2:-services/api}
BIN=$(dirname "$PY")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m grpc_tools.protoc -I protos \
  --python_out="$tmp" --grpc_python_out="$tmp" \
  --plugin=protoc-gen-mypy="$BIN/protoc-gen-mypy" --mypy_out="$tmp" \
  --plugin=protoc-gen-mypy_grpc="$BIN/protoc-gen-mypy_grpc" --mypy_grpc_out="$tmp" \
  $(cd protos && find . -name '*.proto' | sed 's|^\./||' | sort)
pkg=${3:-$(echo "$OUT" | tr / .)}
find "$tmp" -name '*.py*' -exec sed -i -E "s/^(from|import) liqo\.netagent\.v1/\1 ${pkg}.netagent.v1/" {} +
rm -rf "$OUT/netagent"
mkdir -p "$OUT"
cp -r "$tmp/liqo/netagent" "$OUT/netagent"
touch "$OUT/__init__.py" "$OUT/netagent/__init__.py" "$OUT/netagent/v1/__init__.py"
