/* PNG row unfiltering for 8-bit grayscale, non-interlaced images (1 byte per pixel).
 *
 * The PNG decoder in imgae_dx/data/png_split.py inflates the concatenated IDAT data itself
 * (libdeflate, through the `deflate` package) and calls unfilter_gray8() here to undo the five
 * PNG filter types (None, Sub, Up, Average, Paeth; PNG spec section 9) row by row. The GIL is
 * released for the whole loop, so decode threads run in parallel.
 *
 *   unfilter_gray8(raw, out, width, height) -> None
 *       raw:  C-contiguous buffer of exactly (1 + width) * height bytes: every row is its filter
 *             type byte followed by `width` filtered bytes.
 *       out:  writable C-contiguous buffer of exactly width * height bytes (the pixels).
 *       Raises ValueError on a size mismatch or a filter type byte > 4 (naming the row).
 *
 * Pixel identity with libpng: every filter is the exact integer arithmetic of the spec. Paeth
 * uses an equivalent, branch-free formulation of the predictor (the "threshold" form used by
 * stb_image 2.28, itself public domain): with a = left, b = up, c = up-left,
 *     thresh = 3c - (a + b);  lo = min(a, b);  hi = max(a, b)
 *     pred = thresh <= lo ? hi : (hi <= thresh ? lo : c)
 * which equals the spec's predictor (nearest of a, b, c to a + b - c, ties a, then b) for all
 * byte inputs; the tests compare against libpng on every filter type.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* GCC at -O3 (Python's default CFLAGS) turns the Paeth selects back into a branch
 * (-fsplit-paths), which mispredicts on image data and doubles the time of Paeth rows. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-split-paths")
#endif

static void row_sub(const uint8_t *src, uint8_t *dst, Py_ssize_t w) {
    unsigned a = 0;
    for (Py_ssize_t x = 0; x < w; x++) {
        a = (uint8_t)(src[x] + a);
        dst[x] = (uint8_t)a;
    }
}

static void row_up(const uint8_t *src, const uint8_t *up, uint8_t *dst, Py_ssize_t w) {
    for (Py_ssize_t x = 0; x < w; x++) dst[x] = (uint8_t)(src[x] + up[x]);
}

static void row_avg(const uint8_t *src, const uint8_t *up, uint8_t *dst, Py_ssize_t w) {
    unsigned a = 0;
    for (Py_ssize_t x = 0; x < w; x++) {
        a = (uint8_t)(src[x] + ((a + up[x]) >> 1));
        dst[x] = (uint8_t)a;
    }
}

static void row_avg_first(const uint8_t *src, uint8_t *dst, Py_ssize_t w) {
    unsigned a = 0;
    for (Py_ssize_t x = 0; x < w; x++) {
        a = (uint8_t)(src[x] + (a >> 1));
        dst[x] = (uint8_t)a;
    }
}

static void row_paeth(const uint8_t *src, const uint8_t *up, uint8_t *dst, Py_ssize_t w) {
    int a = 0, c = 0;
    for (Py_ssize_t x = 0; x < w; x++) {
        int b = up[x];
        int thresh = 3 * c - (a + b);
        int lo = a < b ? a : b;
        int hi = a < b ? b : a;
        int t0 = hi <= thresh ? lo : c;
        int pred = thresh <= lo ? hi : t0;
        a = (uint8_t)(src[x] + pred);
        dst[x] = (uint8_t)a;
        c = b;
    }
}

/* Returns -1 on success, else the index of the first row with an invalid filter type. */
static Py_ssize_t unfilter(const uint8_t *raw, uint8_t *out, Py_ssize_t w, Py_ssize_t h) {
    for (Py_ssize_t y = 0; y < h; y++) {
        const uint8_t *src = raw + y * (w + 1);
        uint8_t filter = src[0];
        src++;
        uint8_t *dst = out + y * w;
        const uint8_t *up = y ? dst - w : NULL;
        switch (filter) {
        case 0:
            memcpy(dst, src, (size_t)w);
            break;
        case 1:
            row_sub(src, dst, w);
            break;
        case 2: /* Up on the first row adds zeros */
            if (up) row_up(src, up, dst, w);
            else memcpy(dst, src, (size_t)w);
            break;
        case 3:
            if (up) row_avg(src, up, dst, w);
            else row_avg_first(src, dst, w);
            break;
        case 4: /* Paeth on the first row (b = c = 0) predicts from the left: Sub */
            if (up) row_paeth(src, up, dst, w);
            else row_sub(src, dst, w);
            break;
        default:
            return y;
        }
    }
    return -1;
}

static PyObject *py_unfilter_gray8(PyObject *self, PyObject *args) {
    Py_buffer raw, out;
    Py_ssize_t w, h;
    if (!PyArg_ParseTuple(args, "y*w*nn", &raw, &out, &w, &h)) return NULL;
    PyObject *result = NULL;
    if (w <= 0 || h <= 0) {
        PyErr_Format(PyExc_ValueError, "width and height must be positive, got %zd x %zd", w, h);
    } else if (raw.len / (w + 1) != h || raw.len % (w + 1)) {
        PyErr_Format(PyExc_ValueError, "filtered data holds %zd bytes, expected (1 + %zd) * %zd",
                     raw.len, w, h);
    } else if (out.len / w != h || out.len % w) {
        PyErr_Format(PyExc_ValueError, "output buffer holds %zd bytes, expected %zd * %zd",
                     out.len, w, h);
    } else {
        Py_ssize_t bad;
        Py_BEGIN_ALLOW_THREADS
        bad = unfilter((const uint8_t *)raw.buf, (uint8_t *)out.buf, w, h);
        Py_END_ALLOW_THREADS
        if (bad >= 0) {
            PyErr_Format(PyExc_ValueError, "row %zd has filter type %d (0..4 allowed)", bad,
                         (int)((const uint8_t *)raw.buf)[bad * (w + 1)]);
        } else {
            result = Py_None;
            Py_INCREF(result);
        }
    }
    PyBuffer_Release(&raw);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"unfilter_gray8", py_unfilter_gray8, METH_VARARGS,
     "unfilter_gray8(raw, out, width, height): undo PNG row filters of 8-bit gray data into out "
     "(GIL released)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_png_unfilter",
                                    "PNG row unfiltering for 8-bit gray images (GIL released).",
                                    -1, methods};

PyMODINIT_FUNC PyInit__png_unfilter(void) { return PyModule_Create(&module); }
