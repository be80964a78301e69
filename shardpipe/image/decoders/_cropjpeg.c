/* Crop-aware JPEG decode with the system libjpeg-turbo (jpeg_crop_scanline + jpeg_skip_scanlines).
 *
 * decode(data, out, scale_num, scale_denom, x, y, width, height, flags, max_pixels) -> (w, h)
 *
 * Decodes the box (x, y, width, height), in pixels of the image scaled by scale_num/scale_denom
 * (libjpeg's DCT scaling), as RGB into `out`, a writable C-contiguous buffer of at least
 * width * height * 3 bytes (a numpy array), and returns the scaled image's full (w, h).
 * Only the box's columns are inverse-DCT'd, upsampled and colour-converted (jpeg_crop_scanline,
 * to the iMCU column boundary), rows above the box are entropy-decoded without IDCT or colour
 * work (jpeg_skip_scanlines), and decoding stops after the box's last row (jpeg_abort_decompress).
 * With FLAG_CMYK, CMYK/YCCK files are decoded too, their rows converted to RGB as Pillow converts them.
 *
 * Errors never end the process: libjpeg's error_exit longjmps back here and raises `Error`
 * with libjpeg's message. Warnings (corrupt data that libjpeg would paper over) are errors too,
 * so a damaged image is reported, not half-decoded; nothing is printed to stderr. A header
 * declaring more than max_pixels pixels raises `TooLarge` before any pixel is decoded, and a
 * progressive file with more than MAX_SCANS scans is refused (a CPU-exhaustion attack).
 * The GIL is released while libjpeg works.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

#include "_jpegguard.h"
#include "_restart.h"

#define FLAG_FAST_IDCT 1     /* JDCT_IFAST: faster, slightly less accurate IDCT */
#define FLAG_FAST_UPSAMPLE 2 /* no "fancy" (triangle) chroma upsampling */
#define FLAG_INTERVALS 4     /* decode only the restart intervals covering the box (_restart.c) */
#define FLAG_CMYK 8          /* CMYK/YCCK files too, converted to RGB as Pillow converts them */
#define EDGE 8               /* extra columns decoded on each side of the box (see run) */
#define BAND 16              /* rows read per jpeg_read_scanlines call */

static PyObject *Error;    /* corrupt or unsupported data */
static PyObject *TooLarge; /* decompression bomb, subclass of Error */

enum outcome { OK = 0, FAILED, BOMB, BAD_BOX, BAD_COLOR, NO_MEMORY };

struct job {
    const unsigned char *data;
    size_t size;
    unsigned char *out;
    unsigned scale_num, scale_denom, x, y, width, height;
    int flags;
    unsigned long long max_pixels;
    unsigned full_w, full_h; /* out: the scaled image's size */
    unsigned long long image_w, image_h; /* out: the header's size */
};

/* libjpeg's CMYK samples to RGB exactly as Pillow does: it reads JPEG CMYK as inverted
   ("Adobe polarity", rawmode CMYK;I), then R = nk - c * nk / 255 with nk = 255 - k, rounded as
   its MULDIV255; with the inversion undone, nk is the stored K and c is 255 - the stored C. */
static void cmyk_to_rgb(unsigned char *out, const unsigned char *in, unsigned width) {
    for (unsigned x = 0; x < width; x++, in += 4, out += 3) {
        int nk = in[3];
        for (int c = 0; c < 3; c++) {
            int t = (255 - in[c]) * nk + 128;
            out[c] = (unsigned char)(nk - (((t >> 8) + t) >> 8));
        }
    }
}

/* Runs without the GIL. Returns an outcome; g->message says more for FAILED. */
static enum outcome run(struct job *job, struct guard *g) {
    struct jpeg_decompress_struct cinfo;
    /* volatile: modified between setjmp and longjmp */
    unsigned char *volatile row = NULL;
    volatile int created = 0;
    enum outcome result = OK;
    int cmyk, channels;

