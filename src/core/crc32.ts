/**
 * CRC-32 (IEEE 802.3, as GPT and zlib use it). zlib.crc32 exists from Node
 * 20.15 / 22.2; Debian 12's nodejs is 18.20, which the .deb depends on and
 * package.json's engines allow, so without it a table-driven version is used.
 */
import * as zlib from "node:zlib";

let table: Uint32Array | undefined;

/** The portable CRC-32 (exported for the test that holds it to zlib's). */
export function crc32Portable(data: Uint8Array): number {
  if (!table) {
    table = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      table[n] = c >>> 0;
    }
  }
  let crc = 0xffffffff;
  for (let i = 0; i < data.length; i++) crc = (table[(crc ^ (data[i] ?? 0)) & 0xff] ?? 0) ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

const native = (zlib as { crc32?: (data: Uint8Array) => number }).crc32;

export const crc32: (data: Uint8Array) => number = native ?? crc32Portable;
