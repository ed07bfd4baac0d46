//! Generates the agent's local gRPC API (`proto/pullgate/v1/agent.proto`) with tonic-build.
//! Needs `protoc` (Debian `protobuf-compiler`, installed by `cargo xtask deps`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/pullgate/v1/agent.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // `pullgate status --json` prints the answer as it came.
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .compile_protos(&[proto], &["../proto"])?;
    Ok(())
}
