/* mod_h2rs: the module record, directive table and hook/filter registration.
 *
 * Everything here is declaration: every callback is a Rust function (see
 * shim.h). The module identifier is `http2_module`, like the stock mod_http2,
 * so `<IfModule http2_module>` and `LogLevel http2:debug` keep working.
 */
#include <httpd.h>
#include <http_config.h>
#include <http_connection.h>
#include <http_core.h>
#include <http_protocol.h>
#include <http_request.h>
#include <http_log.h>
#include <ap_mpm.h>
#include <mpm_common.h>
#include <mod_http2.h>

#include "shim.h"

/* Every directive of the stock module, all parsed by h2rs_cmd (which checks
 * the argument count itself and names the directive in its errors). */
#define H2RS_DIRECTIVE(name, where, help) \
    AP_INIT_TAKE_ARGV(name, h2rs_cmd, NULL, where, help)

static const command_rec h2rs_cmds[] = {
    H2RS_DIRECTIVE("H2MaxSessionStreams", RSRC_CONF,
                   "maximum number of open streams per session"),
    H2RS_DIRECTIVE("H2WindowSize", RSRC_CONF,
                   "window size on client DATA"),
    H2RS_DIRECTIVE("H2MinWorkers", RSRC_CONF,
                   "minimum number of worker threads per child"),
    H2RS_DIRECTIVE("H2MaxWorkers", RSRC_CONF,
                   "maximum number of worker threads per child"),
    H2RS_DIRECTIVE("H2MaxWorkerIdleSeconds", RSRC_CONF,
                   "maximum number of idle seconds before a worker shuts down"),
    H2RS_DIRECTIVE("H2StreamMaxMemSize", RSRC_CONF,
                   "maximum number of bytes buffered in memory for a stream"),
    H2RS_DIRECTIVE("H2SerializeHeaders", RSRC_CONF,
                   "disabled, this directive has no longer an effect."),
    H2RS_DIRECTIVE("H2ModernTLSOnly", RSRC_CONF,
                   "off to not impose RFC 7540 restrictions on TLS"),
    H2RS_DIRECTIVE("H2Upgrade", RSRC_CONF|OR_AUTHCFG,
                   "on to allow HTTP/1 Upgrades to h2/h2c"),
    H2RS_DIRECTIVE("H2Direct", RSRC_CONF,
                   "on to enable direct HTTP/2 mode"),
    H2RS_DIRECTIVE("H2SessionExtraFiles", RSRC_CONF,
                   "number of extra file a session might keep open (obsolete)"),
    H2RS_DIRECTIVE("H2TLSWarmUpSize", RSRC_CONF,
                   "number of bytes on TLS connection before doing max writes"),
    H2RS_DIRECTIVE("H2TLSCoolDownSecs", RSRC_CONF,
                   "seconds of idle time on TLS before shrinking writes"),
    H2RS_DIRECTIVE("H2Push", RSRC_CONF|OR_AUTHCFG,
                   "off to disable HTTP/2 server push"),
    H2RS_DIRECTIVE("H2PushPriority", RSRC_CONF,
                   "define priority of PUSHed resources per content type"),
    H2RS_DIRECTIVE("H2PushDiarySize", RSRC_CONF,
                   "size of push diary"),
    H2RS_DIRECTIVE("H2CopyFiles", OR_FILEINFO,
                   "on to perform copy of file data"),
    H2RS_DIRECTIVE("H2PushResource", OR_FILEINFO|OR_AUTHCFG,
                   "add a resource to be pushed in this location/on this server."),
    H2RS_DIRECTIVE("H2EarlyHints", RSRC_CONF,
                   "on to enable interim status 103 responses"),
    H2RS_DIRECTIVE("H2Padding", RSRC_CONF,
                   "set payload padding"),
    H2RS_DIRECTIVE("H2OutputBuffering", RSRC_CONF,
                   "set stream output buffer on/off"),
    H2RS_DIRECTIVE("H2StreamTimeout", RSRC_CONF,
                   "set stream timeout"),
    H2RS_DIRECTIVE("H2MaxDataFrameLen", RSRC_CONF,
                   "maximum number of bytes in a single HTTP/2 DATA frame"),
    H2RS_DIRECTIVE("H2MaxHeaderBlockLen", RSRC_CONF,
                   "maximum number of bytes in a response header block"),
    H2RS_DIRECTIVE("H2MaxStreamErrors", RSRC_CONF,
                   "maximum number of flow control errors tolerated"),
    H2RS_DIRECTIVE("H2EarlyHint", OR_FILEINFO|OR_AUTHCFG,
                   "add a a 'Link:' header for a 103 Early Hints response."),
    /* Directory sections set the server's value, as with the stock module
     * (the connection's server decides); never .htaccess, where that would
     * change a live server's configuration. */
    H2RS_DIRECTIVE("H2ProxyRequests", RSRC_CONF|ACCESS_CONF,
                   "Enables forward proxy requests via HTTP/2"),
    H2RS_DIRECTIVE("H2WebSockets", RSRC_CONF,
                   "off to disable WebSockets over HTTP/2"),
    { NULL }
};

ap_filter_rec_t *h2rs_shim_c2_net_in_handle;
ap_filter_rec_t *h2rs_shim_c2_net_out_handle;
ap_filter_rec_t *h2rs_shim_c2_response_handle;

/* Optional functions other modules look up by name (declared in httpd's
 * mod_http2.h): ap_expr's %{HTTP2}, the HTTP2 variables, mod_proxy's pool
 * sizing and (before httpd 2.4.58's hook) its tunnels. */
