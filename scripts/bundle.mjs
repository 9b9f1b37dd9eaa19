// One self-contained ESM bundle per command, so a device image needs only node and dist/.
import { build } from "esbuild";
import { readdirSync, chmodSync } from "node:fs";

const entries = readdirSync("src/bin").filter((f) => f.endsWith(".ts"));
await Promise.all(
  entries.map(async (file) => {
    const name = file.replace(/\.ts$/, "");
    const outfile = `dist/${name}.mjs`;
    await build({
      entryPoints: [`src/bin/${file}`],
      outfile,
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
      logLevel: "warning",
    });
    chmodSync(outfile, 0o755);
  }),
);
