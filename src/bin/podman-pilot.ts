import { podmanPilotMain } from "../cli/podman-pilot.ts";
import { runMain } from "../cli/main.ts";

runMain("podman-pilot", podmanPilotMain);
