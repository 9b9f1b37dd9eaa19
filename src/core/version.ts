/** EOS's version, as in package.json (a unit test keeps the two the same): what `--version` prints. */
export const EOS_VERSION = "0.1.0";
