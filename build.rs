//! Compiles proto/ with the protoc shipped inside `protoc-bin-vendored`, so building shir
//! needs nothing but the Rust toolchain.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment now.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        // Messages that carry a secret get a hand-written Debug that hides it (src/lib.rs).
        .skip_debug([
            ".shir.v1.JoinResponse",
            ".shir.v1.KeyShowReply",
            ".shir.v1.LinkedServiceSpec",
            ".shir.v1.ProxySetRequest",
        ])
        .compile_protos(&["proto/shir.proto", "proto/etcd_kv.proto"], &["proto"])?;
    Ok(())
}
