# acmebox sidecar image: slim, no build tools in the final stage, runs as a non-root user.
FROM python:3.12-slim AS build
# A build without network: put the lock file's wheels (and setuptools) in ./wheelhouse and pass
#   --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/src/wheelhouse
# (pebble-test/container-setup.sh makes such a wheelhouse; the container test builds this way).
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
WORKDIR /src
# .dockerignore lets in only the lock file, pyproject.toml, README.md, acmebox/ and wheelhouse/.
COPY . .
# A venv without pip (the base image's pip installs into it), copied whole into the final
# stage: no wheels layer is left behind there. The lock file's exact versions, checked against
# its hashes; then acmebox itself.
RUN python -m venv --without-pip /opt/acmebox \
 && pip --python /opt/acmebox/bin/python install --no-cache-dir --disable-pip-version-check --require-hashes \
      --no-deps -r requirements.txt \
 && pip --python /opt/acmebox/bin/python install --no-cache-dir --disable-pip-version-check --no-deps .

FROM python:3.12-slim
# uid and gid 10001: start-registry.sh gives data/acmebox and data/auth/htpasswd to them.
RUN groupadd --system --gid 10001 acmebox \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/acmebox --shell /usr/sbin/nologin acmebox \
 && install -d -o acmebox -g acmebox -m 0755 /etc/letsencrypt /etc/registry-auth \
 && install -d -o acmebox -g acmebox -m 0700 /var/lib/acmebox
COPY --from=build /opt/acmebox /opt/acmebox
ENV PATH=/opt/acmebox/bin:$PATH \
    ACMEBOX_CERTS_DIR=/etc/letsencrypt \
    ACMEBOX_STATE_DIR=/var/lib/acmebox \
    ACMEBOX_LISTEN=0.0.0.0:8080 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER acmebox
EXPOSE 8080
# Healthy means "every certificate is good" (/healthz); the compose file checks /readyz instead,
# to start nginx and the registry as soon as their files are written.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["python", "-m", "acmebox"]
CMD ["run"]