    memset(&cinfo, 0, sizeof cinfo);
    cinfo.err = jpeg_std_error(&g->pub);
    g->pub.error_exit = on_error;
    g->pub.emit_message = on_message;
    g->message[0] = '\0';
    if (setjmp(g->jump)) {
        result = FAILED;
        goto done;
    }
    jpeg_create_decompress(&cinfo);
    created = 1;
    g->progress.progress_monitor = on_progress;
    cinfo.progress = &g->progress;
    jpeg_mem_src(&cinfo, job->data, (unsigned long)job->size);
    jpeg_read_header(&cinfo, TRUE);
    job->image_w = cinfo.image_width;
    job->image_h = cinfo.image_height;
    if ((unsigned long long)cinfo.image_width * cinfo.image_height > job->max_pixels) {
        result = BOMB;
        goto done;
    }
    cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
    if (!(cmyk && (job->flags & FLAG_CMYK)) && cinfo.jpeg_color_space != JCS_YCbCr &&
        cinfo.jpeg_color_space != JCS_GRAYSCALE && cinfo.jpeg_color_space != JCS_RGB) {
        result = BAD_COLOR; /* CMYK / YCCK without FLAG_CMYK: the caller's fallback converts those */
        goto done;
    }
    /* grey is expanded to RGB by libjpeg-turbo; CMYK rows are converted below */
    cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
    channels = cmyk ? 4 : 3;
    cinfo.scale_num = job->scale_num;
    cinfo.scale_denom = job->scale_denom;
    if (job->flags & FLAG_FAST_IDCT) cinfo.dct_method = JDCT_IFAST;
    if (job->flags & FLAG_FAST_UPSAMPLE) cinfo.do_fancy_upsampling = FALSE;
    jpeg_calc_output_dimensions(&cinfo);
    job->full_w = cinfo.output_width;
    job->full_h = cinfo.output_height;
    if (job->width == 0 || job->height == 0 || job->x >= cinfo.output_width ||
        job->width > cinfo.output_width - job->x || job->y >= cinfo.output_height ||
        job->height > cinfo.output_height - job->y) {
        result = BAD_BOX;
        goto done;
    }
    jpeg_start_decompress(&cinfo);
    {
        /* Chroma upsampling treats the cropped columns' edges as the image's edges, so the
           outermost columns come out different from a whole-image decode: decode EDGE more
           columns on each side (one chroma sample at any sampling factor) and keep our part */
        JDIMENSION xoff = job->x > EDGE ? job->x - EDGE : 0;
        JDIMENSION right = job->x + job->width + EDGE < cinfo.output_width ? job->x + job->width + EDGE
                                                                            : cinfo.output_width;
        JDIMENSION cw = right - xoff;
        size_t pitch = (size_t)job->width * 3;
        int direct;
        if (xoff != 0 || cw != cinfo.output_width) jpeg_crop_scanline(&cinfo, &xoff, &cw);
        /* xoff moved left to an iMCU boundary and cw grew by as much */
        direct = (xoff == job->x && cw == job->width && !cmyk);
        if (!direct) { /* a scratch band of BAND rows: fewer calls, and whole row groups */
            row = (unsigned char *)malloc((size_t)cw * channels * BAND);
            if (row == NULL) {
                result = NO_MEMORY;
                goto done;
            }
        }
        if (job->y > 0 && jpeg_skip_scanlines(&cinfo, job->y) != job->y) {
            snprintf(g->message, sizeof g->message, "could not skip to row %u", job->y);
            result = FAILED;
            goto done;
        }
        for (unsigned r = 0; r < job->height;) {
            JSAMPROW rows[BAND];
            unsigned want = job->height - r < BAND ? job->height - r : BAND, got;
            for (unsigned i = 0; i < want; i++)
                rows[i] = direct ? job->out + (size_t)(r + i) * pitch : row + (size_t)i * cw * channels;
            got = jpeg_read_scanlines(&cinfo, rows, want);
            if (got == 0) {
                snprintf(g->message, sizeof g->message, "no data for row %u", job->y + r);
                result = FAILED;
                goto done;
            }
            if (cmyk)
                for (unsigned i = 0; i < got; i++)
                    cmyk_to_rgb(job->out + (size_t)(r + i) * pitch, rows[i] + (size_t)(job->x - xoff) * 4,
                                job->width);
            else if (!direct)
                for (unsigned i = 0; i < got; i++)
                    memcpy(job->out + (size_t)(r + i) * pitch, rows[i] + (size_t)(job->x - xoff) * 3, pitch);
            r += got;
        }
    }
done:
    if (created) jpeg_destroy_decompress(&cinfo); /* also aborts a decode stopped early */
    free(row);
    return result;
}

