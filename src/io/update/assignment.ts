/**
 * The device's side of a signed downgrade assignment (core/update/assignment.ts):
 * asked for only when the server offers a version that is not newer, and
 * trusted only when it verifies against the assignment keys this device
 * carries. Anything short of that leaves the downgrade refused, with the
 * reason kept for the message.
 */
import { stat } from "node:fs/promises";
import type { DeviceConfig } from "../../core/config.ts";
import { errorMessage } from "../../core/errors.ts";
import type { Manifest } from "../../core/manifest.ts";
import { checkAssignment, type AssignmentPayload } from "../../core/update/assignment.ts";
import { sysPath, type Context } from "../context.ts";
import { loadTrustedKeys } from "../keys.ts";
import type { UpdateSource } from "./source.ts";

export const DEFAULT_ASSIGNMENT_KEYS = "/usr/share/eos/assignment-keys";

export type AssignmentVerdict = { allowed: AssignmentPayload } | { refused: string };

export async function judgeAssignment(
  ctx: Context,
  config: DeviceConfig,
  source: UpdateSource,
  manifest: Manifest,
  runningSha256: string,
): Promise<AssignmentVerdict> {
  if (!source.fetchAssignment) return { refused: "the server assigns versions over HTTPS only" };
  try {
    const got = await source.fetchAssignment(runningSha256);
    if (!got) return { refused: "the server assigns no downgrade to this device" };
    const configured = config.update.assignment_keys;
    const fallback = sysPath(ctx, DEFAULT_ASSIGNMENT_KEYS);
    // Without the default directory the device trusts no assignment key: downgrades stay refused.
    const paths = configured ?? ((await stat(fallback).catch(() => undefined)) ? [fallback] : []);
    const keys = await loadTrustedKeys(paths);
    let doc: unknown;
    try {
      doc = JSON.parse(got.body.toString("utf8"));
    } catch {
      return { refused: "the server's assignment is not JSON" };
    }
    const allowed = checkAssignment(doc, keys, {
      manifest,
      runningSha256,
      token: got.token,
      now: ctx.now(),
    });
    return { allowed };
  } catch (error) {
    return { refused: errorMessage(error) };
  }
}
