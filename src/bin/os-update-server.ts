import { runMain } from "../cli/main.ts";
import { osUpdateServerMain } from "../cli/os-update-server.ts";

runMain("os-update-server", osUpdateServerMain);
