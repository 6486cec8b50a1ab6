# Radicale from PyPI for the compose stack (CalDAV and CardDAV).
FROM python:3.11-slim
RUN pip install --no-cache-dir radicale && useradd --system radicale && mkdir -p /data && chown radicale /data
USER radicale
EXPOSE 5232
CMD ["python", "-m", "radicale", "--config", "/etc/radicale/config"]
