/* The warm zygote's fork loop and each sandbox's PID 1, in C (see zygote.py, whose Python versions of both,
 * _serve and _sandbox, these follow step for step, and docs/warm-path.md for why).
 *
 * The zygote is a Python interpreter with modules preloaded; every sandbox's program process must be a fork
 * of it. Python code run after a fork writes reference counts all over the inherited heap, and each such write
 * copies a page: measured, the Python PID 1 took ~750 copy-on-write faults and ~4 ms of CPU per execution, and
 * the zygote's own loop re-faulted its pages after every fork. Here the zygote calls zygote_serve once, from
 * Python, after its start-up; from then on the zygote and every PID 1 run only this code, which touches its
 * stack and nothing of the interpreter's heap. zygote_serve returns only in a program process (a fork of a
 * PID 1, so a fork of the zygote as it was when it called zygote_serve), which goes on in Python.
 *
 * Built by the server at start (sandbox_server.backends.native) as a shared object, loaded by the zygote
 * (ctypes, from a memfd); nothing here allocates memory, and each process that runs it is single-threaded. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/prctl.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_FDS 16
#define MAX_RLIMITS 16
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif

/* Set by the zygote (zygote.py, _NativeConfig): what _serve and _sandbox read from the JSON config. */
struct native_config {
    int ctl_fd;
    int uid;
    int gid;
    int n_soft_rlimits;
    int soft_rlimits[MAX_RLIMITS]; /* RLIMIT_* numbers whose hard limit is lowered to the soft one */
    const char *hostname;
    const char *workdir;
    const unsigned char *bpf; /* the seccomp filter: struct sock_filter[bpf_len / 8] */
    int bpf_len;
    struct prctl_mm_map *init_mm; /* PID 1's /proc cmdline ("sandbox-init"); brk is filled in here */
};

/* Where a program process finds its two sockets when zygote_serve returns in it. */
struct native_program {
    int sock_fd; /* the program socket (RUN from the server) */
    int go_fd;   /* GO from PID 1 */
};

/* PID 1's RUN, from the server (warm.py): packed "=dQQ". */
struct __attribute__((packed)) init_run {
    double time_limit_s;
    uint64_t tmp_bytes;
    uint64_t shm_bytes;
};

/* Room for MAX_FDS fds in a message's control data, aligned as a cmsghdr. */
union control {
    char buf[CMSG_SPACE(MAX_FDS * sizeof(int))];
    struct cmsghdr align;
};

static struct msghdr message(struct iovec *iov) {
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    return msg;
}

static int send_msg(int sock, const void *data, size_t len, const int *fds, int nfds) {
    struct iovec iov = {(void *)data, len};
    union control u;
    struct msghdr msg = message(&iov);
    if (nfds > 0) {
        memset(&u, 0, sizeof(u));
        msg.msg_control = u.buf;
        msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
    }
    ssize_t n;
    do {
        n = sendmsg(sock, &msg, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    return n < 0 ? -1 : 0;
}

/* One message and its fds (close-on-exec). Returns its length (0: EOF), -1 on error; *nfds is set either way,
 * and a message cut short (MSG_TRUNC, MSG_CTRUNC) is an error with its fds closed. */
static ssize_t recv_msg(int sock, void *buf, size_t len, int *fds, int *nfds) {
    struct iovec iov = {buf, len};
    union control u;
    struct msghdr msg = message(&iov);
    msg.msg_control = u.buf;
    msg.msg_controllen = sizeof(u.buf);
    ssize_t n;
    do {
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    *nfds = 0;
    if (n < 0)
        return -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < k && *nfds < MAX_FDS; i++)
                memcpy(&fds[(*nfds)++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        }
    }
    if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        for (int i = 0; i < *nfds; i++)
            close(fds[i]);
        *nfds = 0;
        errno = EMSGSIZE;
        return -1;
    }
    return n;
}

static void close_all(const int *fds, int n) {
    for (int i = 0; i < n; i++)
        close(fds[i]);
}

/* ERROR + why, as zygote._report_error words an OSError: best effort. */
static void report_error(int conn, const char *what, int err) {
    char text[512];
    int n = snprintf(text, sizeof(text), "EOSError: [Errno %d] %s: %s", err, what, strerror(err));
    if (n > 0)
        send_msg(conn, text, (size_t)n < sizeof(text) ? (size_t)n : sizeof(text) - 1, NULL, 0);
}

/* The server learns why, and the process ends: nothing of a request ran. */
static void __attribute__((noreturn)) fail(int conn, const char *what) {
    report_error(conn, what, errno);
    _exit(125);
}

static int loopback_up(void) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
    int rc = ioctl(s, SIOCGIFFLAGS, &ifr);
    if (rc == 0) {
        ifr.ifr_flags |= IFF_UP;
        rc = ioctl(s, SIOCSIFFLAGS, &ifr);
    }
    int err = errno;
    close(s);
    errno = err;
    return rc;
}

