/* proxy_http2_module: the second module record of mod_h2rs.so, a mod_proxy
 * scheme handler for h2c:// (and h2://) backends.
 *
 * No logic lives here. mod_proxy's hook registration and utility functions
 * are looked up at run time (dlsym): the same .so is loaded as http2_module
 * where mod_proxy is absent, so it must not need mod_proxy's symbols to
 * load. httpd loads modules RTLD_GLOBAL, so a mod_proxy loaded before this
 * module's LoadModule line is found.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <httpd.h>
#include <http_config.h>
#include <http_core.h>
#include <http_log.h>
#include <mod_proxy.h>

#include "shim.h"

static __typeof__(ap_proxy_canonenc) *p_canonenc;
static __typeof__(ap_proxy_canonenc_ex) *p_canonenc_ex;
static __typeof__(ap_proxy_canon_netloc) *p_canon_netloc;
static __typeof__(ap_proxy_location_reverse_map) *p_reverse_map;
static __typeof__(ap_proxy_cookie_reverse_map) *p_cookie_reverse_map;
static __typeof__(ap_proxy_should_override) *p_should_override;
static __typeof__(ap_proxy_worker_name) *p_worker_name;
static module *proxy_mod;

static int scheme_handler(request_rec *r, proxy_worker *worker,
                          proxy_server_conf *conf, char *url,
                          const char *proxyname, apr_port_t proxyport)
{
    return h2rs_proxy_handler(r, worker, conf, url, proxyname, proxyport);
}

static int canon_handler(request_rec *r, char *url)
{
    return h2rs_proxy_canon(r, url);
}

static int proxy_post_config(apr_pool_t *pconf, apr_pool_t *plog,
                             apr_pool_t *ptemp, server_rec *s)
{
    proxy_mod = ap_find_linked_module("mod_proxy.c");
    return h2rs_proxy_post_config(pconf, s);
}

static void proxy_register_hooks(apr_pool_t *p)
{
    __typeof__(proxy_hook_scheme_handler) *hook_scheme =
        dlsym(RTLD_DEFAULT, "proxy_hook_scheme_handler");
    __typeof__(proxy_hook_canon_handler) *hook_canon =
        dlsym(RTLD_DEFAULT, "proxy_hook_canon_handler");
    p_canonenc = dlsym(RTLD_DEFAULT, "ap_proxy_canonenc");
    p_canonenc_ex = dlsym(RTLD_DEFAULT, "ap_proxy_canonenc_ex");
    p_canon_netloc = dlsym(RTLD_DEFAULT, "ap_proxy_canon_netloc");
    p_reverse_map = dlsym(RTLD_DEFAULT, "ap_proxy_location_reverse_map");
    p_cookie_reverse_map = dlsym(RTLD_DEFAULT, "ap_proxy_cookie_reverse_map");
    p_should_override = dlsym(RTLD_DEFAULT, "ap_proxy_should_override");
    p_worker_name = dlsym(RTLD_DEFAULT, "ap_proxy_worker_name");
    if (!hook_scheme || !hook_canon || !p_canonenc || !p_canon_netloc) {
        ap_log_perror(APLOG_MARK, APLOG_ERR, 0, p,
                      "proxy_http2_module (mod_h2rs): mod_proxy is not loaded; "
                      "load proxy_module before proxy_http2_module");
        return;
    }
    hook_scheme(scheme_handler, NULL, NULL, APR_HOOK_FIRST);
    hook_canon(canon_handler, NULL, NULL, APR_HOOK_FIRST);
    /* Before mod_proxy's proxy_map_location, which matches the <Proxy>
     * sections against the file name as it is then. */
    static const char *const before_mod_proxy[] = { "mod_proxy.c", NULL };
    ap_hook_map_to_storage(h2rs_proxy_map_to_storage, NULL, before_mod_proxy, APR_HOOK_FIRST);
    ap_hook_post_config(proxy_post_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_child_init(h2rs_proxy_child_init, NULL, NULL, APR_HOOK_MIDDLE);
}

