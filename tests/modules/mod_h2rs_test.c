/* A small httpd module for the end-to-end tests: handlers that show what a
 * handler sees of a request (body, trailers) and that produce what no stock
 * handler produces on its own (response trailers). Built by the tests with
 * apxs; never part of mod_h2rs. */
#include "httpd.h"
#include "http_config.h"
#include "http_protocol.h"
#include "http_request.h"
#include "http_log.h"
#include "ap_mpm.h"
#include "apr_strings.h"
#include "apr_file_io.h"
#include "apr_optional.h"
#include "mod_http2.h"

/* CRC-32 as zlib computes it (the tests check it with Python's zlib). */
static apr_uint32_t crc_table[256];

static void crc_init(void)
{
    apr_uint32_t i, j, c;
    for (i = 0; i < 256; ++i) {
        c = i;
        for (j = 0; j < 8; ++j) {
            c = (c & 1) ? 0xEDB88320U ^ (c >> 1) : c >> 1;
        }
        crc_table[i] = c;
    }
}

static int print_trailer(void *ctx, const char *k, const char *v)
{
    ap_rprintf((request_rec *)ctx, "trailer %s: %s\n", k, v);
    return 1;
}

/* h2rs-echo: reads the whole body, answers its length and FNV-1a hash, the
 * request trailers it saw, and (with "want-trailers") response trailers. */
static int echo_handler(request_rec *r)
{
    apr_bucket_brigade *bb;
    apr_uint64_t hash = 14695981039346656037ULL;
    apr_uint32_t crc = 0xFFFFFFFFU;
    apr_off_t total = 0;
    int seen_eos = 0;
    apr_status_t rv;

    bb = apr_brigade_create(r->pool, r->connection->bucket_alloc);
    while (!seen_eos) {
        apr_bucket *b;
        rv = ap_get_brigade(r->input_filters, bb, AP_MODE_READBYTES, APR_BLOCK_READ, 65536);
        if (rv != APR_SUCCESS) {
            return ap_map_http_request_error(rv, HTTP_BAD_REQUEST);
        }
        for (b = APR_BRIGADE_FIRST(bb); b != APR_BRIGADE_SENTINEL(bb); b = APR_BUCKET_NEXT(b)) {
            const char *data;
            apr_size_t len, i;
            if (APR_BUCKET_IS_EOS(b)) {
                seen_eos = 1;
                break;
            }
            if (APR_BUCKET_IS_METADATA(b)) {
                continue;
            }
            if (apr_bucket_read(b, &data, &len, APR_BLOCK_READ) != APR_SUCCESS) {
                return HTTP_BAD_REQUEST;
            }
            for (i = 0; i < len; ++i) {
                hash ^= (unsigned char)data[i];
                hash *= 1099511628211ULL;
                crc = crc_table[(crc ^ (unsigned char)data[i]) & 0xFF] ^ (crc >> 8);
            }
            total += len;
        }
        apr_brigade_cleanup(bb);
    }
    ap_set_content_type(r, "text/plain");
    ap_rprintf(r, "length=%" APR_OFF_T_FMT " fnv=%016" APR_UINT64_T_HEX_FMT " crc32=%08x\n",
               total, hash, crc ^ 0xFFFFFFFFU);
    apr_table_do(print_trailer, r, r->trailers_in, NULL);
    if (apr_table_get(r->headers_in, "echo-field")) {
        const char *name = apr_table_get(r->headers_in, "echo-field");
        const char *value = apr_table_get(r->headers_in, name);
        ap_rprintf(r, "headers_in %s: %s\n", name, value ? value : "(none)");
    }
    if (apr_table_get(r->headers_in, "want-trailers")) {
        apr_table_setn(r->trailers_out, "x-body-length", apr_off_t_toa(r->pool, total));
        apr_table_setn(r->trailers_out, "grpc-status", "0");
    }
    return OK;
}

/* h2rs-drip: N chunks (query, default 3) of one line each, flushed, 300 ms
 * apart. */
static int drip_handler(request_rec *r)
{
    int i, n = r->args ? atoi(r->args) : 3;
    ap_set_content_type(r, "text/plain");
    for (i = 0; i < n; ++i) {
        ap_rprintf(r, "chunk %d\n", i);
        ap_rflush(r);
        if (i + 1 < n) {
            apr_sleep(apr_time_from_msec(300));
        }
    }
    return OK;
}

/* h2rs-abortwatch?MARKER: writes a flushed line every 50 ms (up to 10 s);
 * when the client is gone (the write fails or c->aborted), writes the file
 * MARKER and ends. */
static int abortwatch_handler(request_rec *r)
{
    int i;
    ap_set_content_type(r, "text/plain");
    for (i = 0; i < 200; ++i) {
        if (ap_rputs("tick\n", r) < 0 || ap_rflush(r) < 0 || r->connection->aborted) {
            apr_file_t *f;
            if (r->args && apr_file_open(&f, r->args, APR_FOPEN_WRITE | APR_FOPEN_CREATE | APR_FOPEN_TRUNCATE,
                                         APR_FPROT_OS_DEFAULT, r->pool) == APR_SUCCESS) {
                apr_file_printf(f, "aborted after %d ticks, c->aborted=%d\n", i, r->connection->aborted);
                apr_file_close(f);
            }
            return OK;
        }
        apr_sleep(apr_time_from_msec(50));
    }
    return OK;
}

/* h2rs-h2vars: the HTTP/2 variables as the optional function
 * http2_var_lookup (mod_http2.h) gives them, for the request and for its
 * connection. */
