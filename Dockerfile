# syntax=docker/dockerfile:1
# Build: docker build -t attio-webhooks .
# Run:   docker run -p 8080:8080 -e ATTIO_WEBHOOK_SECRET=... -e ATTIO_API_KEY=... \
#          -v attio-data:/data attio-webhooks

FROM rust:1-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends pkg-config libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so source changes do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && mkdir -p tests/it && touch tests/it/main.rs \
    && mkdir -p config && touch config/default.toml \
    && cargo build --release --locked --bin attio-webhooks || true
COPY . .
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin attio-webhooks

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 attio \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --shell /usr/sbin/nologin attio
WORKDIR /app
COPY --from=build /src/target/release/attio-webhooks /usr/local/bin/attio-webhooks
COPY config ./config
RUN mkdir -p /data && chown 10001:10001 /data
# Numeric, and the same as runAsUser/runAsGroup in deploy/kubernetes (runAsNonRoot checks it).
USER 10001:10001
ENV APP_ENV=production \
    ATTIO_WEBHOOKS__SERVER__LISTEN=0.0.0.0:8080 \
    ATTIO_WEBHOOKS__ADMIN__LISTEN=0.0.0.0:9090 \
    ATTIO_WEBHOOKS__STORAGE__PATH=/data
VOLUME ["/data"]
# 8080: Attio's deliveries (behind the TLS proxy); 9090: /metrics and the health checks, for
# the cluster only (in production /metrics is not served on 8080).
EXPOSE 8080
EXPOSE 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["attio-webhooks"]
CMD ["serve"]
