/*
 * clipcap decoder plugin ABI, version 1.
 *
 * A plugin is a shared library exporting one symbol, `clipcap_plugin_entry`. The host calls it with
 * its ABI version; the plugin returns a descriptor of the decoders it provides (or NULL if it cannot
 * serve that version). The host checks the descriptor's ABI version and struct sizes before it calls
 * anything else, then creates decoder instances from parameter values and, per caption, calls
 * `decode` with a table of host functions (`clipcap_host`).
 *
 * Rules:
 * - Strings are NUL-terminated UTF-8. Everything the descriptor points to must live as long as the
 *   library is loaded.
 * - The host range-checks parameter values before `create`; ints and bools travel as doubles
 *   (bools as 0 or 1).
 * - An instance is used by one thread at a time; different instances may run on different threads.
 * - Pointers returned by host functions stay valid until the next `start` or `step` call.
 * - A failing call returns non-zero (or NULL) and leaves a message in `err` (plugin to host) or behind
 *   `last_error` (host to plugin). Nothing may unwind across this boundary.
 * - The host validates everything a plugin asks and returns: sequence indices, token ids, the step
 *   budget, the number of tokens. A violation fails that caption only.
 */
#ifndef CLIPCAP_DECODER_H
#define CLIPCAP_DECODER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CLIPCAP_DECODER_ABI_VERSION 1u
#define CLIPCAP_PLUGIN_ENTRY_SYMBOL "clipcap_plugin_entry"

enum clipcap_param_kind { CLIPCAP_PARAM_INT = 0, CLIPCAP_PARAM_FLOAT = 1, CLIPCAP_PARAM_BOOL = 2 };

/* One parameter of a decoder; the host accepts values in [min, max]. */
typedef struct clipcap_param {
    const char *name;
    const char *description;
    uint32_t kind; /* enum clipcap_param_kind */
    double default_value;
    double min;
    double max;
} clipcap_param;

/* Functions the host offers a decoder during one caption. `ctx` is the first argument of each. */
typedef struct clipcap_host {
    uint32_t abi_version; /* CLIPCAP_DECODER_ABI_VERSION */
    uint32_t size;        /* sizeof(clipcap_host) of the host */
    void *ctx;

    uint32_t vocab_size;
    uint32_t hidden_size;
    uint32_t eos_token;
    uint32_t max_tokens; /* a caption has at most this many tokens, and a decoder at most this many steps */
    const uint32_t *stop_tokens;
    uint32_t num_stop_tokens;
    float clip_logit_scale; /* CLIP's image-text logit scale; 0 when the bundle has no text encoder */

    /* Back to one sequence: the image prefix, with its next-token logits. Called by the host before
       `decode`; a decoder may call it to start over. Does not restore the step budget. */
    int32_t (*start)(void *ctx);
    /* Number of live sequences. */
    uint32_t (*batch)(void *ctx);
    /* One model step: new sequence i continues old sequence parents[i] with tokens[i]. */
    int32_t (*step)(void *ctx, const uint32_t *parents, const uint32_t *tokens, uint32_t n);
    /* Next-token logits of sequence `seq` (vocab_size floats), or NULL. Valid until the next `start` or
       `step`. */
    const float *(*logits)(void *ctx, uint32_t seq);
    /* Last-layer hidden state of the last position of `seq` (hidden_size floats), or NULL. Valid until
       the next `start` or `step`. */
    const float *(*hidden)(void *ctx, uint32_t seq);
    /* Hidden states of every position of `seq`, prefix included ([*len x hidden_size]), or NULL. One
       buffer serves every call: valid until the next `context`, `start` or `step`. */
    const float *(*context)(void *ctx, uint32_t seq, uint32_t *len);
    /* The caption's seeded random stream: uniform in [0, 1). */
    double (*random)(void *ctx);
    /* Text of `ids` (special tokens dropped). Writes at most `cap` bytes, no NUL; returns the full length. */
    size_t (*detokenize)(void *ctx, const uint32_t *ids, uint32_t n, char *buf, size_t cap);
    /* Cosine similarity of each text to the image, by CLIP's text encoder; non-zero without one. */
    int32_t (*image_text_similarity)(void *ctx, const char *const *texts, uint32_t n, float *out);
    /* Message of the last failed host call (never NULL). */
    const char *(*last_error)(void *ctx);
} clipcap_host;

/* One decoding strategy. */
typedef struct clipcap_decoder {
    const char *name; /* unique across loaded plugins, e.g. "beam" */
    const char *description;
    const clipcap_param *params;
    uint32_t num_params;
    /* A new instance from `num_params` values in the order of `params`; NULL on failure. */
    void *(*create)(const double *values, char *err, size_t err_len);
    /* One caption: writes at most out_cap token ids to `out` and their number to *out_len. */
    int32_t (*decode)(void *instance, const clipcap_host *host, uint32_t *out, size_t out_cap, size_t *out_len,
                      char *err, size_t err_len);
    void (*destroy)(void *instance);
} clipcap_decoder;

typedef struct clipcap_plugin {
    uint32_t abi_version;     /* CLIPCAP_DECODER_ABI_VERSION */
    uint32_t plugin_size;     /* sizeof(clipcap_plugin) */
    uint32_t decoder_size;    /* sizeof(clipcap_decoder) */
    uint32_t param_size;      /* sizeof(clipcap_param) */
    uint32_t host_size;       /* sizeof(clipcap_host) the plugin was compiled against */
    const char *name;         /* plugin (library) name */
    const char *version;      /* plugin version, e.g. "0.1.0" */
    const clipcap_decoder *decoders;
    uint32_t num_decoders;
} clipcap_plugin;

/* The entry point: the descriptor for `host_abi_version`, or NULL if the plugin does not support it. */
const clipcap_plugin *clipcap_plugin_entry(uint32_t host_abi_version);

#ifdef __cplusplus
}
#endif

#endif /* CLIPCAP_DECODER_H */
