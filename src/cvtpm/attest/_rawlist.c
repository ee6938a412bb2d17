/*
 * cvtpm.attest._rawlist: the verifier's per-entry loops over raw list entries.
 *
 * A verifier walks every entry of every list it is sent, so these loops are
 * its cost per entry; in Python each step of them (a slice, a tuple, a hash
 * object) costs more than the work itself. They take and give what
 * cvtpm.attest._fastlist documents ("Raw" tuples: PCR, template name,
 * template digest, template data) and follow it rule for rule; the hashes
 * are OpenSSL's (libcrypto), as they are hashlib's.
 *
 * Byte layouts: the binary list is what ima_fs.c writes (little-endian
 * fields on x86 and arm64), the extend rule that of
 * cvtpm.ima.entry.Entry.pcr_extend_digest.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#define MAX_BANKS 8

/* The templates whose binary template data is hashed as it stands. */
static PyObject *name_ima_ng, *name_ima_sig, *name_ima_buf;

/* The PCR banks, by cvtpm's names, with libcrypto's hashes. */
static const char *bank_names[] = {"sha1", "sha256", "sha384", "sha512"};
#define BANK_COUNT 4
static EVP_MD *bank_mds[BANK_COUNT];

/* The bank hash whose digest is `size` bytes (a template digest's), or NULL. */
static EVP_MD *
md_of_size(Py_ssize_t size)
{
    for (int i = 0; i < BANK_COUNT; i++)
        if (EVP_MD_get_size(bank_mds[i]) == size)
            return bank_mds[i];
    return NULL;
}

static uint32_t
le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static int
all_zero(const char *p, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* The name object for a fast template's name, or NULL for any other. */
static PyObject *
fast_name(const unsigned char *p, uint32_t len)
{
    if (len == 6 && memcmp(p, "ima-ng", 6) == 0)
        return name_ima_ng;
    if (len == 7 && memcmp(p, "ima-sig", 7) == 0)
        return name_ima_sig;
    if (len == 7 && memcmp(p, "ima-buf", 7) == 0)
        return name_ima_buf;
    return NULL;
}

/*
 * The entry raws[i], with its name (item 1), digest (2) and data (3) checked
 * to be bytes; a new reference the caller releases, or NULL on error.
 *
 * The reference keeps the fields alive even if a dict lookup ends up running
 * Python code (a key's __eq__) that changes the list, which is why the loops
 * read the list's length again for every entry; exact bytes, because a
 * subclass could do the same from its __hash__. i must be in range.
 */
static PyObject *
raw_fields(PyObject *raws, Py_ssize_t i, PyObject **name, PyObject **digest,
           PyObject **data)
{
    PyObject *raw = PyList_GET_ITEM(raws, i);
    if (!PyTuple_Check(raw) || PyTuple_GET_SIZE(raw) != 4) {
        PyErr_Format(PyExc_TypeError, "entry %zd is not a 4-tuple", i);
        return NULL;
    }
    *name = PyTuple_GET_ITEM(raw, 1);
    *digest = PyTuple_GET_ITEM(raw, 2);
    *data = PyTuple_GET_ITEM(raw, 3);
    if (!PyBytes_CheckExact(*name) || !PyBytes_CheckExact(*digest) ||
        !PyBytes_CheckExact(*data)) {
        PyErr_Format(PyExc_TypeError, "entry %zd holds a field that is not bytes",
                     i);
        return NULL;
    }
    Py_INCREF(raw);
    return raw;
}

static int
bytes_equal(PyObject *a, PyObject *b)
{
    Py_ssize_t n = PyBytes_GET_SIZE(a);
    return n == PyBytes_GET_SIZE(b) &&
           memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b), n) == 0;
}

