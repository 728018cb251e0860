#!/bin/sh
# Writes the Redis ACL file from users.acl (beside this script), each <REDIS_..._PASSWORD>
# in it replaced by the SHA-256 of that environment variable (`#<hex>`: the plain password
# is never written), and a config file that loads it; then runs the command given, with
# that config file as redis-server's first argument, through the official image's own
# entrypoint when there is one. Without a command it only writes the files (the tests).
#
#   REDIS_ACL_DIR                where to write users.acl and acl.conf (/tmp/redis-acl)
#   REDIS_*_PASSWORD             a user's password; unset or empty, that user cannot log in
#   REDIS_REPLICATION_PASSWORD   also makes this server authenticate to its primary as
#                                `replication` when it is a replica (masteruser/masterauth)
#
# Passwords are limited to letters, digits and - . _ ~ so that the same value can go into
# a redis:// URL unescaped (`openssl rand -hex 24` makes a good one).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
template="$here/users.acl"
dir=${REDIS_ACL_DIR:-/tmp/redis-acl}

fail() {
  echo "redis-acl: $*" >&2
  exit 1
}

umask 077
mkdir -p "$dir"
script=""
enabled=""
disabled=""
for token in $(grep -o '<REDIS_[A-Z_]*_PASSWORD>' "$template" | sort -u); do
  name=${token#<}
  name=${name%>}
  eval "value=\${$name-}"
  user=$(grep "$token" "$template" | head -n 1 | cut -d' ' -f2)
  if [ -z "$value" ]; then
    # `reset` has already removed every password: this user cannot log in.
    script="$script s/$token/resetpass/;"
    disabled="$disabled $user"
    continue
  fi
  case $value in
    *[!A-Za-z0-9._~-]*) fail "$name may hold only letters, digits and - . _ ~" ;;
  esac
  case $value in
    change-me*) echo "redis-acl: warning: $name is the compose default; set your own" >&2 ;;
  esac
  hash=$(printf '%s' "$value" | sha256sum | cut -d' ' -f1)
  script="$script s/$token/#$hash/;"
  enabled="$enabled $user"
done
sed "$script" "$template" > "$dir/users.acl.new"
mv "$dir/users.acl.new" "$dir/users.acl"
{
  echo "aclfile $dir/users.acl"
  if [ -n "${REDIS_REPLICATION_PASSWORD-}" ]; then
    echo "masteruser replication"
    echo "masterauth $REDIS_REPLICATION_PASSWORD"
  fi
} > "$dir/acl.conf"
echo "redis-acl: users with a password:${enabled:- none}; without (cannot log in):${disabled:- none}" >&2

[ $# -gt 0 ] || exit 0
if [ "$1" = redis-server ]; then
  shift
  set -- redis-server "$dir/acl.conf" "$@"
fi
if command -v docker-entrypoint.sh > /dev/null; then
  # The official image's: it runs redis-server as its `redis` user, who must read these.
  if [ "$(id -u)" = 0 ]; then
    chown -R redis "$dir"
  fi
  exec docker-entrypoint.sh "$@"
fi
exec "$@"
