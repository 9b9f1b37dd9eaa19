import { test } from "node:test";
import assert from "node:assert/strict";
import { machineArgv } from "../../src/core/machine/qemu-machine.ts";
import { MINIMAL_PLAN as plan } from "../helpers/machine-plan.ts";

test("a link between guests: a second NIC with its own MAC on a socket netdev one guest listens on", () => {
  const server = machineArgv({
    ...plan,
    guestLink: { role: "listen", port: 40123, mac: "52:54:00:e0:5e:01" },
  });
  const device = machineArgv({
    ...plan,
    guestLink: { role: "connect", port: 40123, mac: "52:54:00:e0:5e:02" },
  });
  const pairs = (args: string[]) => args.slice(1).map((a, i) => `${args[i]} ${a}`);
  assert.ok(pairs(server).includes("-netdev socket,id=net1,listen=127.0.0.1:40123"), server.join(" "));
  assert.ok(pairs(device).includes("-netdev socket,id=net1,connect=127.0.0.1:40123"), device.join(" "));
  assert.ok(pairs(server).includes("-device virtio-net-pci,netdev=net1,mac=52:54:00:e0:5e:01"));
  assert.ok(pairs(device).includes("-device virtio-net-pci,netdev=net1,mac=52:54:00:e0:5e:02"));
  // SSH from the host still goes through the first NIC's user networking.
  assert.ok(server.includes("user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22"));
  assert.ok(!machineArgv(plan).some((a) => a.includes("net1")));
  for (const mac of ["52:54:00:E0:5E:01", "52:54:00:e0:5e", "52:54:00:e0:5e:01,x=y"])
    assert.throws(() => machineArgv({ ...plan, guestLink: { role: "listen", port: 1, mac } }), /not six/);
  for (const port of [0, 65536, 1.5])
    assert.throws(
      () => machineArgv({ ...plan, guestLink: { role: "listen", port, mac: "52:54:00:e0:5e:01" } }),
      /not a TCP port/,
    );
});
