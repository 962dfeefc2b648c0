# One image for every Heimdall service: `heimdall api | worker | recorder`.
# Build stage: resolve and install dependencies into a venv once.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
# CPU wheels keep the image small; for the GPU worker build with
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --extra-index-url "$TORCH_INDEX" .

# Runtime stage: the venv and nothing else.
FROM python:3.11-slim
RUN useradd --create-home --uid 1000 heimdall && mkdir /data && chown heimdall /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH HEIMDALL_DATA_DIR=/data HEIMDALL_HOST=0.0.0.0 HEIMDALL_LOG_JSON=1
USER heimdall
WORKDIR /home/heimdall
EXPOSE 8001
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8001/health'); sys.exit(0)" || exit 1
ENTRYPOINT ["heimdall"]
CMD ["api"]
