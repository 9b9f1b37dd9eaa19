/**
 * The dashboard's "new rollout" form: the page, and the submitted text turned
 * into the admin API's create body. The text is read as `rollout create`
 * reads its options (the same wave, share and duration parsers, the same
 * defaults), so an operator writes the same thing in both; everything else
 * (versions published, names free, limits) is checked where the API checks
 * it, and its messages are shown here against the field they name.
 */
import { EosError } from "../../errors.ts";
import { TAG } from "../admin.ts";
import { parseShare, parseWaves, ROLLOUT_DEFAULTS, soakSeconds } from "../rollout.ts";
import { h, type Html } from "./html.ts";
import { csrfField, page, type Viewer } from "./layout.ts";

export const FORM_FIELDS = [
  "release",
  "previous",
  "tags",
  "waves",
  "soak",
  "error_threshold",
  "success_threshold",
  "id",
] as const;
export type FormField = (typeof FORM_FIELDS)[number];
export type FormValues = Record<FormField, string>;

export const LABELS: Record<FormField, string> = {
  release: "Version to roll out",
  previous: "Version devices keep",
  tags: "Device tags",
  waves: "Waves",
  soak: "Soak time per wave",
  error_threshold: "Error threshold",
  success_threshold: "Success threshold",
  id: "Name",
};

const HELP: Record<FormField, string> = {
  release: "A version published on this server.",
  previous:
    "What devices run until their wave opens, and get back if the rollout is aborted. " +
    "Default: the newest older published version.",
  tags: "Optional: only devices with all of these tags (separated by commas or spaces).",
  waves:
    "Shares of the devices and canary tags, in order, the last one 100%: e.g. 1%, 10%, 100% or tag:canary, 100%.",
  soak: "How long each wave runs before the next opens: e.g. 30m, 1h, 2d, or 0.",
  error_threshold: "Pause when failed, fell back and rolled back devices exceed this share of a wave.",
  success_threshold: "Open the next wave once this share of the wave runs the new version.",
  id: "Optional: letters, digits and . _ - (default: generated).",
};

/** The admin API's names for the fields (its messages start with them). */
const API_FIELDS: Record<string, FormField> = {
  image: "release",
  version: "release",
  previous: "previous",
  tags: "tags",
  waves: "waves",
  soak_seconds: "soak",
  error_threshold: "error_threshold",
  success_threshold: "success_threshold",
  id: "id",
};

export interface FieldError {
  field: FormField | undefined;
  message: string;
}

/** The body of POST /v1/admin/rollouts, as the form fills it. */
export interface CreateRolloutBody {
  image: string;
  version: string;
  previous?: string;
  id?: string;
  tags: string[];
  waves: string;
  soak_seconds: number;
  error_threshold: number;
  success_threshold: number;
}

export interface PublishedImage {
  name: string;
  /** Newest first. */
  versions: ReadonlyArray<{ version: string; current: boolean }>;
}

/** The form as it first appears: the newest current version chosen, the CLI's defaults. */
export function initialValues(images: readonly PublishedImage[]): FormValues {
  const first = images.find((i) => i.versions.length > 0);
  const chosen = first ? (first.versions.find((v) => v.current) ?? first.versions[0]) : undefined;
  return {
    release: first && chosen ? releaseValue(first.name, chosen.version) : "",
    previous: "",
    tags: "",
    waves: "",
    soak: ROLLOUT_DEFAULTS.soak,
    error_threshold: ROLLOUT_DEFAULTS.errorThreshold,
    success_threshold: ROLLOUT_DEFAULTS.successThreshold,
    id: "",
  };
}

// An image name has no "/" (it names files), so the first one splits the option's value.
const releaseValue = (image: string, version: string) => `${image}/${version}`;

/** The submitted form: its values (to show again) and the body, or every field's error. */
export function parseRolloutForm(form: { get(name: string): string | null }): {
  values: FormValues;
  body?: CreateRolloutBody;
  errors: FieldError[];
} {
  const values = Object.fromEntries(
    FORM_FIELDS.map((f) => [f, (form.get(f) ?? "").trim().slice(0, 512)]),
  ) as FormValues;
  const errors: FieldError[] = [];
  const read = <T>(field: FormField, parse: (text: string) => T): T | undefined => {
    try {
      return parse(values[field]);
    } catch (error) {
      if (!(error instanceof EosError)) throw error;
      errors.push({ field, message: error.message });
      return undefined;
    }
  };
  const slash = values.release.indexOf("/");
  if (slash <= 0 || slash === values.release.length - 1)
    errors.push({ field: "release", message: `${LABELS.release}: choose a published version` });
  const tags = values.tags.split(/[\s,]+/).filter((t) => t !== "");
  const badTag = tags.find((t) => !TAG.test(t));
  if (badTag !== undefined)
    errors.push({
      field: "tags",
      message: `${LABELS.tags}: not a tag: ${JSON.stringify(badTag)} (letters, digits and . _ : = -)`,
    });
  read("waves", (t) => parseWaves(t, LABELS.waves));
  const soak = read("soak", (t) => soakSeconds(t, LABELS.soak));
  const errorShare = read("error_threshold", (t) => parseShare(t, LABELS.error_threshold));
  const successShare = read("success_threshold", (t) => parseShare(t, LABELS.success_threshold));
  if (errors.length > 0 || soak === undefined || errorShare === undefined || successShare === undefined)
    return { values, errors };
  return {
    values,
    errors,
    body: {
      image: values.release.slice(0, slash),
      version: values.release.slice(slash + 1),
      ...(values.previous ? { previous: values.previous } : {}),
      ...(values.id ? { id: values.id } : {}),
      tags,
      waves: values.waves,
      soak_seconds: soak,
      error_threshold: errorShare,
      success_threshold: successShare,
    },
  };
}

