//! Generates Rust bindings for the httpd and APR headers of the httpd we build
//! against (found through `$APXS`, default `apxs`) and for the C shim's helpers.
//!
//! The bindings must come from the target httpd's own headers: `conn_rec` and
//! `request_rec` layouts follow the module magic number, so a module built for
//! one httpd must never be loaded into another.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn apxs_query(apxs: &str, var: &str) -> String {
    let out = Command::new(apxs)
        .args(["-q", var])
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{apxs} -q {var}`: {e} (install apache2-dev or set APXS)"));
    if !out.status.success() {
        panic!("`{apxs} -q {var}` failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn main() {
    let apxs = env::var("APXS").unwrap_or_else(|_| "apxs".to_string());
    println!("cargo:rerun-if-env-changed=APXS");
    println!("cargo:rerun-if-changed=c_shim/bindings.h");
    println!("cargo:rerun-if-changed=c_shim/shim.h");

    let include_dir = apxs_query(&apxs, "INCLUDEDIR");
    let apr_include_dir = apxs_query(&apxs, "APR_INCLUDEDIR");
    let apu_include_dir = apxs_query(&apxs, "APU_INCLUDEDIR");
    let extra_cppflags = apxs_query(&apxs, "EXTRA_CPPFLAGS");

    let mut builder = bindgen::Builder::default()
        .header("c_shim/bindings.h")
        .clang_arg(format!("-I{include_dir}"))
        .clang_arg(format!("-I{apr_include_dir}"))
        .clang_arg(format!("-I{apu_include_dir}"))
        .clang_arg("-Ic_shim");
    for flag in extra_cppflags.split_whitespace() {
        builder = builder.clang_arg(flag.to_string());
    }
    let escape = |dir: &str| regex_escape(dir.trim_end_matches('/'));
    let bindings = builder
        .allowlist_file(format!("{}/.*", escape(&include_dir)))
        .allowlist_file(format!("{}/.*", escape(&apr_include_dir)))
        .allowlist_file(format!("{}/.*", escape(&apu_include_dir)))
        .allowlist_file(".*c_shim/shim\\.h")
        .prepend_enum_name(false)
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .generate()
        .expect("bindgen failed on the httpd/APR headers");

    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    bindings.write_to_file(out.join("bindings.rs")).expect("cannot write bindings.rs");

    // Unit tests (`cargo test`) link a test executable, not a module: the APR
    // libraries are real shared libraries, so the pool and table wrappers run
    // for real in tests; httpd's own ap_* symbols live in the httpd binary and
    // are left unresolved there (no unit test calls them).
    println!("cargo:rustc-link-arg=-Wl,--unresolved-symbols=ignore-all");
    println!("cargo:rustc-link-arg=-lapr-1");
    println!("cargo:rustc-link-arg=-laprutil-1");
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if "\\.+*?()|[]{}^$".contains(ch) {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}
