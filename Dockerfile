# Multi-stage build of the two binaries. Migrations are embedded at compile
# time (sqlx::migrate!), and no query! macros are used, so no database is
# needed to build.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin api --bin worker \
 && mkdir -p /out && cp target/release/api target/release/worker /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home flashstock
USER flashstock

FROM runtime AS api
COPY --from=build /out/api /usr/local/bin/api
EXPOSE 3000
HEALTHCHECK --interval=5s --timeout=3s --retries=12 CMD curl -fsS http://127.0.0.1:3000/readyz || exit 1
CMD ["api"]

FROM runtime AS worker
COPY --from=build /out/worker /usr/local/bin/worker
EXPOSE 9091
HEALTHCHECK --interval=5s --timeout=3s --retries=12 CMD curl -fsS http://127.0.0.1:9091/metrics || exit 1
CMD ["worker"]
