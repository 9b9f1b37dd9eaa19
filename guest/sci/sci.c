/*
 * sci: the guest init of EOS VM flakes.
 *
 * Runs as PID 1 of a microVM, either as /init of an initrd or as the init of
 * the root file system (init=/usr/sbin/sci). It
 *   - mounts /proc, /sys, /dev,
 *   - loads the kernel modules listed in /lib/modules/sci.order (if any),
 *   - mounts the root image read-only (when it runs from an initrd), and an
 *     overlay root whose writable layer is on the overlay drive
 *     (overlay_root=/dev/vdb, ext2/3/4) or in memory,
 *   - switches into that root and serves commands from the host over a
 *     channel: a virtio-serial port (QEMU) or a vsock port (Firecracker),
 *   - runs each command with separate stdin/stdout/stderr and returns its
 *     exit status (128+n for a signal), passing the host's signals on,
 *   - powers the VM off after the command, or, in resume mode, waits for
 *     the next one.
 *
 * Kernel command line (all optional):
 *   root=/dev/vda rootfstype=ext4   root image (used when sci is the initrd's init)
 *   overlay_root=/dev/vdb           writable layer; without it: tmpfs
 *   sci.channel=virtio:NAME         virtio-serial port named NAME
 *   sci.channel=vsock:PORT          vsock port PORT (default vsock:52)
 *   sci.resume=1                    serve commands until powered off
 *   sci.net=ADDR/PREFIX[,GATEWAY][,DEV]  static IPv4 address (DEV default eth0)
 *   sci.debug=1                     log each step to the console
 *   MODULE.PARAM=VALUE              passed to MODULE when sci loads it
 *
 * Frames on the channel: 1 byte type, 4 bytes big-endian length, payload.
 *   host -> guest: 'C' argv (NUL-terminated strings), 'I' stdin bytes,
 *                  'i' stdin closed, 'K' signal (1 byte)
 *   guest -> host: 'O' stdout bytes, 'E' stderr bytes, 'X' exit (4 bytes, BE)
 *
 * Built static (gcc -static -Os); needs nothing else in the guest.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/reboot.h>
#include <linux/vm_sockets.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_FRAME (1u << 16)
#define RAMFS_MAGIC_ 0x858458f6
#define TMPFS_MAGIC_ 0x01021994

static char cmdline[4096];
static int debug_on;

static void logmsg(const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  int fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) fd = 2;
  dprintf(fd, "sci: %s\n", buf);
  if (fd != 2) close(fd);
}

#define debug(...)                                                                                 \
  do {                                                                                             \
    if (debug_on) logmsg(__VA_ARGS__);                                                             \
  } while (0)

static void power_off(void) {
  sync();
  /* QEMU runs with -no-reboot and Firecracker stops on a guest reboot: both end the VM. */
  reboot(LINUX_REBOOT_CMD_RESTART);
  reboot(LINUX_REBOOT_CMD_POWER_OFF);
  for (;;) pause();
}

static void fatal(const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  logmsg("fatal: %s", buf);
  power_off();
}

/* Value of KEY= on the kernel command line (first match), or NULL. */
static const char *param(const char *key) {
  static char value[1024];
  size_t klen = strlen(key);
  const char *p = cmdline;
  while (*p) {
    while (*p == ' ') p++;
    const char *end = p;
    while (*end && *end != ' ') end++;
    if ((size_t)(end - p) > klen && strncmp(p, key, klen) == 0 && p[klen] == '=') {
      size_t n = (size_t)(end - p) - klen - 1;
      if (n >= sizeof value) n = sizeof value - 1;
      memcpy(value, p + klen + 1, n);
      value[n] = 0;
      return value;
    }
    p = end;
  }
  return NULL;
}

static void read_cmdline(void) {
  int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ssize_t n = read(fd, cmdline, sizeof cmdline - 1);
  close(fd);
  if (n < 0) n = 0;
  cmdline[n] = 0;
  for (ssize_t i = 0; i < n; i++)
    if (cmdline[i] == '\n' || cmdline[i] == '\t') cmdline[i] = ' ';
}

