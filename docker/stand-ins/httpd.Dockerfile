# Local stand-in for the official httpd:2.4 image (docker-library/httpd, Debian
# flavour), for an engine that cannot pull it: httpd built from the upstream
# release tarball into /usr/local/apache2 with the official image's choices.
# Built by scripts/docker-image; needs no network (the tarball is in the context,
# the packages are in the debootstrap bases).
#   BUILD_BASE    Debian 12 with gcc, make and httpd's build dependencies
#   RUNTIME_BASE  Debian 12 with httpd's runtime libraries
ARG BUILD_BASE=h2rs-local/debian:bookworm-build
ARG RUNTIME_BASE=h2rs-local/debian:bookworm-runtime

FROM ${BUILD_BASE} AS build
ARG HTTPD_VERSION=2.4.68
ARG NICE=0
ENV HTTPD_PREFIX=/usr/local/apache2
COPY httpd-${HTTPD_VERSION}.tar.gz /usr/src/httpd.tar.gz
# The official image's configure line and hardening flags; `reallyall` builds
# every module, mod_http2 included (libnghttp2-dev), for comparisons.
RUN set -eux; \
    mkdir -p /usr/src/httpd "$HTTPD_PREFIX"; \
    tar -xf /usr/src/httpd.tar.gz -C /usr/src/httpd --strip-components=1; \
    cd /usr/src/httpd; \
    gnuArch="$(dpkg-architecture --query DEB_BUILD_GNU_TYPE)"; \
    CFLAGS="-pipe $(dpkg-buildflags --get CFLAGS)"; \
    CPPFLAGS="$(dpkg-buildflags --get CPPFLAGS)"; \
    LDFLAGS="$(dpkg-buildflags --get LDFLAGS)"; \
    nice -n "$NICE" ./configure \
        --build="$gnuArch" \
        --prefix="$HTTPD_PREFIX" \
        --enable-mods-shared=reallyall \
        --enable-mpms-shared=all \
        --enable-pie \
        CFLAGS="$CFLAGS" CPPFLAGS="$CPPFLAGS" LDFLAGS="$LDFLAGS" \
        >/tmp/configure.log || { tail -n 40 /tmp/configure.log config.log; exit 1; }; \
    nice -n "$NICE" make -j "$(nproc)" >/tmp/make.log 2>&1 || { tail -n 60 /tmp/make.log; exit 1; }; \
    make install >/tmp/install.log; \
    cd "$HTTPD_PREFIX"; \
    rm -r man manual; \
    sed -ri \
        -e 's!^(\s*CustomLog)\s+\S+!\1 /proc/self/fd/1!g' \
        -e 's!^(\s*ErrorLog)\s+\S+!\1 /proc/self/fd/2!g' \
        -e 's!^(\s*TransferLog)\s+\S+!\1 /proc/self/fd/1!g' \
        -e 's!^(\s*User)\s+daemon\s*$!\1 www-data!g' \
        -e 's!^(\s*Group)\s+daemon\s*$!\1 www-data!g' \
        "$HTTPD_PREFIX/conf/httpd.conf" \
        "$HTTPD_PREFIX/conf/extra/httpd-ssl.conf"; \
    grep -E '^\s*User www-data$' "$HTTPD_PREFIX/conf/httpd.conf"; \
    grep -E '^\s*Group www-data$' "$HTTPD_PREFIX/conf/httpd.conf"; \
    grep -E '^LoadModule mpm_event_module ' "$HTTPD_PREFIX/conf/httpd.conf"; \
    test -f "$HTTPD_PREFIX/modules/mod_http2.so"; \
    "$HTTPD_PREFIX/bin/httpd" -v

FROM ${RUNTIME_BASE}
ARG HTTPD_VERSION=2.4.68
ENV HTTPD_PREFIX=/usr/local/apache2
ENV PATH=/usr/local/apache2/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENV HTTPD_VERSION=${HTTPD_VERSION}
WORKDIR /usr/local/apache2
COPY --from=build /usr/local/apache2 /usr/local/apache2
COPY httpd-foreground /usr/local/bin/
# As the official image: the prefix belongs to www-data, its contents to root.
# Every binary and module must find its libraries in the runtime base.
RUN set -eux; \
    chown www-data:www-data "$HTTPD_PREFIX"; \
    missing="$(find /usr/local/apache2 -type f \( -name '*.so' -o -perm -u+x \) -exec ldd {} + 2>/dev/null | grep 'not found' | sort -u || true)"; \
    if [ -n "$missing" ]; then echo "missing libraries: $missing"; exit 1; fi; \
    httpd -v; \
    httpd -t
LABEL org.h2rs.stand-in="httpd:2.4" org.h2rs.httpd-version="${HTTPD_VERSION}"
# https://httpd.apache.org/docs/2.4/stopping.html#gracefulstop
STOPSIGNAL SIGWINCH
EXPOSE 80
CMD ["httpd-foreground"]
