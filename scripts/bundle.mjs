// One ESM entry per command in dist/, sharing code through dist/chunks/: what
// only some paths need (the YAML parser, the schema library) is loaded only
// when such a path runs, so a device's periodic `os-update --check` starts fast.
// A device image needs only node, dist/*.mjs and dist/chunks/.
import { build } from "esbuild";
import { chmodSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";

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
// os-update runs on devices with 512 MiB: V8's young generation (16 MiB semi-spaces by default)
// grows with the bytes streamed through it. 1 MiB semi-spaces took the apply's peak RSS from
// 113 to 85 MiB on the chunk path and 111 to 98 MiB on the full stream (bench/delta, demo pair
// + git), in the same time within noise. `env -S` (coreutils 8.30) passes the flag.
const lowMemory = "dist/os-update.mjs";
writeFileSync(
  lowMemory,
  readFileSync(lowMemory, "utf8").replace(
    /^#!\/usr\/bin\/env node\n/,
    "#!/usr/bin/env -S node --max-semi-space-size=1\n",
  ),
);
for (const file of entries) chmodSync(`dist/${file.replace(/\.ts$/, "")}.mjs`, 0o755);