/* split(data, digest_size) -> list[Raw] | None */
static PyObject *
split(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t digest_size;
    if (!PyArg_ParseTuple(args, "y*n", &view, &digest_size))
        return NULL;
    if (digest_size != 20 && digest_size != 32 && digest_size != 48 &&
        digest_size != 64) {
        PyBuffer_Release(&view);
        return PyErr_Format(PyExc_ValueError,
                            "template digest size %zd is none of 20, 32, 48, 64",
                            digest_size);
    }

    const unsigned char *p = view.buf;
    size_t end = (size_t)view.len, pos = 0;
    size_t head = 4 + (size_t)digest_size + 4;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        goto error;

    while (pos < end) {
        /* Each exit with None is a case cvtpm.ima.binary reports precisely:
         * a header cut short, a PCR out of range, another template, a name
         * or data field running past the end. */
        if (end - pos < head)
            goto not_simple;
        uint32_t pcr = le32(p + pos);
        uint32_t name_len = le32(p + pos + 4 + digest_size);
        size_t name_at = pos + head;
        if (pcr >= 24 || name_len > end - name_at)
            goto not_simple;
        PyObject *name = fast_name(p + name_at, name_len);
        size_t len_at = name_at + name_len;
        if (name == NULL || end - len_at < 4)
            goto not_simple;
        uint32_t data_len = le32(p + len_at);
        size_t data_at = len_at + 4;
        if (data_len > end - data_at)
            goto not_simple;

        PyObject *raw = Py_BuildValue(
            "(IOy#y#)", pcr, name, (const char *)p + pos + 4, digest_size,
            (const char *)p + data_at, (Py_ssize_t)data_len);
        if (raw == NULL)
            goto error;
        int failed = PyList_Append(out, raw);
        Py_DECREF(raw);
        if (failed)
            goto error;
        pos = data_at + data_len;
    }
    PyBuffer_Release(&view);
    return out;

not_simple:
    PyBuffer_Release(&view);
    Py_DECREF(out);
    Py_RETURN_NONE;
error:
    PyBuffer_Release(&view);
    Py_XDECREF(out);
    return NULL;
}

/* One PCR bank being replayed. */
struct bank {
    EVP_MD *md;
    EVP_MD_CTX *ctx;
    int size;
    int is_sha1;
    unsigned char value[EVP_MAX_MD_SIZE];
    const char *target; /* NULL: no target */
};

static int
hash_into(struct bank *b, const void *one, size_t one_len, const void *two,
          size_t two_len, unsigned char *out)
{
    return EVP_DigestInit_ex2(b->ctx, b->md, NULL) &&
           EVP_DigestUpdate(b->ctx, one, one_len) &&
           (two_len == 0 || EVP_DigestUpdate(b->ctx, two, two_len)) &&
           EVP_DigestFinal_ex(b->ctx, out, NULL);
}

static int
at_targets(struct bank *banks, int n)
{
    for (int i = 0; i < n; i++)
        if (banks[i].target == NULL ||
            memcmp(banks[i].value, banks[i].target, banks[i].size) != 0)
            return 0;
    return 1;
}

/*
 * replay(raws, banks, start, targets) -> (count | None, values)
 *
 * banks: bank names; start: each bank's value to extend from; targets: each
 * bank's value to stop at, or None to extend every entry.
 */
