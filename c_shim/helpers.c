/* Helpers for the httpd and APR macros that Rust cannot call: one small
 * function per macro, no logic. */
#include <httpd.h>
#include <http_config.h>
#include <http_connection.h>
#include <http_core.h>
#include <http_log.h>
#include <http_main.h>
#include <http_request.h>
#include <apr_buckets.h>
#include <http_protocol.h>

#include "shim.h"

APLOG_USE_MODULE(http2);

/* The module a line is tagged with (`log::Tag`): proxy_http2 for the
 * reverse proxy's lines (`LogLevel proxy_http2:...` sets their level, as
 * for the stock mod_proxy_http2), reqtimeout for the RequestReadTimeout
 * lines mod_reqtimeout writes over HTTP/1.1, else http2. */
static int log_module_index(int tag)
{
    if (tag == 1)
        return proxy_http2_module.module_index;
    if (tag == 2) {
        module *reqtimeout = ap_find_linked_module("mod_reqtimeout.c");
        if (reqtimeout)
            return reqtimeout->module_index;
    }
    return APLOG_MODULE_INDEX;
}

int h2rs_shim_log_c_enabled(const conn_rec *c, int level)
{
    return APLOG_C_IS_LEVEL(c, level);
}

/* A NULL server (threads of the module's own, such as the proxy engine's)
 * logs as the main server, with its LogLevel and per-module levels; httpd
 * itself would take NULL for stderr at its default level (warn), and lines
 * at debug were never written. Before the configuration is read,
 * ap_server_conf is NULL too. */
int h2rs_shim_log_s_enabled(const server_rec *s, int level, int tag)
{
    if (!s)
        s = ap_server_conf;
    return APLOG_MODULE_IS_LEVEL(s, log_module_index(tag), level);
}

void h2rs_shim_log_c(const conn_rec *c, int level, apr_status_t rv,
                     const char *msg)
{
    ap_log_cerror(APLOG_MARK, level, rv, c, "%s", msg);
}

void h2rs_shim_log_r(const request_rec *r, int level, apr_status_t rv,
                     int tag, const char *msg)
{
    ap_log_rerror(__FILE__, __LINE__, log_module_index(tag), level, rv, r,
                  "%s", msg);
}

void h2rs_shim_log_s(const server_rec *s, int level, apr_status_t rv,
                     int tag, const char *msg)
{
    ap_log_error(__FILE__, __LINE__, log_module_index(tag), level, rv,
                 s ? s : ap_server_conf, "%s", msg);
}

/* http2_module's slots exist only when it is loaded: with only
 * proxy_http2_module loaded its index is -1, the slot before the vector. */
void *h2rs_shim_conn_ctx(const conn_rec *c)
{
    return http2_module.module_index < 0 ? NULL : ap_get_module_config(c->conn_config, &http2_module);
}

void h2rs_shim_set_conn_ctx(conn_rec *c, void *ctx)
{
    if (http2_module.module_index >= 0) {
        ap_set_module_config(c->conn_config, &http2_module, ctx);
    }
}

void *h2rs_shim_server_conf(const server_rec *s)
{
    return http2_module.module_index < 0 ? NULL : ap_get_module_config(s->module_config, &http2_module);
}

void *h2rs_shim_dir_conf(const request_rec *r)
{
    return http2_module.module_index < 0 ? NULL : ap_get_module_config(r->per_dir_config, &http2_module);
}

apr_bucket *h2rs_shim_brigade_first(apr_bucket_brigade *bb)
{
    return APR_BRIGADE_FIRST(bb);
}

apr_bucket *h2rs_shim_brigade_sentinel(apr_bucket_brigade *bb)
{
    return APR_BRIGADE_SENTINEL(bb);
}

int h2rs_shim_brigade_empty(apr_bucket_brigade *bb)
{
    return APR_BRIGADE_EMPTY(bb);
}

void h2rs_shim_brigade_insert_tail(apr_bucket_brigade *bb, apr_bucket *b)
{
    APR_BRIGADE_INSERT_TAIL(bb, b);
}

void h2rs_shim_brigade_insert_head(apr_bucket_brigade *bb, apr_bucket *b)
{
    APR_BRIGADE_INSERT_HEAD(bb, b);
}

apr_bucket *h2rs_shim_bucket_next(apr_bucket *b)
{
    return APR_BUCKET_NEXT(b);
}

void h2rs_shim_bucket_remove(apr_bucket *b)
{
    APR_BUCKET_REMOVE(b);
}

void h2rs_shim_bucket_destroy(apr_bucket *b)
{
    apr_bucket_destroy(b);
}

void h2rs_shim_bucket_delete(apr_bucket *b)
{
    apr_bucket_delete(b);
}

apr_status_t h2rs_shim_bucket_read(apr_bucket *b, const char **str,
                                   apr_size_t *len, apr_read_type_e block)
{
    return apr_bucket_read(b, str, len, block);
}

apr_status_t h2rs_shim_bucket_split(apr_bucket *b, apr_size_t point)
{
    return apr_bucket_split(b, point);
}

apr_size_t h2rs_shim_bucket_length(apr_bucket *b)
{
    return b->length;
}

int h2rs_shim_bucket_kind(const apr_bucket *b)
{
    /* Most buckets carry data; of those only FILE is told apart. The
     * metadata types are distinct: the first match is the only one. */
    if (!APR_BUCKET_IS_METADATA(b))
        return APR_BUCKET_IS_FILE(b) ? H2RS_BUCKET_FILE : 0;
    if (APR_BUCKET_IS_EOS(b))   return H2RS_BUCKET_METADATA | H2RS_BUCKET_EOS;
    if (AP_BUCKET_IS_EOR(b))    return H2RS_BUCKET_METADATA | H2RS_BUCKET_EOR;
    if (APR_BUCKET_IS_FLUSH(b)) return H2RS_BUCKET_METADATA | H2RS_BUCKET_FLUSH;
    if (AP_BUCKET_IS_ERROR(b))  return H2RS_BUCKET_METADATA | H2RS_BUCKET_ERROR;
    if (AP_BUCKET_IS_EOC(b))    return H2RS_BUCKET_METADATA | H2RS_BUCKET_EOC;
    return H2RS_BUCKET_METADATA;
}

void h2rs_shim_file_bucket(const apr_bucket *b, apr_file_t **file,
                           apr_off_t *offset, apr_size_t *length,
                           int *can_mmap)
{
    const apr_bucket_file *f = b->data;
    *file = f->fd;
    *offset = b->start;
    *length = b->length;
#if APR_HAS_MMAP
    *can_mmap = f->can_mmap;
#else
    *can_mmap = 0;
#endif
}

int h2rs_shim_error_bucket_status(const apr_bucket *b)
{
    return ((const ap_bucket_error *)b->data)->status;
}

void h2rs_shim_set_core_socket(conn_rec *c, apr_socket_t *s)
{
    ap_set_core_module_config(c->conn_config, s);
}

module *h2rs_shim_mpm_module(void)
{
    int i;
    for (i = 0; ap_loaded_modules[i]; ++i) {
        const char *name = ap_loaded_modules[i]->name;
        if (!strcmp(name, "event.c") || !strcmp(name, "worker.c")
            || !strcmp(name, "prefork.c") || !strcmp(name, "motorz.c")) {
            return ap_loaded_modules[i];
        }
    }
    return NULL;
}

int h2rs_shim_merge_trailers(const request_rec *r)
{
    core_server_config *conf = ap_get_core_module_config(r->server->module_config);
    return conf && conf->merge_trailers == AP_MERGE_TRAILERS_ENABLE;
}
