/**
 * Device tokens issued at enrolment. The image carries one fleet-wide key;
 * a device shows it once (POST /v1/enrol) and gets an id and a token of its
 * own, so one device can be revoked, and a copy of an image (the same key,
 * no device token) enrols as a new device instead of posing as the old one.
 * Only each token's sha256 is stored.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { EosError } from "../../../core/errors.ts";
import { CHECK_CACHE_MAX, CHECK_CACHE_MS, TtlCache } from "../../../core/fleet/ttl-cache.ts";
import { HttpError } from "../http-answer.ts";
import type { FleetDb } from "./db.ts";

/** Device tokens say what they are: the server looks them up in the database, not the tokens directory. */
export const DEVICE_TOKEN_PREFIX = "eosdev_";
/** What a device may suggest as the start of its id (its hostname, say). */
export const ID_HINT = /^[A-Za-z0-9][A-Za-z0-9._-]{0,40}$/;

const hashOf = (token: string) => createHash("sha256").update(token, "utf8").digest("hex");

export class DeviceTokenStore {
  /**
   * Known tokens by hash (unknown ones are not kept: guessing must not fill it). The 3 requests of a
   * check read the database once; a revocation through another replica holds within CHECK_CACHE_MS.
   */
  private readonly known = new TtlCache<string, { device: string; revoked: string | null }>(
    CHECK_CACHE_MS,
    CHECK_CACHE_MAX,
  );

  constructor(
    private readonly fleet: FleetDb,
    private readonly now: () => Date,
  ) {}

  /** A new device: its id (the hint and a random suffix, never an existing id) and its token, returned once. */
  async enrol(enrolledWith: string, hint: string | undefined): Promise<{ device: string; token: string }> {
    const token = `${DEVICE_TOKEN_PREFIX}${randomBytes(32).toString("base64url")}`;
    const device = `${hint ?? "device"}-${randomBytes(5).toString("hex")}`;
    const created = this.now().toISOString();
    await this.fleet.db.transaction().execute(async (trx) => {
      await trx
        .insertInto("device_tokens")
        .values({ device, hash: hashOf(token), enrolled_with: enrolledWith, created, revoked: null })
        .execute();
      // In the inventory at once, so an operator sees an enrolment that never reported.
      await trx
        .insertInto("devices")
        .values({ id: device, state: "unknown", first_seen: created, last_seen: created, dropped: 0 })
        .onConflict((oc) => oc.column("id").doNothing())
        .execute();
    });
    return { device, token };
  }

  /** The device a token belongs to; undefined when unknown; a 401 saying so when revoked. */
  async authenticate(token: string): Promise<string | undefined> {
    const hash = hashOf(token);
    const at = this.now().getTime();
    let row = this.known.get(hash, at);
    if (!row) {
      const found = await this.fleet.db
        .selectFrom("device_tokens")
        .select(["device", "hash", "revoked"])
        .where("hash", "=", hash)
        .executeTakeFirst();
      if (!found || !timingSafeEqual(Buffer.from(found.hash), Buffer.from(hash))) return undefined;
      row = { device: found.device, revoked: found.revoked };
      this.known.set(hash, row, at);
    }
    if (row.revoked !== null)
      throw new HttpError(
        401,
        `device ${row.device}: its token was revoked at ${row.revoked}`,
        { "www-authenticate": 'Bearer realm="eos", error="invalid_token"', "x-eos-error": "REVOKED" },
        { code: "REVOKED", hint: "an operator revoked this device; it needs to be enrolled again" },
      );
    return row.device;
  }

  async revoke(device: string): Promise<void> {
    const r = await this.fleet.db
      .updateTable("device_tokens")
      .set({ revoked: this.now().toISOString() })
      .where("device", "=", device)
      .where("revoked", "is", null)
      .executeTakeFirst();
    if (Number(r.numUpdatedRows) > 0) {
      // Through this server, at once; another replica forgets it within CHECK_CACHE_MS.
      this.known.deleteWhere((v) => v.device === device);
      return;
    }
    const known = await this.fleet.db
      .selectFrom("device_tokens")
      .select("revoked")
      .where("device", "=", device)
      .executeTakeFirst();
    if (known) throw new EosError("REFUSED", `device ${device} is revoked already (at ${known.revoked})`);
    throw new EosError("NOT_FOUND", `no enrolled device ${device}`, {
      hint: "devices with a token from `os-update-server token add` are revoked with `token revoke`",
    });
  }
}
