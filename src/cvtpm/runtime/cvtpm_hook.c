/*
 * cvtpm-hook: the OCI hook runc and podman run when a container starts.
 *
 *     cvtpm-hook [--run-dir DIR] [--state-dir DIR] [--json] STAGE
 *
 * The compiled twin of hook_main.py, with the same arguments, messages and
 * exit codes; tests run both against the same cases.  A runtime starts the
 * hook for every container, and Python's own start-up, 9 ms here, is a
 * quarter of what runc takes to run a container; this starts in under one.
 *
 * It reads JSON only as far as it needs to, so it differs from the script
 * where a document is not valid JSON (below its top level; or with \v or
 * \f as white space, raw control characters or bytes that are not UTF-8
 * in a string) or is nested deeper than Python's parser goes: in an error
 * answer it may still find the "detail", and in a state without
 * annotations it may still read the bundle's config.json where the script
 * asks the daemon.
 *
 * It hands the container's state (stdin) to the cvtpm daemon on its unix
 * socket as one HTTP/1.1 request, where the stage runs
 * (cvtpm.server.hooks), and reports the answer.  Exit codes: 0 done (or
 * nothing asked), 1 the daemon refused or cannot be reached (the runtime
 * then fails the container), 2 a usage error.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "hook_text.h"

/* Equal to hook_main.py's constants (a test checks). */
#define RUN_DIR "/run/cvtpm"
#define RUN_DIR_ENV "CVTPM_RUN_DIR"
#define STATE_DIR_ENV "CVTPM_STATE_DIR"
#define DAEMON_SOCKET "daemon.sock"
#define ANNOTATION_ENABLE "io.cvtpm.vtpm"
#define MAX_STATE_SIZE (1 << 20)
#define TIMEOUT_SECONDS 120
#define STATE_DIR_HEADER "X-Cvtpm-State-Dir"
/* The daemon's answers are a few hundred bytes; this bounds a stranger's. */
#define MAX_ANSWER_SIZE (16 << 20)
/* A bundle's config.json larger than this is left to the daemon to refuse. */
#define MAX_CONFIG_SIZE (16 << 20)

#define USAGE                                                                  \
    "usage: cvtpm-hook [--run-dir DIR] [--state-dir DIR] [--json]"            \
    " create-runtime|poststop"

static const char HELP[] =
    "The OCI hook runc and podman run when a container starts.\n"
    "\n"
    "    cvtpm-hook [--run-dir DIR] [--state-dir DIR] [--json] STAGE\n"
    "\n"
    "STAGE is create-runtime (or createRuntime), or poststop. The hook hands\n"
    "the container's state (stdin) to the cvtpm daemon on its unix socket,\n"
    "where the stage runs, and reports the answer.\n"
    "\n"
    "Exit codes: 0 done (or nothing asked), 1 the daemon refused or cannot be\n"
    "reached (the runtime then fails the container), 2 a usage error.\n";

static const char SKIPPED[] = "{\"action\": \"skipped\", \"name\": null}";

void fail(int code, const char *format, ...)
{
    va_list args;

    fputs("cvtpm-hook: error: ", stderr);
    va_start(args, format);
    vfprintf(stderr, format, args);
    va_end(args);
    fputc('\n', stderr);
    exit(code);
}

/* -- does the container ask for a vTPM? ---------------------------------- */

/*
 * Whether the state has an "annotations" key, and none of it is {} or null
 * (hook_main._holds_annotations).
 */
static int holds_annotations(const char *state, size_t len)
{
    const char *end = state + len, *at = state;
    int found = 0;

    while ((at = memfind(at, (size_t)(end - at), "\"annotations\"")) != NULL) {
        found = 1;
        at += strlen("\"annotations\"");
        const char *p = skip_space(at, end);
        if (p >= end || *p != ':')
            continue;
        p = skip_space(p + 1, end);
        if ((end - p >= 4 && memcmp(p, "null", 4) == 0) ||
            (p < end && *p == '{' && skip_space(p + 1, end) < end &&
             *skip_space(p + 1, end) == '}'))
            return 0;
    }
    return found;
}

