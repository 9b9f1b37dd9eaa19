/**
 * The wire protocol between firecracker-pilot and the guest init `sci`, on
 * a virtio-serial port (QEMU) or a vsock connection (Firecracker). Frames:
 * 1 byte type, 4 bytes big-endian payload length, payload (at most 64 KiB).
 *
 *   host -> guest   'C' argv as NUL-terminated strings (first frame)
 *                   'I' stdin bytes, 'i' stdin closed, 'K' a signal (1 byte)
 *   guest -> host   'A' the command arrived (empty; first frame),
 *                   'O' stdout bytes, 'E' stderr bytes,
 *                   'X' exit status (int32 BE: the code, or 128+n for signal n)
 *
 * guest/sci/sci.c is the other side; keep the two in step.
 */
import { EosError } from "../errors.ts";

export const MAX_FRAME = 1 << 16;
export const FRAME_HEADER = 5;

export type HostFrameType = "C" | "I" | "i" | "K";
export type GuestFrameType = "A" | "O" | "E" | "X";

/** How long the host waits for the guest's 'A' before it calls the channel lost. */
export const COMMAND_ACK_TIMEOUT_MS = 30_000;

export function encodeFrame(
  type: HostFrameType | GuestFrameType,
  payload: Uint8Array = new Uint8Array(0),
): Buffer {
  if (payload.length > MAX_FRAME)
    throw new EosError("INTERNAL", `frame of ${payload.length} bytes is too large`);
  const out = Buffer.alloc(FRAME_HEADER + payload.length);
  out.write(type, 0, "latin1");
  out.writeUInt32BE(payload.length, 1);
  out.set(payload, FRAME_HEADER);
  return out;
}

/** The command frame: argv[0] is the program in the guest. */
export function commandFrame(argv: string[]): Buffer {
  for (const arg of argv) {
    if (arg.includes("\0"))
      throw new EosError("USAGE", `argument ${JSON.stringify(arg)} contains a NUL byte`);
  }
  const payload = Buffer.from(argv.map((a) => `${a}\0`).join(""), "utf8");
  if (payload.length > MAX_FRAME) {
    throw new EosError(
      "USAGE",
      `the arguments are ${payload.length} bytes long; a VM flake takes at most ${MAX_FRAME}`,
    );
  }
  return encodeFrame("C", payload);
}

/** Stdin data split into frames. */
export function stdinFrames(data: Buffer): Buffer[] {
  const frames: Buffer[] = [];
  for (let off = 0; off < data.length; off += MAX_FRAME)
    frames.push(encodeFrame("I", data.subarray(off, off + MAX_FRAME)));
  return frames;
}

export function signalFrame(signo: number): Buffer {
  return encodeFrame("K", Uint8Array.of(signo & 0xff));
}

export interface Frame {
  type: string;
  payload: Buffer;
}

/** Incremental decoder: push bytes, get whole frames. */
export class FrameDecoder {
  private pending: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Frame[] {
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    const frames: Frame[] = [];
    while (this.pending.length >= FRAME_HEADER) {
      const length = this.pending.readUInt32BE(1);
      if (length > MAX_FRAME)
        throw new EosError("VM", `the guest sent a frame of ${length} bytes: protocol error`);
      if (this.pending.length < FRAME_HEADER + length) break;
      frames.push({
        type: String.fromCharCode(this.pending[0] ?? 0),
        payload: this.pending.subarray(FRAME_HEADER, FRAME_HEADER + length),
      });
      this.pending = this.pending.subarray(FRAME_HEADER + length);
    }
    return frames;
  }

  /** Bytes of an unfinished frame. */
  get buffered(): number {
    return this.pending.length;
  }
}

/** Exit status in an 'X' frame. */
export function exitStatus(frame: Frame): number {
  if (frame.payload.length < 4) throw new EosError("VM", "the guest sent a short exit frame");
  const code = frame.payload.readInt32BE(0);
  return code < 0 || code > 255 ? 255 : code;
}
