//! Generates an independent Istio CA client from `proto/istio_ca_client.proto`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let include = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .build_transport(true)
        .compile_with_config(
            config,
            &[std::path::PathBuf::from("proto/istio_ca_client.proto")],
            &[std::path::PathBuf::from("proto"), include],
        )?;
    Ok(())
}
