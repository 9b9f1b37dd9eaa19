/**
 * The bytes of a root partition's chunk index (src/core/update/chunk-index.ts),
 * made the same way wherever they are made: `eos manifest` signs their hash,
 * and the update server makes them again from the image it verified, so it
 * publishes an index without trusting a file from the origin; the signed
 * hash decides whether the two agree.
 */
import { createHash } from "node:crypto";
import { open } from "node:fs/promises";
import type { ByteRange } from "../core/gpt.ts";
import { streamBytes, type Manifest } from "../core/manifest.ts";
import { ChunkHasher, DEFAULT_CHUNKER } from "../core/update/chunker.ts";
import { CHUNK_INDEX_SCHEMA, encodeChunkIndex } from "../core/update/chunk-index.ts";
import { hashRange } from "./hash.ts";

/** The chunk index of the root at `range` of `image`, described as `manifest`'s root (its chunk_index aside). */
export async function makeChunkIndex(
  image: string,
  range: ByteRange,
  manifest: Pick<Manifest, "name" | "architecture" | "version" | "partitions">,
): Promise<Buffer> {
  const root = manifest.partitions.root;
  const hasher = new ChunkHasher(DEFAULT_CHUNKER);
  const handle = await open(image, "r");
  try {
    await hashRange(handle, range.offset, streamBytes(root), undefined, (bytes) => hasher.push(bytes));
  } finally {
    await handle.close();
  }
  return encodeChunkIndex(
    {
      schema: CHUNK_INDEX_SCHEMA,
      name: manifest.name,
      architecture: manifest.architecture,
      version: manifest.version,
      root_sha256: root.sha256,
      data_bytes: streamBytes(root),
      chunker: DEFAULT_CHUNKER,
    },
    hasher.end(),
  );
}

/** The index the signed manifest names, made from the verified image; undefined when it names none or another. */
export async function signedChunkIndex(
  image: string,
  range: ByteRange,
  manifest: Manifest,
): Promise<{ bytes: Buffer } | { none: string }> {
  const ref = manifest.partitions.root.chunk_index;
  if (!ref) return { none: "the manifest names no chunk index" };
  const bytes = await makeChunkIndex(image, range, manifest);
  const sha256 = createHash("sha256").update(bytes).digest("hex");
  if (bytes.length !== ref.size || sha256 !== ref.sha256)
    return { none: "the manifest's chunk index was made with other chunker settings" };
  return { bytes };
}
