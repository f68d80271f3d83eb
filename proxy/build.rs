//! Release builds lay out the proxy's code in the order of `symbol-order.txt`: the functions a
//! sidecar runs (starting, serving, idling) first and together. Its idle memory is mostly code
//! pages, and the kernel maps code in blocks around every page it touches, so functions scattered
//! over the whole text kept most of it resident. `scripts/symbol-order` regenerates the list from
//! a profile; symbols it names that a build lacks are ignored.

fn main() {
    println!("cargo:rerun-if-changed=symbol-order.txt");
    let release = std::env::var("PROFILE").is_ok_and(|profile| profile == "release");
    // rust-lld is this target's default linker; GNU ld does not know the option.
    let lld_target =
        std::env::var("TARGET").is_ok_and(|target| target == "x86_64-unknown-linux-gnu");
    if release && lld_target {
        let list = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("symbol-order.txt");
        println!(
            "cargo:rustc-link-arg-bin=weft-proxy=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo:rustc-link-arg-bin=weft-proxy=-Wl,--no-warn-symbol-ordering");
    }
}