static int h2vars_handler(request_rec *r)
{
    static const char *const names[] = {
        "HTTP2", "H2PUSH", "H2_PUSH", "H2_PUSHED", "H2_PUSHED_ON", "H2_STREAM_ID", "H2_STREAM_TAG", "NOT_H2", NULL
    };
    APR_OPTIONAL_FN_TYPE(http2_var_lookup) *lookup = APR_RETRIEVE_OPTIONAL_FN(http2_var_lookup);
    int i;
    ap_set_content_type(r, "text/plain");
    if (!lookup) {
        ap_rputs("no http2_var_lookup\n", r);
        return OK;
    }
    for (i = 0; names[i]; ++i) {
        ap_rprintf(r, "%s=%s\n", names[i], lookup(r->pool, r->server, r->connection, r, (char *)names[i]));
    }
    ap_rprintf(r, "connection HTTP2=%s\n", lookup(r->pool, r->server, r->connection, NULL, (char *)"HTTP2"));
    return OK;
}

/* h2rs-twice: answers twice, as mod_security2 does when it blocks a
 * response body: an error bucket (502) and EOS go down the chain, which
 * sends the 502's error document, then the handler fails and httpd sends
 * a 500's after it. */
static int twice_handler(request_rec *r)
{
    apr_bucket_alloc_t *ba = r->connection->bucket_alloc;
    apr_bucket_brigade *bb = apr_brigade_create(r->pool, ba);
    ap_set_content_type(r, "text/plain");
    APR_BRIGADE_INSERT_TAIL(bb, ap_bucket_error_create(HTTP_BAD_GATEWAY, NULL, r->pool, ba));
    APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_eos_create(ba));
    ap_pass_brigade(r->output_filters, bb);
    return HTTP_INTERNAL_SERVER_ERROR;
}

/* h2rs-cut: a line of body, flushed, then an error bucket (502) and EOS,
 * as mod_proxy passes on when its backend breaks off mid-body. */
static int cut_handler(request_rec *r)
{
    apr_bucket_alloc_t *ba = r->connection->bucket_alloc;
    apr_bucket_brigade *bb = apr_brigade_create(r->pool, ba);
    ap_set_content_type(r, "text/plain");
    ap_rputs("the start of a body\n", r);
    ap_rflush(r);
    APR_BRIGADE_INSERT_TAIL(bb, ap_bucket_error_create(HTTP_BAD_GATEWAY, NULL, r->pool, ba));
    APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_eos_create(ba));
    ap_pass_brigade(r->output_filters, bb);
    return OK;
}

/* h2rs-fail-late: a line of body, flushed (the head goes out), then the
 * handler fails: httpd sends its error response after the body begun. */
static int fail_late_handler(request_rec *r)
{
    ap_set_content_type(r, "text/plain");
    ap_rputs("the start of a body\n", r);
    ap_rflush(r);
    return HTTP_INTERNAL_SERVER_ERROR;
}

/* h2rs-length?N: Content-Length N, then 30000 bytes, flushed (the head
 * goes out with that length), and 300 ms later 20000 more: a handler whose
 * length does not match its body unless N is 50000. */
static int length_handler(request_rec *r)
{
    static const char zeros[10000];
    int i;
    ap_set_content_type(r, "application/octet-stream");
    apr_table_setn(r->headers_out, "Content-Length", r->args ? r->args : "0");
    for (i = 0; i < 3; ++i) {
        ap_rwrite(zeros, sizeof(zeros), r);
    }
    ap_rflush(r);
    apr_sleep(apr_time_from_msec(300));
    for (i = 0; i < 2; ++i) {
        ap_rwrite(zeros, sizeof(zeros), r);
    }
    return OK;
}

/* h2rs-connid: the request's connection's id (c->id), which mod_cgid's
 * daemon finds a request's script by. */
static int connid_handler(request_rec *r)
{
    ap_set_content_type(r, "text/plain");
    ap_rprintf(r, "%ld\n", r->connection->id);
    return OK;
}

static int test_handler(request_rec *r)
{
    if (!r->handler) {
        return DECLINED;
    }
    if (!strcmp(r->handler, "h2rs-echo")) {
        return echo_handler(r);
    }
    if (!strcmp(r->handler, "h2rs-drip")) {
        return drip_handler(r);
    }
    if (!strcmp(r->handler, "h2rs-abortwatch")) {
        return abortwatch_handler(r);
    }
    if (!strcmp(r->handler, "h2rs-h2vars")) {
        return h2vars_handler(r);
    }
    if (!strcmp(r->handler, "h2rs-twice")) {
        return twice_handler(r);
    }
    if (!strcmp(r->handler, "h2rs-cut")) {
        return cut_handler(r);
    }
    if (!strcmp(r->handler, "h2rs-fail-late")) {
        return fail_late_handler(r);
    }
    if (!strcmp(r->handler, "h2rs-connid")) {
        return connid_handler(r);
    }
    if (!strcmp(r->handler, "h2rs-length")) {
        return length_handler(r);
    }
    return DECLINED;
}

/* Every request: the connection's current_thread must be the thread that
 * logs it (mod_lua's thread-scoped VMs and others take the thread's pool
 * from it); a log line the tests treat as a crash otherwise. */
static int check_thread(request_rec *r)
{
    if (r->connection->current_thread != ap_thread_current()) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "h2rs-test: wrong thread: %s logged on another thread than its "
                      "connection's current_thread", r->uri);
    }
    return DECLINED;
}

static void register_hooks(apr_pool_t *p)
{
    crc_init();
    ap_hook_handler(test_handler, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_log_transaction(check_thread, NULL, NULL, APR_HOOK_MIDDLE);
}

AP_DECLARE_MODULE(h2rs_test) = {
    STANDARD20_MODULE_STUFF, NULL, NULL, NULL, NULL, NULL, register_hooks
};