AP_DECLARE_MODULE(proxy_http2) = {
    STANDARD20_MODULE_STUFF,
    NULL, NULL, NULL, NULL, NULL,
    proxy_register_hooks,
#if defined(AP_MODULE_FLAG_ALWAYS_MERGE)
    AP_MODULE_FLAG_NONE
#endif
};

/* ---- helpers for the Rust side ----------------------------------------- */

/* mod_proxy's per-directory config of `r`, or NULL without mod_proxy. */
static proxy_dir_conf *dir_conf(request_rec *r)
{
    return proxy_mod ? ap_get_module_config(r->per_dir_config, proxy_mod) : NULL;
}

int h2rs_shim_http2_loaded(void)
{
    return http2_module.module_index >= 0;
}

int h2rs_shim_proxy_http2_loaded(void)
{
    return proxy_http2_module.module_index >= 0;
}

void h2rs_shim_proxy_count_traffic(void *w, apr_off_t sent, apr_off_t received)
{
    proxy_worker *worker = w;
    if (worker && worker->s) {
        worker->s->transferred += sent;
        worker->s->read += received;
    }
}

/* As ap_proxy_acquire_connection's check (proxy_util.c, 2.4.68): a worker
 * in error state is retried once its `retry` passed (ap_proxy_retry_worker,
 * static there); 1 when usable, else the error AH00940 logs and 0. */
int h2rs_shim_proxy_worker_usable(void *w, request_rec *r)
{
    proxy_worker *worker = w;
    if (!worker->s || PROXY_WORKER_IS_USABLE(worker)) {
        return 1;
    }
    if ((worker->s->status & PROXY_WORKER_IN_ERROR)
        && !PROXY_WORKER_IS(worker, PROXY_WORKER_STOPPED)
        && ((worker->s->status & PROXY_WORKER_IGNORE_ERRORS)
            || apr_time_now() > worker->s->error_time + worker->s->retry)) {
        ++worker->s->retries;
        worker->s->status &= ~PROXY_WORKER_IN_ERROR;
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r,
                      "HTTP/2: worker for (%s:%d) has been marked for retry",
                      worker->s->hostname_ex, (int)worker->s->port);
    }
    if (PROXY_WORKER_IS_USABLE(worker)) {
        return 1;
    }
    ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                  "HTTP/2: disabled connection for (%s:%d)",
                  worker->s->hostname_ex, (int)worker->s->port);
    return 0;
}

/* As proxy_balancer_post_request (mod_proxy_balancer.c, 2.4.68), with its
 * log lines. */
void h2rs_shim_proxy_balancer_checks(void *w, request_rec *r)
{
    proxy_worker *worker = w;
    proxy_balancer *balancer = worker ? worker->balancer : NULL;
    int status_listed = 0, timed_out;
    int i;
    if (!balancer || !worker->s || (worker->s->status & PROXY_WORKER_IGNORE_ERRORS)) {
        return;
    }
    for (i = 0; balancer->errstatuses && i < balancer->errstatuses->nelts; i++) {
        status_listed |= r->status == ((int *)balancer->errstatuses->elts)[i];
    }
    timed_out = balancer->failontimeout && apr_table_get(r->notes, "proxy_timedout") != NULL;
    if (!status_listed && !timed_out) {
        return;
    }
    if (PROXY_THREAD_LOCK(balancer) == APR_SUCCESS) {
        worker->s->status |= PROXY_WORKER_IN_ERROR;
        worker->s->error_time = apr_time_now();
        PROXY_THREAD_UNLOCK(balancer);
    }
    if (status_listed) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "%s: Forcing worker (%s) into error state due to "
                      "status code %d matching 'failonstatus' balancer "
                      "parameter", balancer->s->name,
                      p_worker_name ? p_worker_name(r->pool, worker) : worker->s->name,
                      r->status);
    }
    else {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "%s: Forcing worker (%s) into error state due to "
                      "timeout and 'failontimeout' parameter being set",
                      balancer->s->name,
                      p_worker_name ? p_worker_name(r->pool, worker) : worker->s->name);
    }
}