static int http2_is_h2(conn_rec *c) { return h2rs_is_h2(c); }
static char *http2_var_lookup(apr_pool_t *p, server_rec *s, conn_rec *c,
                              request_rec *r, char *name)
{
    return h2rs_var_lookup(p, s, c, r, name);
}
static void http2_get_num_workers(server_rec *s, int *minw, int *maxw)
{
    h2rs_get_num_workers(s, minw, maxw);
}
static apr_status_t http2_get_pollfd_from_conn(conn_rec *c,
                                               struct apr_pollfd_t *pfd,
                                               apr_interval_time_t *ptimeout)
{
    return h2rs_get_pollfd_from_conn(c, pfd, ptimeout);
}

static void h2rs_register_hooks(apr_pool_t *p)
{
    static const char *const mod_ssl[] = { "mod_ssl.c", NULL };
    static const char *const before_us[] = { "mod_ssl.c", "mod_reqtimeout.c", NULL };
    static const char *const mod_reqtimeout[] = { "mod_reqtimeout.c", NULL };
    (void)p;

    APR_REGISTER_OPTIONAL_FN(http2_is_h2);
    APR_REGISTER_OPTIONAL_FN(http2_var_lookup);
    APR_REGISTER_OPTIONAL_FN(http2_get_num_workers);
    APR_REGISTER_OPTIONAL_FN(http2_get_pollfd_from_conn);
#if AP_MODULE_MAGIC_AT_LEAST(20120211, 129)
    ap_hook_get_pollfd_from_conn(h2rs_get_pollfd_from_conn, NULL, NULL,
                                 APR_HOOK_MIDDLE);
#endif

    /* Before the MPM's: stream requests get no MPM timers. */
    ap_hook_mpm_register_timed_callback(h2rs_mpm_register_timed_callback,
                                        NULL, NULL, APR_HOOK_REALLY_FIRST);

    ap_hook_post_config(h2rs_post_config, mod_ssl, NULL, APR_HOOK_MIDDLE);
    ap_hook_child_init(h2rs_child_init, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_child_stopping(h2rs_child_stopping, NULL, NULL, APR_HOOK_MIDDLE);

    /* A parked client connection resumed by the MPM: ours again before
     * mod_ssl's hook uses it (a GOAWAY may be being written to it). */
    ap_hook_process_connection(h2rs_process_connection_first, NULL, NULL,
                               APR_HOOK_REALLY_FIRST);
    /* Client connections: after mod_ssl has its filters in place, before
     * the HTTP/1.1 processing (REALLY_LAST) could claim the connection. */
    ap_hook_process_connection(h2rs_process_connection, before_us, NULL,
                               APR_HOOK_LAST);
    /* Secondary connections (one per stream) are ours before anyone else;
     * named before mod_reqtimeout's, FIRST too: whichever module loads
     * first would run first, and its filters on a c2 poll no client. */
    ap_hook_process_connection(h2rs_c2_process_connection, NULL,
                               mod_reqtimeout, APR_HOOK_FIRST);
    /* Say goodbye (GOAWAY) before mod_ssl sends its close_notify. */
    ap_hook_pre_close_connection(h2rs_pre_close_connection, NULL, mod_ssl,
                                 APR_HOOK_LAST);

    ap_hook_protocol_propose(h2rs_protocol_propose, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_protocol_switch(h2rs_protocol_switch, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_protocol_get(h2rs_protocol_get, NULL, NULL, APR_HOOK_MIDDLE);

    /* Replace the HTTP/1 response header filter on stream requests as early
     * as possible; set the HTTP2 environment where the stock module does
     * (fixups that answer the request at APR_HOOK_LAST, such as mod_dir's
     * redirect, see it); send 103 Early Hints after the other fixups. */
    ap_hook_post_read_request(h2rs_post_read_request, NULL, NULL,
                              APR_HOOK_REALLY_FIRST);
    ap_hook_fixups(h2rs_fixups_env, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_fixups(h2rs_fixups_early_hints, NULL, NULL, APR_HOOK_LAST);
    /* The output filters a stream's handler starts with, after every
     * module inserted its own (the fast path's learning looks at them). */
    ap_hook_insert_filter(h2rs_insert_filter, NULL, NULL,
                          APR_HOOK_REALLY_LAST);
    /* SetHandler http2-status, as the stock module's. */
    ap_hook_handler(h2rs_status_handler, NULL, NULL, APR_HOOK_MIDDLE);

    h2rs_shim_c2_net_in_handle =
        ap_register_input_filter("H2RS_C2_NET_IN", h2rs_c2_net_in, NULL,
                                 AP_FTYPE_NETWORK);
    h2rs_shim_c2_net_out_handle =
        ap_register_output_filter("H2RS_C2_NET_OUT", h2rs_c2_net_out, NULL,
                                  AP_FTYPE_NETWORK);
    h2rs_shim_c2_response_handle =
        ap_register_output_filter("H2RS_C2_RESPONSE", h2rs_c2_response_out,
                                  NULL, AP_FTYPE_PROTOCOL);
}

AP_DECLARE_MODULE(http2) = {
    STANDARD20_MODULE_STUFF,
    h2rs_create_dir_config,
    h2rs_merge_dir_config,
    h2rs_create_server_config,
    h2rs_merge_server_config,
    h2rs_cmds,
    h2rs_register_hooks,
#if defined(AP_MODULE_FLAG_ALWAYS_MERGE)
    AP_MODULE_FLAG_ALWAYS_MERGE
#endif
};
