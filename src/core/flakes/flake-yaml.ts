/**
 * Flake files as text: YAML in, YAML out. Kept apart from flake-config.ts so
 * the pilots load the YAML library only when their cache of the parsed files
 * is stale (its first parse costs several ms of a launch).
 */
import { stringify } from "yaml";
import { EosError } from "../errors.ts";
import { parseYamlData } from "../yaml-input.ts";
import {
  flakesConfigFromData,
  isPlainObject,
  mergeFlakeDocuments,
  type FlakeSource,
  type FlakesConfig,
  type Spec,
} from "./flake-config.ts";
import { containerFlakeDocument, containerFlakeFromDocuments, type ContainerFlake } from "./container.ts";

/** Parses a YAML document whose top level must be a mapping (an empty file is `{}`). */
export function parseYamlMapping(text: string, file: string): Record<string, unknown> {
  const data = parseYamlData(text, file);
  if (data === null || data === undefined) return {};
  if (!isPlainObject(data)) throw new EosError("CONFIG", `${file}: the top level must be a mapping of keys`);
  return data;
}

export function parseFlakesConfig(text: string, file: string): FlakesConfig {
  return flakesConfigFromData(parseYamlMapping(text, file), file);
}

/** Parses, checks (per file) and deep-merges NAME.yaml and its NAME.d/ fragments. */
export function loadFlakeDocuments(sources: FlakeSource[], spec: Spec): Record<string, unknown> {
  return mergeFlakeDocuments(
    sources.map((s) => ({ file: s.file, data: parseYamlMapping(s.text, s.file) })),
    spec,
  );
}

export function parseContainerFlake(sources: FlakeSource[]): ContainerFlake {
  return containerFlakeFromDocuments(
    sources.map((s) => ({ file: s.file, data: parseYamlMapping(s.text, s.file) })),
  );
}

export function renderContainerFlake(flake: ContainerFlake): string {
  return stringify(containerFlakeDocument(flake), { nullStr: "~", lineWidth: 0 });
}

export function renderYaml(value: unknown): string {
  return stringify(value, { lineWidth: 0 });
}
