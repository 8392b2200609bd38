# syntax=docker/dockerfile:1
# Build:  docker build -t mmc .
# Run:    docker run -p 8088:8088 -v mmc-data:/data -e MMC_SECRET_KEY=... mmc
# Plugin: docker build --target plugin-artifact --output type=local,dest=out .
#         -> out/mmc_client_control.so for mosquitto 2.0 brokers (plugin/README.md)

FROM python:3.11-slim AS build
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY mmc ./mmc
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# The client-control plugin for open-source mosquitto, against Debian 12's mosquitto 2.0 headers.
FROM debian:bookworm-slim AS plugin
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       gcc libc6-dev make mosquitto-dev libmosquitto-dev libcjson-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY plugin/*.c plugin/*.h ./plugin/
RUN make plugin

FROM scratch AS plugin-artifact
COPY --from=plugin /src/plugin/mmc_client_control.so /

FROM python:3.11-slim AS runtime
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin mmc \
    && mkdir -p /data /etc/mmc && chown mmc /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY config/mmc.toml /etc/mmc/mmc.toml
# Shipped for operators to copy onto their brokers; mmc itself does not load it.
COPY --from=plugin /src/plugin/mmc_client_control.so /usr/local/share/mmc/mmc_client_control.so
COPY config/mosquitto-example.conf /usr/local/share/mmc/mosquitto-example.conf
ENV MMC_CONFIG=/etc/mmc/mmc.toml \
    MMC_HOST=0.0.0.0 \
    MMC_PORT=8088 \
    MMC_DATA_DIR=/data \
    PYTHONUNBUFFERED=1
USER mmc
VOLUME ["/data"]
EXPOSE 8088
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8088/healthz', timeout=2).status == 200 else 1)"
STOPSIGNAL SIGTERM
CMD ["mmc", "serve"]
