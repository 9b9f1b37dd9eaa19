import js from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["dist/", "node_modules/", ".tmp/", "**/*.mjs"] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      "@typescript-eslint/no-explicit-any": "error",
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "no-restricted-imports": "off",
    },
  },
  {
    // The core layer is pure: no file system, network or process access.
    files: ["src/core/**/*.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          paths: [
            "node:fs",
            "node:fs/promises",
            "node:child_process",
            "node:net",
            "node:http",
            "node:https",
            "node:os",
            "node:process",
          ].map((name) => ({ name, message: "src/core is pure: put side effects in src/io" })),
          patterns: [{ group: ["../io/*", "../cli/*"], message: "src/core must not depend on io or cli" }],
        },
      ],
    },
  },
);
