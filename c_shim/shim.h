/* mod_h2rs C shim: the boundary between httpd and the Rust code.
 *
 * Two groups of declarations live here:
 *  - h2rs_* entry points implemented in Rust (hooks, filters, directive and
 *    config callbacks). The shim registers them with httpd; it holds no logic.
 *  - h2rs_shim_* helpers implemented in C, one per httpd/APR macro that Rust
 *    cannot call (bucket and brigade macros, APLOG_MARK logging, module config).
 *
 * bindgen reads this header (through bindings.h) so both sides agree on the
 * signatures.
 */
#ifndef H2RS_SHIM_H
#define H2RS_SHIM_H

#include <httpd.h>
#include <http_config.h>
#include <util_filter.h>
#include <apr_buckets.h>
#include <ap_mpm.h>

/* ---- implemented in Rust ------------------------------------------------ */

void *h2rs_create_server_config(apr_pool_t *p, server_rec *s);
void *h2rs_merge_server_config(apr_pool_t *p, void *base, void *add);
void *h2rs_create_dir_config(apr_pool_t *p, char *dir);
void *h2rs_merge_dir_config(apr_pool_t *p, void *base, void *add);
const char *h2rs_cmd(cmd_parms *cmd, void *dir_config, int argc,
                     char *const argv[]);

int h2rs_post_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp,
                     server_rec *s);
void h2rs_child_init(apr_pool_t *pchild, server_rec *s);
void h2rs_child_stopping(apr_pool_t *pchild, int graceful);

int h2rs_process_connection_first(conn_rec *c);
int h2rs_process_connection(conn_rec *c);
int h2rs_c2_process_connection(conn_rec *c);
int h2rs_pre_close_connection(conn_rec *c);
int h2rs_post_read_request(request_rec *r);
int h2rs_fixups_env(request_rec *r);
int h2rs_fixups_early_hints(request_rec *r);
void h2rs_insert_filter(request_rec *r);
int h2rs_status_handler(request_rec *r);

int h2rs_protocol_propose(conn_rec *c, request_rec *r, server_rec *s,
                          const apr_array_header_t *offers,
                          apr_array_header_t *proposals);
int h2rs_protocol_switch(conn_rec *c, request_rec *r, server_rec *s,
                         const char *protocol);
const char *h2rs_protocol_get(const conn_rec *c);
int h2rs_is_h2(conn_rec *c);
char *h2rs_var_lookup(apr_pool_t *p, server_rec *s, conn_rec *c, request_rec *r,
                      const char *name);
void h2rs_get_num_workers(server_rec *s, int *minw, int *maxw);
apr_status_t h2rs_get_pollfd_from_conn(conn_rec *c, struct apr_pollfd_t *pfd,
                                       apr_interval_time_t *ptimeout);
apr_status_t h2rs_mpm_register_timed_callback(apr_time_t t,
                                              ap_mpm_callback_fn_t *cbfn,
                                              void *baton);

apr_status_t h2rs_c2_net_in(ap_filter_t *f, apr_bucket_brigade *bb,
                            ap_input_mode_t mode, apr_read_type_e block,
                            apr_off_t readbytes);
apr_status_t h2rs_c2_net_out(ap_filter_t *f, apr_bucket_brigade *bb);
apr_status_t h2rs_c2_response_out(ap_filter_t *f, apr_bucket_brigade *bb);

/* proxy_http2_module (c_shim/proxy.c). mod_proxy's types stay opaque here:
 * `worker` is a proxy_worker *, `conf` a proxy_server_conf *. */
int h2rs_proxy_handler(request_rec *r, void *worker, void *conf, char *url,
                       const char *proxyname, apr_port_t proxyport);
int h2rs_proxy_canon(request_rec *r, char *url);
int h2rs_proxy_map_to_storage(request_rec *r);
void h2rs_proxy_child_init(apr_pool_t *pchild, server_rec *s);
int h2rs_proxy_post_config(apr_pool_t *pconf, server_rec *s);

/* ---- implemented in C (macro helpers) ----------------------------------- */

/* The module record; Rust needs it for module_index and config access. */
extern module AP_MODULE_DECLARE_DATA http2_module;
extern module AP_MODULE_DECLARE_DATA proxy_http2_module;

/* Filter handles registered by the shim, for ap_add_*_filter_handle. */
extern ap_filter_rec_t *h2rs_shim_c2_net_in_handle;
extern ap_filter_rec_t *h2rs_shim_c2_net_out_handle;
extern ap_filter_rec_t *h2rs_shim_c2_response_handle;

/* Logging with this module's index, so lines carry the module tag;
 * `tag`: which module's (`log::Tag`: 0 http2, 1 proxy_http2, 2 reqtimeout). */
int h2rs_shim_log_c_enabled(const conn_rec *c, int level);
int h2rs_shim_log_s_enabled(const server_rec *s, int level, int tag);
void h2rs_shim_log_c(const conn_rec *c, int level, apr_status_t rv,
                     const char *msg);
void h2rs_shim_log_r(const request_rec *r, int level, apr_status_t rv,
                     int tag, const char *msg);
void h2rs_shim_log_s(const server_rec *s, int level, apr_status_t rv,
                     int tag, const char *msg);

/* This module's slot in config vectors. */
void *h2rs_shim_conn_ctx(const conn_rec *c);
void h2rs_shim_set_conn_ctx(conn_rec *c, void *ctx);
void *h2rs_shim_server_conf(const server_rec *s);
void *h2rs_shim_dir_conf(const request_rec *r);

