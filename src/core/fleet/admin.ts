/**
 * The admin side of the control plane: roles and what each may do, and the
 * device list's filters as the API and the CLI spell them.
 */
import { EosError } from "../errors.ts";
import { DEVICE_STATES, type DeviceState } from "./events.ts";

/** Ordered: each role may do what the ones before it may. */
export const ROLES = ["viewer", "operator", "admin"] as const;
export type Role = (typeof ROLES)[number];

export function isRole(value: string): value is Role {
  return (ROLES as readonly string[]).includes(value);
}

/** viewer reads; operator also changes devices (tags, later rollouts); admin also manages admin tokens. */
export function allows(role: Role, needed: Role): boolean {
  return ROLES.indexOf(role) >= ROLES.indexOf(needed);
}

export const ADMIN_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
export const TAG = /^[A-Za-z0-9][A-Za-z0-9._:=-]{0,63}$/;
export const MAX_TAGS = 32;

export interface DeviceFilter {
  tag?: string;
  version?: string;
  state?: DeviceState;
  image?: string;
}

/** Query parameters → a filter; an unknown parameter or a bad value is a USAGE error naming it. */
export function parseDeviceFilter(params: Iterable<[string, string]>): DeviceFilter {
  const filter: DeviceFilter = {};
  for (const [key, value] of params) {
    if (key === "tag") {
      if (!TAG.test(value)) throw new EosError("USAGE", `tag: not a tag: ${JSON.stringify(value)}`);
      filter.tag = value;
    } else if (key === "version") {
      if (value.length === 0 || value.length > 64) throw new EosError("USAGE", "version: 1-64 characters");
      filter.version = value;
    } else if (key === "state") {
      const state = DEVICE_STATES.find((s) => s === value);
      if (!state)
        throw new EosError(
          "USAGE",
          `state: one of ${DEVICE_STATES.join(", ")}, not ${JSON.stringify(value)}`,
        );
      filter.state = state;
    } else if (key === "image") {
      if (value.length === 0 || value.length > 128) throw new EosError("USAGE", "image: 1-128 characters");
      filter.image = value;
    } else {
      throw new EosError("USAGE", `unknown filter ${JSON.stringify(key)}`, {
        hint: "filters: tag, version, state, image",
      });
    }
  }
  return filter;
}

/** The tags an operator sets on a device: valid, unique, sorted, at most MAX_TAGS. */
export function normaliseTags(tags: readonly string[]): string[] {
  for (const [i, tag] of tags.entries()) {
    if (!TAG.test(tag)) throw new EosError("USAGE", `tags[${i}]: not a tag: ${JSON.stringify(tag)}`);
  }
  const unique = [...new Set(tags)].sort();
  if (unique.length > MAX_TAGS) throw new EosError("USAGE", `tags: at most ${MAX_TAGS}`);
  return unique;
}
