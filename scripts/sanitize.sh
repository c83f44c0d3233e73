#!/usr/bin/env bash
# The C fast path under AddressSanitizer and UndefinedBehaviorSanitizer: builds
# netstack._fastc with -fsanitize=address,undefined into a directory of its own (the
# .venv's extension is left alone; NETSTACK_FASTC points netstack/_fast.py at this
# build), then runs the tests that drive the C code with libasan preloaded into Python.
# Any sanitizer report fails the run. Sources: csrc/build_fast.py's, plus every
# csrc/*.c it does not list yet. Usage: scripts/sanitize.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh

work=$(mktemp -d /tmp/netstack-sanitize.XXXXXX)
finish() {
  status=$?
  # UBSan's reports go to stderr only (its log_path loses them next to ASan's runtime)
  [ -f "$work/stderr" ] && cat "$work/stderr" >&2
  if compgen -G "$work/report*" >/dev/null || grep -qE "runtime error:|ERROR: AddressSanitizer|SUMMARY: [A-Za-z]*Sanitizer" "$work/stderr" 2>/dev/null; then
    cat "$work"/report* >&2 2>/dev/null || true
    echo "sanitize: sanitizer reports above" >&2
    status=1
  fi
  rm -rf "$work"
  exit $status
}
trap finish EXIT
SAN_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"

so=$(SAN_FLAGS="$SAN_FLAGS" .venv/bin/python - "$work" <<'PY'
import contextlib, os, sys
from pathlib import Path

root = Path.cwd()
sys.path.insert(0, str(root / "csrc"))
from build_fast import ffibuilder  # noqa: E402

# cffi keeps set_source's arguments here: add the sanitizer and absolute paths (cffi
# compiles from inside the build directory)
name, source, ext, kwds = ffibuilder._assigned_source
listed = [root / s for s in kwds.get("sources", [])]
sources = listed + sorted(p for p in (root / "csrc").glob("*.c") if p not in listed)
kwds["sources"] = [str(p) for p in sources]
kwds["include_dirs"] = [str(root / d) for d in kwds.get("include_dirs", [])]
flags = os.environ["SAN_FLAGS"].split()
kwds["extra_compile_args"] = [*kwds.get("extra_compile_args", []), "-O1", "-g", *flags]
kwds["extra_link_args"] = [*kwds.get("extra_link_args", []), *flags]
with contextlib.redirect_stdout(sys.stderr):
    out = ffibuilder.compile(tmpdir=sys.argv[1])
print(out)
PY
)
[ -f "$so" ] || { echo "sanitize: no extension built" >&2; exit 1; }

# the C-facing tests, and the fuzzing (hostile input to the C helpers)
tests=(tests/test_fast.py tests/test_flowpath.py tests/test_fuzz.py)
for t in tests/test_*udp*.py tests/test_*loop*.py tests/test_dns_flowpath.py tests/test_syn_flowpath.py \
  tests/test_forward_flowpath.py; do
  [ -f "$t" ] && tests+=("$t")
done

export NETSTACK_FASTC="$so"
asan=$(gcc -print-file-name=libasan.so)
[ -f "$asan" ] || { echo "sanitize: no libasan.so (gcc)" >&2; exit 1; }
export LD_PRELOAD="$asan"
# Python frees nothing at exit by design: no leak checks. ASan's reports go to files, so
# one from a child process counts too; stderr is kept and searched for UBSan's.
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:log_path=$work/report"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
# every Python object from malloc, so that ASan sees the bounds of small buffers too
# (pymalloc carves them out of arenas it cannot see into)
export PYTHONMALLOC=malloc
export NETSTACK_TESTS_STRICT=1
export NETSTACK_HYPOTHESIS_PROFILE=ci
.venv/bin/python -c '
import os, sys
import netstack._fast as f
assert f.FAST and sys.modules["netstack._fastc"].__file__ == os.environ["NETSTACK_FASTC"], "not the sanitizer build"
' 2>>"$work/stderr"
# --capture=sys: a report written to fd 2 just before the abort is not swallowed
.venv/bin/pytest -q -p no:cacheprovider --capture=sys "${tests[@]}" "$@" 2>>"$work/stderr"
