/* Restart intervals for crop decoding.
 *
 * A baseline JPEG's entropy-coded data has no entry points: to reach a crop, libjpeg must
 * Huffman-decode every MCU before it. With a restart interval (DRI) of N MCUs the data
 * restarts at a byte-aligned RSTn marker every N MCUs and the DC predictors reset there, so
 * each interval decodes on its own. restart_transcode adds intervals losslessly (the
 * coefficients are copied, as `jpegtran -restart` does); restart_subimage cuts out the
 * intervals that cover a crop into a smaller, valid JPEG that libjpeg decodes as usual.
 *
 * Intervals are usable when they tile the MCU rows: N divides the MCUs per row (several
 * intervals per row: rows and columns can be selected) or is a multiple of it (whole rows
 * per interval: rows only). The markers are checked as they are found (numbering 0..7 in
 * turn, none missing before the last interval needed); anything else leaves the file to
 * the ordinary decode. libjpeg checks the rest when it decodes the sub-image: an interval
 * holding more or fewer MCUs than DRI says is a warning, which the caller treats as an error.
 */
#include <stdlib.h>
#include <string.h>

#include "_restart.h"

struct frame {
    unsigned width, height, ncomp, hmax, vmax, hmin, vmin, progressive;
    size_t sof;       /* offset of the SOF segment's length field */
    size_t scan_data; /* first byte of entropy-coded data (after the SOS segment) */
    unsigned dri;
};

/* Walk the header segments up to the first scan. 1: a baseline/extended Huffman frame,
 * 8-bit, grey or 3 components, one scan holding all of them (or, with `progressive`, a
 * progressive Huffman frame of that kind, whatever its first scan holds); 0 otherwise. */
static int parse_frame(const unsigned char *d, size_t n, struct frame *f, int progressive) {
    size_t pos = 2;
    int have_frame = 0;
    memset(f, 0, sizeof *f);
    if (n < 4 || d[0] != 0xFF || d[1] != 0xD8) return 0;
    for (;;) {
        unsigned marker, len;
        if (pos >= n || d[pos] != 0xFF) return 0;
        while (pos < n && d[pos] == 0xFF) pos++;
        if (pos >= n) return 0;
        marker = d[pos++];
        if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) continue; /* standalone */
        if (marker == 0xD8 || marker == 0xD9 || pos + 2 > n) return 0;
        len = ((unsigned)d[pos] << 8) | d[pos + 1];
        if (len < 2 || len > n - pos) return 0;
        if (marker == 0xC0 || marker == 0xC1 || (progressive && marker == 0xC2)) {
            if (have_frame || len < 8 || d[pos + 2] != 8) return 0;
            f->sof = pos;
            f->progressive = marker == 0xC2;
            f->height = ((unsigned)d[pos + 3] << 8) | d[pos + 4];
            f->width = ((unsigned)d[pos + 5] << 8) | d[pos + 6];
            f->ncomp = d[pos + 7];
            if (f->width == 0 || f->height == 0 || (f->ncomp != 1 && f->ncomp != 3) || len < 8 + 3 * f->ncomp)
                return 0;
            f->hmin = f->vmin = 4;
            for (unsigned c = 0; c < f->ncomp; c++) {
                unsigned h = d[pos + 9 + 3 * c] >> 4, v = d[pos + 9 + 3 * c] & 15;
                if (h < 1 || h > 4 || v < 1 || v > 4) return 0;
                if (h > f->hmax) f->hmax = h;
                if (v > f->vmax) f->vmax = v;
                if (h < f->hmin) f->hmin = h;
                if (v < f->vmin) f->vmin = v;
            }
            have_frame = 1;
        } else if (marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC) {
            return 0; /* progressive, lossless, arithmetic: not for this path */
        } else if (marker == 0xDD) {
            if (len != 4) return 0;
            f->dri = ((unsigned)d[pos + 2] << 8) | d[pos + 3];
        } else if (marker == 0xDA) {
            if (!have_frame || len < 3 || (d[pos + 2] != f->ncomp && !f->progressive)) return 0;
            f->scan_data = pos + len;
            return 1;
        }
        pos += len;
    }
}

