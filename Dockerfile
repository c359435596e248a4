# Multi-stage build: compile with the Rust toolchain image, run on slim
# Debian as an unprivileged user.
#
#   docker build -t failoverd .
#   docker run --network host --cap-add NET_BIND_SERVICE \
#     -v /etc/failoverd:/etc/failoverd:ro failoverd
#
# --network host lets failoverd bind a floating IP that keepalived moves
# onto the host (with `freebind = true`); NET_BIND_SERVICE is needed only
# for listen ports below 1024.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin failoverd

FROM debian:bookworm-slim
RUN useradd --system --no-create-home --shell /usr/sbin/nologin failoverd \
    && mkdir -p /etc/failoverd /run/failoverd \
    && chown failoverd /run/failoverd
COPY --from=build /src/target/release/failoverd /usr/local/bin/failoverd
COPY config.example.toml /etc/failoverd/failoverd.toml.example
USER failoverd
EXPOSE 9898
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/failoverd"]
CMD ["run", "-c", "/etc/failoverd/failoverd.toml"]
