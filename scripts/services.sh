#!/usr/bin/env bash
# Makes sure MariaDB (or MySQL) and RabbitMQ answer on their standard ports:
# starts them when they are installed but stopped, and installs them with
# apt-get when running as root on a Debian machine that lacks them.
# Sourced by scripts/test.sh; usable on its own: bash scripts/services.sh
set -euo pipefail

log() { printf '== %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # wait_for SECONDS COMMAND...
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    if ((SECONDS > deadline)); then return 1; fi
    sleep 1
  done
}

apt_install() {
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    log "cannot install $* (need root and apt-get); install it and rerun"
    exit 1
  fi
  log "installing $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Service start-up from the package scripts may fail without an init
  # system; we start the servers ourselves below.
  apt-get install -y -qq "$@" >/dev/null || true
  command -v "$1" >/dev/null 2>&1 || dpkg -s "$1" >/dev/null 2>&1 || { log "installing $* failed"; exit 1; }
}

mysql_tcp() { mysql --protocol=TCP -h 127.0.0.1 -P 3306 -u root "$@"; }

ensure_mariadb() {
  if ! port_open 3306; then
    if [[ ! -x /usr/sbin/mariadbd && ! -x /usr/sbin/mysqld ]]; then
      apt_install mariadb-server mariadb-client
    fi
    log "starting MariaDB"
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
    if [[ -x /usr/sbin/mariadbd ]]; then
      start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    else
      start-stop-daemon --start --oknodo --background --exec /usr/sbin/mysqld
    fi
    wait_for 60 port_open 3306 || { log "MariaDB did not start"; exit 1; }
  fi
  if ! wait_for 30 mysql_tcp -e 'SELECT 1' >/dev/null 2>&1; then
    # A fresh Debian MariaDB lets root in only through the unix socket.
    log "giving root@localhost password-less TCP access"
    mysql -u root -e "ALTER USER root@localhost IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('')" \
      || { log "cannot log in to MariaDB as root over TCP"; exit 1; }
    mysql_tcp -e 'SELECT 1' >/dev/null
  fi
  log "MariaDB answers on 127.0.0.1:3306"
}

ensure_rabbitmq() {
  if ! port_open 5672 && rabbitmqctl ping >/dev/null 2>&1; then
    # The node runs but its app was stopped (`rabbitmqctl stop_app`, as the
    # fault suite does): start the app, not a second node.
    log "starting the RabbitMQ app"
    rabbitmqctl start_app >/dev/null 2>&1 || true
    wait_for 120 port_open 5672 || { log "RabbitMQ did not start"; exit 1; }
  fi
  if ! port_open 5672; then
    if ! command -v rabbitmq-server >/dev/null 2>&1 && [[ ! -x /usr/sbin/rabbitmq-server ]]; then
      apt_install rabbitmq-server
    fi
    log "starting RabbitMQ"
    rabbitmq-server -detached || true
    rabbitmqctl await_startup --timeout 120 >/dev/null 2>&1 || true
    wait_for 120 port_open 5672 || { log "RabbitMQ did not start"; exit 1; }
  fi
  log "RabbitMQ answers on 127.0.0.1:5672"
}

ensure_mariadb
ensure_rabbitmq
