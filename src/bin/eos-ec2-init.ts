import { eosEc2InitMain } from "../cli/eos-ec2-init.ts";
import { runMain } from "../cli/main.ts";

runMain("eos-ec2-init", eosEc2InitMain);
