// Compiles ledger/contracts/Ledger.sol with the npm registry's solc (scripts/build_contract.sh)
// and writes its ABI and deployment bytecode next to it (with --check: only compares them).
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const [solcDir, contractsDir, mode] = process.argv.slice(2);
const solc = createRequire(path.join(solcDir, "index.js"))("solc");
const source = path.join(contractsDir, "Ledger.sol");
const input = {
  language: "Solidity",
  sources: { "Ledger.sol": { content: readFileSync(source, "utf8") } },
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: "cancun",
    metadata: { bytecodeHash: "none" },
    outputSelection: { "*": { ZkinferLedger: ["abi", "evm.bytecode.object"] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors ?? []).filter((e) => e.severity === "error");
for (const e of output.errors ?? []) console.error(e.formattedMessage);
if (errors.length > 0) process.exit(1);
const contract = output.contracts["Ledger.sol"].ZkinferLedger;
const files = {
  "Ledger.abi.json": JSON.stringify(contract.abi, null, 1) + "\n",
  "Ledger.bin": contract.evm.bytecode.object + "\n",
};
for (const [name, text] of Object.entries(files)) {
  const target = path.join(contractsDir, name);
  if (mode === "--check") {
    if (readFileSync(target, "utf8") !== text) {
      console.error(`${target} is not what Ledger.sol compiles to: run scripts/build_contract.sh`);
      process.exit(1);
    }
  } else {
    writeFileSync(target, text);
  }
}
console.log(`solc ${solc.version()}: ${contract.evm.bytecode.object.length / 2} bytes of bytecode`);
