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
# Standard peers for the interop tests (issue 11): curl, Apache + mod_auth_gssapi, gss-sample.
command -v curl >/dev/null 2>&1 || need+=(curl)
[ -x /usr/sbin/apache2 ] && [ -e /usr/lib/apache2/modules/mod_auth_gssapi.so ] || need+=(apache2 libapache2-mod-auth-gssapi)
command -v gss-client >/dev/null 2>&1 || [ -x /usr/bin/gss-client ] || need+=(krb5-gss-samples)
"${PYTHON:-python3}" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null || need+=(python3-dev)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages for the tests: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq "${need[@]}" >/dev/null \
    || echo "warning: apt-get could not install ${need[*]}"
else
  # -- no root (or no apt-get): say exactly what to run; make continues without them --------
  echo "note: missing Debian packages: ${need[*]}" >&2
  echo "      run once as root:  sudo bash scripts/system-deps.sh   (or: sudo apt-get install ${need[*]})" >&2
  echo "      then run make again: it installs the kerberos extra (python-gssapi) by itself." >&2
  echo "      Until then Kerberos tests skip (with CI=true they fail) and x509/ntlm work." >&2
fi
exit 0
