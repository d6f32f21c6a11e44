/* LD_PRELOAD shim for wrk in bench/run.sh: every TLS connection a full handshake.
 *
 * wrk reconnects with SSL_clear() on the same SSL object, which keeps the last session, so its
 * next SSL_connect() offers to resume it (a session ID or a TLS 1.3 ticket) and both nginx and
 * baton accept: no certificate, no signature. Dropping the session before the object is cleared
 * makes each reconnect a full handshake, as a new visitor's is. No OpenSSL headers needed:
 * built with `cc -shared -fPIC -o no_resume.so no_resume.c -ldl`. */
#define _GNU_SOURCE
#include <dlfcn.h>

typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;
int SSL_set_session(SSL *s, SSL_SESSION *session);

int SSL_clear(SSL *s) {
    static int (*real)(SSL *);
    if (!real) real = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_clear");
    SSL_set_session(s, 0);
    return real(s);
}
