// Generates the gRPC client and server from proto/cohort.proto with a vendored protoc, so no
// system install is needed.
fn main() {
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc for this platform");
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto/cohort.proto");
    tonic_prost_build::configure()
        .compile_protos(&["proto/cohort.proto"], &["proto"])
        .expect("proto/cohort.proto compiles");
}