/* The box from a sub-image of the restart intervals that cover it; the whole file when it
   has no usable intervals or the sub-image fails in any way (libjpeg then gives the verdict). */
static enum outcome run_intervals(struct job *job, struct guard *g) {
    struct subimage sub;
    if (restart_subimage(job->data, job->size, job->scale_num, job->x, job->y, job->width, job->height,
                         job->max_pixels, &sub)) {
        struct job part = *job;
        enum outcome result;
        part.data = sub.data;
        part.size = sub.size;
        part.x = sub.x;
        part.y = sub.y;
        result = run(&part, g);
        free(sub.data);
        if (result == OK) {
            job->full_w = sub.full_w;
            job->full_h = sub.full_h;
            return OK;
        }
    }
    return run(job, g);
}

static PyObject *decode(PyObject *self, PyObject *args) {
    Py_buffer src, dst;
    struct job job;
    struct guard *g;
    enum outcome result;
    unsigned long long max_pixels;
    (void)self;
    memset(&job, 0, sizeof job);
    if (!PyArg_ParseTuple(args, "y*w*IIIIIIiK", &src, &dst, &job.scale_num, &job.scale_denom, &job.x, &job.y,
                          &job.width, &job.height, &job.flags, &max_pixels))
        return NULL;
    if (!PyBuffer_IsContiguous(&dst, 'C') || job.scale_num < 1 || job.scale_num > 16 || job.scale_denom != 8 ||
        (unsigned long long)dst.len < (unsigned long long)job.width * job.height * 3) {
        PyBuffer_Release(&src);
        PyBuffer_Release(&dst);
        PyErr_SetString(PyExc_ValueError,
                        "decode needs a C-contiguous output of width*height*3 bytes and scale n/8, 1 <= n <= 16");
        return NULL;
    }
    job.data = (const unsigned char *)src.buf;
    job.size = (size_t)src.len;
    job.out = (unsigned char *)dst.buf;
    job.max_pixels = max_pixels;
    g = (struct guard *)malloc(sizeof *g); /* the jmp_buf stays off the caller's frame */
    if (g == NULL) {
        PyBuffer_Release(&src);
        PyBuffer_Release(&dst);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    result = (job.flags & FLAG_INTERVALS) ? run_intervals(&job, g) : run(&job, g);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    switch (result) {
    case OK:
        free(g);
        return Py_BuildValue("(II)", job.full_w, job.full_h);
    case BOMB:
        PyErr_Format(TooLarge, "image of %llux%llu = %llu pixels exceeds the limit of %llu pixels", job.image_w,
                     job.image_h, job.image_w * job.image_h, job.max_pixels);
        break;
    case BAD_BOX:
        PyErr_Format(Error, "crop box %ux%u at (%u, %u) is not inside the %ux%u decoded image", job.width,
                     job.height, job.x, job.y, job.full_w, job.full_h);
        break;
    case BAD_COLOR:
        PyErr_SetString(Error, "unsupported JPEG colour space (CMYK/YCCK)");
        break;
    case NO_MEMORY:
        PyErr_NoMemory();
        break;
    default:
        PyErr_Format(Error, "corrupt JPEG data: %s", g->message[0] ? g->message : "libjpeg error");
    }
    free(g);
    return NULL;
}

static PyObject *add_restarts(PyObject *self, PyObject *args) {
    Py_buffer src;
    unsigned per_row;
    unsigned long long max_pixels;
    unsigned char *out = NULL;
    unsigned long out_size = 0, interval = 0;
    enum transcode_outcome result;
    struct guard *g;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*IK", &src, &per_row, &max_pixels)) return NULL;
    g = (struct guard *)malloc(sizeof *g);
    if (g == NULL) {
        PyBuffer_Release(&src);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    result = restart_transcode((const unsigned char *)src.buf, (size_t)src.len, max_pixels, per_row ? per_row : 1,
                               &out, &out_size, &interval, g);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&src);
    if (result == TRANSCODED) {
        PyObject *bytes = PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)out_size);
        free(out);
        free(g);
        if (bytes == NULL) return NULL;
        return Py_BuildValue("(Nk)", bytes, interval);
    }
    if (result == UNCHANGED) {
        free(g);
        Py_RETURN_NONE;
    }
    if (result == TRANSCODE_BOMB)
        PyErr_Format(TooLarge, "image exceeds the limit of %llu pixels", max_pixels);
    else
        PyErr_Format(Error, "corrupt JPEG data: %s", g->message[0] ? g->message : "libjpeg error");
    free(g);
    return NULL;
}

