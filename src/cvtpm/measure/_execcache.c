/*
 * cvtpm.measure._execcache: the agent's reader, which answers the execs it
 * has seen before without Python.
 *
 * Most events a container causes are the exec of a program its list already
 * holds at this version: nothing is recorded, the exec is allowed.  Each exec
 * is two permission events (include/linux/fsnotify.h, fsnotify_open_perm:
 * FAN_OPEN_EXEC_PERM, then FAN_OPEN_PERM for the same open).  A Python reader
 * answering them costs a container 80-150 us per exec on a 2-core virtual
 * machine, most of it the interpreter waking up; this reader answers them in
 * a few microseconds, with the GIL released, and takes the GIL only to hand
 * every other event to the agent, in the order read.
 *
 * The table of allowed execs is the agent's to fill (cvtpm.measure.execcache
 * says when a version may be added); a mutex guards it, and no one holding
 * the mutex waits for the GIL.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/fanotify.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* What one read(2) of the queue may return, as cvtpm.measure.fanotify reads. */
#define READ_SIZE (64 * 1024)
/* Execs answered here whose open has not been seen yet (the kernel's order
 * makes it the thread's next event); more means opens that never came. */
#define MAX_PENDING 4096
/* The most versions the table holds: 20 MiB of slots at its largest. */
#define MAX_VERSIONS (1 << 17)
#define FIRST_SLOTS 1024

/*
 * One file version allowed for the threads of one mount namespace (a
 * container's; 0 is a free slot).  The namespace is the thread's, not the
 * mount's the file was reached through: a container's files can be reached
 * from elsewhere (/proc/PID/root, a passed fd), and an exec is the list's of
 * whoever makes it, as the agent decides (Agent._container_of).
 */
struct version {
    uint64_t ns, dev, ino;
    int64_t ctime, mtime;
};

/* A slot freed by forget(); searches go on past it. */
#define GONE UINT64_MAX

/* An exec answered here, whose open is its thread's next event. */
struct pending {
    int32_t tid;
    uint64_t dev, ino;
};

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;
    struct version *slots;
    size_t capacity, used, gone;
    struct pending pending[MAX_PENDING];
    size_t pending_count;
    int serving;
    char *queue;
    /* Execs answered here, for tests and statistics. */
    unsigned long long answered;
} ExecCache;

static uint64_t
mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    h ^= h >> 31;
    h *= 0xbf58476d1ce4e5b9ULL;
    return h ^ (h >> 29);
}

static size_t
slot_of(const struct version *v, size_t capacity)
{
    uint64_t h = mix(mix(mix(mix(mix(0, v->ns), v->dev), v->ino),
                         (uint64_t)v->ctime), (uint64_t)v->mtime);
    return (size_t)h & (capacity - 1);
}

static int
same(const struct version *a, const struct version *b)
{
    return a->ns == b->ns && a->dev == b->dev && a->ino == b->ino &&
           a->ctime == b->ctime && a->mtime == b->mtime;
}

/* The slot holding `v`, or the free one where it would go (lock held). */
static struct version *
find(ExecCache *self, const struct version *v)
{
    size_t i = slot_of(v, self->capacity);
    struct version *reuse = NULL;

    for (;;) {
        struct version *s = &self->slots[i];
        if (s->ns == 0)
            return reuse != NULL ? reuse : s;
        if (s->ns == GONE) {
            if (reuse == NULL)
                reuse = s;
        } else if (same(s, v)) {
            return s;
        }
        i = (i + 1) & (self->capacity - 1);
    }
}

/* Rebuild the table at `capacity` slots, dropping freed ones (lock held). */
static int
rebuild(ExecCache *self, size_t capacity)
{
    struct version *old = self->slots;
    size_t old_capacity = self->capacity;

    self->slots = calloc(capacity, sizeof *self->slots);
    if (self->slots == NULL) {
        self->slots = old;
        return -1;
    }
    self->capacity = capacity;
    self->used = self->gone = 0;
    for (size_t i = 0; i < old_capacity; i++) {
        if (old[i].ns != 0 && old[i].ns != GONE) {
            *find(self, &old[i]) = old[i];
            self->used++;
        }
    }
    free(old);
    return 0;
}

