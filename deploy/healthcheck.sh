#!/bin/bash
# corecast-healthcheck [PATH]: exit 0 when `GET PATH` (default /healthz) on
# 127.0.0.1:${CORECAST_HEALTH_PORT:-8080} answers 200, else print the status line
# (or nothing on a refused connection) and exit 1.
#
# The runtime image has no curl or wget; bash's /dev/tcp does the one request a
# probe needs, so the image does not grow a HTTP client only for this. The
# Dockerfile's HEALTHCHECK and deploy/docker-compose.yml call it;
# scripts/check-deploy.sh runs it against the real server.
set -u
port="${CORECAST_HEALTH_PORT:-8080}"
path="${1:-/healthz}"
exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$path" >&3
IFS= read -r -t 5 status <&3 || exit 1
status="${status%$'\r'}"
case "$status" in
  "HTTP/1.1 200 "*) exit 0 ;;
  *)
    echo "corecast-healthcheck: GET $path: ${status:-no answer}"
    exit 1
    ;;
esac
