import { flakeCtlMain } from "../cli/flake-ctl.ts";
import { runMain } from "../cli/main.ts";

runMain("flake-ctl", flakeCtlMain);