/* PID 1 the sandbox user for good: no supplementary groups, the sandbox gid, no_new_privs, the seccomp filter,
 * the sandbox uid, and no capability left (checked), as zygote._drop_privileges. */
static void drop_privileges(int conn, const struct native_config *c) {
    if (setgroups(0, NULL) < 0)
        fail(conn, "setgroups");
    if (setresgid(c->gid, c->gid, c->gid) < 0)
        fail(conn, "setresgid");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        fail(conn, "prctl(no_new_privs)");
    struct sock_fprog prog = {(unsigned short)(c->bpf_len / 8), (struct sock_filter *)c->bpf};
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0)
        fail(conn, "prctl(seccomp)");
    if (setresuid(c->uid, c->uid, c->uid) < 0)
        fail(conn, "setresuid");
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof(data));
    if (syscall(SYS_capget, &header, data) < 0)
        fail(conn, "capget");
    for (int i = 0; i < 2; i++) {
        if (data[i].effective || data[i].permitted || data[i].inheritable) {
            errno = EPERM;
            fail(conn, "capabilities survived the switch to the sandbox user");
        }
    }
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* zygote._init: report the program's raw wait status on the status pipe (which the program never holds), reap
 * orphans, kill what is left; at the wall-time backstop kill everything and end without a report. */
static void __attribute__((noreturn)) init(pid_t program, int status_fd, double time_limit_s) {
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    double deadline = now_s() + time_limit_s;
    int status = 0, have = 0;
    for (;;) {
        int st;
        pid_t pid = waitpid(-1, &st, WNOHANG);
        if (pid == program) {
            status = st;
            have = 1;
            break;
        }
        if (pid > 0)
            continue;
        if (pid < 0 && errno != EINTR)
            break; /* ECHILD: nothing left to wait for */
        double left = deadline - now_s();
        if (left <= 0)
            break;
        struct timespec ts = {(time_t)left, (long)((left - (double)(time_t)left) * 1e9)};
        sigtimedwait(&chld, NULL, &ts);
    }
    kill(-1, SIGKILL); /* ESRCH: nothing left */
    for (;;) {
        pid_t pid = waitpid(-1, NULL, 0);
        if (pid < 0 && errno != EINTR)
            break;
    }
    if (have) {
        char text[32];
        int code = WIFSIGNALED(status) ? -1 : WEXITSTATUS(status);
        int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
        int n = snprintf(text, sizeof(text), "%d %d\n", code, sig);
        if (n > 0 && write(status_fd, text, (size_t)n) < 0) {
            /* the server is gone: nothing to tell */
        }
    }
    _exit(0);
}

/* zygote._sandbox: PID 1 of a new sandbox. Returns 0 only in the program process. */
static int pid1(const struct native_config *c, int conn, struct native_program *out) {
    char buf[64];
    int fds[MAX_FDS], nfds;
    ssize_t n = recv_msg(conn, buf, sizeof(buf), fds, &nfds); /* PREPARE + the cgroup join files */
    if (n == 0) {
        close_all(fds, nfds);
        _exit(0);
    }
    if (n < 0)
        fail(conn, "PREPARE");
    for (int i = 0; i < nfds; i++) { /* join the sandbox's cgroup(s) first: its limits apply from here on */
        if (write(fds[i], "0", 1) != 1)
            fail(conn, "joining the sandbox's cgroup");
        close(fds[i]);
    }
    if (setsid() < 0)
        fail(conn, "setsid");
    if (unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP) < 0)
        fail(conn, "unshare");
    if (mount("proc", "/proc", "proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        fail(conn, "mount /proc");
    if (sethostname(c->hostname, strlen(c->hostname)) < 0)
        fail(conn, "sethostname");
    if (loopback_up() < 0)
        fail(conn, "bringing lo up");
    for (int i = 0; i < c->n_soft_rlimits; i++) { /* nsjail's "soft": the hard limit lowered to the soft one */
        struct rlimit rl;
        if (getrlimit(c->soft_rlimits[i], &rl) < 0)
            fail(conn, "getrlimit");
        rl.rlim_max = rl.rlim_cur;
        if (setrlimit(c->soft_rlimits[i], &rl) < 0)
            fail(conn, "setrlimit");
    }
    int pair[2], go[2]; /* [0]: PID 1's end, [1]: the program's */
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0)
        fail(conn, "socketpair");
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, go) < 0)
        fail(conn, "socketpair");
    pid_t program = fork();
    if (program < 0)
        fail(conn, "fork");
    if (program == 0) {
        close(conn);
        close(pair[0]);
        close(go[0]);
        out->sock_fd = pair[1];
        out->go_fd = go[1];
        return 0;
    }
    close(pair[1]);
    close(go[1]);
    if (send_msg(conn, "W", 1, &pair[0], 1) < 0)
        fail(conn, "WAITING");
    close(pair[0]);

    /* zygote._await_run: become the init by name, wait for RUN, mount the scratch, /tmp and /dev/shm */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGINT, &dfl, NULL); /* Python's handler: signals sent from inside must never reach PID 1 */
    struct prctl_mm_map mm = *c->init_mm;
    mm.brk = (uint64_t)syscall(SYS_brk, 0);
    if (prctl(PR_SET_MM, PR_SET_MM_MAP, &mm, sizeof(mm), 0) < 0)
        fail(conn, "PR_SET_MM_MAP");
    struct init_run run;
    n = recv_msg(conn, &run, sizeof(run), fds, &nfds);
    if (n == 0) {
        close_all(fds, nfds);
        _exit(0); /* never used: the kernel ends the waiting program with us */
    }
    if (n < 0)
        fail(conn, "RUN");
    if (n != (ssize_t)sizeof(run) || nfds != 2) {
        close_all(fds, nfds);
        errno = EINVAL;
        fail(conn, "RUN without the status pipe and the scratch");
    }
    int status_fd = fds[0], scratch = fds[1];
    if (syscall(SYS_move_mount, scratch, "", AT_FDCWD, c->workdir, MOVE_MOUNT_F_EMPTY_PATH) < 0)
        fail(conn, "move_mount");
    close(scratch);
    char data[128];
    snprintf(data, sizeof(data), "size=%llu,mode=1777,uid=%d,gid=%d", (unsigned long long)run.tmp_bytes, c->uid,
             c->gid);
    if (mount("none", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, data) < 0)
        fail(conn, "mount /tmp");
    snprintf(data, sizeof(data), "size=%llu,uid=%d,gid=%d", (unsigned long long)run.shm_bytes, c->uid, c->gid);
    if (mount("none", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, data) < 0)
        fail(conn, "mount /dev/shm");
    /* The sandbox user before the program may go: its code must never see (or race) a root PID 1 */
    drop_privileges(conn, c);
    if (send_msg(go[0], "G", 1, NULL, 0) < 0)
        fail(conn, "GO");
    close(go[0]);
    close(conn);
    init(program, status_fd, run.time_limit_s);
}

