# acmebox sidecar image: slim, no build tools in the final stage, runs as a non-root user.
FROM python:3.12-slim AS build
WORKDIR /src
COPY requirements.txt pyproject.toml README.md ./
COPY acmebox ./acmebox
# The lock file's exact versions, checked against its hashes; then acmebox itself.
RUN pip wheel --no-cache-dir --require-hashes --no-deps --wheel-dir /wheels -r requirements.txt \
 && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.12-slim
# uid and gid 10001: start-registry.sh gives data/acmebox and data/auth/htpasswd to them.
RUN groupadd --system --gid 10001 acmebox \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/acmebox --shell /usr/sbin/nologin acmebox \
 && install -d -o acmebox -g acmebox -m 0755 /etc/letsencrypt /etc/registry-auth \
 && install -d -o acmebox -g acmebox -m 0700 /var/lib/acmebox
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-index --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels
ENV ACMEBOX_CERTS_DIR=/etc/letsencrypt \
    ACMEBOX_STATE_DIR=/var/lib/acmebox \
    ACMEBOX_LISTEN=0.0.0.0:8080 \
    PYTHONUNBUFFERED=1
USER acmebox
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["python", "-m", "acmebox"]
CMD ["run"]
