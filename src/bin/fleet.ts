import { fleetMain } from "../cli/fleet.ts";
import { runMain } from "../cli/main.ts";

runMain("fleet", fleetMain);
