#!/usr/bin/env bash
# Install the Debian packages the Kerberos tests need (a real MIT KDC and libkrb5 headers for
# python-gssapi), when we are root on a Debian machine and they are missing. Otherwise say how.
set -u
need=()
command -v krb5kdc >/dev/null 2>&1 || [ -x /usr/sbin/krb5kdc ] || need+=(krb5-kdc krb5-admin-server krb5-user)
command -v krb5-config >/dev/null 2>&1 || need+=(libkrb5-dev)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages for the Kerberos tests: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq "${need[@]}" >/dev/null \
    || echo "warning: apt-get could not install ${need[*]}"
else
  echo "note: Kerberos tests need: sudo apt-get install ${need[*]} (they skip without it)"
fi
exit 0
