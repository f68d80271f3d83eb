//! `weft-proxy`: see the library's `main`.

fn main() {
    weft_proxy::main()
}
