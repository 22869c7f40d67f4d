# Local stand-in for the official rust:1-bookworm image, for an engine that
# cannot pull it: the Debian build base plus this machine's own Rust toolchain
# (copied from rustup's RUSTUP_HOME by scripts/docker-image), in the official
# image's places. The base already has what bindgen and httpd's apxs need
# (clang, libclang-dev, libapr1-dev, libaprutil1-dev, apache2-dev, make, gcc).
ARG BASE=h2rs-local/debian:bookworm-build
FROM ${BASE}
ARG RUST_VERSION
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    RUST_VERSION=${RUST_VERSION}
COPY rustup /usr/local/rustup
COPY cargo /usr/local/cargo
RUN set -eux; \
    cargo --version; rustc --version; \
    printf 'fn main() { println!("ok"); }\n' >/tmp/t.rs; rustc -o /tmp/t /tmp/t.rs; /tmp/t; rm -f /tmp/t /tmp/t.rs
LABEL org.h2rs.stand-in="rust:1-bookworm"
CMD ["bash"]