static void mount_if(const char *src, const char *dir, const char *type, unsigned long flags,
                     const char *data) {
  mkdir(dir, 0755);
  if (mount(src, dir, type, flags, data) != 0 && errno != EBUSY)
    debug("mount %s on %s: %s", type, dir, strerror(errno));
}

/* ---------------------------------------------------------------- modules */

static void load_modules(const char *list) {
  FILE *f = fopen(list, "re");
  if (!f) return;
  char line[512];
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\r\n")] = 0;
    if (!line[0] || line[0] == '#') continue;
    /* module name: basename without .ko, '-' as '_' */
    const char *base = strrchr(line, '/');
    base = base ? base + 1 : line;
    char name[512];
    snprintf(name, sizeof name, "%s", base);
    char *dot = strstr(name, ".ko");
    if (dot) *dot = 0;
    for (char *c = name; *c; c++)
      if (*c == '-') *c = '_';
    /* parameters NAME.KEY=VALUE from the command line */
    char params[1024] = "";
    size_t nlen = strlen(name);
    for (const char *p = cmdline; *p;) {
      while (*p == ' ') p++;
      const char *end = p;
      while (*end && *end != ' ') end++;
      if ((size_t)(end - p) > nlen + 1 && strncmp(p, name, nlen) == 0 && p[nlen] == '.') {
        size_t used = strlen(params);
        snprintf(params + used, sizeof params - used, "%s%.*s", used ? " " : "",
                 (int)(end - p - (long)nlen - 1), p + nlen + 1);
      }
      p = end;
    }
    int fd = open(line, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      logmsg("module %s: %s", line, strerror(errno));
      continue;
    }
    if (syscall(SYS_finit_module, fd, params, 0) != 0 && errno != EEXIST)
      logmsg("module %s: %s", line, strerror(errno));
    else
      debug("loaded %s %s", name, params);
    close(fd);
  }
  fclose(f);
}

/* ---------------------------------------------------------------- root */

static int wait_for(const char *path, int ms) {
  struct timespec ts = {0, 10 * 1000 * 1000};
  for (int waited = 0; waited <= ms; waited += 10) {
    if (access(path, F_OK) == 0) return 0;
    nanosleep(&ts, NULL);
  }
  return -1;
}

static int mount_any(const char *dev, const char *dir, const char *types, unsigned long flags,
                     const char *data) {
  char list[256];
  snprintf(list, sizeof list, "%s", types);
  for (char *save = NULL, *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    if (mount(dev, dir, t, flags, data) == 0) {
      debug("mounted %s (%s) on %s", dev, t, dir);
      return 0;
    }
  }
  return -1;
}

