# moldwatch worker image: the streaming worker plus the offline CLI (train, score, recipe).
# Build: docker build -t moldwatch .   Run: docker run -e MOLDWATCH_MONGO_URI=... moldwatch run --store /store
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
# Dependencies first, exactly as locked (versions and sha256; refresh: deploy/local/lock.sh), then
# the project without resolving again. The lock is for CPython 3.11 on x86_64 Linux: this image.
RUN python -m venv /opt/moldwatch && /opt/moldwatch/bin/pip install --no-cache-dir --require-hashes -r requirements.lock
COPY model_store ./model_store
COPY service ./service
RUN /opt/moldwatch/bin/pip install --no-cache-dir --no-deps .

FROM python:3.11-slim-bookworm
# A non-root user: the worker needs no privileges, only the store (read) and the network.
RUN useradd --system --uid 10001 --home /home/moldwatch --create-home moldwatch
COPY --from=build /opt/moldwatch /opt/moldwatch
ENV PATH=/opt/moldwatch/bin:$PATH PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3 MOLDWATCH_HTTP_HOST=0.0.0.0
USER moldwatch
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)" || exit 1
ENTRYPOINT ["moldwatch"]
CMD ["run"]
