#!/usr/bin/env bash
# Installs the chain tools the ledger's tests and scripts use from the npm registry into
# ~/.cache/zkinfer-npm (solc for the contract, anvil for a local Ethereum node) and prints that
# directory. Quiet when they are already there.
set -euo pipefail
dir="${ZKINFER_NPM_DIR:-$HOME/.cache/zkinfer-npm}"
solc_version=0.8.37
anvil_version=1.7.1
have() {
    [ -x "$dir/node_modules/.bin/anvil" ] &&
        grep -q "\"version\": \"$solc_version\"" "$dir/node_modules/solc/package.json" 2>/dev/null &&
        "$dir/node_modules/.bin/anvil" --version 2>/dev/null | grep -q "$anvil_version"
}
if ! have; then
    if ! command -v npm >/dev/null; then
        apt-get install -y --no-install-recommends nodejs npm >&2 ||
            { echo "npm is needed: apt-get install -y nodejs npm" >&2; exit 1; }
    fi
    mkdir -p "$dir"
    [ -f "$dir/package.json" ] || echo '{"name":"zkinfer-chain-tools","private":true}' > "$dir/package.json"
    # anvil's binary comes in its per-platform optional dependency; no install script is needed.
    npm install --prefix "$dir" --no-audit --no-fund --ignore-scripts \
        "solc@$solc_version" "@foundry-rs/anvil@$anvil_version" >&2
    have || { echo "chain tools did not install into $dir" >&2; exit 1; }
fi
echo "$dir"