static PyObject *restart_layout(PyObject *self, PyObject *args) {
    Py_buffer src;
    struct interval_grid grid;
    int usable;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*", &src)) return NULL;
    usable = restart_grid((const unsigned char *)src.buf, (size_t)src.len, &grid);
    PyBuffer_Release(&src);
    if (!usable) Py_RETURN_NONE;
    return Py_BuildValue("(III)", grid.interval, grid.per_row, grid.rows_per_interval);
}

/* How many times the byte pair FF `code` occurs in data (bytes.count's answer), with memchr:
   entropy-coded data holds an FF every ~256 bytes, so this runs at memory speed. */
static PyObject *count_markers(PyObject *self, PyObject *args) {
    Py_buffer src;
    unsigned char code;
    Py_ssize_t count = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*b", &src, &code)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    {
        const unsigned char *p = (const unsigned char *)src.buf, *end = p + src.len;
        while (p < end && (p = (const unsigned char *)memchr(p, 0xFF, (size_t)(end - p))) != NULL) {
            if (p + 1 < end && p[1] == code) count++;
            p++;
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&src);
    return PyLong_FromSsize_t(count);
}

static PyMethodDef methods[] = {
    {"count_markers", count_markers, METH_VARARGS,
     "count_markers(data, code) -> int\n\n"
     "How many times the bytes FF code occur in data (data.count(bytes([0xFF, code]))), at memchr speed."},
    {"add_restarts", add_restarts, METH_VARARGS,
     "add_restarts(data, per_row, max_pixels) -> (bytes, interval) | None\n\n"
     "Losslessly re-encode a baseline grey/YCbCr JPEG with a restart interval that cuts each MCU\n"
     "row into at most per_row intervals (markers kept, Huffman tables optimized); None when the\n"
     "file is not for it or already has usable intervals. Raises Error, TooLarge."},
    {"restart_layout", restart_layout, METH_VARARGS,
     "restart_layout(data) -> (interval, per_row, rows_per_interval) | None\n\n"
     "The restart interval (MCUs) when the crop decode can use it, else None."},
    {"decode", decode, METH_VARARGS,
     "decode(data, out, scale_num, scale_denom, x, y, width, height, flags, max_pixels) -> (w, h)\n\n"
     "Decode the box of the image scaled by scale_num/scale_denom into out (RGB, width*height*3\n"
     "bytes); return the scaled image's size. Raises Error (corrupt/unsupported), TooLarge."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_cropjpeg",
    .m_doc = "Crop-aware JPEG decode with libjpeg-turbo.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__cropjpeg(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Error = PyErr_NewException("_cropjpeg.Error", PyExc_ValueError, NULL);
    TooLarge = PyErr_NewException("_cropjpeg.TooLarge", Error, NULL);
    if (Error == NULL || TooLarge == NULL || PyModule_AddObjectRef(m, "Error", Error) < 0 ||
        PyModule_AddObjectRef(m, "TooLarge", TooLarge) < 0 ||
        PyModule_AddIntConstant(m, "FAST_IDCT", FLAG_FAST_IDCT) < 0 ||
        PyModule_AddIntConstant(m, "FAST_UPSAMPLE", FLAG_FAST_UPSAMPLE) < 0 ||
        PyModule_AddIntConstant(m, "INTERVALS", FLAG_INTERVALS) < 0 ||
        PyModule_AddIntConstant(m, "CMYK", FLAG_CMYK) < 0 ||
        PyModule_AddIntConstant(m, "LIBJPEG_TURBO_VERSION", LIBJPEG_TURBO_VERSION_NUMBER) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