/* zygote._serve: fork one sandbox per FORK on the control socket until it closes (then wait for every sandbox
 * and exit). Returns 0 only in a program process, with its sockets in *out; -1 (errno set) if the loop could
 * not start, in the zygote. */
int zygote_serve(const struct native_config *c, struct native_program *out) {
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &chld, NULL) < 0) /* kept blocked in PID 1: its init waits with sigtimedwait */
        return -1;
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK); /* sandboxes reaped the moment they exit */
    if (sfd < 0)
        return -1;
    for (;;) {
        struct pollfd p[2] = {{c->ctl_fd, POLLIN, 0}, {sfd, POLLIN, 0}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            _exit(1);
        }
        if (p[1].revents) {
            struct signalfd_siginfo info;
            while (read(sfd, &info, sizeof(info)) == (ssize_t)sizeof(info)) {
            }
            while (waitpid(-1, NULL, WNOHANG) > 0) {
            }
        }
        if (!p[0].revents)
            continue;
        char msg[16];
        int fds[MAX_FDS], nfds;
        ssize_t n = recv_msg(c->ctl_fd, msg, sizeof(msg), fds, &nfds);
        if (n == 0) {
            close_all(fds, nfds);
            break;
        }
        if (n < 0) {
            if (errno == EMSGSIZE)
                continue;
            _exit(1);
        }
        if (n != 1 || msg[0] != 'F' || nfds != 1) {
            close_all(fds, nfds);
            continue;
        }
        int conn = fds[0];
        /* _fork_pid1: the child is PID 1 of a fresh PID namespace; the zygote's next children are its own */
        int own = (int)syscall(SYS_pidfd_open, getpid(), 0);
        if (own < 0 || unshare(CLONE_NEWPID) < 0) {
            int err = errno;
            if (own >= 0)
                close(own);
            report_error(conn, own < 0 ? "pidfd_open" : "unshare", err);
            close(conn);
            continue;
        }
        pid_t pid = fork();
        if (pid == 0) {
            close(own);
            close(sfd);
            close(c->ctl_fd);
            return pid1(c, conn, out);
        }
        int err = errno;
        if (setns(own, CLONE_NEWPID) < 0)
            _exit(70); /* a zygote that cannot put its children back in its own PID namespace must not live */
        close(own);
        if (pid < 0) {
            report_error(conn, "fork", err);
            close(conn);
            continue;
        }
        int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
        if (pidfd >= 0) {
            char forked[1 + sizeof(int)];
            forked[0] = 'P';
            int32_t p32 = pid;
            memcpy(forked + 1, &p32, sizeof(p32));
            send_msg(conn, forked, sizeof(forked), &pidfd, 1); /* EPIPE: the server has given up on it */
            close(pidfd);
        } else {
            kill(pid, SIGKILL); /* the server could never end it: it must not run */
        }
        close(conn);
    }
    /* Drain: running sandboxes end by their wall-time backstop at the latest */
    close(c->ctl_fd);
    for (;;) {
        pid_t pid = waitpid(-1, NULL, 0);
        if (pid < 0 && errno != EINTR)
            break;
    }
    _exit(0);
}
