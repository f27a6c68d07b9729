# signet container image: build with the Rust toolchain, run on distroless
# as a non-root user. `docker build -t signet .` from the repository root.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# aws-lc-rs builds its C library with cc/cmake; protoc is vendored by the build.
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends cmake clang \
    && rm -rf /var/lib/apt/lists/*
RUN cargo build --release --locked -p signet \
    && install -D -m 0755 target/release/signet /out/signet

# glibc and CA certificates, nothing else; uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/signet /usr/local/bin/signet
USER 65532:65532
EXPOSE 8443 15012 9090
ENTRYPOINT ["/usr/local/bin/signet"]
CMD ["serve", "--config", "/etc/signet/signet.yaml"]
