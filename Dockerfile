FROM python:3.11-slim
RUN useradd --create-home --uid 10001 kern
WORKDIR /app
COPY pyproject.toml README.md ./
COPY sdk/ sdk/
COPY pipeline/ pipeline/
COPY agents/ agents/
COPY tables/ tables/
COPY devstack/ devstack/
COPY collector/ collector/
RUN pip install --no-cache-dir ./sdk .
USER kern
WORKDIR /home/kern
EXPOSE 6066
CMD ["kern-telemetry", "worker"]