/* Brigade and bucket macros. */
apr_bucket *h2rs_shim_brigade_first(apr_bucket_brigade *bb);
apr_bucket *h2rs_shim_brigade_sentinel(apr_bucket_brigade *bb);
int h2rs_shim_brigade_empty(apr_bucket_brigade *bb);
void h2rs_shim_brigade_insert_tail(apr_bucket_brigade *bb, apr_bucket *b);
void h2rs_shim_brigade_insert_head(apr_bucket_brigade *bb, apr_bucket *b);
apr_bucket *h2rs_shim_bucket_next(apr_bucket *b);
void h2rs_shim_bucket_remove(apr_bucket *b);
void h2rs_shim_bucket_destroy(apr_bucket *b);
void h2rs_shim_bucket_delete(apr_bucket *b);
apr_status_t h2rs_shim_bucket_read(apr_bucket *b, const char **str,
                                   apr_size_t *len, apr_read_type_e block);
apr_status_t h2rs_shim_bucket_split(apr_bucket *b, apr_size_t point);
apr_size_t h2rs_shim_bucket_length(apr_bucket *b);

/* Bucket kinds, as flags: one call answers every question about a bucket. */
#define H2RS_BUCKET_METADATA 0x01
#define H2RS_BUCKET_EOS      0x02
#define H2RS_BUCKET_FLUSH    0x04
#define H2RS_BUCKET_EOR      0x08
#define H2RS_BUCKET_ERROR    0x10
#define H2RS_BUCKET_FILE     0x20
#define H2RS_BUCKET_EOC      0x40
int h2rs_shim_bucket_kind(const apr_bucket *b);
/* The file, offset and length of a FILE bucket, and whether it may be
 * mapped (EnableMMAP). */
void h2rs_shim_file_bucket(const apr_bucket *b, apr_file_t **file,
                           apr_off_t *offset, apr_size_t *length,
                           int *can_mmap);
/* Status of an ap_bucket_error (only for H2RS_BUCKET_ERROR). */
int h2rs_shim_error_bucket_status(const apr_bucket *b);

/* Whether MergeTrailers is on for the request's server. */
int h2rs_shim_merge_trailers(const request_rec *r);

/* The dummy socket every secondary connection gets as its core socket. */
void h2rs_shim_set_core_socket(conn_rec *c, apr_socket_t *s);

/* The MPM's module record (event, worker, ...), whose conn config a secondary
 * connection shares with its client connection. NULL if unknown. */
module *h2rs_shim_mpm_module(void);

/* ---- proxy_http2_module helpers (c_shim/proxy.c) ------------------------- */

/* True when http2_module (this .so) is loaded, not only proxy_http2_module. */
int h2rs_shim_http2_loaded(void);
/* True when proxy_http2_module is loaded, not only http2_module. */
int h2rs_shim_proxy_http2_loaded(void);
/* Adds a request's bytes to its worker's traffic counts (shared memory, as
 * mod_proxy_http adds them), which lbmethod=bytraffic and the balancer
 * manager read. */
void h2rs_shim_proxy_count_traffic(void *worker, apr_off_t sent, apr_off_t received);
/* mod_proxy_balancer's post_request checks (failonstatus, failontimeout)
 * for a request that ended after mod_proxy ran them: a suspended one,
 * whose status was not final then. */
void h2rs_shim_proxy_balancer_checks(void *worker, request_rec *r);
/* mod_proxy's worker states (status=, retry=): 1 when the worker may be
 * used now. */
int h2rs_shim_proxy_worker_usable(void *worker, request_rec *r);

/* What the scheme handler needs from mod_proxy's configuration. */
typedef struct {
    int preserve_host;            /* ProxyPreserveHost */
    int add_forwarded;            /* ProxyAddHeaders */
    int via;                      /* ProxyVia: 0 off, 1 on, 2 block, 3 full */
    apr_interval_time_t timeout;  /* worker/ProxyTimeout, -1 when unset */
    apr_interval_time_t connect_timeout; /* connectiontimeout, -1 when unset */
    apr_interval_time_t ping;     /* the worker's ping, -1 when unset */
    apr_interval_time_t ttl;      /* the worker's ttl, 0 when unset */
    int keepalive;                /* the worker's keepalive (SO_KEEPALIVE) */
    int disablereuse;             /* the worker's disablereuse */
    int hmax;                     /* the worker's max (connections per child) */
    apr_interval_time_t acquire;  /* the worker's acquire, -1 when unset */
    const char *uds_path;         /* a unix: backend's socket, else NULL */
} h2rs_proxy_params;
void h2rs_shim_proxy_params(request_rec *r, void *worker, void *conf,
                            h2rs_proxy_params *out);
/* mod_proxy's ap_proxy_canon_netloc (no user/password) and
 * ap_proxy_canonenc_ex(enc_path) as mod_proxy_http calls it for r (an
 * encoded slash stays as it is under AllowEncodedSlashes NoDecode), or
 * errors/NULL without mod_proxy. */
const char *h2rs_shim_proxy_canon_netloc(apr_pool_t *p, char **url,
                                         char **host, apr_port_t *port);
char *h2rs_shim_proxy_canonenc_path(request_rec *r, const char *path);
/* ProxyPassReverse mapping of a response URL (Location...). */
const char *h2rs_shim_proxy_reverse_map(request_rec *r, const char *url);
/* ProxyPassReverseCookieDomain/-Path mapping of a Set-Cookie value. */
const char *h2rs_shim_proxy_cookie_reverse_map(request_rec *r,
                                               const char *cookie);
/* AP_SERVER_BASEVERSION ("Apache/2.4.x"), what mod_proxy's Via names. */
const char *h2rs_shim_server_baseversion(void);
/* ProxyErrorOverride: answer this backend status with a local error page. */
int h2rs_shim_proxy_should_override(request_rec *r, int status);

#endif /* H2RS_SHIM_H */