static PyObject *
replay(PyObject *self, PyObject *args)
{
    PyObject *raws, *names, *start, *targets;
    if (!PyArg_ParseTuple(args, "O!O!O!O", &PyList_Type, &raws, &PyList_Type,
                          &names, &PyList_Type, &start, &targets))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(names);
    if (n < 1 || n > MAX_BANKS || PyList_GET_SIZE(start) != n ||
        (targets != Py_None &&
         (!PyList_Check(targets) || PyList_GET_SIZE(targets) != n)))
        return PyErr_Format(PyExc_ValueError, "1 to %d banks, each with a start "
                            "value and a target", MAX_BANKS);

    struct bank banks[MAX_BANKS];
    unsigned char ones[EVP_MAX_MD_SIZE], extend[EVP_MAX_MD_SIZE];
    PyObject *result = NULL, *values = NULL;
    Py_ssize_t count = 0;
    int reached = 0;
    memset(banks, 0, sizeof banks);
    memset(ones, 0xff, sizeof ones);

    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t name_len;
        const char *name = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(names, i),
                                                   &name_len);
        if (name == NULL)
            goto done;
        struct bank *b = &banks[i];
        for (int k = 0; k < BANK_COUNT; k++)
            if ((size_t)name_len == strlen(bank_names[k]) &&
                strcmp(name, bank_names[k]) == 0)
                b->md = bank_mds[k];
        if (b->md == NULL) {
            PyErr_Format(PyExc_ValueError, "no PCR bank %R (sha1, sha256, sha384 "
                         "or sha512)", PyList_GET_ITEM(names, i));
            goto done;
        }
        b->ctx = EVP_MD_CTX_new();
        if (b->ctx == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        b->size = EVP_MD_get_size(b->md);
        b->is_sha1 = b->md == bank_mds[0];
        PyObject *value = PyList_GET_ITEM(start, i);
        if (!PyBytes_Check(value) || PyBytes_GET_SIZE(value) != b->size) {
            PyErr_Format(PyExc_ValueError, "start value of %s is not %d bytes",
                         name, b->size);
            goto done;
        }
        memcpy(b->value, PyBytes_AS_STRING(value), b->size);
        if (targets != Py_None) {
            PyObject *target = PyList_GET_ITEM(targets, i);
            if (!PyBytes_Check(target) || PyBytes_GET_SIZE(target) != b->size) {
                PyErr_Format(PyExc_ValueError, "quoted %s value is not %d bytes",
                             name, b->size);
                goto done;
            }
            b->target = PyBytes_AS_STRING(target);
        }
    }

    reached = at_targets(banks, (int)n);
    while (!reached && count < PyList_GET_SIZE(raws)) {
        PyObject *name, *digest, *data;
        PyObject *raw = raw_fields(raws, count, &name, &digest, &data);
        if (raw == NULL)
            goto done;
        const char *d = PyBytes_AS_STRING(digest);
        Py_ssize_t d_len = PyBytes_GET_SIZE(digest);
        int violation = all_zero(d, d_len);
        for (Py_ssize_t i = 0; i < n; i++) {
            struct bank *b = &banks[i];
            const unsigned char *with = extend;
            if (violation)
                with = ones;
            else if (b->is_sha1 && d_len == 20)
                with = (const unsigned char *)d;
            else if (!hash_into(b, PyBytes_AS_STRING(data),
                                PyBytes_GET_SIZE(data), NULL, 0, extend)) {
                Py_DECREF(raw);
                goto hash_failed;
            }
            if (!hash_into(b, b->value, b->size, with, b->size, b->value)) {
                Py_DECREF(raw);
                goto hash_failed;
            }
        }
        Py_DECREF(raw);
        count++;
        reached = at_targets(banks, (int)n);
    }

    values = PyList_New(n);
    if (values == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *value =
            PyBytes_FromStringAndSize((const char *)banks[i].value, banks[i].size);
        if (value == NULL) {
            Py_DECREF(values);
            goto done;
        }
        PyList_SET_ITEM(values, i, value);
    }
    if (reached)
        result = Py_BuildValue("(nN)", count, values);
    else
        result = Py_BuildValue("(ON)", Py_None, values);
    goto done;

hash_failed:
    PyErr_SetString(PyExc_RuntimeError, "libcrypto failed to hash");
done:
    for (Py_ssize_t i = 0; i < n; i++)
        EVP_MD_CTX_free(banks[i].ctx);
    return result;
}

/* A test of one entry's fields: 1 passes, 0 flags it, -1 on error. */
typedef int (*entry_test)(PyObject *name, PyObject *digest, PyObject *data,
                          void *context);

/* The positions in `raws` of the entries `test` flags, as a list of ints. */
static PyObject *
flagged(PyObject *raws, entry_test test, void *context)
{
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(raws); i++) {
        PyObject *name, *digest, *data;
        PyObject *raw = raw_fields(raws, i, &name, &digest, &data);
        if (raw == NULL)
            goto error;
        int passes = test(name, digest, data, context);
        Py_DECREF(raw);
        if (passes < 0)
            goto error;
        if (!passes) {
            PyObject *index = PyLong_FromSsize_t(i);
            int failed = index == NULL || PyList_Append(out, index);
            Py_XDECREF(index);
            if (failed)
                goto error;
        }
    }
    return out;

error:
    Py_DECREF(out);
    return NULL;
}