/* Mounts the overlay root; returns its path. */
static const char *setup_root(void) {
  struct statfs sfs;
  int initramfs = statfs("/", &sfs) == 0 &&
                  ((unsigned long)sfs.f_type == RAMFS_MAGIC_ || (unsigned long)sfs.f_type == TMPFS_MAGIC_);
  const char *work;
  const char *lower;
  if (initramfs) {
    work = "/sci";
    mkdir(work, 0700);
    const char *root = param("root");
    if (!root) root = "/dev/vda";
    if (wait_for(root, 10000) != 0) fatal("root device %s did not appear", root);
    mkdir("/sci/lower", 0755);
    const char *type = param("rootfstype");
    if (mount_any(root, "/sci/lower", type ? type : "ext4,squashfs,erofs,ext2,xfs,btrfs", MS_RDONLY,
                  NULL) != 0)
      fatal("cannot mount root %s: %s", root, strerror(errno));
    lower = "/sci/lower";
  } else {
    /* The kernel (or the initrd) mounted the root image: keep a work area in memory. */
    static const char *candidates[] = {"/run", "/tmp", "/mnt", "/media", NULL};
    work = NULL;
    for (int i = 0; candidates[i]; i++) {
      if (mount("sci", candidates[i], "tmpfs", MS_NOSUID | MS_NODEV, "mode=0700") == 0) {
        work = candidates[i];
        break;
      }
    }
    if (!work) fatal("no directory for a work area (/run, /tmp, /mnt or /media)");
    lower = "/";
  }
  char upper_base[256], upper[300], wdir[300], merged[300], opts[1024];
  snprintf(upper_base, sizeof upper_base, "%s/overlay", work);
  mkdir(upper_base, 0755);
  const char *ovl = param("overlay_root");
  if (ovl && *ovl) {
    if (wait_for(ovl, 10000) != 0) fatal("overlay device %s did not appear", ovl);
    /* noinit_itable: no background zeroing of the (lazily made) inode tables, which would keep a TCG guest busy */
    if (mount_any(ovl, upper_base, "ext4", MS_NOATIME, "noinit_itable") != 0 &&
        mount_any(ovl, upper_base, "ext4,ext2,ext3,xfs,btrfs", MS_NOATIME, NULL) != 0)
      fatal("cannot mount overlay %s: %s", ovl, strerror(errno));
  } else if (mount("sci-upper", upper_base, "tmpfs", 0, "mode=0755") != 0) {
    fatal("cannot mount a tmpfs upper layer: %s", strerror(errno));
  }
  snprintf(upper, sizeof upper, "%s/upper", upper_base);
  snprintf(wdir, sizeof wdir, "%s/work", upper_base);
  snprintf(merged, sizeof merged, "%s/root", work);
  mkdir(upper, 0755);
  mkdir(wdir, 0755);
  mkdir(merged, 0755);
  snprintf(opts, sizeof opts, "lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, wdir);
  if (mount("overlay", merged, "overlay", 0, opts) != 0)
    fatal("cannot mount the overlay root (%s): %s", opts, strerror(errno));
  static char result[300];
  snprintf(result, sizeof result, "%s", merged);
  return result;
}

static void enter_root(const char *root) {
  char path[400];
  static const char *moved[] = {"/dev", "/proc", "/sys", NULL};
  for (int i = 0; moved[i]; i++) {
    snprintf(path, sizeof path, "%s%s", root, moved[i]);
    mkdir(path, 0755);
    if (mount(moved[i], path, NULL, MS_MOVE, NULL) != 0) debug("move %s: %s", moved[i], strerror(errno));
  }
  if (chdir(root) != 0) fatal("chdir %s: %s", root, strerror(errno));
  struct statfs sfs;
  if (statfs("/", &sfs) == 0 &&
      ((unsigned long)sfs.f_type == RAMFS_MAGIC_ || (unsigned long)sfs.f_type == TMPFS_MAGIC_)) {
    if (mount(".", "/", NULL, MS_MOVE, NULL) != 0) debug("move root: %s", strerror(errno));
  }
  if (chroot(".") != 0) fatal("chroot: %s", strerror(errno));
  if (chdir("/") != 0) fatal("chdir /: %s", strerror(errno));
  mount_if("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "mode=0620,ptmxmode=0666");
  mount_if("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
  mount_if("run", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
}

/* ---------------------------------------------------------------- network */

static void if_up(int s, const char *dev) {
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", dev);
  if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0) debug("%s up: %s", dev, strerror(errno));
  }
}

static void setup_net(void) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return;
  if_up(s, "lo");
  const char *spec = param("sci.net");
  if (spec) {
    char buf[256], dev[IFNAMSIZ] = "eth0";
    snprintf(buf, sizeof buf, "%s", spec);
    char *save = NULL;
    char *addr = strtok_r(buf, ",", &save);
    char *gw = strtok_r(NULL, ",", &save);
    char *d = strtok_r(NULL, ",", &save);
    if (d) snprintf(dev, sizeof dev, "%s", d);
    char *slash = addr ? strchr(addr, '/') : NULL;
    int prefix = slash ? atoi(slash + 1) : 24;
    if (slash) *slash = 0;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", dev);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
    sin->sin_family = AF_INET;
    if (addr && inet_pton(AF_INET, addr, &sin->sin_addr) == 1) {
      if (ioctl(s, SIOCSIFADDR, &ifr) != 0) logmsg("%s address: %s", dev, strerror(errno));
      sin->sin_addr.s_addr = htonl(prefix == 0 ? 0 : 0xffffffffu << (32 - prefix));
      if (ioctl(s, SIOCSIFNETMASK, &ifr) != 0) logmsg("%s netmask: %s", dev, strerror(errno));
      if_up(s, dev);
      if (gw && *gw) {
        struct rtentry rt;
        memset(&rt, 0, sizeof rt);
        struct sockaddr_in *g = (struct sockaddr_in *)&rt.rt_gateway;
        g->sin_family = AF_INET;
        inet_pton(AF_INET, gw, &g->sin_addr);
        ((struct sockaddr_in *)&rt.rt_dst)->sin_family = AF_INET;
        ((struct sockaddr_in *)&rt.rt_genmask)->sin_family = AF_INET;
        rt.rt_flags = RTF_UP | RTF_GATEWAY;
        rt.rt_dev = dev;
        if (ioctl(s, SIOCADDRT, &rt) != 0) logmsg("default route: %s", strerror(errno));
      }
    }
  }
  close(s);
}

/* ---------------------------------------------------------------- channel */

enum { CH_VIRTIO, CH_VSOCK };
static int channel_kind = CH_VSOCK;
static char channel_name[128] = "";
static unsigned vsock_port = 52;
static int listen_fd = -1;

static void parse_channel(void) {
  const char *c = param("sci.channel");
  if (c && strncmp(c, "virtio:", 7) == 0) {
    channel_kind = CH_VIRTIO;
    snprintf(channel_name, sizeof channel_name, "%s", c + 7);
  } else if (c && strncmp(c, "vsock:", 6) == 0) {
    channel_kind = CH_VSOCK;
    vsock_port = (unsigned)strtoul(c + 6, NULL, 10);
  }
}

/* /dev/vportXpY of the virtio-serial port called channel_name. */
static int find_port(char *out, size_t size) {
  DIR *d = opendir("/sys/class/virtio-ports");
  if (!d) return -1;
  struct dirent *e;
  int found = -1;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char path[300], name[160] = "";
    snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ssize_t n = read(fd, name, sizeof name - 1);
    close(fd);
    if (n <= 0) continue;
    name[n] = 0;
    name[strcspn(name, "\n")] = 0;
    if (strcmp(name, channel_name) == 0) {
      snprintf(out, size, "/dev/%s", e->d_name);
      found = 0;
      break;
    }
  }
  closedir(d);
  return found;
}

