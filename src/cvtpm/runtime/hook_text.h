/*
 * The OCI hook's text (hook_text.c): byte buffers, and JSON and UTF-8 read
 * only as far as cvtpm_hook.c needs them.
 */

#ifndef CVTPM_HOOK_TEXT_H
#define CVTPM_HOOK_TEXT_H

#include <stddef.h>

/* A byte buffer that grows; the hook's few allocations are never freed. */
struct buf {
    char *data;
    size_t len, cap;
};

/* Print "cvtpm-hook: error: ..." and exit with `code` (in cvtpm_hook.c). */
void fail(int code, const char *format, ...)
    __attribute__((noreturn, format(printf, 2, 3)));

/* Buffers: append bytes or a C string (kept NUL-terminated); read a file. */
void put(struct buf *b, const void *data, size_t len);
void puts_buf(struct buf *b, const char *text);
int read_all(int fd, struct buf *b, size_t limit);

/* Bytes: a one-line rendering, a UTF-8 check, searches, white space. */
const char *shown(const char *data, size_t len, int keep_utf8);
int valid_utf8(const unsigned char *p, size_t len);
const char *memfind(const char *hay, size_t len, const char *needle);
const char *memfind_last(const char *hay, size_t len, const char *needle);
int is_space(char c);
const char *skip_space(const char *p, const char *end);

/* JSON: one string decoded; the string value of a top-level key. */
const char *json_string(const char *p, const char *end, struct buf *out, int plain);
int top_level_string(const char *doc, size_t len, const char *key, struct buf *out);

#endif