/*
 * Whether `doc`'s io.cvtpm.vtpm may be "enabled" (true when unsure): its
 * last spelling counts, as in a JSON parser (hook_main._enabled).
 */
static int enabled(const char *doc, size_t len)
{
    const char *end = doc + len;
    const char *at = memfind_last(doc, len, "\"" ANNOTATION_ENABLE "\"");

    if (at == NULL)
        return memfind(doc, len, "\\u") != NULL;
    if (memfind(at, (size_t)(end - at), "\\u") != NULL)
        return 1; /* a later spelling with escapes may count */
    const char *p = skip_space(at + strlen(ANNOTATION_ENABLE) + 2, end);
    if (p >= end || *p != ':')
        return 1;
    p = skip_space(p + 1, end);
    struct buf value = {0};
    if (json_string(p, end, &value, 1) == NULL)
        return 1;

    /* Compared as hook_main.py does: stripped of white space, any case;
     * unsure if not ASCII (the daemon strips Unicode white space too). */
    const char *v = value.data ? value.data : "";
    const char *v_end = v + value.len;
    for (const char *c = v; c < v_end; c++)
        if ((unsigned char)*c >= 0x80)
            return 1;
    v = skip_space(v, v_end);
    while (v_end > v && is_space(v_end[-1]))
        v_end--;
    return v_end - v == 7 && strncasecmp(v, "enabled", 7) == 0;
}

/*
 * False only if the container's annotations surely do not ask for a vTPM,
 * by hook_main.asks' rules: the state's annotations, or without them (runc
 * leaves out an empty map; others write {} or null) the bundle's config.json.
 */
static int asks(const char *state, size_t len)
{
    if (holds_annotations(state, len))
        return enabled(state, len);

    struct buf bundle = {0}, path = {0}, config = {0};
    /* Runtimes give an absolute path; anything else the daemon refuses. */
    if (!top_level_string(state, len, "bundle", &bundle) || bundle.data == NULL ||
        strlen(bundle.data) != bundle.len || bundle.data[0] != '/')
        return 1;
    puts_buf(&path, bundle.data);
    puts_buf(&path, "/config.json");
    /* Non-blocking: a FIFO there must not hold the container's start. */
    int fd = open(path.data, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return 1;
    struct stat st;
    int whole = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
                read_all(fd, &config, MAX_CONFIG_SIZE) && config.len <= MAX_CONFIG_SIZE;
    close(fd);
    return !whole || enabled(config.data ? config.data : "", config.len);
}

/* -- the request ---------------------------------------------------------- */

/* `text` with every byte outside printable ASCII (and %) as %XX. */
static void header_value(struct buf *b, const char *text)
{
    for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
        char escaped[4];
        if (*c >= 0x21 && *c <= 0x7E && *c != '%') {
            put(b, c, 1);
        } else {
            snprintf(escaped, sizeof escaped, "%%%02X", *c);
            put(b, escaped, 3);
        }
    }
}

/* Why the daemon's socket failed us (errno), before or after `connected`. */
static void unreachable(const char *socket_path, int connected)
    __attribute__((noreturn));

static void unreachable(const char *socket_path, int connected)
{
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        fail(1, "the cvtpm daemon did not answer within %d s", TIMEOUT_SECONDS);
    const char *reason = strerror(errno);
    const char *where = shown(socket_path, strlen(socket_path), 0);
    if (connected)
        fail(1, "the cvtpm daemon at %s broke off the exchange: %s", where, reason);
    fail(1, "cannot reach the cvtpm daemon at %s: %s; is `cvtpm daemon` running?",
         where, reason);
}

