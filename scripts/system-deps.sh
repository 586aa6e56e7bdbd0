#!/usr/bin/env bash
# Install the Debian packages the tests need (a real MIT KDC and libkrb5 headers for
# python-gssapi), when we are root on a Debian machine and they are missing. Otherwise say how.
set -u
need=()
command -v krb5kdc >/dev/null 2>&1 || [ -x /usr/sbin/krb5kdc ] || need+=(krb5-kdc krb5-admin-server krb5-user)
command -v krb5-config >/dev/null 2>&1 || need+=(libkrb5-dev)
# The proxy tests put real nginx (grpc_pass) and haproxy in front of gRPC replicas.
for proxy in nginx haproxy; do [ -x /usr/sbin/$proxy ] || command -v $proxy >/dev/null 2>&1 || need+=($proxy); done
# The 'kerberos' extra (python-gssapi, pykrb5) compiles against libkrb5: a C compiler and the
# Python headers of the interpreter that builds the venv.
command -v gcc >/dev/null 2>&1 || need+=(gcc)
# The replay-store tests start a real Redis (rpcsec.session.RedisReplayStore).
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || need+=(redis-server)
"${PYTHON:-python3}" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null || need+=(python3-dev)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages for the tests: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq "${need[@]}" >/dev/null \
    || echo "warning: apt-get could not install ${need[*]}"
else
  echo "note: Kerberos tests need: sudo apt-get install ${need[*]}, then pip install -e '.[kerberos]'" \
    "(python-gssapi); without them they skip, and with CI=true they fail"
fi
exit 0
