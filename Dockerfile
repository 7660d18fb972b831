# syntax=docker/dockerfile:1.7
#
# lavic: LaViC visual conversational recommendation, gRPC inference server.
#
# CPU image (default):
#   docker build -t lavic:cpu .
#
# CUDA image (CUDA *devel* base to build, the matching CUDA *runtime* base to run):
#   docker build -t lavic:cuda \
#     --build-arg BUILDER_IMAGE=nvidia/cuda:12.4.1-devel-ubuntu22.04 \
#     --build-arg RUNTIME_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04 \
#     --build-arg CARGO_FEATURES=cuda \
#     --build-arg CUDA_COMPUTE_CAP=80 \
#     .
#
# glibc rule: the binary is linked against the builder's glibc and only runs on a
# glibc that is the same or newer. That is why each builder/runtime pair is the
# same distro release: rust:*-bookworm with distroless cc-debian12 (both Debian 12),
# nvidia/cuda *-devel-ubuntu22.04 with *-runtime-ubuntu22.04 (both Ubuntu 22.04).
# If you change one side of a pair, change the other to the same release.
#
# CUDA notes:
#  * The CUDA version of the devel and runtime images must match (12.4.1 / 12.4.1).
#    candle compiles its kernels to PTX with the devel image's nvcc; the node's NVIDIA
#    driver has to be new enough to JIT that PTX (CUDA 12.4 needs driver >= 550).
#    On older drivers, build with an older CUDA 12.x pair rather than a newer one.
#  * There is no GPU during `docker build`, so the kernels' target compute capability
#    cannot be detected: CUDA_COMPUTE_CAP=80 (Ampere) is the default because bf16
#    needs >= 80, and sm_80 PTX also runs on Ada (89) and Hopper (90).
#  * libcuda.so.1 comes from the host driver at run time (NVIDIA container toolkit);
#    the runtime image provides cuBLAS, cuRAND and NVRTC.
#
# Dependency caching: we use cargo-chef rather than a hand-made dummy-sources layer.
# The workspace has several crates (lavic-model, lavic-catalog, lavic-server) and a
# build script that compiles the protos with protox; a dummy layer would have to
# mirror every member's Cargo.toml and stub every lib.rs/main.rs/build.rs by hand and
# silently rots when a crate is added. `cargo chef prepare` derives that skeleton
# from the manifests (its recipe only changes when manifests or Cargo.lock change),
# so the expensive `cargo chef cook` layer (candle, tokenizers, tonic and, for CUDA,
# candle's kernels) stays cached while only our own sources change. BuildKit cache
# mounts are used in addition, for cargo's download cache only: the compiled
# dependencies must live in an image layer so that the next stage can reuse them.
#
# The project needs no protoc: the protos are compiled with the protox crate.

ARG RUST_VERSION=1.95.0
ARG BUILDER_IMAGE=rust:${RUST_VERSION}-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---------------------------------------------------------------------------
# chef: a Rust toolchain plus cargo-chef, on whatever base BUILDER_IMAGE names.
# ---------------------------------------------------------------------------
FROM ${BUILDER_IMAGE} AS chef
ARG RUST_VERSION
ARG CARGO_CHEF_VERSION=0.1.78
ENV CARGO_HOME=/usr/local/cargo \
    RUSTUP_HOME=/usr/local/rustup \
    PATH=/usr/local/cargo/bin:/usr/local/cuda/bin:${PATH} \
    CARGO_TERM_COLOR=never
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The official rust image already has a toolchain and a C compiler (for onig_sys and
# other -sys crates). The CUDA devel image has neither rustup nor curl, so install a
# compiler, pkg-config and rustup there. Debian/Ubuntu package versions are not
# pinned: the base image tag pins the distro release, and a point-release pin would
# break as soon as the archive drops that version.
# hadolint ignore=DL3008
RUN if ! command -v cargo >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends \
            build-essential ca-certificates curl pkg-config \
        && rm -rf /var/lib/apt/lists/* \
        && curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
            | sh -s -- -y --no-modify-path --profile minimal \
                --default-toolchain "${RUST_VERSION}"; \
    fi \
    && cargo --version \
    && rustc --version
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}" \
    && rm -rf "${CARGO_HOME}/registry" "${CARGO_HOME}/git"
WORKDIR /src

# ---------------------------------------------------------------------------
# planner: the dependency "recipe" (manifests + lockfile only).
# ---------------------------------------------------------------------------
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# ---------------------------------------------------------------------------
# builder: dependencies first (cached layer), then the project itself.
# ---------------------------------------------------------------------------
FROM chef AS builder
# Cargo features of crate lavic-server: "" for CPU, "cuda" for the CUDA image.
ARG CARGO_FEATURES=""
# Read by candle's CUDA kernel build (build args are visible to RUN as env vars);
# ignored by CPU builds.
ARG CUDA_COMPUTE_CAP=80
# Extra rustc flags, e.g. "-C target-cpu=x86-64-v3" for AVX2-only node pools. Exported
# as RUSTFLAGS only when non-empty: an empty RUSTFLAGS would still override any
# build.rustflags in the project's .cargo/config.toml. Used identically by the cook
# and the build step, or the cooked dependencies would not be reused.
ARG EXTRA_RUSTFLAGS=""
# Lets the linker find the libcuda.so stub of the devel image (no driver at build
# time). Harmless on the CPU builder, where the directory does not exist.
ENV LIBRARY_PATH=/usr/local/cuda/lib64/stubs
COPY --from=planner /src/recipe.json recipe.json
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    if [ -n "${EXTRA_RUSTFLAGS}" ]; then export RUSTFLAGS="${EXTRA_RUSTFLAGS}"; fi \
    && cargo chef cook --release --locked --recipe-path recipe.json \
        --package lavic-server --bin lavic --features "${CARGO_FEATURES}"
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    if [ -n "${EXTRA_RUSTFLAGS}" ]; then export RUSTFLAGS="${EXTRA_RUSTFLAGS}"; fi \
    && cargo build --release --locked \
        --package lavic-server --bin lavic --features "${CARGO_FEATURES}" \
    && install -D -m 0755 target/release/lavic /out/lavic

# ---------------------------------------------------------------------------
# runtime: distroless (CPU) or nvidia/cuda runtime (GPU). No shell is assumed:
# distroless has none, so this stage has no RUN and every command is exec-form.
# ---------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
ARG CARGO_FEATURES=""
LABEL org.opencontainers.image.title="lavic" \
      org.opencontainers.image.description="LaViC visual conversational recommendation gRPC server (features: ${CARGO_FEATURES})" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/lavic /usr/local/bin/lavic
# No LAVIC_* variables are baked in on purpose: env beats the TOML file in lavic's
# config precedence, so an image default would silently override --config/LAVIC_CONFIG.
# Model weights (/models) and the catalog (/catalog) are mounted read-only; the server
# writes only to /tmp.
# 65532 is the distroless "nonroot" user. On the CUDA runtime image it has no
# /etc/passwd entry, which is fine: nothing resolves the name.
USER 65532:65532
# 50051: gRPC (Recommender, Catalog, grpc.health.v1, reflection); 9090: /metrics.
EXPOSE 50051 9090
# Docker/Compose only; Kubernetes ignores HEALTHCHECK and uses the gRPC probes in
# deploy/k8s. Loading ~15 GB of weights plus warm-up can take minutes, hence the long
# start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["/usr/local/bin/lavic", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/lavic", "serve"]
