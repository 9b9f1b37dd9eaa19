/**
 * A tagged template for server-rendered HTML: every interpolated value is
 * escaped unless it is itself a fragment made by `h` (or `raw`, for the
 * few constant strings that are markup). Device tags, versions, reasons and
 * event messages come from devices and operators: none of them may reach a
 * page as markup.
 */

const SAFE: unique symbol = Symbol("html");

export interface Html {
  readonly [SAFE]: true;
  readonly text: string;
}

const ESCAPES: Record<string, string> = {
  "&": "&amp;",
  "<": "&lt;",
  ">": "&gt;",
  '"': "&quot;",
  "'": "&#39;",
  "`": "&#96;",
};

/** Text and attribute values alike: quotes are escaped, so a value cannot leave its attribute. */
export function escapeHtml(value: string): string {
  return value.replace(/[&<>"'`]/g, (c) => ESCAPES[c] as string);
}

/** Trusted markup: only for constants written here, never for data. */
export function raw(text: string): Html {
  return { [SAFE]: true, text };
}

function isHtml(value: unknown): value is Html {
  return typeof value === "object" && value !== null && SAFE in value;
}

export type Interpolated = Html | string | number | boolean | null | undefined | readonly Interpolated[];

function render(value: Interpolated): string {
  if (value === null || value === undefined || value === false) return "";
  if (Array.isArray(value)) return (value as readonly Interpolated[]).map(render).join("");
  if (isHtml(value)) return value.text;
  return escapeHtml(String(value));
}

export function h(strings: TemplateStringsArray, ...values: Interpolated[]): Html {
  let out = strings[0] ?? "";
  for (let i = 0; i < values.length; i++) out += render(values[i] as Interpolated) + (strings[i + 1] ?? "");
  return raw(out);
}

/** A query string from parameters, each name and value percent-encoded (escape it with h`` as usual). */
export function query(params: Record<string, string | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== "") q.set(k, v);
  const text = q.toString();
  return text ? `?${text}` : "";
}
