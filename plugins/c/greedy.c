/*
 * A decoder plugin written in C against include/clipcap_decoder.h, to prove the ABI is really C.
 * `c_greedy` is greedy decoding; `c_overflow` lies about how many tokens it wrote; `c_extensions`
 * (ABI minor 1) looks up the host's extensions and logs through "clipcap.log". The tests build this
 * file several times: with CLIPCAP_DECODER_ABI_TARGET_MINOR=0, as a plugin of the older minor, and
 * with macros that break the ABI on purpose:
 *   CLIPCAP_TEST_WRONG_ABI        descriptor claims ABI major 3
 *   CLIPCAP_TEST_WRONG_SIZE       descriptor claims a clipcap_decoder smaller than ABI 2.0's
 *   CLIPCAP_TEST_NO_ENTRY         the entry point has another name
 *   CLIPCAP_TEST_NULL_DECODE      decode function pointer is NULL
 *   CLIPCAP_TEST_NEEDS_EXTENSION  requires an extension no host offers
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

#if CLIPCAP_DECODER_ABI_TARGET_MINOR >= 1
/* One token (the end of text) if the host offers "clipcap.log" and nothing for an unknown id. */
static int32_t extensions(void *instance, const clipcap_host *host, uint32_t *out, size_t out_cap,
                          size_t *out_len, char *err, size_t err_len) {
    (void)instance;
    (void)out_cap;
    if (host->size < offsetof(clipcap_host, get_extension) + sizeof host->get_extension) {
        snprintf(err, err_len, "the host's ABI minor has no extensions");
        return 1;
    }
    const clipcap_log_extension *log = host->get_extension(host->ctx, CLIPCAP_EXTENSION_LOG);
    if (!log || host->get_extension(host->ctx, "clipcap.no-such-extension") != NULL) {
        snprintf(err, err_len, "extension lookup: log %p", (const void *)log);
        return 1;
    }
    log->log(host->ctx, CLIPCAP_LOG_INFO, "c_extensions: the log extension works");
    out[0] = host->eos_token;
    *out_len = 1;
    return 0;
}
#endif

static const clipcap_decoder decoders[] = {
    {"c_greedy", "greedy decoding, written in C", NULL, 0, create,
#ifdef CLIPCAP_TEST_NULL_DECODE
     NULL,
#else
     greedy,
#endif
     destroy},
    {"c_overflow", "claims more tokens than the buffer holds", NULL, 0, create, overflow, destroy},
#if CLIPCAP_DECODER_ABI_TARGET_MINOR >= 1
    {"c_extensions", "looks up the host's extensions", NULL, 0, create, extensions, destroy},
#endif
};

#ifdef CLIPCAP_TEST_NEEDS_EXTENSION
static const char *const required[] = {"clipcap.test.absent"};
#endif

static const clipcap_plugin plugin = {
#ifdef CLIPCAP_TEST_WRONG_ABI
    (3u << 16) | 0u,
#else
    CLIPCAP_DECODER_ABI_VERSION,
#endif
    sizeof(clipcap_plugin),
#ifdef CLIPCAP_TEST_WRONG_SIZE
    16,
#else
    sizeof(clipcap_decoder),
#endif
    sizeof(clipcap_param),
    sizeof(clipcap_host),
    "c-example",
    "1.0.0",
    decoders,
    sizeof decoders / sizeof decoders[0],
#if CLIPCAP_DECODER_ABI_TARGET_MINOR >= 1
#ifdef CLIPCAP_TEST_NEEDS_EXTENSION
    required,
    1,
#else
    NULL,
    0,
#endif
#endif
};

#ifdef CLIPCAP_TEST_NO_ENTRY
const clipcap_plugin *clipcap_plugin_entry_misspelled(uint32_t host_abi_version) {
#else
const clipcap_plugin *clipcap_plugin_entry(uint32_t host_abi_version) {
#endif
    (void)host_abi_version;
    return &plugin;
}
