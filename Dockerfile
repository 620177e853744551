# moldwatch worker image: the streaming worker (`moldwatch run`, POST /score) and `moldwatch score`
# on CSV or JSON lines. It installs the base install only (requirements-serve.lock): no TensorFlow,
# Keras, scikit-learn, SciPy, matplotlib, psycopg or pyarrow; `train`, `recipe` and `simulate`
# exit 2 with `pip install 'moldwatch[train]'`.
#   docker build -t moldwatch .
#   docker run -e MOLDWATCH_MONGO_URI=... -v /srv/store:/store:ro moldwatch run --store /store
# An image that also trains (the full lock: the train and test extras), e.g. for a training Job:
#   docker build --build-arg LOCK=requirements.lock -t moldwatch-train .
#   docker run -v /srv:/srv moldwatch-train train --schema ... --store /srv/store
FROM python:3.11-slim-bookworm AS build
# requirements-serve.lock (worker) or requirements.lock (trains too); refresh both: deploy/local/lock.sh
ARG LOCK=requirements-serve.lock
WORKDIR /src
COPY requirements-serve.lock requirements.lock ./
# Dependencies first, exactly as locked (versions and sha256), then the project without resolving
# again. The locks are for CPython 3.11 on x86_64 Linux: this image.
RUN python -m venv /opt/moldwatch && /opt/moldwatch/bin/pip install --no-cache-dir --require-hashes -r "$LOCK"
COPY pyproject.toml README.md ./
COPY model_store ./model_store
COPY service ./service
# The wheel leaves service/devservers (the local test and demo servers) out: pyproject.toml.
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