static int
contains(ExecCache *self, const struct version *v)
{
    int found;

    pthread_mutex_lock(&self->lock);
    if (self->slots != NULL) {
        const struct version *s = find(self, v);
        found = s->ns != 0 && s->ns != GONE;
    } else {
        found = 0;
    }
    pthread_mutex_unlock(&self->lock);
    return found;
}

/* ---- the reader ------------------------------------------------------- */

/* The inode number of a thread's mount namespace, from "mnt:[INODE]". */
static int
mnt_ns_of(int tid, uint64_t *ns)
{
    char path[48], link[64], *end;
    ssize_t n;

    snprintf(path, sizeof path, "/proc/%d/ns/mnt", tid);
    n = readlink(path, link, sizeof link - 1);
    if (n < 7)
        return -1;
    link[n] = '\0';
    if (strncmp(link, "mnt:[", 5) != 0 || link[n - 1] != ']')
        return -1;
    errno = 0;
    *ns = strtoull(link + 5, &end, 10);
    return errno == 0 && end == link + n - 1 && *ns != 0 && *ns != GONE ? 0 : -1;
}

static int64_t
nanoseconds(const struct timespec *t)
{
    return (int64_t)t->tv_sec * 1000000000LL + t->tv_nsec;
}

/* pidfd_open(2) of a thread, and the pidfd ioctl that opens its mount
 * namespace (include/uapi/linux/pidfd.h; Linux 6.9 and 6.11). */
#define PIDFD_THREAD O_EXCL
#define PIDFD_GET_MNT_NAMESPACE _IO(0xFF, 3)

/* Whether this kernel opens a thread's namespace through a pidfd (see below). */
static int pidfd_namespaces = 1;

/*
 * The inode number of a thread's mount namespace.  Through a pidfd where the
 * kernel can (about 14 us for a process just made), else from /proc, whose
 * entries for a new process cost about 25 us to build.
 */
static int
thread_mnt_ns(int tid, uint64_t *ns)
{
    struct stat st;
    int pidfd, nsfd;

    if (__atomic_load_n(&pidfd_namespaces, __ATOMIC_RELAXED)) {
        pidfd = (int)syscall(SYS_pidfd_open, tid, PIDFD_THREAD);
        if (pidfd >= 0) {
            nsfd = ioctl(pidfd, PIDFD_GET_MNT_NAMESPACE, 0);
            close(pidfd);
            if (nsfd >= 0) {
                int ok = fstat(nsfd, &st) == 0;
                close(nsfd);
                if (ok && st.st_ino != 0 && st.st_ino != GONE) {
                    *ns = st.st_ino;
                    return 0;
                }
            } else if (errno == ENOTTY || errno == EINVAL) {
                __atomic_store_n(&pidfd_namespaces, 0, __ATOMIC_RELAXED);
            }
        } else if (errno == EINVAL) {
            __atomic_store_n(&pidfd_namespaces, 0, __ATOMIC_RELAXED);
        }
    }
    return mnt_ns_of(tid, ns);
}

/* Allow the access; 0 when the kernel took the answer (the fd is then closed). */
static int
allow(int group, int fd)
{
    struct fanotify_response answer = {.fd = fd, .response = FAN_ALLOW};

    if (write(group, &answer, sizeof answer) != (ssize_t)sizeof answer)
        return -1;
    close(fd);
    return 0;
}

/* Take the thread's pending exec, if it has one: 1 and its file, else 0. */
static int
take_pending(ExecCache *self, int32_t tid, struct pending *out)
{
    for (size_t i = 0; i < self->pending_count; i++) {
        if (self->pending[i].tid == tid) {
            *out = self->pending[i];
            self->pending[i] = self->pending[--self->pending_count];
            return 1;
        }
    }
    return 0;
}