/* What template_matches needs besides the entry. */
struct template_check {
    EVP_MD_CTX *ctx;
    PyObject *known; /* dict: template data -> its SHA-1 digest, or None */
};

/*
 * Whether one entry's template digest is that of its data, as
 * Entry.template_digest_matches: hashed with the bank hash of the digest's
 * size, a violation's zeros always matching; `known` digests are compared
 * instead of hashed.
 */
static int
template_matches(PyObject *name, PyObject *digest, PyObject *data, void *context)
{
    struct template_check *check = context;
    Py_ssize_t size = PyBytes_GET_SIZE(digest);
    EVP_MD *md = md_of_size(size);
    if (md == NULL)
        return 0;
    if (all_zero(PyBytes_AS_STRING(digest), size))
        return 1;
    if (size == 20 && check->known != Py_None) {
        PyObject *expected = PyDict_GetItemWithError(check->known, data);
        if (expected == NULL && PyErr_Occurred())
            return -1;
        if (expected != NULL && PyBytes_Check(expected))
            return bytes_equal(expected, digest);
    }
    unsigned char out[EVP_MAX_MD_SIZE];
    if (!EVP_DigestInit_ex2(check->ctx, md, NULL) ||
        !EVP_DigestUpdate(check->ctx, PyBytes_AS_STRING(data),
                          PyBytes_GET_SIZE(data)) ||
        !EVP_DigestFinal_ex(check->ctx, out, NULL)) {
        PyErr_SetString(PyExc_RuntimeError, "libcrypto failed to hash");
        return -1;
    }
    return memcmp(out, PyBytes_AS_STRING(digest), size) == 0;
}

/* bad_templates(raws, known) -> list[int]; known: dict data -> SHA-1, or None */
static PyObject *
bad_templates(PyObject *self, PyObject *args)
{
    struct template_check check;
    PyObject *raws;
    if (!PyArg_ParseTuple(args, "O!O", &PyList_Type, &raws, &check.known))
        return NULL;
    if (check.known != Py_None && !PyDict_Check(check.known))
        return PyErr_Format(PyExc_TypeError, "known must be a dict or None");
    check.ctx = EVP_MD_CTX_new();
    if (check.ctx == NULL)
        return PyErr_NoMemory();
    PyObject *bad = flagged(raws, template_matches, &check);
    EVP_MD_CTX_free(check.ctx);
    return bad;
}

/* Whether the policy (its `allowed` template data) allows an entry outright. */
static int
plainly_allowed(PyObject *name, PyObject *digest, PyObject *data, void *allowed)
{
    int known = PyDict_Contains(allowed, data);
    if (known <= 0)
        return known;
    return bytes_equal(name, name_ima_ng) &&
           !all_zero(PyBytes_AS_STRING(digest), PyBytes_GET_SIZE(digest));
}

/* needing_policy(raws, allowed) -> list[int] */
static PyObject *
needing_policy(PyObject *self, PyObject *args)
{
    PyObject *raws, *allowed;
    if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &raws, &PyDict_Type,
                          &allowed))
        return NULL;
    return flagged(raws, plainly_allowed, allowed);
}

/* One known file-hash algorithm of a d-ng field: its name and digest size. */
struct digest_alg {
    const char *name;
    Py_ssize_t name_len;
    Py_ssize_t size;
};

#define MAX_ALGS 64

/*
 * Whether template data is d-ng|n-ng (then sig or buf, for ima-sig and
 * ima-buf) exactly as cvtpm.ima.template.unpack_fast accepts it: each field
 * behind its length and nothing after them, d-ng "<alg>:" NUL and a digest of
 * that algorithm's size, n-ng with one NUL, at its end.
 */
/* The known algorithms, copied from the caller's table. */
struct digest_algs {
    struct digest_alg alg[MAX_ALGS];
    int count;
};