void h2rs_shim_proxy_params(request_rec *r, void *w, void *c,
                            h2rs_proxy_params *out)
{
    proxy_worker *worker = w;
    proxy_server_conf *conf = c;
    proxy_dir_conf *dconf = dir_conf(r);
    out->preserve_host = dconf ? dconf->preserve_host : 0;
    out->add_forwarded = dconf ? dconf->add_forwarded_headers : 1;
    out->via = conf ? (int)conf->viaopt : 0;
    out->timeout = -1;
    if (worker && worker->s->timeout_set) {
        out->timeout = worker->s->timeout;
    }
    else if (conf && conf->timeout_set) {
        out->timeout = conf->timeout;
    }
    out->connect_timeout =
        worker && worker->s->conn_timeout_set ? worker->s->conn_timeout : -1;
    out->ping = worker && worker->s->ping_timeout_set ? worker->s->ping_timeout : -1;
    out->ttl = worker ? worker->s->ttl : 0;
    out->keepalive = worker ? worker->s->keepalive : 0;
    out->disablereuse = worker ? worker->s->disablereuse : 0;
    out->hmax = worker ? worker->s->hmax : 0;
    out->acquire = worker && worker->s->acquire_set ? worker->s->acquire : -1;
    /* mod_proxy takes "unix:/path|" off the URL: the worker's (ProxyPass)
     * or the request's note (SetHandler proxy:unix:...) keeps it. */
    out->uds_path = worker && worker->s->uds_path[0]
                    ? worker->s->uds_path
                    : apr_table_get(r->notes, "uds_path");
}

const char *h2rs_shim_proxy_canon_netloc(apr_pool_t *p, char **url,
                                         char **host, apr_port_t *port)
{
    if (!p_canon_netloc) {
        return "mod_proxy is not loaded";
    }
    return p_canon_netloc(p, url, NULL, NULL, host, port);
}

char *h2rs_shim_proxy_canonenc_path(request_rec *r, const char *path)
{
    core_dir_config *d = ap_get_core_module_config(r->per_dir_config);
    if (p_canonenc_ex) {
        int flags = d->allow_encoded_slashes && !d->decode_encoded_slashes
                    ? PROXY_CANONENC_NOENCODEDSLASHENCODING : 0;
        return p_canonenc_ex(r->pool, path, (int)strlen(path), enc_path,
                             flags, r->proxyreq);
    }
    if (!p_canonenc) {
        return NULL;
    }
    return p_canonenc(r->pool, path, (int)strlen(path), enc_path, 0,
                      r->proxyreq);
}

const char *h2rs_shim_proxy_reverse_map(request_rec *r, const char *url)
{
    proxy_dir_conf *dconf = dir_conf(r);
    if (!p_reverse_map || !dconf) {
        return url;
    }
    return p_reverse_map(r, dconf, url);
}

const char *h2rs_shim_proxy_cookie_reverse_map(request_rec *r,
                                               const char *cookie)
{
    proxy_dir_conf *dconf = dir_conf(r);
    if (!p_cookie_reverse_map || !dconf) {
        return cookie;
    }
    return p_cookie_reverse_map(r, dconf, cookie);
}

const char *h2rs_shim_server_baseversion(void)
{
    return AP_SERVER_BASEVERSION;
}

int h2rs_shim_proxy_should_override(request_rec *r, int status)
{
    proxy_dir_conf *dconf = dir_conf(r);
    if (!dconf || !dconf->error_override) {
        return 0;
    }
    if (p_should_override) {
        return p_should_override(dconf, status);
    }
    return ap_is_HTTP_ERROR(status);
}