/* POST the state to the daemon; its whole answer, in `answer`. */
static void post(const char *socket_path, const char *target, const struct buf *state,
                 const char *state_dir, struct buf *answer)
{
    struct buf request = {0};
    char line[64];

    puts_buf(&request, "POST ");
    puts_buf(&request, target);
    puts_buf(&request, " HTTP/1.1\r\nHost: cvtpm\r\n");
    puts_buf(&request, "Content-Type: application/json\r\n");
    snprintf(line, sizeof line, "Content-Length: %zu\r\n", state->len);
    puts_buf(&request, line);
    puts_buf(&request, "Connection: close\r\n");
    if (state_dir != NULL && *state_dir) {
        puts_buf(&request, STATE_DIR_HEADER ": ");
        header_value(&request, state_dir);
        puts_buf(&request, "\r\n");
    }
    puts_buf(&request, "\r\n");
    put(&request, state->data, state->len);

    /* One request per connection; the answer ends when the daemon closes it. */
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(socket_path) >= sizeof addr.sun_path)
        fail(1,
             "cannot reach the cvtpm daemon at %s: AF_UNIX path too long;"
             " is `cvtpm daemon` running?",
             shown(socket_path, strlen(socket_path), 0));
    strcpy(addr.sun_path, socket_path);
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval timeout = {.tv_sec = TIMEOUT_SECONDS};
    if (sock < 0 ||
        setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout) ||
        setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout) ||
        connect(sock, (struct sockaddr *)&addr, sizeof addr) != 0)
        unreachable(socket_path, 0);

    for (size_t sent = 0; sent < request.len;) {
        ssize_t n = send(sock, request.data + sent, request.len - sent, MSG_NOSIGNAL);
        if (n < 0 && errno != EINTR)
            unreachable(socket_path, 1);
        sent += n > 0 ? (size_t)n : 0;
    }
    if (!read_all(sock, answer, MAX_ANSWER_SIZE))
        unreachable(socket_path, 1);
    if (answer->len > MAX_ANSWER_SIZE)
        fail(1, "the cvtpm daemon's answer is larger than %d bytes", MAX_ANSWER_SIZE);
    close(sock);
}

/*
 * The status of an HTTP/1.1 answer; `*body` and `*body_len` its body, cut
 * at its Content-Length.  Fails as hook_main.parse_answer does.
 */
static int parse_answer(const struct buf *raw, const char **body, size_t *body_len)
{
    const char *data = raw->data ? raw->data : "";
    const char *head_end = memfind(data, raw->len, "\r\n\r\n");
    const char *line_end = memfind(data, raw->len, "\r\n");

    if (head_end == NULL)
        fail(1, "the cvtpm daemon's answer is not HTTP");

    /* The status line's first two words, split at white space as Python's
     * bytes.split() does: HTTP/x and a three-digit code. */
    const char *version = skip_space(data, line_end), *version_end = version;
    while (version_end < line_end && !is_space(*version_end))
        version_end++;
    const char *status = skip_space(version_end, line_end), *status_end = status;
    if (version_end - version < 5 || strncmp(version, "HTTP/", 5) || status == line_end)
        fail(1, "the cvtpm daemon's answer is not HTTP");
    while (status_end < line_end && !is_space(*status_end))
        status_end++;
    int digits = status_end - status == 3;
    for (const char *d = status; digits && d < status_end; d++)
        digits = *d >= '0' && *d <= '9';
    if (!digits)
        fail(1, "the cvtpm daemon's answer has no status: %s",
             shown(data, (size_t)(line_end - data), 0));
    int code = atoi(status);

    *body = head_end + 4;
    *body_len = raw->len - (size_t)(*body - data);
    for (const char *p = line_end + 2; p < head_end;) {
        const char *next = memfind(p, (size_t)(head_end + 2 - p), "\r\n");
        const char *colon = memchr(p, ':', (size_t)(next - p));
        /* The name stripped of white space, as hook_main.py strips it (a
         * line without a colon is all name). */
        const char *name_end = colon ? colon : next, *name = skip_space(p, name_end);
        while (name_end > name && is_space(name_end[-1]))
            name_end--;
        size_t name_len = (size_t)(name_end - name);
        if (colon && name_len == 14 && strncasecmp(name, "content-length", 14) == 0) {
            const char *v = skip_space(colon + 1, next);
            char *v_end;
            unsigned long long length = strtoull(v, &v_end, 10);
            int digits = v < next && *v >= '0' && *v <= '9';
            if (digits && skip_space(v_end, next) == next) {
                if (length > *body_len)
                    fail(1,
                         "the cvtpm daemon's answer is cut short (%zu of %.*s bytes)",
                         *body_len, (int)(v_end - v), v);
                *body_len = (size_t)length;
            }
        } else if (name_len == 17 && strncasecmp(name, "transfer-encoding", 17) == 0) {
            fail(1, "the cvtpm daemon's answer is chunked; expected a length");
        }
        p = next + 2;
    }
    const char *first = skip_space(*body, *body + *body_len);
    if (code == 200 && (first == *body + *body_len || *first != '{'))
        fail(1, "the cvtpm daemon's answer is not JSON");
    return code;
}

