# One image for both sides: the victim service and the attacker job. Installs exactly uv.lock.
#
# BASE_IMAGE is any Debian-like image with Python 3.11+ and its venv module. The default is
# pulled from Docker Hub; `make compose-check` builds `testbed-base:bookworm` from Debian's own
# packages (debootstrap) where no registry can be reached, and passes it here.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TESTBED_CACHE_DIR=/cache

# uv in a venv of its own: Debian's Python refuses system-wide pip installs (PEP 668)
RUN python3 -m venv /opt/uv && /opt/uv/bin/pip install --no-cache-dir uv \
    && ln -s /opt/uv/bin/uv /usr/local/bin/uv
WORKDIR /app

# Dependencies first, keyed on the lock file alone: this layer (PyTorch with its CUDA libraries,
# several GB) is downloaded once and reused until pyproject.toml or uv.lock change.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project --no-cache
# Then the whole project (what .dockerignore lets through): every package, whatever its name.
COPY . .
RUN uv sync --frozen --no-dev --no-cache

EXPOSE 8000
CMD ["uvicorn", "victim_service.app:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000"]
