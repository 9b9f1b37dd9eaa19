/**
 * The Firecracker configuration file against Firecracker's documented API
 * schema (src/firecracker/swagger/firecracker.yaml, definitions
 * FullVmConfiguration, BootSource, Drive, MachineConfiguration,
 * NetworkInterface, Vsock, Logger), transcribed below with their required
 * keys, types, enums and bounds. Firecracker rejects unknown keys, so the
 * check does too. No Firecracker binary can be installed here: this is the
 * whole of its test.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  firecrackerConfig,
  guestMac,
  isVsockOk,
  kernelFormat,
  tapName,
  vsockConnectLine,
  type FirecrackerPlan,
} from "../../src/core/flakes/firecracker-config.ts";
import { bootArgs, DEFAULT_BOOT_ARGS } from "../../src/core/flakes/vm.ts";

type Schema =
  | { type: "string"; enum?: string[] }
  | { type: "boolean" }
  | { type: "integer"; minimum?: number; maximum?: number }
  | { type: "array"; items: Schema }
  | { type: "object"; required?: string[]; properties: Record<string, Schema> };

const RateLimiter: Schema = { type: "object", properties: {} }; // not written by the pilot

const SWAGGER: Record<string, Schema> = {
  BootSource: {
    type: "object",
    required: ["kernel_image_path"],
    properties: {
      boot_args: { type: "string" },
      initrd_path: { type: "string" },
      kernel_image_path: { type: "string" },
    },
  },
  Drive: {
    type: "object",
    required: ["drive_id", "is_root_device"],
    properties: {
      drive_id: { type: "string" },
      partuuid: { type: "string" },
      is_root_device: { type: "boolean" },
      cache_type: { type: "string", enum: ["Unsafe", "Writeback"] },
      is_read_only: { type: "boolean" },
      path_on_host: { type: "string" },
      rate_limiter: RateLimiter,
      io_engine: { type: "string", enum: ["Sync", "Async"] },
      socket: { type: "string" },
    },
  },
  MachineConfiguration: {
    type: "object",
    required: ["mem_size_mib", "vcpu_count"],
    properties: {
      cpu_template: { type: "string", enum: ["C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"] },
      smt: { type: "boolean" },
      mem_size_mib: { type: "integer" },
      track_dirty_pages: { type: "boolean" },
      vcpu_count: { type: "integer", minimum: 1, maximum: 32 },
      huge_pages: { type: "string", enum: ["None", "Transparent", "2M"] },
    },
  },
  NetworkInterface: {
    type: "object",
    required: ["host_dev_name", "iface_id"],
    properties: {
      guest_mac: { type: "string" },
      host_dev_name: { type: "string" },
      iface_id: { type: "string" },
      mtu: { type: "integer", minimum: 68, maximum: 65535 },
      rx_rate_limiter: RateLimiter,
      tx_rate_limiter: RateLimiter,
    },
  },
  Vsock: {
    type: "object",
    required: ["guest_cid", "uds_path"],
    properties: {
      guest_cid: { type: "integer", minimum: 3 },
      uds_path: { type: "string" },
      vsock_id: { type: "string" },
    },
  },
  Logger: {
    type: "object",
    properties: {
      level: { type: "string", enum: ["Error", "Warning", "Info", "Debug", "Trace", "Off"] },
      log_path: { type: "string" },
      show_level: { type: "boolean" },
      show_log_origin: { type: "boolean" },
      module: { type: "string" },
    },
  },
};

const FullVmConfiguration: Schema = {
  type: "object",
  properties: {
    balloon: { type: "object", properties: {} },
    drives: { type: "array", items: SWAGGER.Drive as Schema },
    "boot-source": SWAGGER.BootSource as Schema,
    "cpu-config": { type: "object", properties: {} },
    logger: SWAGGER.Logger as Schema,
    "machine-config": SWAGGER.MachineConfiguration as Schema,
    metrics: { type: "object", properties: {} },
    "mmds-config": { type: "object", properties: {} },
    "network-interfaces": { type: "array", items: SWAGGER.NetworkInterface as Schema },
    vsock: SWAGGER.Vsock as Schema,
    entropy: { type: "object", properties: {} },
  },
};

/** Errors of `value` against `schema` (empty: valid). */
function validate(value: unknown, schema: Schema, path = "$"): string[] {
  switch (schema.type) {
    case "string":
      if (typeof value !== "string") return [`${path}: not a string`];
      if (schema.enum && !schema.enum.includes(value))
        return [`${path}: ${value} not in ${schema.enum.join("|")}`];
      return [];
    case "boolean":
      return typeof value === "boolean" ? [] : [`${path}: not a boolean`];
    case "integer":
      if (typeof value !== "number" || !Number.isInteger(value)) return [`${path}: not an integer`];
      if (schema.minimum !== undefined && value < schema.minimum) return [`${path}: below ${schema.minimum}`];
      if (schema.maximum !== undefined && value > schema.maximum) return [`${path}: above ${schema.maximum}`];
      return [];
    case "array":
      if (!Array.isArray(value)) return [`${path}: not an array`];
      return value.flatMap((v, i) => validate(v, schema.items, `${path}[${i}]`));
    case "object": {
      if (typeof value !== "object" || value === null || Array.isArray(value))
        return [`${path}: not an object`];
      const obj = value as Record<string, unknown>;
      const errors: string[] = [];
      for (const key of schema.required ?? []) if (!(key in obj)) errors.push(`${path}: missing ${key}`);
      for (const [key, v] of Object.entries(obj)) {
        const sub = schema.properties[key];
        if (!sub) errors.push(`${path}: unknown key ${key}`);
        else errors.push(...validate(v, sub, `${path}.${key}`));
      }
      return errors;
    }
  }
}

