/**
 * `os-update-server windows …` on the admin API's side (windows-api.ts): the
 * groups in force, one group's window set or cleared, or all of them dropped
 * back to the config's. A bad window or tag is refused here, naming the
 * argument, before anything is sent; the server checks them again.
 */
import { EosError } from "../../../core/errors.ts";
import { normaliseTags } from "../../../core/fleet/admin.ts";
import type { WindowsRow } from "../../../core/fleet/format.ts";
import { parseWindow } from "../../../core/fleet/window.ts";
import type { AdminClient } from "./admin-client.ts";

function renamed(error: unknown, what: string): unknown {
  if (!(error instanceof EosError)) return error;
  const message = error.message.replace(/^tags(\[\d+\])?: /, "");
  return new EosError(error.code, `${what}: ${message}`, error.hint ? { hint: error.hint } : {});
}

/** The query that names a group: none for the default group (every device). */
function groupQuery(tags: readonly string[]): string {
  let valid: string[];
  try {
    valid = normaliseTags(tags);
  } catch (error) {
    throw renamed(error, "--tag");
  }
  return valid.length === 0 ? "" : `?tags=${encodeURIComponent(valid.join(","))}`;
}

export function windowsClient(client: AdminClient) {
  return {
    list: async () => (await client.get("/v1/admin/windows")) as WindowsRow,
    async set(tags: readonly string[], spec: string): Promise<WindowsRow> {
      try {
        parseWindow(spec);
      } catch (error) {
        throw renamed(error, "<window>");
      }
      const path = `/v1/admin/windows/group${groupQuery(tags)}`;
      return (await client.send("PUT", path, { window: spec })) as WindowsRow;
    },
    async clear(tags: readonly string[]): Promise<WindowsRow> {
      return (await client.send("DELETE", `/v1/admin/windows/group${groupQuery(tags)}`)) as WindowsRow;
    },
    /** Every window set through the API dropped: the config's serve.windows apply again. */
    clearAll: async () => (await client.send("DELETE", "/v1/admin/windows")) as WindowsRow,
  };
}
