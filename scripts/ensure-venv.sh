#!/usr/bin/env bash
# Make .venv hold everything `make test` and `make demo` need, and say so only when it does.
#
# Idempotent and order-independent: the stamp ($VENV/.installed) is written only after every
# extra actually imports, and it is never trusted alone: a missing extra (e.g. the kerberos one,
# which compiles against libkrb5 and fails when the Debian packages arrive later) is installed
# again on the next run, without reinstalling the rest ($VENV/.installed-core says the core and
# test extras are in for this pyproject.toml). Run scripts/system-deps.sh first (the Makefile
# does).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
STAMP="$VENV/.installed"
CORE_STAMP="$VENV/.installed-core"

# What each part of the install must make importable. The core and test tools are looked up
# (cheap); the kerberos extra is really imported: a compiled module that cannot load its
# libkrb5 must count as missing.
CORE_IMPORTS="import importlib.util as u, sys, rpcsec
sys.exit(any(u.find_spec(m) is None for m in
    ('grpc', 'cryptography', 'OpenSSL', 'spnego', 'pytest', 'hypothesis', 'grpc_tools', 'matplotlib',
     'redis', 'hiredis', 'grpc_health')))"
KERBEROS_IMPORTS="import gssapi, krb5, requests_gssapi, httpx_gssapi, requests_kerberos"

imports() { "$PY" -c "$1" >/dev/null 2>&1; }
fresh() { [ -f "$1" ] && [ ! pyproject.toml -nt "$1" ]; }

if [ ! -x "$PY" ]; then
  echo "creating $VENV"
  "$PYTHON" -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
fi

# Two stamps: CORE_STAMP (rpcsec + test + bench installed for this pyproject.toml) and STAMP
# (that, and the kerberos extra). Neither is trusted alone: the imports are checked too.
core_installed=false
if { fresh "$CORE_STAMP" || fresh "$STAMP"; } && imports "$CORE_IMPORTS"; then
  core_installed=true
fi
if $core_installed && fresh "$STAMP" && imports "$KERBEROS_IMPORTS"; then
  exit 0  # everything imports: nothing to do
fi
rm -f "$STAMP"

if ! $core_installed; then
  rm -f "$CORE_STAMP"
  echo "installing rpcsec with the test and bench extras into $VENV"
  "$PY" -m pip install -q -e '.[test,bench,http]'
  if ! imports "$CORE_IMPORTS"; then
    echo "error: $VENV cannot import rpcsec and its test dependencies" >&2
    exit 1
  fi
fi
touch "$CORE_STAMP"

if ! imports "$KERBEROS_IMPORTS"; then
  if command -v krb5-config >/dev/null 2>&1; then
    echo "installing the kerberos extra (python-gssapi, pykrb5) into $VENV"
    "$PY" -m pip install -q -e '.[kerberos,interop]' \
      || echo "warning: the kerberos extra did not build; Kerberos tests will skip (fail with CI=true)"
  else
    echo "note: the kerberos extra needs libkrb5-dev (run as root: bash scripts/system-deps.sh);" \
      "Kerberos tests will skip (fail with CI=true); run make again once it is installed"
  fi
fi

if imports "$KERBEROS_IMPORTS"; then
  touch "$STAMP"
fi