static void
note_pending(ExecCache *self, int32_t tid, const struct version *v)
{
    if (self->pending_count == MAX_PENDING)
        self->pending_count = 0;
    self->pending[self->pending_count++] =
        (struct pending){.tid = tid, .dev = v->dev, .ino = v->ino};
}

/* One event: 1 if answered here, 0 if it is the agent's. */
static int
answer(ExecCache *self, int group, const struct fanotify_event_metadata *m)
{
    struct pending exec;
    struct version v = {0};
    struct stat st;
    int had_exec;

    if (m->fd < 0)
        return 0;

    // Whatever the thread's event is, it ends the wait for an exec's open.
    had_exec = take_pending(self, m->pid, &exec);

    if (m->mask & FAN_OPEN_EXEC_PERM) {
        if (fstat(m->fd, &st) != 0 || !S_ISREG(st.st_mode))
            return 0;
        v.dev = st.st_dev;
        v.ino = st.st_ino;
        v.ctime = nanoseconds(&st.st_ctim);
        v.mtime = nanoseconds(&st.st_mtim);
        if (thread_mnt_ns(m->pid, &v.ns) != 0)
            return 0;
        if (!contains(self, &v) || allow(group, m->fd) != 0)
            return 0;
        note_pending(self, m->pid, &v);
        __atomic_add_fetch(&self->answered, 1, __ATOMIC_RELAXED);
        return 1;
    }

    // The open of an exec answered here: the same file, the same thread.
    if (!(m->mask & FAN_OPEN_PERM) || !had_exec)
        return 0;
    if (fstat(m->fd, &st) != 0 || (uint64_t)st.st_dev != exec.dev ||
        (uint64_t)st.st_ino != exec.ino)
        return 0;
    return allow(group, m->fd) == 0;
}

/* Hand the `count` events in `events` to the agent (GIL held). */
static int
hand_over(PyObject *handle, const struct fanotify_event_metadata **events,
          size_t count)
{
    PyObject *list, *result;

    list = PyList_New((Py_ssize_t)count);
    if (list == NULL)
        return -1;
    for (size_t i = 0; i < count; i++) {
        PyObject *event = Py_BuildValue(
            "(Kii)", (unsigned long long)events[i]->mask, events[i]->fd,
            events[i]->pid
        );
        if (event == NULL) {
            Py_DECREF(list);
            return -1;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, event);
    }
    result = PyObject_CallOneArg(handle, list);
    Py_DECREF(list);
    Py_XDECREF(result);
    return result == NULL ? -1 : 0;
}

static int64_t
now_ns(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return nanoseconds(&t);
}

/*
 * Wait for the group or the wake fd: poll without sleeping until `spin_until`
 * (see Agent.run), then sleep.  Returns READY_GROUP and READY_WAKE for the
 * fds with something to read, or -1 on an error.
 */
#define READY_GROUP 1
#define READY_WAKE 2

static int
wait_for(int group, int wake, int64_t spin_until)
{
    struct pollfd fds[2] = {{.fd = group, .events = POLLIN},
                            {.fd = wake, .events = POLLIN}};
    int n;

    for (;;) {
        int spinning = now_ns() < spin_until;

        n = poll(fds, 2, spinning ? 0 : -1);
        if (n < 0 && errno != EINTR)
            return -1;
        if (n > 0)
            return (fds[0].revents ? READY_GROUP : 0) |
                   (fds[1].revents ? READY_WAKE : 0);
        if (spinning)
            sched_yield();
    }
}

PyDoc_STRVAR(serve_doc,
"serve(group, wake, busy_poll, handle)\n\n"
"Read fanotify `group` and answer the execs the table allows, and their\n"
"opens; call handle(events) with every other event, a list of (mask, fd,\n"
"pid) in the order read. Returns when `wake` is readable (after reading it),\n"
"or raises what handle raised. `busy_poll` is in seconds (see Agent.run).");

