#!/usr/bin/env bash
# Keys for the examples: an authority, then one self-contained bundle per identity.
#
#   bash examples/make_identities.sh [DIR]      (default DIR: ./example-pki)
#
# Needs the `rpcsec` command on PATH (.venv/bin after `make demo`), or RPCSEC="python -m rpcsec".
#
# DIR/authority holds the authority's private key (root.key): keep it offline. Services and
# clients only ever get a bundle, DIR/bundles/NAME (certificate, key 0600, trust bundle).
set -euo pipefail
dir=${1:-example-pki}
rpcsec=${RPCSEC:-rpcsec}
$rpcsec authority init "$dir/authority" --trust-domain example.test
$rpcsec authority issue "$dir/authority" notes --service --bundle "$dir/bundles/notes"
$rpcsec authority issue "$dir/authority" front --service --bundle "$dir/bundles/front"
$rpcsec authority issue "$dir/authority" alice --group staff --bundle "$dir/bundles/alice"
$rpcsec authority issue "$dir/authority" bob --group staff --bundle "$dir/bundles/bob"
$rpcsec authority issue "$dir/authority" carol --bundle "$dir/bundles/carol"
echo "bundles in $dir/bundles; the authority key stays in $dir/authority"
