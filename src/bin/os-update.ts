import { runMain } from "../cli/main.ts";
import { osUpdateMain } from "../cli/os-update.ts";

runMain("os-update", (argv, ctx) => osUpdateMain(argv, ctx));
