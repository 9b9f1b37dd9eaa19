import js from "@eslint/js";
import tseslint from "typescript-eslint";

const noChildProcess = {
  name: "node:child_process",
  message: "processes start only through src/io/process.ts (the runner in the context)",
};

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
          patterns: [
            { group: ["**/io/*", "**/io/**", "**/cli/*"], message: "src/core must not depend on io or cli" },
          ],
        },
      ],
    },
  },
  {
    // Adapters may not reach up into commands, and start processes only through the runner.
    files: ["src/io/**/*.ts"],
    ignores: ["src/io/process.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          paths: [noChildProcess],
          patterns: [{ group: ["**/cli/*"], message: "src/io must not depend on cli" }],
        },
      ],
    },
  },
  {
    // Commands are thin and independent: each uses io and core, and only main.ts of its own layer.
    files: ["src/cli/**/*.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          paths: [noChildProcess],
          patterns: [{ regex: "^\\./(?!main\\.ts$)", message: "a command does not import another command" }],
        },
      ],
    },
  },
);
