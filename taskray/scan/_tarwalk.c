/* The common case of blob.walk_tar, in C: a plain tar whose members are all regular files or folders
 * with short ASCII names that need no cleaning. That is nearly every TaskTrove blob, and walking its
 * headers in Python cost a fifth of the scan's CPU (a dozen bytecode-level steps per header).
 *
 * walk(buf, max_members, checksums) returns (members, spans, raw_bytes), exactly what the Python walker
 * would have produced, or None as soon as anything is not plain: pax or GNU long names, links,
 * devices, names with "..", "//", "\\", a leading "/" or ".", non-ASCII bytes, odd number fields, a
 * bad checksum, truncation, too many members. The Python walker then does the whole blob and is the
 * one place that decides what such a blob means (errors, skipped members), so this file never needs
 * to agree with it on anything but the boring case. tests/test_blob.py checks that they agree.
 *
 * find_gzip_magic(buf, start) is bytes.find(b"\x1f\x8b", start), fast: blob._gunzip_whole looks for
 * where a second gzip member could begin in every blob.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* tar's numeric fields: octal digits, then NULs or spaces; anything else (base-256, leading spaces,
 * an empty field) is left to Python. */
static int parse_octal(const unsigned char *field, int width, long long *out) {
    int end = width;
    while (end > 0 && (field[end - 1] == 0 || field[end - 1] == ' ')) end--;
    if (end == 0) return 0;
    long long value = 0;
    for (int i = 0; i < end; i++) {
        if (field[i] < '0' || field[i] > '7') return 0;
        if (value > (1LL << 52)) return 0;
        value = value * 8 + (field[i] - '0');
    }
    *out = value;
    return 1;
}

static int checksum_ok(const unsigned char *h) {
    long long stored;
    if (!parse_octal(h + 148, 8, &stored)) return 0;
    long long unsigned_sum = 8 * 32, signed_sum = 8 * 32;
    for (int i = 0; i < 512; i++) {
        if (i >= 148 && i < 156) continue;
        unsigned_sum += h[i];
        signed_sum += (signed char)h[i];
    }
    return stored == unsigned_sum || stored == signed_sum;
}

static int all_zero(const unsigned char *p, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (p[i]) return 0;
    return 1;
}

/* Copy the NUL-terminated field into `out` (at `len`), refusing non-ASCII bytes. */
static int append_cstr(char *out, Py_ssize_t *len, const unsigned char *field, int width) {
    for (int i = 0; i < width && field[i]; i++) {
        if (field[i] >= 0x80) return 0;
        out[(*len)++] = (char)field[i];
    }
    return 1;
}

/* blob.safe_name's fast path, on ASCII: the name unchanged but for a leading "./" and trailing "/". */
static int plain_name(const char *name, Py_ssize_t len, Py_ssize_t *start, Py_ssize_t *stop) {
    Py_ssize_t s = 0;
    if (len >= 2 && name[0] == '.' && name[1] == '/') s = 2;
    if (s >= len || name[s] == '/' || name[s] == '.') return 0;
    if (len - s >= 2 && name[s + 1] == ':') return 0;
    for (Py_ssize_t i = s; i < len; i++) {
        char c = name[i];
        if (c == '\\') return 0;
        if (i + 1 < len && ((c == '.' && name[i + 1] == '.') || (c == '/' && (name[i + 1] == '/' || name[i + 1] == '.'))))
            return 0;
    }
    Py_ssize_t e = len;
    while (e > s && name[e - 1] == '/') e--;
    if (e == s) return 0;
    *start = s;
    *stop = e;
    return 1;
}

static PyObject *walk(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    Py_ssize_t max_members;
    int checksums;
    if (!PyArg_ParseTuple(args, "y*np", &view, &max_members, &checksums)) return NULL;
    const unsigned char *buf = view.buf;
    Py_ssize_t end = view.len, off = 0, count = 0;
    long long raw_bytes = 0;
    PyObject *members = PyDict_New(), *spans = PyDict_New(), *result = NULL;
    if (!members || !spans) goto done;
    char name[256 + 1];
    int ended = 0;
    while (off + 512 <= end) {
        const unsigned char *h = buf + off;
        if (h[0] == 0 && all_zero(h, 512)) {
            ended = 1; /* end-of-archive marker: Python stops here too, whatever follows */
            break;
        }
        if (checksums && !checksum_ok(h)) goto fallback;
        long long size;
        if (!parse_octal(h + 124, 12, &size)) goto fallback;
        Py_ssize_t start = off + 512;
        if (size > end - start) goto fallback;
        off = start + (Py_ssize_t)((size + 511) / 512 * 512);
        char kind = (char)h[156];
        if (kind != '0' && kind != 0 && kind != '7' && kind != '5') goto fallback;
        if (++count > max_members) goto fallback;
        if (kind == '5') continue;
        Py_ssize_t len = 0;
        if (h[345] != 0 && memcmp(h + 257, "ustar", 5) == 0) {
            if (!append_cstr(name, &len, h + 345, 155)) goto fallback;
            name[len++] = '/';
        }
        if (!append_cstr(name, &len, h, 100)) goto fallback;
        Py_ssize_t s, e;
        if (!plain_name(name, len, &s, &e)) goto fallback;
        PyObject *key = PyUnicode_FromStringAndSize(name + s, e - s);
        PyObject *size_obj = key ? PyLong_FromLongLong(size) : NULL;
        PyObject *span = size_obj ? Py_BuildValue("(nO)", start, size_obj) : NULL;
        int failed = !span || PyDict_SetItem(members, key, size_obj) || PyDict_SetItem(spans, key, span);
        Py_XDECREF(key);
        Py_XDECREF(size_obj);
        Py_XDECREF(span);
        if (failed) goto done;
        raw_bytes += size;
    }
    /* no end marker: fine if the last member ended cleanly and only zeros follow, as in Python */
    if (!ended && (off > end || (off < end && !all_zero(buf + off, end - off)))) goto fallback;
    result = Py_BuildValue("(OOL)", members, spans, raw_bytes);
    goto done;
fallback:
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(members);
    Py_XDECREF(spans);
    PyBuffer_Release(&view);
    return result;
}

/* Where the first gzip magic (1f 8b) at or after `start` is in buf, or -1. bytes.find (and memmem) step
 * through a short needle's haystack a byte at a time, a third as long as inflating the blob takes;
 * memchr jumps between the few 0x1f bytes. */
static PyObject *find_gzip_magic(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "y*n", &view, &start)) return NULL;
    const unsigned char *buf = view.buf, *end = buf + view.len;
    Py_ssize_t at = -1;
    const unsigned char *p = start >= 0 && start < view.len ? buf + start : end;
    while (p + 1 < end && (p = memchr(p, 0x1f, end - 1 - p)) != NULL) {
        if (p[1] == 0x8b) {
            at = p - buf;
            break;
        }
        p++;
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(at);
}

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS, "walk(buf, max_members, checksums) -> (members, spans, raw_bytes) or None"},
    {"find_gzip_magic", find_gzip_magic, METH_VARARGS, "find_gzip_magic(buf, start) -> index of 1f 8b, or -1"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_tarwalk", .m_size = -1, .m_methods = methods,
};

PyMODINIT_FUNC PyInit__tarwalk(void) { return PyModule_Create(&module); }
