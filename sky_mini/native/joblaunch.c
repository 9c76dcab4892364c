/*
 * sky-mini's job launcher: a job process between spawn and exec, without a Python fork.
 *
 * An executor starts it with posix_spawn (a vfork: no copy of the executor's ~20 MB, no
 * copy-on-write faults, nothing to unmap at exec) as its *ready child* and hands it the
 * job later (sky_mini/server/backends/local/jobproc.py has the Python twin and the
 * protocol). Before the job is known it does the job-independent half:
 *
 *   argv: TITLE EXECUTOR_PID OOM_SCORE_ADJ TIED [CGROUP_PROCS_FILE ...]
 *
 *   - TITLE as its name (argv[0], and the first 15 bytes as its comm);
 *   - its own session; OOM_SCORE_ADJ ("" for none) into /proc/self/oom_score_adj;
 *   - TIED "1": PR_SET_PDEATHSIG(SIGKILL), then exit if the parent is no longer
 *     EXECUTOR_PID (it died before the prctl and nobody would ever signal us);
 *   - default dispositions for every signal and an empty mask;
 *   - every descriptor above the spec pipe (fd 3) closed;
 *   - each CGROUP_PROCS_FILE joined (the executor's slot: the move waits for an RCU grace
 *     period, so it is done while the executor waits for work).
 *
 * Then it reads the spec from fd 3 until EOF: NUL-terminated fields
 *
 *   "sky-mini-spec-1" SHELL COMMAND WORKDIR LOG_PATH DATA_LIMIT N PROCS_FILE*N ENV...
 *
 * (DATA_LIMIT "" for none; ENV entries are NAME=VALUE to the end), joins the PROCS_FILEs,
 * sets RLIMIT_DATA, opens the log as stdout and stderr and /dev/null as stdin, enters
 * WORKDIR and execs SHELL -c COMMAND with exactly ENV. A bare EOF means "not needed":
 * exit 0 (TIED "0", a test-only negative control, waits forever instead). Any failure is
 * written to stderr (the job's log once it is open) and ends the process with 127, as the
 * Python path does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#define SPEC_FD 3
#define SPEC_MAGIC "sky-mini-spec-1"
#define CLOSE_FALLBACK_LIMIT 65536

static void fail(const char *what, const char *arg) {
    int err = errno;
    dprintf(2, "sky-mini: %s %s: %s\n", what, arg, strerror(err));
    _exit(127);
}

static void close_from(int low) {
#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned)low, ~0U, 0) == 0) {
        return;
    }
#endif
    for (int fd = low; fd < CLOSE_FALLBACK_LIMIT; fd++) {
        close(fd);
    }
}

static int write_text(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n < 0 ? -1 : 0;
}

/* Errors are ignored, as in cgroups.join_cgroup_files: the executor already warned when
 * it could not set the group up, and the job must still run. */
static void join_groups(char **files, int count) {
    char pid[32];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    for (int i = 0; i < count; i++) {
        write_text(files[i], pid);
    }
}

/* glibc refuses to touch its two internal signals (32, 33), and its posix_spawn leaves
 * them ignored in the child; an ignored disposition survives exec, so reset them with the
 * raw system call where the kernel's struct is known. */
static void reset_internal_signal(int sig) {
#if defined(__x86_64__) || defined(__aarch64__)
    struct {
        void (*handler)(int);
        unsigned long flags;
        void (*restorer)(void);
        unsigned long mask;
    } dfl = {SIG_DFL, 0, NULL, 0};
    syscall(SYS_rt_sigaction, sig, &dfl, NULL, sizeof dfl.mask);
#else
    (void)sig;
#endif
}

static void reset_signals(void) {
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig != SIGKILL && sig != SIGSTOP && sigaction(sig, &dfl, NULL) != 0) {
            reset_internal_signal(sig);
        }
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