static int frame_grid(const struct frame *f, struct interval_grid *g) {
    memset(g, 0, sizeof *g);
    g->mcu_w = f->ncomp == 1 ? 8 : 8 * f->hmax; /* a single-component scan's MCU is one block */
    g->mcu_h = f->ncomp == 1 ? 8 : 8 * f->vmax;
    g->mcus_per_row = (f->width + g->mcu_w - 1) / g->mcu_w;
    g->mcu_rows = (f->height + g->mcu_h - 1) / g->mcu_h;
    g->interval = f->dri;
    if (f->dri == 0) return 0;
    if (g->mcus_per_row % f->dri == 0) {
        g->per_row = g->mcus_per_row / f->dri;
        g->rows_per_interval = 1;
    } else if (f->dri % g->mcus_per_row == 0) {
        g->per_row = 1;
        g->rows_per_interval = f->dri / g->mcus_per_row;
    } else {
        return 0;
    }
    return 1;
}

int restart_grid(const unsigned char *data, size_t size, struct interval_grid *grid) {
    struct frame f;
    if (!parse_frame(data, size, &f, 0)) {
        memset(grid, 0, sizeof *grid);
        return 0;
    }
    return frame_grid(&f, grid);
}

/* Two chroma samples of a component subsampled by `ratio`, in pixels of the image scaled by
 * scale_num/8 (at least one pixel). */
static unsigned chroma_margin(unsigned ratio, unsigned scale_num) {
    unsigned m = (2 * ratio * scale_num + 7) / 8;
    return m > 0 ? m : 1;
}

struct span {
    size_t start, end;
};

