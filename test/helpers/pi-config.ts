/**
 * config.txt as the Pi firmware applies it to one board: lines under [all]
 * and under the board's own filter ([pi4], [pi5]) count, later ones override
 * earlier ones, other filters' lines are skipped until the next [all].
 */
export function piConfigFor(configTxt: string, board: "pi4" | "pi5"): Map<string, string> {
  const settings = new Map<string, string>();
  let applies = true;
  for (const raw of configTxt.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const filter = /^\[(.+)\]$/.exec(line)?.[1];
    if (filter !== undefined) applies = filter === "all" || filter === board;
    else if (applies) {
      const eq = line.indexOf("=");
      settings.set(eq < 0 ? line : line.slice(0, eq), eq < 0 ? "" : line.slice(eq + 1));
    }
  }
  return settings;
}
