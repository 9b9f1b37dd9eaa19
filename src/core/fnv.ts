/**
 * FNV-1a (32 bit) as 8 hex digits: a short, stable name for a set of inputs
 * (a cache file, an overlay template). Not for anything an attacker chooses
 * to collide with; launchers on a hot path use it instead of node:crypto.
 */
export function fnv1a(text: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h.toString(16).padStart(8, "0");
}
