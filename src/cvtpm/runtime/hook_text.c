/*
 * The OCI hook's text: byte buffers, and JSON and UTF-8 read only as far as
 * the hook needs them, by the rules of hook_main.py.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hook_text.h"

void put(struct buf *b, const void *data, size_t len)
{
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + len + 1)
            cap *= 2;
        char *grown = realloc(b->data, cap);
        if (grown == NULL)
            fail(1, "out of memory");
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
}

void puts_buf(struct buf *b, const char *text)
{
    put(b, text, strlen(text));
}

/* Read `fd` to its end, or past `limit` bytes; false on a read error. */
int read_all(int fd, struct buf *b, size_t limit)
{
    char chunk[65536];

    while (b->len <= limit) {
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n == 0)
            return 1;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return 0;
        }
        put(b, chunk, (size_t)n);
    }
    return 1;
}

/*
 * `data` for a one-line message: control bytes as \xNN, and bytes of 0x80
 * and above too unless `keep_utf8`; with it (UTF-8 text), C1 controls as
 * \xNN and U+2028/U+2029 as \uNNNN (hook_main.shown and _one_line).
 */
const char *shown(const char *data, size_t len, int keep_utf8)
{
    const unsigned char *p = (const unsigned char *)data, *end = p + len;
    struct buf out = {0};
    char hex[8];

    while (p < end) {
        /* In UTF-8: a C1 control is C2 80..9F, U+2028/9 is E2 80 A8/A9. */
        int c1 = keep_utf8 && end - p > 1 && p[0] == 0xC2 && p[1] >= 0x80 &&
                 p[1] <= 0x9F;
        int separator = keep_utf8 && end - p > 2 && p[0] == 0xE2 && p[1] == 0x80 &&
                        (p[2] == 0xA8 || p[2] == 0xA9);
        if (c1) {
            snprintf(hex, sizeof hex, "\\x%02x", p[1]);
            p += 2;
        } else if (separator) {
            snprintf(hex, sizeof hex, "\\u%04x", 0x2000 + p[2] - 0x80);
            p += 3;
        } else if ((*p >= 0x20 && *p < 0x7F) || (keep_utf8 && *p >= 0x80)) {
            put(&out, p++, 1);
            continue;
        } else {
            snprintf(hex, sizeof hex, "\\x%02x", *p++);
        }
        puts_buf(&out, hex);
    }
    puts_buf(&out, "");
    return out.data;
}

/*
 * Whether `data` is UTF-8 as Python's strict decoder takes it: no overlong
 * forms, no surrogates, nothing above U+10FFFF.
 */
int valid_utf8(const unsigned char *p, size_t len)
{
    const unsigned char *end = p + len;

    while (p < end) {
        unsigned char c = *p++, lo = 0x80, hi = 0xBF; /* the next byte's range */
        int more;
        if (c < 0x80) {
            more = 0;
        } else if (c >= 0xC2 && c < 0xE0) {
            more = 1;
        } else if (c >= 0xE0 && c < 0xF0) { /* no overlongs, no surrogates */
            more = 2, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        } else if (c >= 0xF0 && c < 0xF5) { /* no overlongs, nothing > U+10FFFF */
            more = 3, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        } else {
            return 0;
        }
        if (end - p < more)
            return 0;
        for (int i = 0; i < more; i++, p++, lo = 0x80, hi = 0xBF)
            if (*p < lo || *p > hi)
                return 0;
    }
    return 1;
}

const char *memfind(const char *hay, size_t len, const char *needle)
{
    return memmem(hay, len, needle, strlen(needle));
}

/* The last `needle` in `hay`, or NULL (Python's bytes.rfind). */
const char *memfind_last(const char *hay, size_t len, const char *needle)
{
    const char *last = NULL, *end = hay + len;

    for (const char *at = hay; (at = memfind(at, (size_t)(end - at), needle)) != NULL;
         at++)
        last = at;
    return last;
}

/* Python's bytes.strip() white space, which hook_main.py's rules use. */
int is_space(char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

const char *skip_space(const char *p, const char *end)
{
    while (p < end && is_space(*p))
        p++;
    return p;
}

/* The four hex digits at `p` as a number, or -1. */
static long hex4(const char *p, const char *end)
{
    long value = 0;

    if (end - p < 4)
        return -1;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int digit = c >= '0' && c <= '9'   ? c - '0'
                    : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                           : -1;
        if (digit < 0)
            return -1;
        value = value * 16 + digit;
    }
    return value;
}

/* -- JSON strings: only as far as the hook needs them -------------------- */

