# syntax=docker/dockerfile:1
# Build:  docker build -t mmc .
# Run:    docker run -p 8088:8088 -v mmc-data:/data -e MMC_SECRET_KEY=... mmc

FROM python:3.11-slim AS build
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY mmc ./mmc
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim AS runtime
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin mmc \
    && mkdir -p /data /etc/mmc && chown mmc /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY config/mmc.toml /etc/mmc/mmc.toml
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