int restart_subimage(const unsigned char *data, size_t size, unsigned scale_num, unsigned x, unsigned y,
                     unsigned width, unsigned height, unsigned long long max_pixels, struct subimage *sub) {
    struct frame f;
    struct interval_grid g;
    unsigned sw, sh, mx, my, c0, c1, r0, r1, a, b, g0, g1, cols, total, k_last, found = 0;
    unsigned long long intervals;
    struct span *spans;
    size_t pos, nspans, out_size;
    unsigned char *out, *w;
    unsigned sub_w, sub_h, ox, oy, k = 0;

    memset(sub, 0, sizeof *sub);
    if (scale_num < 1 || scale_num > 16 || width == 0 || height == 0) return 0;
    if (!parse_frame(data, size, &f, 0) || !frame_grid(&f, &g)) return 0;
    if ((unsigned long long)f.width * f.height > max_pixels) return 0;
    sub->full_w = (f.width * scale_num + 7) / 8;
    sub->full_h = (f.height * scale_num + 7) / 8;
    if (x >= sub->full_w || width > sub->full_w - x || y >= sub->full_h || height > sub->full_h - y) return 0;
    /* the box in MCUs of the scaled image, widened by two chroma samples (libjpeg's fancy
     * upsampling reads one chroma sample beyond each output pixel's own: at the sub-image's
     * edge it would repeat the edge sample instead) */
    sw = g.mcu_w * scale_num / 8;
    sh = g.mcu_h * scale_num / 8;
    mx = chroma_margin(f.ncomp == 1 ? 1 : (f.hmax + f.hmin - 1) / f.hmin, scale_num);
    my = chroma_margin(f.ncomp == 1 ? 1 : (f.vmax + f.vmin - 1) / f.vmin, scale_num);
    c0 = (x > mx ? x - mx : 0) / sw;
    c1 = (x + width - 1 + mx < sub->full_w ? x + width - 1 + mx : sub->full_w - 1) / sw;
    r0 = (y > my ? y - my : 0) / sh;
    r1 = (y + height - 1 + my < sub->full_h ? y + height - 1 + my : sub->full_h - 1) / sh;
    if (c1 >= g.mcus_per_row) c1 = g.mcus_per_row - 1;
    if (r1 >= g.mcu_rows) r1 = g.mcu_rows - 1;
    /* ... in intervals: columns [a, b), row groups [g0, g1) */
    a = g.per_row > 1 ? c0 / g.interval : 0;
    b = g.per_row > 1 ? c1 / g.interval + 1 : 1;
    g0 = r0 / g.rows_per_interval;
    g1 = r1 / g.rows_per_interval + 1;
    if (g0 == 0 && a == 0 && b == g.per_row) return 0; /* the ordinary decode stops after the box too */
    intervals = ((unsigned long long)g.mcus_per_row * g.mcu_rows + g.interval - 1) / g.interval;
    total = (unsigned)intervals;
    cols = b - a;
    k_last = (g1 - 1) * g.per_row + (b - 1);
    if (k_last >= total) return 0;
    nspans = (size_t)cols * (g1 - g0);
    spans = (struct span *)malloc(nspans * sizeof *spans);
    if (spans == NULL) return 0;

    /* find the intervals' bytes: interval k starts after RST(k-1) and ends at RSTk */
    pos = f.scan_data;
    for (;;) {
        size_t start = pos, end;
        int last = (k == total - 1);
        unsigned char m = 0;
        for (;;) { /* the next marker: FF not followed by 00 (stuffing) or FF (fill) */
            const unsigned char *p = (const unsigned char *)memchr(data + pos, 0xFF, size - pos);
            if (p == NULL) goto give_up;
            end = (size_t)(p - data);
            pos = end + 1;
            while (pos < size && data[pos] == 0xFF) pos++;
            if (pos >= size) goto give_up;
            if (data[pos] == 0x00) {
                pos++;
                continue;
            }
            m = data[pos++];
            break;
        }
        if (last ? (m >= 0xD0 && m <= 0xD7) : (m != (0xD0 | (k & 7)))) goto give_up; /* misnumbered or missing */
        {
            unsigned row = k / g.per_row, col = k % g.per_row;
            if (row >= g0 && row < g1 && col >= a && col < b) {
                spans[found].start = start;
                spans[found].end = end;
                found++;
            }
        }
        if (k == k_last) break;
        k++;
    }
    if (found != nspans) goto give_up;

    /* the sub-image: the header with the frame's size changed, the intervals renumbered */
    out_size = f.scan_data + 2;
    for (size_t i = 0; i < nspans; i++) out_size += spans[i].end - spans[i].start + 2;
    out = (unsigned char *)malloc(out_size);
    if (out == NULL) goto give_up;
    ox = g.per_row > 1 ? a * g.interval * g.mcu_w : 0;
    oy = g0 * g.rows_per_interval * g.mcu_h;
    sub_w = g.per_row > 1 && b < g.per_row ? cols * g.interval * g.mcu_w : f.width - ox;
    sub_h = g1 * g.rows_per_interval * g.mcu_h < f.height ? (g1 - g0) * g.rows_per_interval * g.mcu_h : f.height - oy;
    memcpy(out, data, f.scan_data);
    out[f.sof + 3] = (unsigned char)(sub_h >> 8);
    out[f.sof + 4] = (unsigned char)(sub_h & 0xFF);
    out[f.sof + 5] = (unsigned char)(sub_w >> 8);
    out[f.sof + 6] = (unsigned char)(sub_w & 0xFF);
    w = out + f.scan_data;
    for (size_t i = 0; i < nspans; i++) {
        size_t len = spans[i].end - spans[i].start;
        memcpy(w, data + spans[i].start, len);
        w += len;
        *w++ = 0xFF;
        *w++ = i + 1 < nspans ? (unsigned char)(0xD0 | (i & 7)) : 0xD9;
    }
    free(spans);
    sub->data = out;
    sub->size = (size_t)(w - out);
    sub->x = x - ox * scale_num / 8;
    sub->y = y - oy * scale_num / 8;
    return 1;
give_up:
    free(spans);
    return 0;
}

/* The interval for a row of mcus_per_row MCUs cut into at most per_row intervals: the
 * smallest divisor of the row that is at least 2 MCUs and row/per_row (a prime row: one
 * interval per row). Fewer, longer intervals cost fewer marker bytes; more allow narrower
 * column selection. */