/* -- main ----------------------------------------------------------------- */

static const char *stage_name(const char *arg)
{
    if (strcmp(arg, "create-runtime") == 0 || strcmp(arg, "createRuntime") == 0)
        return "createRuntime";
    if (strcmp(arg, "poststop") == 0)
        return "poststop";
    return NULL;
}

int main(int argc, char **argv)
{
    const char *run_dir = NULL, *state_dir = NULL, *stage = NULL;
    int as_json = 0;

    /* 1. The arguments. */
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            fputs(HELP, stdout);
            return 0;
        }
        if (strcmp(arg, "--json") == 0) {
            as_json = 1;
        } else if (strcmp(arg, "--run-dir") == 0 || strcmp(arg, "--state-dir") == 0) {
            if (i + 1 >= argc || !*argv[i + 1])
                fail(2, "%s needs a directory\n" USAGE, arg);
            *(arg[2] == 'r' ? &run_dir : &state_dir) = argv[++i];
        } else if (stage_name(arg) != NULL && stage == NULL) {
            stage = stage_name(arg);
        } else {
            fail(2, "unexpected argument '%s'\n" USAGE, shown(arg, strlen(arg), 0));
        }
    }
    if (stage == NULL)
        fail(2, "which stage? (create-runtime or poststop)\n" USAGE);

    /* 2. The state; a container that did not ask for a vTPM needs no daemon. */
    struct buf state = {0};
    if (!read_all(STDIN_FILENO, &state, MAX_STATE_SIZE))
        fail(1, "cannot read the OCI state on stdin: %s", strerror(errno));
    if (state.len > MAX_STATE_SIZE)
        fail(1, "the OCI state on stdin is larger than %d bytes", MAX_STATE_SIZE);
    const char *data = state.data ? state.data : "";
    if (skip_space(data, data + state.len) == data + state.len)
        fail(1, "no OCI state on stdin (a runtime passes the container's)");
    if (!asks(data, state.len)) {
        if (as_json)
            puts(SKIPPED);
        return 0;
    }

    /* 3. The daemon runs the stage. */
    if (run_dir == NULL)
        run_dir = getenv(RUN_DIR_ENV);
    if (run_dir == NULL || !*run_dir)
        run_dir = RUN_DIR;
    if (state_dir == NULL)
        state_dir = getenv(STATE_DIR_ENV);
    struct buf socket_path = {0}, target = {0}, answer = {0};
    puts_buf(&socket_path, run_dir);
    if (socket_path.len && socket_path.data[socket_path.len - 1] != '/')
        puts_buf(&socket_path, "/");
    puts_buf(&socket_path, DAEMON_SOCKET);
    puts_buf(&target, "/v1/hooks/");
    puts_buf(&target, stage);
    post(socket_path.data, target.data, &state, state_dir, &answer);

    const char *body;
    size_t body_len;
    int status = parse_answer(&answer, &body, &body_len);
    if (status != 200) {
        /* Python's json reads no answer that is not UTF-8 as a whole. */
        struct buf detail = {0};
        if (valid_utf8((const unsigned char *)body, body_len) &&
            top_level_string(body, body_len, "detail", &detail) && detail.len)
            fail(1, "%s", shown(detail.data, detail.len, 1));
        fail(1, "the cvtpm daemon answered %d", status);
    }
    if (as_json) {
        fwrite(body, 1, body_len, stdout);
        putchar('\n');
    }
    return 0;
}
