# The sync server, next to a Redis of your own (compose.yaml does all of this: docker compose up -d):
#
#   docker build -t sync-server .
#   docker network create sync
#   docker run -d --name redis --network sync -v sync-redis:/data redis:7 redis-server --appendonly yes
#   docker run -d --name sync --network sync -p 8080:8080 -v sync-data:/data sync-server
#   docker logs sync    # the generated credentials, printed once and kept in /data/credentials.json
#
# -e SYNC_ACCOUNT_SID=AC… -e SYNC_AUTH_TOKEN=… chooses the credentials (they are then never printed);
# -e SYNC_REDIS_URL=redis://host:port/0 points at another Redis; -e SYNC_REDIS_URL= (empty) runs the
# bundled Valkey inside the container instead, persisting to /data/redis.
#
# Host names: links in responses (url, links, next_page_url) are built from the request's Host, so the
# server answers only Hosts it is told about (others get 400; /healthz answers any). The default is
# localhost, 127.0.0.1 and [::1] on any port: what a browser or curl on the Docker host sends through
# `-p 8080:8080` (or any other published port). Reached under any other name, set one of:
#   -e SYNC_PUBLIC_URL=https://sync.example.com   the URL clients use: the base of every link, and
#                                                 its host is then allowed too
#   -e SYNC_ALLOWED_HOSTS=sync:8080,*.example.com  Host patterns (host, host:port, *.domain)
# Behind a reverse proxy that rewrites Host, use SYNC_PUBLIC_URL with SYNC_ALLOWED_HOSTS='*'.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --user-group --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin sync \
    && install --directory --owner=sync --group=sync --mode=700 /data

# Built outside the working directory and removed: a stray source tree must never shadow the installed package.
# constraints.txt (scripts/lock) pins every runtime dependency: the same sources build the same image.
COPY pyproject.toml README.md constraints.txt /tmp/src/
COPY sync_server /tmp/src/sync_server
COPY protocol /tmp/src/protocol
RUN pip install --no-cache-dir -c /tmp/src/constraints.txt /tmp/src && rm -rf /tmp/src

ENV SYNC_REDIS_URL=redis://redis:6379/0 \
    SYNC_DATA_DIR=/data
WORKDIR /data
VOLUME ["/data"]
USER sync
EXPOSE 8080

# slim has no curl; urlopen raises on anything but 2xx (503 means Redis is unreachable).
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=3)"]

# SIGTERM (docker stop) drains requests for up to SYNC_DRAIN_TIMEOUT (10 s) and closes websockets
# with 1001; give `docker stop` a longer --time (compose.yaml: stop_grace_period).
STOPSIGNAL SIGTERM
CMD ["sync-server", "--host", "0.0.0.0", "--port", "8080"]
