/*
 * A decoder plugin written in C against include/clipcap_decoder.h, to prove the ABI is really C.
 * `c_greedy` is greedy decoding; `c_overflow` lies about how many tokens it wrote. The tests build
 * this file several times with macros that break the ABI on purpose:
 *   CLIPCAP_TEST_WRONG_ABI   descriptor claims ABI version 99
 *   CLIPCAP_TEST_WRONG_SIZE  descriptor claims a larger clipcap_host
 *   CLIPCAP_TEST_NO_ENTRY    the entry point has another name
 *   CLIPCAP_TEST_NULL_DECODE decode function pointer is NULL
 */
#include <stdio.h>
#include <string.h>

#include "clipcap_decoder.h"

static int dummy_instance;

static void *create(const double *values, char *err, size_t err_len) {
    (void)values;
    (void)err;
    (void)err_len;
    return &dummy_instance;
}

static void destroy(void *instance) { (void)instance; }

static int32_t fail(const clipcap_host *host, char *err, size_t err_len) {
    snprintf(err, err_len, "host refused: %s", host->last_error(host->ctx));
    return 1;
}

static int32_t greedy(void *instance, const clipcap_host *host, uint32_t *out, size_t out_cap, size_t *out_len,
                      char *err, size_t err_len) {
    (void)instance;
    size_t n = 0;
    for (;;) {
        const float *logits = host->logits(host->ctx, 0);
        if (!logits) return fail(host, err, err_len);
        uint32_t best = 0;
        for (uint32_t i = 1; i < host->vocab_size; i++)
            if (logits[i] > logits[best]) best = i;
        out[n++] = best;
        int stop = 0;
        for (uint32_t i = 0; i < host->num_stop_tokens; i++) stop |= host->stop_tokens[i] == best;
        if (stop || n == host->max_tokens || n == out_cap) break;
        uint32_t parent = 0;
        if (host->step(host->ctx, &parent, &best, 1) != 0) return fail(host, err, err_len);
    }
    *out_len = n;
    return 0;
}

static int32_t overflow(void *instance, const clipcap_host *host, uint32_t *out, size_t out_cap, size_t *out_len,
                        char *err, size_t err_len) {
    (void)instance;
    (void)host;
    (void)err;
    (void)err_len;
    out[0] = 13;
    *out_len = out_cap + 1;
    return 0;
}

static const clipcap_decoder decoders[] = {
    {"c_greedy", "greedy decoding, written in C", NULL, 0, create,
#ifdef CLIPCAP_TEST_NULL_DECODE
     NULL,
#else
     greedy,
#endif
     destroy},
    {"c_overflow", "claims more tokens than the buffer holds", NULL, 0, create, overflow, destroy},
};

static const clipcap_plugin plugin = {
#ifdef CLIPCAP_TEST_WRONG_ABI
    99u,
#else
    CLIPCAP_DECODER_ABI_VERSION,
#endif
    sizeof(clipcap_plugin),
    sizeof(clipcap_decoder),
    sizeof(clipcap_param),
#ifdef CLIPCAP_TEST_WRONG_SIZE
    sizeof(clipcap_host) + 8,
#else
    sizeof(clipcap_host),
#endif
    "c-example",
    "1.0.0",
    decoders,
    sizeof decoders / sizeof decoders[0],
};

#ifdef CLIPCAP_TEST_NO_ENTRY
const clipcap_plugin *clipcap_plugin_entry_misspelled(uint32_t host_abi_version) {
#else
const clipcap_plugin *clipcap_plugin_entry(uint32_t host_abi_version) {
#endif
    (void)host_abi_version;
    return &plugin;
}
