/**
 * Read buffers for response streams, shared by all clients: a response takes
 * one for each read and gives it back when its write has completed. Freed
 * buffers are kept for reuse up to a byte budget; beyond it they go to the
 * garbage collector. So memory follows the clients that are actually being
 * served, and does not stay pinned once they leave.
 */
export const SIZE_CLASSES = [16 * 1024, 64 * 1024, 256 * 1024] as const;

export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private pooledBytes = 0;

  constructor(private readonly budgetBytes: number) {
    for (const size of SIZE_CLASSES) this.free.set(size, []);
  }

  take(size: number): Buffer {
    const list = this.free.get(size);
    const buffer = list?.pop();
    if (buffer) {
      this.pooledBytes -= size;
      return buffer;
    }
    return Buffer.allocUnsafeSlow(size);
  }

  give(buffer: Buffer): void {
    const list = this.free.get(buffer.length);
    if (!list || this.pooledBytes + buffer.length > this.budgetBytes) return;
    list.push(buffer);
    this.pooledBytes += buffer.length;
  }

  get bytes(): number {
    return this.pooledBytes;
  }
}