static unsigned choose_interval(unsigned mcus_per_row, unsigned per_row) {
    unsigned want = (mcus_per_row + per_row - 1) / (per_row ? per_row : 1);
    if (want < 2) want = 2;
    for (unsigned d = want; d < mcus_per_row; d++)
        if (mcus_per_row % d == 0) return d;
    return mcus_per_row;
}

enum transcode_outcome restart_transcode(const unsigned char *data, size_t size, unsigned long long max_pixels,
                                         unsigned per_row, unsigned char **out, unsigned long *out_size,
                                         unsigned long *interval, struct guard *g) {
    struct jpeg_decompress_struct src;
    struct jpeg_compress_struct dst;
    struct frame f;
    struct interval_grid grid;
    volatile int have_src = 0, have_dst = 0;
    unsigned char *volatile buffer = NULL;
    unsigned long buffer_size = 0;
    volatile enum transcode_outcome result = TRANSCODED;
    jvirt_barray_ptr *coefs;

    *out = NULL;
    *out_size = 0;
    *interval = 0;
    /* our own header check first: single-scan baseline grey/YCbCr files qualify, and
     * progressive ones, which become baseline (the same coefficients: a crop of a progressive
     * file decodes every scan of the whole image first) */
    if (!parse_frame(data, size, &f, 1)) return UNCHANGED;
    /* frame_grid fills the MCU grid either way; a progressive file's DRI is not ours to keep */
    if (frame_grid(&f, &grid) && !f.progressive) return UNCHANGED; /* already has usable intervals */
    if ((unsigned long long)f.width * f.height > max_pixels) return TRANSCODE_BOMB;
    memset(&src, 0, sizeof src);
    memset(&dst, 0, sizeof dst);
    src.err = jpeg_std_error(&g->pub);
    dst.err = &g->pub;
    g->pub.error_exit = on_error;
    g->pub.emit_message = on_message;
    g->message[0] = '\0';
    if (setjmp(g->jump)) {
        result = TRANSCODE_FAILED;
        goto done;
    }
    jpeg_create_decompress(&src);
    have_src = 1;
    g->progress.progress_monitor = on_progress;
    src.progress = &g->progress;
    jpeg_save_markers(&src, JPEG_COM, 0xFFFF);
    for (int m = 0; m < 16; m++) jpeg_save_markers(&src, JPEG_APP0 + m, 0xFFFF);
    jpeg_mem_src(&src, data, (unsigned long)size);
    jpeg_read_header(&src, TRUE);
    if ((src.progressive_mode != 0) != (f.progressive != 0) || src.arith_code ||
        (src.jpeg_color_space != JCS_YCbCr && src.jpeg_color_space != JCS_GRAYSCALE)) {
        result = UNCHANGED;
        goto done;
    }
    coefs = jpeg_read_coefficients(&src);
    jpeg_create_compress(&dst);
    have_dst = 1;
    jpeg_copy_critical_parameters(&src, &dst);
    dst.restart_interval = choose_interval(grid.mcus_per_row, per_row);
    dst.optimize_coding = TRUE; /* lossless; pays for the markers' bytes */
    jpeg_mem_dest(&dst, (unsigned char **)&buffer, &buffer_size);
    jpeg_write_coefficients(&dst, coefs);
    for (jpeg_saved_marker_ptr m = src.marker_list; m != NULL; m = m->next) {
        if (dst.write_JFIF_header && m->marker == JPEG_APP0 && m->data_length >= 5 &&
            memcmp(m->data, "JFIF", 5) == 0)
            continue; /* libjpeg writes its own JFIF header */
        if (dst.write_Adobe_marker && m->marker == JPEG_APP0 + 14 && m->data_length >= 5 &&
            memcmp(m->data, "Adobe", 5) == 0)
            continue;
        jpeg_write_marker(&dst, m->marker, m->data, m->data_length);
    }
    jpeg_finish_compress(&dst);
    jpeg_finish_decompress(&src);
    *interval = dst.restart_interval;
done:
    if (have_dst) jpeg_destroy_compress(&dst);
    if (have_src) jpeg_destroy_decompress(&src);
    if (result == TRANSCODED) {
        *out = buffer;
        *out_size = buffer_size;
    } else {
        free(buffer);
    }
    return result;
}