static PyObject *
serve(ExecCache *self, PyObject *args)
{
    const struct fanotify_event_metadata *others[READ_SIZE / FAN_EVENT_METADATA_LEN];
    const struct fanotify_event_metadata *m;
    int group, wake, woken = 0, failed = 0, saved_errno = 0, bad_version = -1;
    double busy_poll;
    PyObject *handle;
    int64_t spin_until = 0;
    char drain[64];

    if (!PyArg_ParseTuple(args, "iidO:serve", &group, &wake, &busy_poll, &handle))
        return NULL;
    if (self->serving) {
        PyErr_SetString(PyExc_RuntimeError, "serve() is already running");
        return NULL;
    }
    self->serving = 1;

    Py_BEGIN_ALLOW_THREADS
    while (!failed) {
        ssize_t len;
        size_t count = 0;
        int ready = wait_for(group, wake, spin_until);

        if (ready < 0) {
            saved_errno = errno;
            failed = 1;
            break;
        }
        if (ready & READY_WAKE) {
            if (read(wake, drain, sizeof drain) < 0) {
                // Nothing was waiting after all: the wake still counts.
            }
            woken = 1;
        }
        if (!(ready & READY_GROUP))
            break;

        // What is queued is read even when woken, once: then serve returns.
        len = read(group, self->queue, READ_SIZE);
        if (len < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                if (woken)
                    break;
                continue;
            }
            saved_errno = errno;
            failed = 1;
            break;
        }
        for (m = (const void *)self->queue; FAN_EVENT_OK(m, len);
             m = FAN_EVENT_NEXT(m, len)) {
            if (m->vers != FANOTIFY_METADATA_VERSION) {
                // A layout this code does not know: nothing after it can be
                // read safely.  The agent dies; its successor denies what is left.
                bad_version = m->vers;
                break;
            }
            if (!answer(self, group, m))
                others[count++] = m;
        }
        spin_until = now_ns() + (int64_t)(busy_poll * 1e9);

        if (count > 0 || bad_version >= 0) {
            Py_BLOCK_THREADS
            failed = count > 0 && hand_over(handle, others, count) != 0;
            if (!failed && bad_version >= 0) {
                PyErr_Format(PyExc_OSError, "fanotify metadata version %d", bad_version);
                failed = 1;
            }
            Py_UNBLOCK_THREADS
        }
        if (woken)
            break;
    }
    Py_END_ALLOW_THREADS

    self->serving = 0;
    if (failed && saved_errno != 0) {
        errno = saved_errno;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (failed)
        return NULL;
    Py_RETURN_NONE;
}

/* ---- the table, for the agent ----------------------------------------- */

PyDoc_STRVAR(add_doc,
"add(mnt_ns, st_dev, st_ino, ctime_ns, mtime_ns) -> bool\n\n"
"Allow later execs of this file version by threads of `mnt_ns` as they are\n"
"read. False when the table is full (those execs then go to the agent).");

