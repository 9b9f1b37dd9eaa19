import { firecrackerPilotMain } from "../cli/firecracker-pilot.ts";
import { runMain } from "../cli/main.ts";

runMain("firecracker-pilot", firecrackerPilotMain);
