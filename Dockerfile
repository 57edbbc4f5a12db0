# berth in a container: the worker (`berth worker`, the default command) and the REST API
# (`python -m berth.api.server`), as docker-compose.yml runs them.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# llama.cpp's server (the xllamacpp wheel) links OpenMP
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md /tmp/berth-src/
COPY berth /tmp/berth-src/berth
RUN pip install /tmp/berth-src && rm -rf /tmp/berth-src

# Not root by default: the API runs as this user. The worker needs the Docker socket and host
# paths, so docker-compose.yml runs it as root.
RUN useradd --create-home --uid 10001 berth
USER berth
WORKDIR /home/berth
ENV BERTH_HOME=/home/berth/.berth

EXPOSE 8000
CMD ["berth", "worker"]
