/* libjpeg error handling shared by the extension's C files: errors and warnings longjmp back
 * to the caller with libjpeg's message (nothing is printed), and a progressive file with more
 * than MAX_SCANS scans is refused. */
#ifndef SHARDPIPE_JPEGGUARD_H
#define SHARDPIPE_JPEGGUARD_H

#include <setjmp.h>
#include <stdio.h>

#include <jpeglib.h>

#define MAX_SCANS 500 /* what TurboJPEG's TJFLAG_LIMITSCANS allows */

struct guard {
    struct jpeg_error_mgr pub;
    struct jpeg_progress_mgr progress;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX + 40];
};

static inline void on_error(j_common_ptr cinfo) {
    struct guard *g = (struct guard *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, g->message);
    longjmp(g->jump, 1);
}

static inline void on_message(j_common_ptr cinfo, int level) {
    if (level < 0) { /* a warning: corrupt data; stop here instead of guessing pixels */
        struct guard *g = (struct guard *)cinfo->err;
        (*cinfo->err->format_message)(cinfo, g->message);
        longjmp(g->jump, 1);
    }
    /* trace messages: ignored (never written to stderr) */
}

static inline void on_progress(j_common_ptr cinfo) {
    j_decompress_ptr d = (j_decompress_ptr)cinfo;
    if (d->input_scan_number > MAX_SCANS) {
        struct guard *g = (struct guard *)cinfo->err;
        snprintf(g->message, sizeof g->message, "progressive JPEG has more than %d scans", MAX_SCANS);
        longjmp(g->jump, 1);
    }
}

#endif
