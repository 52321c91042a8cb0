# The wheels are built where a C compiler is (the native fold and CRC check, pipeline/native/); the image gets only them.
FROM python:3.11-slim AS wheels
RUN apt-get update && apt-get install --yes --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sdk/ sdk/
COPY pipeline/ pipeline/
COPY agents/ agents/
COPY tables/ tables/
COPY devstack/ devstack/
COPY collector/ collector/
RUN pip wheel --no-cache-dir --wheel-dir /wheels ./sdk .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 kern
COPY --from=wheels /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels kern-telemetry && rm -rf /wheels
USER kern
WORKDIR /home/kern
EXPOSE 6066
CMD ["kern-telemetry", "worker"]
