import { flakeRegistryMain } from "../cli/flake-registry.ts";
import { runMain } from "../cli/main.ts";

runMain("flake-registry", flakeRegistryMain);
