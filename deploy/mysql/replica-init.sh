#!/bin/bash
# The `replica` profile (docker-compose.yml): run once by the MySQL image's
# entrypoint when mysql-replica's data folder is first made. It makes this
# server a GTID replica of `mysql` (semi-synchronous: this server
# acknowledges each transaction once it is in its relay log), then turns
# semi-sync on at the primary, as an orchestrator does when it attaches a
# replica; `SET PERSIST` keeps it on across the primary's restarts. First
# of all it makes this server super_read_only (persisted too: not even root
# writes to it until it is promoted), so that a failure below never leaves
# a writable second server; not on the command line, where it would stop
# the entrypoint's own setup.
set -euo pipefail
password=${MYSQL_ROOT_PASSWORD:?}
# The entrypoint's own setup wrote with binary logging off, and skipped the
# time zone tables: this replica has no transaction of its own.
mysql -uroot -p"$password" <<SQL
SET PERSIST super_read_only = ON;
CHANGE REPLICATION SOURCE TO SOURCE_HOST = 'mysql', SOURCE_PORT = 3306, SOURCE_USER = 'root',
  SOURCE_PASSWORD = '$password', SOURCE_AUTO_POSITION = 1, GET_SOURCE_PUBLIC_KEY = 1;
START REPLICA;
SQL
mysql -h mysql -uroot -p"$password" -e "SET PERSIST rpl_semi_sync_source_enabled = ON"
