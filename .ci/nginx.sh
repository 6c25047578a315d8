# nginx in front of the replica tests, sourced by .ci/run (bash, set -euo pipefail).
#
#   nginx_start   install the Debian package if nginx is missing, and start it from a new temporary
#                 directory with the documented config (docs/nginx/fusion-mcp.conf, on free ports); exports
#                 FUSION_TEST_NGINX, FUSION_TEST_NGINX_DIR and FUSION_TEST_REPLICAS (where the replica
#                 tests start replicas a and b)
#   nginx_stop    stop it and remove the directory (safe to call twice, or before a start finished)

NGINX_DIR=""

nginx_start() {
  if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    echo "== nginx: installing the Debian package"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nginx >/dev/null
  fi
  NGINX_DIR=$(mktemp -d -t fusion-nginx.XXXXXX)
  local line
  while IFS= read -r line; do
    export "${line?}"
  done < <(.venv/bin/python -m tests.nginx start "$NGINX_DIR")
  echo "== nginx $("$(command -v nginx || echo /usr/sbin/nginx)" -v 2>&1 | cut -d/ -f2) on ${FUSION_TEST_NGINX} for replicas ${FUSION_TEST_REPLICAS}"
}

nginx_stop() {
  if [ -n "$NGINX_DIR" ] && [ -d "$NGINX_DIR" ]; then
    .venv/bin/python -m tests.nginx stop "$NGINX_DIR" || true
    rm -rf "$NGINX_DIR"
  fi
  NGINX_DIR=""
}
