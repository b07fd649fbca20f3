// Compile the devnet contracts with the pinned npm solc and write reproducible artifacts.
//
//   node devtools/contracts/compile.mjs          write devtools/contracts/artifacts/<Name>.json
//   node devtools/contracts/compile.mjs --check  compile in memory; exit 1 if the committed artifacts differ
//
// Reproducible: fixed compiler (package-lock), fixed evmVersion, optimizer settings and no metadata hash
// (`bytecodeHash: "none"`), so comment-only edits and checkout paths do not change the bytecode.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const CONTRACTS_DIR = dirname(fileURLToPath(import.meta.url));
const SOURCE_DIR = join(CONTRACTS_DIR, "src");
const ARTIFACT_DIR = join(CONTRACTS_DIR, "artifacts");
// Source file -> the contracts written as artifacts. AssetDAO.sol holds one contract per event version.
const CONTRACTS = {
  AssetDAO: ["AssetDAO", "AssetDAOUpstream", "AssetDAOUnknownEvents"],
  DevToken: ["DevToken"],
  DevPriceOracle: ["DevPriceOracle"],
};

function compile() {
  const sources = {};
  for (const name of Object.keys(CONTRACTS)) {
    sources[`src/${name}.sol`] = { content: readFileSync(join(SOURCE_DIR, `${name}.sol`), "utf8") };
  }
  const input = {
    language: "Solidity",
    sources,
    settings: {
      optimizer: { enabled: true, runs: 200 },
      evmVersion: "cancun",
      metadata: { bytecodeHash: "none" },
      outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
    },
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input)));
  const problems = output.errors ?? [];
  for (const problem of problems) {
    process.stderr.write(problem.formattedMessage ?? `${problem.severity}: ${problem.message}\n`);
  }
  if (problems.some((problem) => problem.severity === "error")) {
    process.exit(1);
  }
  const artifacts = {};
  for (const [file, names] of Object.entries(CONTRACTS)) {
    for (const name of names) {
      const compiled = output.contracts[`src/${file}.sol`][name];
      const artifact = { contractName: name, abi: compiled.abi, bytecode: `0x${compiled.evm.bytecode.object}` };
      artifacts[name] = `${JSON.stringify(artifact, null, 2)}\n`;
    }
  }
  return artifacts;
}

const check = process.argv.includes("--check");
const artifacts = compile();
let stale = 0;
for (const [name, text] of Object.entries(artifacts)) {
  const path = join(ARTIFACT_DIR, `${name}.json`);
  if (check) {
    if (!existsSync(path) || readFileSync(path, "utf8") !== text) {
      process.stderr.write(`stale artifact: ${path} (run: node devtools/contracts/compile.mjs)\n`);
      stale += 1;
    }
  } else {
    mkdirSync(ARTIFACT_DIR, { recursive: true });
    writeFileSync(path, text);
    process.stdout.write(`wrote ${path} (solc ${solc.version()})\n`);
  }
}
process.exit(stale > 0 ? 1 : 0);
