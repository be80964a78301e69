/* Restart intervals: a lossless transcode that adds them, and a sub-image of the intervals
 * that cover a crop (see _restart.c). */
#ifndef SHARDPIPE_RESTART_H
#define SHARDPIPE_RESTART_H

#include <stddef.h>

#include "_jpegguard.h"

enum transcode_outcome { TRANSCODED = 0, UNCHANGED, TRANSCODE_FAILED, TRANSCODE_BOMB };

/* Re-encode the coefficients of `data` with a restart interval (see choose_interval) and
 * its APPn/COM markers. TRANSCODED: *out (malloc'd, the caller frees) holds *out_size bytes.
 * UNCHANGED: not for this file (progressive, arithmetic, not grey/YCbCr, or already marked
 * usably). TRANSCODE_FAILED: g->message says why. TRANSCODE_BOMB: over max_pixels. */
enum transcode_outcome restart_transcode(const unsigned char *data, size_t size, unsigned long long max_pixels,
                                         unsigned per_row, unsigned char **out, unsigned long *out_size,
                                         unsigned long *interval, struct guard *g);

/* What a sub-image is: its bytes (malloc'd) and the box moved into its coordinates. */
struct subimage {
    unsigned char *data;
    size_t size;
    unsigned x, y;             /* the box's top-left in the scaled sub-image */
    unsigned full_w, full_h;   /* the scaled size of the original image */
};

/* A baseline JPEG holding only the restart intervals that cover the box (x, y, width,
 * height) of the image scaled by scale_num/8, widened by two chroma samples on each side.
 * Returns 1 and fills `sub` when the file allows it and it saves work; 0 otherwise
 * (no usable restart intervals, inconsistent markers, a box that needs the whole image,
 * more than max_pixels): the caller decodes the original. Never reads outside `data`. */
int restart_subimage(const unsigned char *data, size_t size, unsigned scale_num, unsigned x, unsigned y,
                     unsigned width, unsigned height, unsigned long long max_pixels, struct subimage *sub);

/* The restart interval (MCUs) and its grid, read from the markers: 0 when the file has no
 * usable intervals (as restart_subimage decides). */
struct interval_grid {
    unsigned mcu_w, mcu_h, mcus_per_row, mcu_rows, interval, per_row, rows_per_interval;
};
int restart_grid(const unsigned char *data, size_t size, struct interval_grid *grid);

#endif