static PyObject *
add(ExecCache *self, PyObject *args)
{
    struct version v;
    struct version *slot;

    if (!PyArg_ParseTuple(args, "KKKLL:add", &v.ns, &v.dev, &v.ino, &v.ctime,
                          &v.mtime))
        return NULL;
    if (v.ns == 0 || v.ns == GONE) {
        PyErr_Format(PyExc_ValueError, "mount namespace %llu",
                     (unsigned long long)v.ns);
        return NULL;
    }

    pthread_mutex_lock(&self->lock);
    if (self->used >= MAX_VERSIONS) {
        pthread_mutex_unlock(&self->lock);
        Py_RETURN_FALSE;
    }

    // At most half the slots in use or freed, so that searches stay short:
    // rebuilt without the freed ones, and twice as large once a quarter is used.
    if (self->slots == NULL || 2 * (self->used + self->gone + 1) > self->capacity) {
        size_t capacity = self->slots == NULL ? FIRST_SLOTS : self->capacity;
        if (4 * (self->used + 1) > capacity)
            capacity *= 2;
        if (rebuild(self, capacity) != 0) {
            pthread_mutex_unlock(&self->lock);
            return PyErr_NoMemory();
        }
    }

    slot = find(self, &v);
    if (slot->ns == 0 || slot->ns == GONE) {
        if (slot->ns == GONE)
            self->gone--;
        *slot = v;
        self->used++;
    }
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(forget_doc,
"forget(mnt_ns)\n\nDrop every version allowed in `mnt_ns`.");

static PyObject *
forget(ExecCache *self, PyObject *args)
{
    unsigned long long ns;

    if (!PyArg_ParseTuple(args, "K:forget", &ns))
        return NULL;
    if (ns == 0 || ns == GONE) {
        PyErr_Format(PyExc_ValueError, "mount namespace %llu", ns);
        return NULL;
    }

    pthread_mutex_lock(&self->lock);
    for (size_t i = 0; i < self->capacity; i++) {
        if (self->slots[i].ns == ns) {
            self->slots[i].ns = GONE;
            self->used--;
            self->gone++;
        }
    }
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(clear_doc, "clear()\n\nDrop every version.");

static PyObject *
clear(ExecCache *self, PyObject *unused)
{
    pthread_mutex_lock(&self->lock);
    if (self->slots != NULL)
        memset(self->slots, 0, self->capacity * sizeof *self->slots);
    self->used = self->gone = 0;
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}

static Py_ssize_t
length(ExecCache *self)
{
    Py_ssize_t n;

    pthread_mutex_lock(&self->lock);
    n = (Py_ssize_t)self->used;
    pthread_mutex_unlock(&self->lock);
    return n;
}

static PyObject *
new_cache(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    ExecCache *self;

    if (PyTuple_GET_SIZE(args) != 0 || (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0)) {
        PyErr_SetString(PyExc_TypeError, "ExecCache() takes no arguments");
        return NULL;
    }
    self = (ExecCache *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    // Before anything can fail: dealloc destroys the mutex.
    pthread_mutex_init(&self->lock, NULL);
    self->queue = malloc(READ_SIZE);
    if (self->queue == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void
dealloc(ExecCache *self)
{
    pthread_mutex_destroy(&self->lock);
    free(self->slots);
    free(self->queue);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
get_answered(ExecCache *self, void *unused)
{
    return PyLong_FromUnsignedLongLong(
        __atomic_load_n(&self->answered, __ATOMIC_RELAXED)
    );
}

static PyGetSetDef cache_getset[] = {
    {"answered", (getter)get_answered, NULL, "Execs answered by serve().", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef cache_methods[] = {
    {"serve", (PyCFunction)serve, METH_VARARGS, serve_doc},
    {"add", (PyCFunction)add, METH_VARARGS, add_doc},
    {"forget", (PyCFunction)forget, METH_VARARGS, forget_doc},
    {"clear", (PyCFunction)clear, METH_NOARGS, clear_doc},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods cache_sequence = {.sq_length = (lenfunc)length};

static PyTypeObject cache_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cvtpm.measure._execcache.ExecCache",
    .tp_doc = "File versions whose exec is allowed as it is read (see add).",
    .tp_basicsize = sizeof(ExecCache),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = new_cache,
    .tp_dealloc = (destructor)dealloc,
    .tp_methods = cache_methods,
    .tp_getset = cache_getset,
    .tp_as_sequence = &cache_sequence,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "cvtpm.measure._execcache",
    .m_doc = "The agent's reader, which answers execs seen before (see ExecCache).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__execcache(void)
{
    PyObject *m;

    if (PyType_Ready(&cache_type) < 0)
        return NULL;
    m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "ExecCache", (PyObject *)&cache_type) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
