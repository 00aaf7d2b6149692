#!/usr/bin/env bash
# Mutation testing (mutmut) in a scratch copy; arguments go to scripts/mutation.py (--only, --tests, --jobs).
# Not part of CI. Needs the dev extra: pip install -e '.[dev]'
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" scripts/mutation.py "$@"
