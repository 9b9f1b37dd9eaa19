/**
 * How flake-ctl prints lists (`list`, `podman show`, `firecracker show`):
 * `--format table` (aligned columns with a header), `json` (an array of
 * objects) or `csv` (RFC 4180: a header line, fields quoted when needed).
 */
import { EosError } from "../errors.ts";

export const LIST_FORMATS = ["table", "json", "csv"] as const;
export type ListFormat = (typeof LIST_FORMATS)[number];

export function parseListFormat(
  value: string | undefined,
  json: boolean | undefined,
): ListFormat | undefined {
  if (value === undefined) return json ? "json" : undefined;
  if (!(LIST_FORMATS as readonly string[]).includes(value)) {
    throw new EosError("USAGE", `--format ${JSON.stringify(value)}: use table, json or csv`);
  }
  if (json && value !== "json")
    throw new EosError("USAGE", `--json and --format ${value} exclude each other`);
  return value as ListFormat;
}

export type Row = Record<string, string | number | boolean | null | undefined>;

const cell = (v: Row[string]) => (v === null || v === undefined ? "" : String(v));

function csvField(text: string): string {
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

/** Rows as text in `format`; `columns` are the keys shown, in order (headers upper-cased in a table). */
export function formatRows(rows: Row[], columns: string[], format: ListFormat): string {
  if (format === "json") {
    return `${JSON.stringify(
      rows.map((r) => Object.fromEntries(columns.map((c) => [c, r[c] ?? null]))),
      null,
      2,
    )}\n`;
  }
  if (format === "csv") {
    const lines = [columns, ...rows.map((r) => columns.map((c) => cell(r[c])))];
    return lines.map((l) => l.map(csvField).join(",")).join("\r\n") + "\r\n";
  }
  const header = columns.map((c) => c.toUpperCase());
  const body = rows.map((r) => columns.map((c) => cell(r[c]) || "-"));
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => (b[i] ?? "").length)));
  return [header, ...body]
    .map((line) =>
      line
        .map((text, i) => (i === line.length - 1 ? text : text.padEnd(widths[i] ?? 0)))
        .join("  ")
        .trimEnd(),
    )
    .join("\n")
    .concat("\n");
}