/*
 * The JSON string at `p` (its opening quote), decoded into `out`; the
 * position after its closing quote, or NULL if it is not a whole string.
 * With `plain`, any escape also gives NULL (the caller is then unsure).
 */
const char *json_string(const char *p, const char *end, struct buf *out, int plain)
{
    if (p >= end || *p != '"')
        return NULL;
    for (p++; p < end; p++) {
        if (*p == '"')
            return p + 1;
        if (*p != '\\') {
            put(out, p, 1);
            continue;
        }
        if (plain || ++p >= end)
            return NULL;
        const char *simple = strchr("\"\\/bfnrt", *p);
        if (simple != NULL && *p != '\0') {
            put(out, &"\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"], 1);
            continue;
        }
        long code = *p == 'u' ? hex4(p + 1, end) : -1;
        if (code < 0)
            return NULL;
        p += 4;
        /* A surrogate pair is one code point; a lone half becomes U+FFFD. */
        if (code >= 0xD800 && code < 0xDC00 && end - p > 6 && p[1] == '\\' &&
            p[2] == 'u') {
            long low = hex4(p + 3, end);
            if (low >= 0xDC00 && low < 0xE000) {
                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                p += 6;
            }
        }
        if (code >= 0xD800 && code < 0xE000)
            code = 0xFFFD;
        char utf8[4];
        size_t n;
        if (code < 0x80) {
            utf8[0] = (char)code, n = 1;
        } else if (code < 0x800) {
            utf8[0] = (char)(0xC0 | code >> 6), n = 2;
        } else if (code < 0x10000) {
            utf8[0] = (char)(0xE0 | code >> 12), n = 3;
        } else {
            utf8[0] = (char)(0xF0 | code >> 18), n = 4;
        }
        for (size_t i = 1; i < n; i++)
            utf8[i] = (char)(0x80 | ((code >> (6 * (n - 1 - i))) & 0x3F));
        put(out, utf8, n);
    }
    return NULL;
}

/* Whether a JSON string at `p` is whole; the position after it, or NULL. */
static const char *skip_string(const char *p, const char *end)
{
    struct buf ignored = {0};

    p = json_string(p, end, &ignored, 0);
    free(ignored.data);
    return p;
}

/*
 * The position after the JSON value at `p`, or NULL if it does not end: a
 * string, an object or array to its matching bracket, or a bare word.
 */
static const char *skip_value(const char *p, const char *end)
{
    if (p < end && *p == '"')
        return skip_string(p, end);
    if (p < end && (*p == '{' || *p == '[')) {
        int depth = 0;
        while (p < end) {
            if (*p == '"') {
                if ((p = skip_string(p, end)) == NULL)
                    return NULL;
                continue;
            }
            depth += (*p == '{' || *p == '[') - (*p == '}' || *p == ']');
            p++;
            if (depth == 0)
                return p;
        }
        return NULL;
    }
    const char *word = p;
    while (p < end && !is_space(*p) && !strchr(",:{}[]\"", *p))
        p++;
    return p > word ? p : NULL;
}

/*
 * The string value of top-level key `key` of the JSON object `doc`, into
 * `out`; false if `doc` is not one whole object holding it as a string.
 * (Values are skipped by their brackets and quotes, not checked.)  A key
 * given twice counts as its last, as in Python's json.
 */
int top_level_string(const char *doc, size_t len, const char *key, struct buf *out)
{
    const char *end = doc + len, *p = doc;
    int found = 0;

    /* json.loads(bytes) reads past a UTF-8 byte order mark. */
    if (len >= 3 && memcmp(doc, "\xEF\xBB\xBF", 3) == 0)
        p += 3;
    p = skip_space(p, end);

    if (p >= end || *p++ != '{')
        return 0;
    if ((p = skip_space(p, end)) < end && *p == '}')
        return 0;
    for (;;) {
        struct buf name = {0};
        p = json_string(skip_space(p, end), end, &name, 0);
        if (p == NULL || (p = skip_space(p, end)) >= end || *p++ != ':')
            return 0;
        p = skip_space(p, end);
        int wanted = name.len == strlen(key) && name.data != NULL &&
                     strcmp(name.data, key) == 0;
        free(name.data);
        if (wanted && out->data != NULL)
            out->data[0] = '\0', out->len = 0;
        p = wanted ? json_string(p, end, out, 0) : skip_value(p, end);
        if (p == NULL || (p = skip_space(p, end)) >= end)
            return 0;
        found |= wanted;
        if (*p == '}')
            return found && skip_space(p + 1, end) == end;
        if (*p++ != ',')
            return 0;
    }
}
