# The operator and the dashboard's server (config/dashboard runs /trainjob-dashboard), static
# binaries on an empty base image: no shell, no package manager, nothing to patch but them.
#   docker build -t trainjob-operator:latest .

FROM rust:1.95-alpine AS builder
# Alpine's Rust targets musl and links statically; musl-dev supplies the C runtime objects that
# the link (and ring's C code) needs.
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
# BuildKit cache mounts keep downloaded crates and compiled dependencies between builds, so a code
# change rebuilds only this crate. (Simpler and sturdier than a dummy-src layer, which breaks as
# soon as Cargo.toml names a target file the dummy lacks.) The cached target dir is not part of the
# image, so the binaries are copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p trainjob-operator --bin trainjob-operator --bin trainjob-dashboard \
    && cp target/release/trainjob-operator target/release/trainjob-dashboard /

FROM scratch
COPY --from=builder /trainjob-operator /trainjob-dashboard /
# Same non-root uid/gid as config/manager (runAsNonRoot needs a numeric user).
USER 65532:65532
# /metrics, /healthz, /readyz
EXPOSE 8080
ENTRYPOINT ["/trainjob-operator"]
CMD ["run"]