/** A refusal of the create path ("waves[1]: …", "version: …") shown against the form's field, in its words. */
export function fieldError(message: string): FieldError {
  const m = /^([a-z_]+)((?:\[\d+\])?:.*)$/s.exec(message);
  const field = m ? API_FIELDS[m[1] as string] : undefined;
  return field && m ? { field, message: `${LABELS[field]}${m[2]}` } : { field: undefined, message };
}

function input(field: FormField, values: FormValues, errors: readonly FieldError[], extra: Html): Html {
  const mine = errors.filter((e) => e.field === field);
  const describedBy = `help-${field}${mine.length ? ` error-${field}` : ""}`;
  return h`<label for="f-${field}">${LABELS[field]}</label>
    <input id="f-${field}" name="${field}" value="${values[field]}" aria-describedby="${describedBy}"
      ${mine.length ? h`aria-invalid="true"` : ""} ${extra}>
    <p id="help-${field}" class="help">${HELP[field]}</p>
    ${mine.length ? h`<p id="error-${field}" class="error">${mine.map((e) => e.message).join(" ")}</p>` : ""}`;
}

function select(
  field: "release" | "previous",
  values: FormValues,
  errors: readonly FieldError[],
  images: readonly PublishedImage[],
): Html {
  const mine = errors.filter((e) => e.field === field);
  const groups = images.map(
    (img) =>
      h`<optgroup label="${img.name}">${img.versions.map((v) => {
        const value = field === "release" ? releaseValue(img.name, v.version) : v.version;
        return h`<option value="${value}"${values[field] === value ? h` selected` : ""}>${img.name} ${v.version}${v.current ? " (current)" : ""}</option>`;
      })}</optgroup>`,
  );
  const none =
    field === "previous"
      ? h`<option value=""${values.previous === "" ? h` selected` : ""}>The newest older published version</option>`
      : "";
  return h`<label for="f-${field}">${LABELS[field]}</label>
    <select id="f-${field}" name="${field}" aria-describedby="help-${field}${mine.length ? ` error-${field}` : ""}"
      ${mine.length ? h`aria-invalid="true"` : ""} ${field === "release" ? h`required` : ""}>${none}${groups}</select>
    <p id="help-${field}" class="help">${HELP[field]}</p>
    ${mine.length ? h`<p id="error-${field}" class="error">${mine.map((e) => e.message).join(" ")}</p>` : ""}`;
}

export function newRolloutPage(o: {
  viewer: Viewer;
  images: readonly PublishedImage[];
  values: FormValues;
  errors?: readonly FieldError[];
}): string {
  const errors = o.errors ?? [];
  const summary = errors.length
    ? h`<div class="error" role="alert" id="form-errors"><p>The rollout was not created:</p><ul>${errors.map(
        (e) => h`<li>${e.field ? h`<a href="#f-${e.field}">${e.message}</a>` : e.message}</li>`,
      )}</ul></div>`
    : "";
  const v = o.values;
  const body =
    o.images.length === 0
      ? h`<p>No image is published yet: a rollout needs a published version (<code>os-update-server fetch</code>).</p>`
      : h`${summary}
    <form method="post" action="/ui/rollouts/new" class="rollout-form">
      ${csrfField(o.viewer.csrf)}
      ${select("release", v, errors, o.images)} ${select("previous", v, errors, o.images)}
      ${input("tags", v, errors, h`autocomplete="off"`)}
      ${input("waves", v, errors, h`required placeholder="1%, 10%, 100%" autocomplete="off"`)}
      ${input("soak", v, errors, h`required autocomplete="off"`)}
      ${input("error_threshold", v, errors, h`required autocomplete="off"`)}
      ${input("success_threshold", v, errors, h`required autocomplete="off"`)}
      ${input("id", v, errors, h`maxlength="64" autocomplete="off"`)}
      <p>
        <button type="submit">Create rollout</button>
        <a href="/ui/rollouts">Cancel</a>
      </p>
    </form>`;
  return page({ title: "New rollout", viewer: o.viewer, section: "rollouts", body });
}
