#!/usr/bin/env bash
# Runs a real proxy in front of an API with x402-gateway as its auth service, from the shipped
# example in deploy/ with its addresses replaced; stays in the foreground (exec).
#
#   scripts/proxy.sh nginx|caddy LISTEN_PORT AUTH_ADDR API_ADDR WORK_DIR
#
# e.g. scripts/proxy.sh nginx 18080 127.0.0.1:18404 127.0.0.1:13000 .local/nginx
# One process (master_process off), so stopping it stops nginx entirely.
# Used by the demo (scripts/demo.sh) and the forward-auth interop test (tests/interop.rs).
set -euo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"
kind="$1" port="$2" auth="$3" api="$4" dir="$5"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
render() {
  sed -e "s/127\.0\.0\.1:8404/$auth/g" -e "s/127\.0\.0\.1:3000/$api/g" "$1"
}
case "$kind" in
  nginx)
    render "$top/deploy/nginx/x402-forward-auth.conf" \
      | sed -e "s/listen 8080;/listen 127.0.0.1:$port;/" > "$dir/site.conf"
    cat > "$dir/nginx.conf" <<CONF
daemon off;
master_process off;
pid $dir/nginx.pid;
error_log $dir/error.log info;
events {}
http {
  access_log $dir/access.log;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  include $dir/site.conf;
}
CONF
    exec /usr/sbin/nginx -p "$dir" -c "$dir/nginx.conf"
    ;;
  caddy)
    render "$top/deploy/caddy/Caddyfile" \
      | sed -e "s/^:8080 {/http:\/\/127.0.0.1:$port {/" > "$dir/Caddyfile"
    export HOME="$dir" XDG_DATA_HOME="$dir/data" XDG_CONFIG_HOME="$dir/config"
    exec /usr/bin/caddy run --adapter caddyfile --config "$dir/Caddyfile"
    ;;
  *)
    echo "usage: $0 nginx|caddy LISTEN_PORT AUTH_ADDR API_ADDR WORK_DIR" >&2
    exit 2
    ;;
esac