/* The whole spec, NUL-terminated fields; *len_out 0 on a bare EOF. */
static char *read_spec(size_t *len_out) {
    size_t size = 65536, len = 0;
    char *buf = malloc(size);
    if (buf == NULL) {
        fail("cannot start the job:", "out of memory");
    }
    for (;;) {
        if (len == size) {
            size *= 2;
            char *bigger = realloc(buf, size);
            if (bigger == NULL) {
                fail("cannot start the job:", "out of memory");
            }
            buf = bigger;
        }
        ssize_t n = read(SPEC_FD, buf + len, size - len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            fail("cannot start the job: reading its spec", "(fd 3)");
        }
        if (n == 0) {
            break;
        }
        len += (size_t)n;
    }
    close(SPEC_FD);
    *len_out = len;
    return buf;
}

static void bad_spec(const char *why) {
    dprintf(2, "sky-mini: cannot start the job: malformed spec from the executor (%s)\n", why);
    _exit(127);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        dprintf(2, "sky-mini: joblaunch is started by a sky-mini executor, not by hand\n");
        return 2;
    }
    pid_t executor = (pid_t)strtol(argv[1], NULL, 10);
    int tied = strcmp(argv[3], "1") == 0;
    prctl(PR_SET_NAME, argv[0]); /* ps -o comm: the title's first 15 bytes, as setproctitle */
    setsid();
    if (argv[2][0] != '\0') {
        write_text("/proc/self/oom_score_adj", argv[2]);
    }
    if (tied) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != executor) {
            _exit(1);
        }
    }
    reset_signals();
    close_from(SPEC_FD + 1);
    join_groups(argv + 4, argc - 4);

    size_t len = 0;
    char *spec = read_spec(&len);
    if (len == 0) {
        while (!tied) {
            pause();
        }
        _exit(0);
    }
    if (spec[len - 1] != '\0') {
        bad_spec("not NUL-terminated");
    }
    /* Split into fields. */
    size_t count = 0;
    for (size_t i = 0; i < len; i++) {
        count += spec[i] == '\0';
    }
    char **field = malloc((count + 1) * sizeof *field);
    if (field == NULL) {
        fail("cannot start the job:", "out of memory");
    }
    size_t n = 0;
    for (char *p = spec; p < spec + len; p += strlen(p) + 1) {
        field[n++] = p;
    }
    field[n] = NULL;
    if (n < 7 || strcmp(field[0], SPEC_MAGIC) != 0) {
        bad_spec("unknown format");
    }
    char *shell = field[1], *command = field[2], *workdir = field[3], *log_path = field[4];
    char *data_limit = field[5];
    char *end = NULL;
    long procs = strtol(field[6], &end, 10);
    if (*end != '\0' || procs < 0 || (size_t)procs > n - 7) {
        bad_spec("bad group count");
    }
    char **env = field + 7 + procs;

    join_groups(field + 7, (int)procs);
    if (data_limit[0] != '\0') {
        struct rlimit rl;
        if (getrlimit(RLIMIT_DATA, &rl) == 0) {
            rlim_t want = (rlim_t)strtoull(data_limit, NULL, 10);
            if (rl.rlim_max != RLIM_INFINITY && want > rl.rlim_max) {
                want = rl.rlim_max;
            }
            rl.rlim_cur = want;
            setrlimit(RLIMIT_DATA, &rl); /* as memguard.apply_data_limit: best effort */
        }
    }
    int log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (log_fd < 0) {
        fail("cannot start the job: cannot open its log", log_path);
    }
    int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null_fd < 0) {
        fail("cannot start the job: cannot open", "/dev/null");
    }
    if (dup2(null_fd, 0) < 0 || dup2(log_fd, 1) < 0 || dup2(log_fd, 2) < 0) {
        fail("cannot start the job:", "dup2");
    }
    close_from(3);
    if (chdir(workdir) < 0) {
        fail("cannot enter workdir", workdir);
    }
    char *args[] = {shell, "-c", command, NULL};
    execve(shell, args, env);
    fail("cannot start the job:", shell);
    return 127;
}
