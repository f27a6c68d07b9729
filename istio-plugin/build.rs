//! Generates the Istio CA service from `proto/istio/ca.proto` with a vendored
//! `protoc` (nothing to install).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let include = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .compile_with_config(
            config,
            &[std::path::PathBuf::from("proto/istio/ca.proto")],
            &[std::path::PathBuf::from("proto"), include],
        )?;
    Ok(())
}
