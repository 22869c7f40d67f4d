# mod_h2rs: build the Rust staticlib and the C shim, link them into
# build/mod_h2rs.so against the httpd whose apxs is $(APXS).
#
#   make                      build build/mod_h2rs.so
#   make APXS=/usr/local/apache2/bin/apxs
#   make install              install with apxs (new inode: safe under a running httpd)
#   make test                 the whole test suite (scripts/test)
#   make clean

APXS    ?= apxs
CARGO   ?= cargo
CC      := $(shell $(APXS) -q CC)
CFLAGS  := $(shell $(APXS) -q CFLAGS) $(shell $(APXS) -q EXTRA_CFLAGS) -fPIC -ffunction-sections -Wall -Wextra -Wno-unused-parameter
CPPFLAGS := $(shell $(APXS) -q EXTRA_CPPFLAGS) -I$(shell $(APXS) -q INCLUDEDIR) \
            -I$(shell $(APXS) -q APR_INCLUDEDIR) -I$(shell $(APXS) -q APU_INCLUDEDIR)
LIBEXECDIR := $(shell $(APXS) -q LIBEXECDIR)

BUILD   := build
SO      := $(BUILD)/mod_h2rs.so
RUSTLIB := target/release/libmod_h2rs.a
RUSTLIB_ID := $(BUILD)/rustlib.id
SHIM_SRC := c_shim/mod_h2rs.c c_shim/helpers.c c_shim/proxy.c
SHIM_OBJ := $(patsubst c_shim/%.c,$(BUILD)/%.o,$(SHIM_SRC))
# What rustc reports as native-static-libs for a staticlib on Linux.
# OpenSSL (TLS to h2:// backends) is loaded with dlopen when first used.
NATIVE_LIBS := -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
EXPORTS := c_shim/h2rs.map
# The functions httpd runs (scripts/hot-code writes the list) go first in
# .text, together: each process then maps ~40% fewer of the module's pages
# (the shim is compiled with -ffunction-sections so its helpers can go too).
# The link script is ld's own default with the list included at the top of
# .text; a linker that prints no such script links without it.
HOT_CODE := link/hot-code.ld
LINK_SCRIPT := $(BUILD)/module.ld
# Relative relocations packed (DT_RELR) where linker and glibc (2.36+,
# which then marks the .so as needing it) support it: .rela.dyn shrinks
# from 41 to 4 KiB, and with it the first segment, which every process
# that looks up a symbol maps whole (fault-around): 52 -> 16 KiB in each
# child and in mod_cgid's daemon.
PACK_RELOCS := $(shell d=$$(mktemp -d) && printf 'static int x; int *p = &x; void abort(void); void f(void) { abort(); }\n' \
    | $(CC) -shared -fPIC -x c - -o $$d/probe.so -Wl,-z,pack-relative-relocs 2>/dev/null \
    && readelf -V $$d/probe.so | grep -q GLIBC_ABI_DT_RELR && echo -Wl,-z,pack-relative-relocs; rm -rf $$d)

.PHONY: all install test clean check-exports FORCE

all: $(SO) check-exports

# cargo decides what to rebuild; the recipe makes make look at the library's
# timestamp again afterwards, so the .so is relinked in the same run. A
# library cargo had built before (a profile setting changed back) comes back
# as a link to that older file, with its older timestamp: the library's
# identity (inode, time, size), kept in $(RUSTLIB_ID) when it changes, tells
# make then.
$(RUSTLIB): FORCE
	APXS=$(APXS) $(CARGO) build --release --lib
	@mkdir -p $(BUILD); id=$$(stat -L -c '%i %Y %s' $(RUSTLIB)); \
	    [ "$$(cat $(RUSTLIB_ID) 2>/dev/null)" = "$$id" ] || echo "$$id" > $(RUSTLIB_ID)

$(RUSTLIB_ID): $(RUSTLIB)
	@:

$(BUILD)/%.o: c_shim/%.c c_shim/shim.h Makefile
	@mkdir -p $(BUILD)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

# -u <module>: without it the linker drops the shim's module records and
# the .so is silently empty. The version script exports only those records.
# -Bsymbolic: our own references to http2_module stay ours even when the
# .so is loaded only for proxy_http2_module next to the stock mod_http2
# (whose record has the same name).
$(LINK_SCRIPT): $(HOT_CODE)
	@mkdir -p $(BUILD)
	$(CC) -shared -o /dev/null -Wl,--verbose 2>/dev/null | sed -n '/^=====/,/^=====/{/^=====/!p}' \
	    | awk -v hot="$(CURDIR)/$(HOT_CODE)" '{ print } \
	        /^ *\.text *:/ { text = 1; next } \
	        text && /^ *\{/ { print "    INCLUDE " hot; text = 0 }' > $@.tmp
	@grep -q "INCLUDE $(CURDIR)/$(HOT_CODE)" $@.tmp || { echo "warning: no default link script with .text; linking without the hot-code layout" >&2; : > $@.tmp; }
	mv -f $@.tmp $@

$(SO): $(SHIM_OBJ) $(RUSTLIB) $(RUSTLIB_ID) $(EXPORTS) $(LINK_SCRIPT)
	$(CC) -shared -o $@.tmp $(SHIM_OBJ) $(RUSTLIB) $$(test -s $(LINK_SCRIPT) && echo -Wl,-T,$(LINK_SCRIPT)) \
	    -Wl,-u,http2_module -Wl,-u,proxy_http2_module -Wl,--version-script=$(EXPORTS) -Wl,-Bsymbolic \
	    -Wl,--gc-sections $(PACK_RELOCS) $(NATIVE_LIBS)
	mv -f $@.tmp $@

# The .so must export its two module records and nothing else.
check-exports: $(SO)
	@leaked=$$(nm -D --defined-only $(SO) | awk '$$2 ~ /[TDBRVW]/ {print $$3}' \
	    | grep -Ev '^(http2_module|proxy_http2_module|_init|_fini)$$' | head -n 5); \
	if [ -n "$$leaked" ]; then echo "$(SO) exports more than its module records: $$leaked" >&2; exit 1; fi; \
	for m in http2_module proxy_http2_module; do \
	    nm -D --defined-only $(SO) | grep -q " $$m$$" \
	        || { echo "$(SO) does not export $$m" >&2; exit 1; }; \
	done

install: all
	$(APXS) -i -n h2rs $(SO)

test:
	scripts/test

clean:
	rm -rf $(BUILD)
	$(CARGO) clean
include docker/docker.mk
