// One ESM entry per command in dist/, sharing code through dist/chunks/: what
// only some paths need (the YAML parser, the schema library) is loaded only
// when such a path runs, so a device's periodic `os-update --check` starts fast.
// A device image needs only node, dist/*.mjs and dist/chunks/.
import { build } from "esbuild";
import { chmodSync, readdirSync, rmSync } from "node:fs";

const entries = readdirSync("src/bin").filter((f) => f.endsWith(".ts"));
rmSync("dist", { recursive: true, force: true });
await build({
  entryPoints: entries.map((f) => `src/bin/${f}`),
  outdir: "dist",
  entryNames: "[name]",
  chunkNames: "chunks/[name]-[hash]",
  outExtension: { ".js": ".mjs" },
  splitting: true,
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node18",
  sourcemap: false,
  minify: true,
  legalComments: "none",
  banner: {
    js: "#!/usr/bin/env node\nimport { createRequire as __eosCreateRequire } from 'node:module'; const require = __eosCreateRequire(import.meta.url);",
  },
  // better-sqlite3 is a native module: it is loaded from node_modules at run time (only by a
  // server on SQLite). pg-native is pg's optional native binding, which EOS does not use.
  external: ["better-sqlite3", "pg-native"],
  logLevel: "warning",
});
for (const file of entries) chmodSync(`dist/${file.replace(/\.ts$/, "")}.mjs`, 0o755);
