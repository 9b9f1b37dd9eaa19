/** What a published image may be called: it is used in file names and URLs. */
export const IMAGE_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$/;

/** An image name is used in file names and URLs: no separators, no `..`. */
export function isSafeImageName(name: string): boolean {
  return IMAGE_NAME_PATTERN.test(name) && !name.includes("..");
}
