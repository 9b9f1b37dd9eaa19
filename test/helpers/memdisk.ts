import type { BlockSource } from "../../src/core/gpt.ts";
import type { BlockWrite } from "../../src/core/gpt-write.ts";

export function memDisk(size: number): BlockSource & { buf: Buffer; apply(writes: BlockWrite[]): void } {
  const buf = Buffer.alloc(size);
  return {
    buf,
    size,
    read: async (offset, length) => Buffer.from(buf.subarray(offset, offset + length)),
    apply(writes) {
      for (const w of writes) w.data.copy(buf, w.offset);
    },
  };
}
