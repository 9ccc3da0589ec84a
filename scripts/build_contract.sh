#!/usr/bin/env bash
# Rebuilds ledger/contracts/Ledger.{bin,abi.json} from Ledger.sol with solc from the npm registry
# (installed by scripts/chain_tools.sh). The ledger crate embeds the committed bytecode; run this
# after changing the contract and commit all three files. With --check, it only compares (CI).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
tools="$(bash "$here/chain_tools.sh")"
node "$here/build_contract.mjs" "$tools/node_modules/solc" "$root/ledger/contracts" "${1:-}"