static int
decodes(PyObject *name, PyObject *digest, PyObject *data, void *context)
{
    const struct digest_algs *algs = context;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    int fields;
    if (bytes_equal(name, name_ima_ng))
        fields = 2;
    else if (bytes_equal(name, name_ima_sig) || bytes_equal(name, name_ima_buf))
        fields = 3;
    else
        return 0;

    const unsigned char *at[3];
    Py_ssize_t len[3], pos = 0;
    for (int f = 0; f < fields; f++) {
        if (size - pos < 4)
            return 0;
        uint32_t field_len = le32(p + pos);
        if (field_len > (uint64_t)(size - pos - 4))
            return 0;
        at[f] = p + pos + 4;
        len[f] = field_len;
        pos += 4 + (Py_ssize_t)field_len;
    }
    if (pos != size)
        return 0;

    const unsigned char *colon = memchr(at[0], ':', len[0]);
    if (colon == NULL || colon == at[0] || colon + 1 >= at[0] + len[0] || colon[1])
        return 0;
    Py_ssize_t alg_len = colon - at[0], digest_len = len[0] - alg_len - 2;
    int known = 0;
    for (int a = 0; a < algs->count && !known; a++)
        known = algs->alg[a].name_len == alg_len &&
                algs->alg[a].size == digest_len &&
                memcmp(algs->alg[a].name, at[0], alg_len) == 0;
    if (!known)
        return 0;

    const unsigned char *nul = memchr(at[1], 0, len[1]);
    return nul != NULL && nul == at[1] + len[1] - 1;
}

/* malformed(raws, digest_sizes) -> list[int]; digest_sizes: {str: int} */
static PyObject *
malformed(PyObject *self, PyObject *args)
{
    PyObject *raws, *sizes;
    if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &raws, &PyDict_Type, &sizes))
        return NULL;

    /* The table is copied first: the test then runs no Python code. */
    struct digest_algs algs = {.count = 0};
    PyObject *key, *value;
    Py_ssize_t iter = 0;
    while (PyDict_Next(sizes, &iter, &key, &value)) {
        if (algs.count == MAX_ALGS)
            return PyErr_Format(PyExc_ValueError, "more than %d algorithms",
                                MAX_ALGS);
        struct digest_alg *a = &algs.alg[algs.count++];
        a->name = PyUnicode_AsUTF8AndSize(key, &a->name_len);
        a->size = PyLong_AsSsize_t(value);
        if (a->name == NULL || (a->size == -1 && PyErr_Occurred()))
            return NULL;
    }
    return flagged(raws, decodes, &algs);
}

static PyMethodDef methods[] = {
    {"split", split, METH_VARARGS,
     "split(data, digest_size): the entries of a binary list as Raw tuples, "
     "or None unless all are ima-ng, ima-sig or ima-buf and well formed."},
    {"replay", replay, METH_VARARGS,
     "replay(raws, banks, start, targets): extend from start until every bank "
     "equals its target (None: through every entry); (entries used or None, "
     "values)."},
    {"bad_templates", bad_templates, METH_VARARGS,
     "bad_templates(raws, known): positions of entries whose template digest "
     "is not that of their data; known maps data to its SHA-1 digest."},
    {"needing_policy", needing_policy, METH_VARARGS,
     "needing_policy(raws, allowed): positions of entries that are not "
     "non-violation ima-ng entries whose data `allowed` holds."},
    {"malformed", malformed, METH_VARARGS,
     "malformed(raws, digest_sizes): positions of entries whose template data "
     "does not decode as cvtpm.ima.template.unpack_fast decodes it."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "cvtpm.attest._rawlist",
    .m_doc = "The verifier's per-entry loops over raw list entries (_rawlist.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__rawlist(void)
{
    name_ima_ng = PyBytes_FromString("ima-ng");
    name_ima_sig = PyBytes_FromString("ima-sig");
    name_ima_buf = PyBytes_FromString("ima-buf");
    if (name_ima_ng == NULL || name_ima_sig == NULL || name_ima_buf == NULL)
        return NULL;
    for (int i = 0; i < BANK_COUNT; i++) {
        bank_mds[i] = EVP_MD_fetch(NULL, bank_names[i], NULL);
        if (bank_mds[i] == NULL)
            return PyErr_Format(PyExc_ImportError, "libcrypto has no %s",
                                bank_names[i]);
    }
    return PyModule_Create(&module);
}