static char port_path[300];

static void channel_init(void) {
  if (channel_kind == CH_VIRTIO) {
    struct timespec ts = {0, 10 * 1000 * 1000};
    for (int i = 0; i < 1000 && find_port(port_path, sizeof port_path) != 0; i++) nanosleep(&ts, NULL);
    if (!port_path[0]) fatal("no virtio-serial port named %s", channel_name);
    if (wait_for(port_path, 5000) != 0) fatal("%s did not appear", port_path);
    debug("channel %s", port_path);
    return;
  }
  listen_fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd < 0) fatal("vsock: %s (is the vsock driver loaded?)", strerror(errno));
  struct sockaddr_vm addr;
  memset(&addr, 0, sizeof addr);
  addr.svm_family = AF_VSOCK;
  addr.svm_cid = VMADDR_CID_ANY;
  addr.svm_port = vsock_port;
  if (bind(listen_fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(listen_fd, 8) != 0)
    fatal("vsock port %u: %s", vsock_port, strerror(errno));
  debug("listening on vsock port %u", vsock_port);
}

/* Waits for the host and returns a connected fd. */
static int channel_accept(void) {
  if (channel_kind == CH_VSOCK) {
    for (;;) {
      int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
      if (fd >= 0) return fd;
      if (errno != EINTR) fatal("accept: %s", strerror(errno));
    }
  }
  for (;;) {
    int fd = open(port_path, O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) fatal("open %s: %s", port_path, strerror(errno));
    /*
     * While no host is connected the driver reports POLLIN|POLLHUP (a read
     * would return 0), so POLLHUP means "no host" even with POLLIN set.
     * Taking that POLLIN for a host made this loop close and reopen the
     * port, and a close discards what the host sent meanwhile: a command
     * that arrived in that window was lost and its caller waited forever.
     * The driver sends SIGIO when the host connects (fasync), so an idle VM
     * sleeps instead of polling; the timeout only guards against a missed
     * signal.
     */
    fcntl(fd, F_SETOWN, getpid());
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_ASYNC);
    sigset_t io;
    sigemptyset(&io);
    sigaddset(&io, SIGIO);
    for (;;) {
      struct pollfd p = {fd, POLLIN, 0};
      int r = poll(&p, 1, -1);
      if (r < 0 && errno == EINTR) continue;
      if ((p.revents & POLLIN) && !(p.revents & (POLLHUP | POLLERR))) {
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_ASYNC);
        return fd;
      }
      /* POLLHUP (or POLLERR): no host yet; the port stays open, so nothing the next host sends is lost */
      struct timespec ts = {1, 0};
      sigtimedwait(&io, NULL, &ts);
    }
  }
}

