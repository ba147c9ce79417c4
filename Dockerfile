# One image for both sides: the victim service and the attacker job. Installs exactly uv.lock.
FROM python:3.11-slim

ENV UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_COMPILE_BYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TESTBED_CACHE_DIR=/cache

RUN pip install --no-cache-dir uv
WORKDIR /app

# dependencies first (cached layer), then the project itself
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY shared ./shared
COPY victim_service ./victim_service
COPY attacker ./attacker
COPY defense ./defense
RUN uv sync --frozen --no-dev

EXPOSE 8000
CMD ["uvicorn", "victim_service.app:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000"]
