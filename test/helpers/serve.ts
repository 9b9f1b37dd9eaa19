/**
 * Starting the real update server (the bundle, as a user runs it) on a free
 * loopback port, with device tokens or --no-auth, over HTTP or HTTPS with a
 * throwaway certificate. Tests, benches and the server demo share it.
 */
import type { ChildProcess } from "node:child_process";
import { dirname, join } from "node:path";
import { mustRun, startEos, waitForLog } from "./run.ts";

export interface TestCert {
  cert: string;
  key: string;
}

/** A self-signed certificate for 127.0.0.1 (EC P-256, one day). */
export async function makeTestCert(dir: string): Promise<TestCert> {
  const cert = join(dir, "cert.pem");
  const key = join(dir, "key.pem");
  await mustRun("openssl", [
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-days",
    "1",
    "-subj",
    "/CN=localhost",
    "-addext",
    "subjectAltName=IP:127.0.0.1",
    "-keyout",
    key,
    "-out",
    cert,
  ]);
  return { cert, key };
}

export interface RunningServer {
  child: ChildProcess;
  url: string;
  port: number;
  stop(): void;
}

/** `os-update-server serve` on 127.0.0.1 and a free port; resolves once it logs "listening". */
export async function startServer(options: {
  config: string;
  /** Device tokens directory; without it the server runs with --no-auth. */
  tokensDir?: string;
  tls?: TestCert;
  extraArgs?: string[];
  env?: NodeJS.ProcessEnv;
}): Promise<RunningServer> {
  const child = startEos(
    "os-update-server",
    [
      "serve",
      "--config",
      options.config,
      "--listen",
      "127.0.0.1",
      "--port",
      "0",
      ...(options.tokensDir ? ["--tokens-dir", options.tokensDir] : ["--no-auth"]),
      ...(options.tls ? ["--cert", options.tls.cert, "--tls-key", options.tls.key] : []),
      // The control plane's SQLite next to the test's config, never in the machine's /var/lib.
      ...(options.extraArgs?.includes("--state-dir")
        ? []
        : ["--state-dir", join(dirname(options.config), "state")]),
      ...(options.extraArgs ?? []),
    ],
    options.env,
  );
  const url = String((await waitForLog(child, "listening")).url);
  return { child, url, port: Number(new URL(url).port), stop: () => void child.kill("SIGTERM") };
}