const plan: FirecrackerPlan = {
  kernel: "/var/lib/firecracker/images/leap/kernel",
  initrd: "/var/lib/firecracker/images/leap/initrd",
  bootArgs: bootArgs(DEFAULT_BOOT_ARGS, {
    engine: "firecracker",
    overlay: true,
    resume: false,
    debug: false,
    vsockPort: 52,
  }),
  rootfs: "/var/lib/firecracker/images/leap/rootfs",
  overlay: "/tmp/flakes/0/vm/mybash.run-x/overlay.img",
  cacheType: "Writeback",
  vcpuCount: 2,
  memSizeMib: 4096,
  vsockUds: "/tmp/flakes/0/vm/mybash.run-x/vsock.sock",
  tap: { name: "fc0123456789", mac: guestMac("fc0123456789") },
};

test("the full configuration is valid against Firecracker's documented FullVmConfiguration", () => {
  const config = firecrackerConfig(plan);
  assert.deepEqual(validate(config, FullVmConfiguration), []);
  // and survives JSON as Firecracker reads it
  assert.deepEqual(validate(JSON.parse(JSON.stringify(config)), FullVmConfiguration), []);
});

test("drives: read-only root first (is_root_device), writable overlay second", () => {
  const config = firecrackerConfig(plan);
  assert.equal(config.drives.length, 2);
  assert.deepEqual(config.drives[0], {
    drive_id: "rootfs",
    path_on_host: plan.rootfs,
    is_root_device: true,
    is_read_only: true,
    cache_type: "Writeback",
  });
  assert.equal(config.drives[1]?.is_root_device, false);
  assert.equal(config.drives[1]?.is_read_only, false);
  assert.equal(config.drives[1]?.path_on_host, plan.overlay);
  assert.equal(config.drives.filter((d) => d.is_root_device).length, 1, "at most one root device");
});

test("boot source, machine, vsock and network", () => {
  const config = firecrackerConfig(plan);
  assert.equal(config["boot-source"].kernel_image_path, plan.kernel);
  assert.equal(config["boot-source"].initrd_path, plan.initrd);
  assert.match(config["boot-source"].boot_args, /^init=\/usr\/sbin\/sci console=ttyS0 root=\/dev\/vda /);
  assert.match(config["boot-source"].boot_args, / overlay_root=\/dev\/vdb sci\.channel=vsock:52 panic=-1$/);
  assert.deepEqual(config["machine-config"], { vcpu_count: 2, mem_size_mib: 4096, smt: false });
  assert.deepEqual(config.vsock, { guest_cid: 3, uds_path: plan.vsockUds });
  assert.equal(config["network-interfaces"][0]?.host_dev_name, "fc0123456789");
  assert.match(config["network-interfaces"][0]?.guest_mac ?? "", /^06(:[0-9a-f]{2}){5}$/);
});

test("without overlay, initrd or network the optional parts are left out, still valid", () => {
  const config = firecrackerConfig({
    ...plan,
    overlay: undefined,
    initrd: undefined,
    tap: undefined,
    vcpuCount: 1,
    memSizeMib: 128,
  });
  assert.deepEqual(validate(config, FullVmConfiguration), []);
  assert.equal(config.drives.length, 1);
  assert.equal("initrd_path" in config["boot-source"], false);
  assert.deepEqual(config["network-interfaces"], []);
});

test("a debug log is a documented Logger", () => {
  const config = firecrackerConfig({ ...plan, logPath: "/tmp/fc.log" });
  assert.deepEqual(validate(config, FullVmConfiguration), []);
});

test("the validator itself catches what Firecracker would reject", () => {
  const config = firecrackerConfig(plan) as unknown as Record<string, unknown>;
  assert.notDeepEqual(validate({ ...config, extra: 1 }, FullVmConfiguration), []);
  const drives = (config.drives as Array<Record<string, unknown>>).map((d) => ({ ...d, cache_type: "None" }));
  assert.notDeepEqual(validate({ ...config, drives }, FullVmConfiguration), []);
  assert.notDeepEqual(
    validate({ ...config, vsock: { guest_cid: 2, uds_path: "/x" } }, FullVmConfiguration),
    [],
  );
});

test("vCPU counts Firecracker refuses and relative paths are errors", () => {
  assert.throws(() => firecrackerConfig({ ...plan, vcpuCount: 3 }), /1 or an even number/);
  assert.throws(() => firecrackerConfig({ ...plan, vcpuCount: 33 }), /1 or an even number/);
  assert.throws(() => firecrackerConfig({ ...plan, kernel: "kernel" }), /must be absolute/);
});

test("vsock handshake, tap names and kernel formats", () => {
  assert.equal(vsockConnectLine(52), "CONNECT 52\n");
  assert.ok(isVsockOk("OK 1073741824\n"));
  assert.ok(!isVsockOk("ERR\n"));
  const tap = tapName("/tmp/flakes/0/vm/x:123");
  assert.match(tap, /^fc[0-9a-f]{10}$/);
  assert.ok(tap.length <= 15, "IFNAMSIZ");
  assert.equal(tapName("a"), tapName("a"));
  assert.notEqual(tapName("a"), tapName("b"));
  assert.equal(kernelFormat(Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1])), "elf");
  const bz = Buffer.alloc(0x210);
  bz.write("HdrS", 0x202, "latin1");
  assert.equal(kernelFormat(bz), "bzimage");
  assert.equal(kernelFormat(Buffer.alloc(16)), "unknown");
});