/* ---------------------------------------------------------------- session */

struct buf {
  unsigned char *data;
  size_t len, cap;
};

static void buf_add(struct buf *b, const void *p, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 65536;
    while (cap < b->len + n) cap *= 2;
    b->data = realloc(b->data, cap);
    if (!b->data) fatal("out of memory");
    b->cap = cap;
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
}

static void buf_drop(struct buf *b, size_t n) {
  memmove(b->data, b->data + n, b->len - n);
  b->len -= n;
}

static void frame(struct buf *out, char type, const void *p, uint32_t n) {
  unsigned char h[5] = {(unsigned char)type, (unsigned char)(n >> 24), (unsigned char)(n >> 16),
                        (unsigned char)(n >> 8), (unsigned char)n};
  buf_add(out, h, 5);
  if (n) buf_add(out, p, n);
}

/* Writes what it can without blocking; -1 when the host is gone. */
static int flush_out(int fd, struct buf *out) {
  while (out->len) {
    ssize_t n = write(fd, out->data, out->len);
    if (n > 0) {
      buf_drop(out, (size_t)n);
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
    return -1;
  }
  return 0;
}

/* Blocks until everything is written (or the host is gone). */
static int drain_out(int fd, struct buf *out) {
  while (out->len) {
    if (flush_out(fd, out) != 0) return -1;
    if (!out->len) break;
    struct pollfd p = {fd, POLLOUT, 0};
    if (poll(&p, 1, 5000) <= 0) return -1;
    if ((p.revents & (POLLHUP | POLLERR)) && !(p.revents & POLLOUT)) return -1;
  }
  return 0;
}

static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

static int sigchld_fd = -1;

/*
 * One command: read its argv, run it, relay the streams, return the exit
 * status frame. Returns 0 when the session ended normally, -1 when the host
 * went away.
 */
static int session(int ch) {
  struct buf in = {0}, out = {0};
  char **argv = NULL;
  set_nonblock(ch);
  /* Read the 'C' frame (anything before it is ignored). */
  while (!argv) {
    struct pollfd p = {ch, POLLIN, 0};
    if (poll(&p, 1, -1) < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    unsigned char tmp[65536];
    ssize_t n = read(ch, tmp, sizeof tmp);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) return -1;
    if (n > 0) buf_add(&in, tmp, (size_t)n);
    while (in.len >= 5 && !argv) {
      uint32_t len = (uint32_t)in.data[1] << 24 | (uint32_t)in.data[2] << 16 | (uint32_t)in.data[3] << 8 | in.data[4];
      if (len > MAX_FRAME) return -1;
      if (in.len < 5 + len) break;
      if (in.data[0] == 'C') {
        int count = 0;
        for (uint32_t i = 0; i < len; i++)
          if (in.data[5 + i] == 0) count++;
        argv = calloc((size_t)count + 1, sizeof *argv);
        char *s = (char *)in.data + 5;
        for (int i = 0; i < count; i++) {
          argv[i] = strdup(s);
          s += strlen(s) + 1;
        }
      }
      buf_drop(&in, 5 + len);
    }
  }
  if (!argv[0]) return -1;
  debug("run %s", argv[0]);
  /* The host bounds its wait for this: a command that never arrived is an error there, not a hang. */
  frame(&out, 'A', NULL, 0);

  int pin[2], pout[2], perr[2];
  if (pipe2(pin, O_CLOEXEC) || pipe2(pout, O_CLOEXEC) || pipe2(perr, O_CLOEXEC)) fatal("pipe: %s", strerror(errno));
  pid_t child = fork();
  if (child < 0) fatal("fork: %s", strerror(errno));
  if (child == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    setsid();
    dup2(pin[0], 0);
    dup2(pout[1], 1);
    dup2(perr[1], 2);
    setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 0);
    setenv("HOME", "/root", 0);
    setenv("TERM", "dumb", 0);
    execvp(argv[0], argv);
    int code = errno == ENOENT ? 127 : 126;
    dprintf(2, "sci: cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(code);
  }
  close(pin[0]);
  close(pout[1]);
  close(perr[1]);
  int to_child = pin[1];
  set_nonblock(to_child);
  set_nonblock(pout[0]);
  set_nonblock(perr[0]);
  struct buf stdin_buf = {0};
  int stdin_closed = 0, out_open = 1, err_open = 1, exited = 0, status = 0, host_gone = 0;

  /* Frames already read after 'C' are handled in the loop below. */
  for (;;) {
    /* Parse host frames. */
    while (in.len >= 5) {
      uint32_t len = (uint32_t)in.data[1] << 24 | (uint32_t)in.data[2] << 16 | (uint32_t)in.data[3] << 8 | in.data[4];
      if (len > MAX_FRAME) {
        host_gone = 1;
        break;
      }
      if (in.len < 5 + len) break;
      char type = (char)in.data[0];
      if (type == 'I' && !stdin_closed) buf_add(&stdin_buf, in.data + 5, len);
      if (type == 'i') stdin_closed = 1;
      /* as podman's signal proxy: to the command itself, not to what it started */
      if (type == 'K' && len >= 1 && !exited) kill(child, in.data[5]);
      buf_drop(&in, 5 + len);
    }
    /* Feed the child's stdin. */
    while (to_child >= 0 && stdin_buf.len) {
      ssize_t n = write(to_child, stdin_buf.data, stdin_buf.len);
      if (n > 0) {
        buf_drop(&stdin_buf, (size_t)n);
      } else if (n < 0 && errno == EAGAIN) {
        break;
      } else {
        close(to_child); /* EPIPE: the command does not read stdin */
        to_child = -1;
        stdin_buf.len = 0;
      }
    }
    if (to_child >= 0 && stdin_closed && !stdin_buf.len) {
      close(to_child);
      to_child = -1;
    }
    if (flush_out(ch, &out) != 0) host_gone = 1;
    if (host_gone) break;
    if (exited && !out_open && !err_open) break;

    struct pollfd p[5];
    int np = 0;
    int i_ch = -1, i_out = -1, i_err = -1, i_in = -1, i_sig = -1;
    /* Stop reading from the host while stdin is backed up. */
    p[np] = (struct pollfd){ch, (short)((stdin_buf.len < (1u << 20) ? POLLIN : 0) | (out.len ? POLLOUT : 0)), 0};
    i_ch = np++;
    if (out_open && out.len < (1u << 20)) {
      p[np] = (struct pollfd){pout[0], POLLIN, 0};
      i_out = np++;
    }
    if (err_open && out.len < (1u << 20)) {
      p[np] = (struct pollfd){perr[0], POLLIN, 0};
      i_err = np++;
    }
    if (to_child >= 0 && stdin_buf.len) {
      p[np] = (struct pollfd){to_child, POLLOUT, 0};
      i_in = np++;
    }
    if (!exited) {
      p[np] = (struct pollfd){sigchld_fd, POLLIN, 0};
      i_sig = np++;
    }
    int r = poll(p, (nfds_t)np, exited ? 100 : -1);
    if (r < 0 && errno != EINTR) break;
    if (r == 0 && exited) {
      /* The command ended but something it started keeps its output open: stop here. */
      break;
    }
    (void)i_in;
    if (i_ch >= 0 && (p[i_ch].revents & POLLIN)) {
      unsigned char tmp[65536];
      ssize_t n = read(ch, tmp, sizeof tmp);
      if (n > 0)
        buf_add(&in, tmp, (size_t)n);
      else if (n == 0 || (errno != EAGAIN && errno != EINTR))
        host_gone = 1;
    } else if (i_ch >= 0 && (p[i_ch].revents & (POLLHUP | POLLERR))) {
      host_gone = 1;
    }
    for (int k = 0; k < 2; k++) {
      int idx = k == 0 ? i_out : i_err;
      if (idx < 0 || !(p[idx].revents & (POLLIN | POLLHUP))) continue;
      int fd = k == 0 ? pout[0] : perr[0];
      unsigned char tmp[32768];
      ssize_t n = read(fd, tmp, sizeof tmp);
      if (n > 0) {
        frame(&out, k == 0 ? 'O' : 'E', tmp, (uint32_t)n);
      } else if (n == 0 || errno != EAGAIN) {
        if (k == 0)
          out_open = 0;
        else
          err_open = 0;
      }
    }
    if (i_sig >= 0 && (p[i_sig].revents & POLLIN)) {
      struct signalfd_siginfo si;
      while (read(sigchld_fd, &si, sizeof si) > 0) {
      }
      int st;
      pid_t w;
      while ((w = waitpid(-1, &st, WNOHANG)) > 0) {
        if (w == child) {
          exited = 1;
          status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
      }
    }
  }
  if (host_gone && !exited) {
    kill(-child, SIGKILL);
    waitpid(child, NULL, 0);
  }
  if (to_child >= 0) close(to_child);
  close(pout[0]);
  close(perr[0]);
  int rc = -1;
  if (!host_gone) {
    sync();
    unsigned char code[4] = {(unsigned char)(status >> 24), (unsigned char)(status >> 16),
                             (unsigned char)(status >> 8), (unsigned char)status};
    frame(&out, 'X', code, 4);
    rc = drain_out(ch, &out);
    if (rc != 0) logmsg("lost the host while sending the result (%s)", strerror(errno));
  }
  for (int i = 0; argv[i]; i++) free(argv[i]);
  free(argv);
  free(in.data);
  free(out.data);
  free(stdin_buf.data);
  debug("session done: status %d, host %s", status, host_gone ? "gone" : "ok");
  return rc;
}

int main(void) {
  if (getpid() != 1) {
    fprintf(stderr, "sci: the guest init of EOS VM flakes; it runs as PID 1 of a VM\n");
    return 2;
  }
  mount_if("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  mount_if("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  mount_if("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
  read_cmdline();
  const char *d = param("sci.debug");
  debug_on = d && strcmp(d, "0") != 0;
  debug("cmdline: %s", cmdline);
  load_modules("/lib/modules/sci.order");
  const char *root = setup_root();
  enter_root(root);
  setup_net();
  parse_channel();

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGCHLD);
  sigaddset(&set, SIGIO);
  sigprocmask(SIG_BLOCK, &set, NULL);
  sigdelset(&set, SIGIO);
  sigchld_fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
  signal(SIGPIPE, SIG_IGN);

  channel_init();
  const char *resume = param("sci.resume");
  int serve = resume && strcmp(resume, "0") != 0;
  debug("ready (%s)", serve ? "resume" : "single command");
  do {
    int ch = channel_accept();
    session(ch);
    close(ch);
    /* Reap whatever the command left behind. */
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
  } while (serve);
  power_off();
  return 0;
}
