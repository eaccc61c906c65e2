/*
 * clipcap decoder plugin ABI, version 2.1 (major.minor).
 *
 * A plugin is a shared library exporting one symbol, `clipcap_plugin_entry`. The host calls it with
 * its ABI version; the plugin returns a descriptor of the decoders it provides (or NULL if it cannot
 * serve that major version). The host checks the descriptor's ABI version and struct sizes before it calls
 * anything else, then creates decoder instances from parameter values and, per caption, calls
 * `decode` with a table of host functions (`clipcap_host`).
 *
 * Rules:
 * - Strings are NUL-terminated UTF-8. Everything the descriptor points to must live as long as the
 *   library is loaded.
 * - The host range-checks parameter values before `create`; ints and bools travel as doubles
 *   (bools as 0 or 1).
 * - An instance is used by one thread at a time; different instances may run on different threads.
 * - Pointers returned by host functions stay valid as each function below says.
 *
 * Versions (as SQLite's extension API and CLAP do it):
 * - CLIPCAP_DECODER_ABI_VERSION is (major << 16) | minor. Host and plugin must have the same major;
 *   any minors work together.
 * - Within a major, structs only grow at the end, and every field added in a later minor means
 *   "absent" when zero or NULL. Each side says how large its structs are (`size`, `plugin_size`,
 *   `decoder_size`, `param_size`); the reader reads what both know and treats the rest as zero, and
 *   steps through the `decoders` and `params` arrays by the plugin's sizes. So a plugin built for an
 *   older minor loads in a newer host, and a newer plugin runs in an older host as long as it checks
 *   `clipcap_host.size` before using a field that host may not have (the Rust SDK does).
 * - Optional host features are extensions, looked up by string id with `get_extension` (minor 1). A
 *   plugin that cannot work without one lists it in `required_extensions`, and a host that lacks it
 *   refuses the plugin, naming the extension.
 * - Removing or changing a field, or changing what a function means, is a new major. Define
 *   CLIPCAP_DECODER_ABI_TARGET_MINOR before including this header to build against an older minor.
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

#define CLIPCAP_DECODER_ABI_MAJOR 2u
#define CLIPCAP_DECODER_ABI_MINOR 1u
#ifndef CLIPCAP_DECODER_ABI_TARGET_MINOR
#define CLIPCAP_DECODER_ABI_TARGET_MINOR CLIPCAP_DECODER_ABI_MINOR
#endif
#define CLIPCAP_DECODER_ABI_VERSION ((CLIPCAP_DECODER_ABI_MAJOR << 16) | CLIPCAP_DECODER_ABI_TARGET_MINOR)
#define CLIPCAP_PLUGIN_ENTRY_SYMBOL "clipcap_plugin_entry"

/* Extension "clipcap.log" (minor 1): messages into the host's log, attributed to the decoder. */
#define CLIPCAP_EXTENSION_LOG "clipcap.log"
enum clipcap_log_level { CLIPCAP_LOG_ERROR = 0, CLIPCAP_LOG_WARN = 1, CLIPCAP_LOG_INFO = 2, CLIPCAP_LOG_DEBUG = 3 };
typedef struct clipcap_log_extension {
    uint32_t size; /* sizeof(clipcap_log_extension) of the host */
    void (*log)(void *ctx, uint32_t level, const char *message);
} clipcap_log_extension;

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
    uint32_t abi_version; /* the host's CLIPCAP_DECODER_ABI_VERSION */
    uint32_t size;        /* sizeof(clipcap_host) of the host: fields beyond it are absent */
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
    /* Message of the last failed host call (never NULL). Valid until the next host call. */
    const char *(*last_error)(void *ctx);
#if CLIPCAP_DECODER_ABI_TARGET_MINOR >= 1
    /* Minor 1. The table of extension `id` (e.g. CLIPCAP_EXTENSION_LOG), valid for this `decode`
       call, or NULL when the host does not offer it. */
    const void *(*get_extension)(void *ctx, const char *id);
#endif
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
    uint32_t plugin_size;     /* sizeof(clipcap_plugin): the host reads no further */
    uint32_t decoder_size;    /* sizeof(clipcap_decoder): the stride of `decoders` */
    uint32_t param_size;      /* sizeof(clipcap_param): the stride of every `params` */
    uint32_t host_size;       /* sizeof(clipcap_host) the plugin was compiled against */
    const char *name;         /* plugin (library) name */
    const char *version;      /* plugin version, e.g. "0.1.0" */
    const clipcap_decoder *decoders;
    uint32_t num_decoders;
#if CLIPCAP_DECODER_ABI_TARGET_MINOR >= 1
    /* Minor 1. Extensions the plugin cannot work without; the host refuses it if it lacks one. */
    const char *const *required_extensions;
    uint32_t num_required_extensions;
#endif
} clipcap_plugin;

/* The entry point: the descriptor for `host_abi_version`, or NULL if the plugin does not support that
   major version. */
const clipcap_plugin *clipcap_plugin_entry(uint32_t host_abi_version);

#ifdef __cplusplus
}
#endif

#endif /* CLIPCAP_DECODER_H */
