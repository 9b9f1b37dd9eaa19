/**
 * flake-ctl's commands as data: each command's description and options, with
 * flake-pilot's flag names (the CLI builds commander commands from them).
 */
/**
 * flags, description, and how often it may be given. repeatable: several
 * values, in order, as flake-pilot (clap `multiple`) takes them: `--layer A B`
 * and `--layer A --layer B` alike.
 */
export type OptionSpec = [string, string, ("required" | "repeatable")?];
/** A command's description, then its options. */
export type CommandSpec = [string, ...OptionSpec[]];

export const APP: OptionSpec = ["--app <path>", "absolute path of the command on the host"];
export const FORCE: OptionSpec = [
  "--force",
  "replace an existing file at --app or another flake of the same name",
];
export const JSON_OUT: OptionSpec = ["--json", "machine-readable output (the same as --format json)"];
export const FORMAT: OptionSpec = [
  "--format <format>",
  "table (default), json or csv; one flake: yaml (default) or json",
];
export const SHOW_APP: OptionSpec = ["--app <path>", "host path of the flake"];
export const REMOVE_FORCE: OptionSpec = ["--force", "remove --app even if it is not a link to the pilot"];
export const USER: OptionSpec = ["--user", "use the user's flakes (~/.config/flakes.yml)"];

export const PODMAN_REGISTER: CommandSpec = [
  "register a container app: NAME.yaml in flakes_dir and a link to podman-pilot",
  ["--container <image>", "app image in the local podman storage", "required"],
  APP,
  ["--target <path>", "path of the app in the container (default: --app; / or '' for the entrypoint)"],
  ["--base <image>", "base image: --container is a delta image on top of it"],
  ["--layer <image>", "layer between base and app (repeatable, in order)", "repeatable"],
  ["--opt <option>", "podman run option, e.g. '\\--net host' (repeatable)", "repeatable"],
  ["--resume", "keep one instance running; later calls exec into it"],
  ["--attach", "keep the instance; later calls attach to it"],
  ["--include-tar <file>", "tar archive unpacked on top of the container (repeatable)", "repeatable"],
  ["--include-path <path>", "host file or directory copied into the container (repeatable)", "repeatable"],
  ["--check-host-dependencies", "copy host files listed in the image's /removed in (default with --base)"],
  ["--no-check-host-dependencies", "with --base: do not copy host files listed in /removed"],
  FORCE,
  ["--info", "print the registration info (/NAME.yaml) the image carries, then stop (registers nothing)"],
];
export const VM_REGISTER: CommandSpec = [
  "register a VM app: NAME.yaml in flakes_dir and a link to firecracker-pilot",
  ["--vm <name>", "pulled VM image", "required"],
  APP,
  ["--target <path>", "path of the app in the VM (default: --app)"],
  ["--run-as <user>", "user the VM's engine runs as (runtime.runas; default: you)"],
  ["--overlay-size <size>", "writable overlay drive, e.g. 20GiB (default: the write layer is in memory)"],
  ["--resume", "keep the VM running; later calls run in it without booting"],
  ["--force-vsock", "writes sci_force_vsock=1 as flake-pilot (the pilot always uses its own channel)"],
  ["--no-net", "no network device in the VM (and no ip= boot argument)"],
  [
    "--include-tar <file>",
    "tar archive unpacked into the overlay (repeatable; needs --overlay-size)",
    "repeatable",
  ],
  [
    "--include-path <path>",
    "file or directory copied into the overlay (repeatable; needs --overlay-size)",
    "repeatable",
  ],
  ["--engine <engine>", "firecracker, qemu or auto (default: Firecracker where installed, else QEMU)"],
  ["--mem <MiB>", "memory of the VM (default 4096)"],
  ["--vcpus <n>", "vCPUs of the VM (default 2)"],
  FORCE,
];
export const VM_PULL: CommandSpec = [
  "pull a VM image (KIS tarball, or rootfs + kernel [+ initrd]) into /var/lib/firecracker/images/NAME",
  ["--name <name>", "local name of the image", "required"],
  ["--kis-image <url>", "KIS tarball: rootfs image, *.kernel, optional *.initrd and *.sha256"],
  ["--rootfs <url>", "root file system image"],
  ["--kernel <url>", "kernel"],
  ["--initrd <url>", "initrd"],
  ["--force", "replace an image of the same name"],
];

/** A subcommand with its options from a table. */
