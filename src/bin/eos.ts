import { eosMain } from "../cli/eos.ts";
import { runMain } from "../cli/main.ts";

runMain("eos", eosMain);
