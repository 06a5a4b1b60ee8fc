# syntax=docker/dockerfile:1
# redcell's three binaries in one image: `cell` (a logic server), `router`, and
# `cellctl` (the operator CLI; in the cluster it runs the migration Jobs).
# The manifests in k8s/ (`cellctl render k8s`) name the binaries by path in
# /usr/local/bin and run them as uid 65532, the runtime image's `nonroot`.
#
#   docker build -t <registry>/redcell:0.1.0 .
#
# Builder: the Rust toolchain the workspace asks for (rust-version 1.95), on
# Debian 12, the same glibc as the runtime image. The .proto files compile in
# pure Rust (protox), so no protoc is needed; nothing links OpenSSL.
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit); the
# binaries are copied out in the same step, as the cached target/ is not part
# of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        -p redcell-cell -p redcell-router -p redcell-cellctl \
 && install -D -m 0755 -t /out \
        target/release/cell target/release/router target/release/cellctl

# Runtime: distroless with glibc and libgcc (what Rust binaries link), no
# shell, no package manager; `nonroot` (65532) by default.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/ /usr/local/bin/
# Numeric, so that the kubelet can verify `runAsNonRoot` from the image alone.
USER 65532:65532
# Router gRPC, logic-server gRPC, the admin /metrics port.
EXPOSE 7000 7100 9090
ENTRYPOINT ["/usr/local/bin/cellctl"]
CMD ["--help"]
